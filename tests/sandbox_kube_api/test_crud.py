"""CRUD, selectors, validation and dry-run through the real kubernetes client."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError

from sandbox.kube.controlplane import ControlPlane


def _pod(name: str, labels: dict[str, str] | None = None, image: str = "busybox:1.36") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "main", "image": image}]},
    }


def _deployment(name: str, replicas: object = 1) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "vllm/vllm-openai:v0.9.0"}]},
            },
        },
    }


def test_version_and_health(api_client: client.ApiClient, plane: ControlPlane) -> None:
    info = client.VersionApi(api_client).get_code()
    assert info.git_version.startswith("v1.30.")
    assert info.minor == "30"


def test_create_get_list_replace_delete_configmap(core: client.CoreV1Api, ns: str) -> None:
    created = core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cfg"}, "data": {"a": "1"}}
    )
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    rv1 = created.metadata.resource_version
    assert int(rv1) > 0

    got = core.read_namespaced_config_map("cfg", ns)
    assert got.data == {"a": "1"} and got.metadata.resource_version == rv1

    got.data = {"a": "2"}
    replaced = core.replace_namespaced_config_map("cfg", ns, got)
    assert int(replaced.metadata.resource_version) > int(rv1)

    # The first copy is stale now: a replace with its resourceVersion must conflict.
    created.data = {"a": "3"}
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("cfg", ns, created)
    assert stale.value.status == 409
    body = json.loads(stale.value.body)
    assert body["kind"] == "Status" and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]

    with pytest.raises(ApiException) as dup:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}})
    assert dup.value.status == 409
    assert json.loads(dup.value.body)["reason"] == "AlreadyExists"

    assert [c.metadata.name for c in core.list_namespaced_config_map(ns).items] == ["cfg"]
    status = core.delete_namespaced_config_map("cfg", ns)
    assert status["status"] == "Success"  # this client types the delete response as a dict
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("cfg", ns)
    assert gone.value.status == 404
    assert json.loads(gone.value.body)["details"] == {"name": "cfg", "kind": "configmaps"}


def test_namespace_must_exist(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("no-such-ns", {"metadata": {"name": "x"}})
    assert err.value.status == 404
    assert json.loads(err.value.body)["message"] == 'namespaces "no-such-ns" not found'


def test_generate_name_and_defaults(core: client.CoreV1Api, ns: str) -> None:
    pod = _pod("")
    pod["metadata"] = {"generateName": "web-"}
    created = core.create_namespaced_pod(ns, pod)
    assert created.metadata.name.startswith("web-") and len(created.metadata.name) == 9
    assert created.status.phase == "Pending"
    assert created.spec.restart_policy == "Always"
    assert created.spec.containers[0].image_pull_policy == "IfNotPresent"


def test_numeric_quantities_come_back_as_strings(
    dyn: DynamicClient, core: client.CoreV1Api, ns: str
) -> None:
    # A real API server takes numbers where a Quantity goes and serialises them as strings;
    # the typed client's V1ResourceRequirements reads them as str -> str.
    pod = _pod("gpu-pod")
    pod["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": 8, "cpu": 0.5},
        "requests": {"memory": "1Gi", "cpu": 2},
    }
    dyn.resources.get(api_version="v1", kind="Pod").create(body=pod, namespace=ns)
    read = core.read_namespaced_pod("gpu-pod", ns).spec.containers[0].resources
    assert read.limits == {"nvidia.com/gpu": "8", "cpu": "500m"}
    assert read.requests == {"memory": "1Gi", "cpu": "2"}


def test_label_and_field_selectors(core: client.CoreV1Api, plane: ControlPlane, ns: str) -> None:
    core.create_namespaced_pod(ns, _pod("a", {"app": "llm", "tier": "leader"}))
    core.create_namespaced_pod(ns, _pod("b", {"app": "llm", "tier": "worker"}))
    core.create_namespaced_pod(ns, _pod("c", {"app": "router"}))
    pod_rt = plane.store.resource_type("v1", "Pod")
    running = plane.store.get(pod_rt, ns, "b")
    running["status"] = {"phase": "Running"}
    plane.store.update_status(running)

    def names(**kw: str) -> list[str]:
        return sorted(p.metadata.name for p in core.list_namespaced_pod(ns, **kw).items)

    assert names(label_selector="app=llm") == ["a", "b"]
    assert names(label_selector="app=llm,tier!=leader") == ["b"]
    assert names(label_selector="tier in (leader, worker)") == ["a", "b"]
    assert names(label_selector="app notin (llm)") == ["c"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="!tier") == ["c"]
    assert names(field_selector="status.phase=Running") == ["b"]
    assert names(field_selector="metadata.name!=a,status.phase=Pending") == ["c"]
    every = core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={ns}")
    assert sorted(p.metadata.name for p in every.items) == ["a", "b", "c"]

    with pytest.raises(ApiException) as bad:
        core.list_namespaced_pod(ns, field_selector="spec.bogus=1")
    assert bad.value.status == 400
    assert "field label not supported: spec.bogus" in bad.value.body


def test_core_kind_schema_violation_is_422(dyn: DynamicClient, ns: str) -> None:
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    with pytest.raises(DynamicApiError) as err:
        deployments.create(body=_deployment("bad", replicas="x"), namespace=ns)
    assert err.value.status == 422
    body = json.loads(err.value.body)
    assert body["reason"] == "Invalid"
    assert 'spec.replicas: Invalid value: "x"' in body["message"]
    assert body["details"]["kind"] == "Deployment" and body["details"]["group"] == "apps"
    assert {"reason": "FieldValueInvalid", "field": "spec.replicas"}.items() <= body["details"][
        "causes"
    ][0].items()


def test_unknown_fields_follow_field_validation(
    dyn: DynamicClient, core: client.CoreV1Api, ns: str
) -> None:
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u"}, "data": {"k": "v"}}
    cm["extra"] = 1
    with pytest.raises(DynamicApiError) as strict:
        cms.create(body=cm, namespace=ns, query_params=[("fieldValidation", "Strict")])
    assert strict.value.status == 400
    assert (
        'strict decoding error: unknown field "extra"' in json.loads(strict.value.body)["message"]
    )
    assert core.list_namespaced_config_map(ns).items == []
    # Sent without fieldValidation the server's default (Warn) drops the field and says so.
    created = cms.create(body=cm, namespace=ns)
    assert created.data.k == "v"
    assert "extra" not in core.read_namespaced_config_map("u", ns).to_dict()
    assert "extra" not in dyn.get(resource=cms, name="u", namespace=ns).to_dict()


def test_dry_run_persists_nothing(
    dyn: DynamicClient, apps: client.AppsV1Api, plane: ControlPlane, ns: str
) -> None:
    rv_before = plane.store.resource_version
    dry = apps.create_namespaced_deployment(ns, _deployment("d"), dry_run="All")
    assert dry.metadata.name == "d" and dry.spec.strategy.type == "RollingUpdate"
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment("d", ns)
    assert missing.value.status == 404
    # Dry runs still validate.
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    with pytest.raises(DynamicApiError) as invalid:
        deployments.create(
            body=_deployment("e", replicas="x"), namespace=ns, query_params=[("dryRun", "All")]
        )
    assert invalid.value.status == 422
    assert plane.store.resource_version == rv_before

    real = apps.create_namespaced_deployment(ns, _deployment("d"))
    rv = real.metadata.resource_version
    patched = apps.patch_namespaced_deployment("d", ns, {"spec": {"replicas": 5}}, dry_run="All")
    assert patched.spec.replicas == 5
    applied = apps.patch_namespaced_deployment(
        "d",
        ns,
        _deployment("d", replicas=7),
        field_manager="dry",
        dry_run="All",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    assert applied.spec.replicas == 7
    apps.delete_namespaced_deployment("d", ns, dry_run="All")
    after = apps.read_namespaced_deployment("d", ns)
    assert after.spec.replicas == 1 and after.metadata.resource_version == rv


def test_generation_bumps_on_spec_change_only(
    apps: client.AppsV1Api, plane: ControlPlane, ns: str
) -> None:
    dep = apps.create_namespaced_deployment(ns, _deployment("g"))
    assert dep.metadata.generation == 1
    labelled = apps.patch_namespaced_deployment("g", ns, {"metadata": {"labels": {"x": "y"}}})
    assert labelled.metadata.generation == 1
    scaled = apps.patch_namespaced_deployment("g", ns, {"spec": {"replicas": 3}})
    assert scaled.metadata.generation == 2
    # Status writes (what a controller does) never bump the generation; the main resource
    # ignores status in its body.
    rt = plane.store.resource_type("apps/v1", "Deployment")
    obj = plane.store.get(rt, ns, "g")
    obj["status"] = {"observedGeneration": 2, "replicas": 3}
    plane.store.update_status(obj)
    ignored = apps.patch_namespaced_deployment("g", ns, {"status": {"replicas": 99}})
    assert ignored.status.replicas == 3 and ignored.metadata.generation == 2
    via_status = apps.patch_namespaced_deployment_status("g", ns, {"status": {"readyReplicas": 3}})
    assert via_status.status.ready_replicas == 3 and via_status.status.observed_generation == 2
    assert apps.read_namespaced_deployment_status("g", ns).metadata.generation == 2


def test_patch_flavours(core: client.CoreV1Api, ns: str) -> None:
    pod = _pod("p")
    pod["spec"]["containers"].append(
        {"name": "side", "image": "envoy:1", "env": [{"name": "A", "value": "1"}]}
    )
    core.create_namespaced_pod(ns, pod)
    # A dict body: the client sends strategic merge for core kinds; containers merge by name.
    patched = core.patch_namespaced_pod(
        "p", ns, {"spec": {"containers": [{"name": "side", "env": [{"name": "B", "value": "2"}]}]}}
    )
    side = next(c for c in patched.spec.containers if c.name == "side")
    assert [e.name for e in side.env] == ["A", "B"] and len(patched.spec.containers) == 2
    # JSON patch (a list body).
    patched = core.patch_namespaced_pod(
        "p", ns, [{"op": "add", "path": "/metadata/labels", "value": {"j": "1"}}]
    )
    assert patched.metadata.labels == {"j": "1"}
    with pytest.raises(ApiException) as bad:
        core.patch_namespaced_pod("p", ns, [{"op": "remove", "path": "/metadata/annotations/x"}])
    assert bad.value.status in (400, 422)
    # Merge patch replaces lists whole.
    merged = core.patch_namespaced_pod(
        "p",
        ns,
        {"metadata": {"labels": {"j": None, "m": "2"}}},
        _content_type="application/merge-patch+json",
    )
    assert merged.metadata.labels == {"m": "2"}


def test_custom_resource_crud_and_schema(custom: client.CustomObjectsApi, ns: str) -> None:
    lws = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "llm"},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "workerTemplate": {"spec": {"containers": [{"name": "w", "image": "vllm:1"}]}},
            },
        },
    }
    args = ("leaderworkerset.x-k8s.io", "v1", ns, "leaderworkersets")
    created = custom.create_namespaced_custom_object(*args, lws)
    # Structural defaults from the CRD schema.
    assert created["spec"]["startupPolicy"] == "LeaderCreated"
    assert created["metadata"]["generation"] == 1
    got = custom.get_namespaced_custom_object(*args, "llm")
    assert got["spec"]["leaderWorkerTemplate"]["size"] == 2
    listed = custom.list_namespaced_custom_object(*args)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["llm"]
    patched = custom.patch_namespaced_custom_object(*args, "llm", {"spec": {"replicas": 2}})
    assert patched["spec"]["replicas"] == 2 and patched["metadata"]["generation"] == 2

    bad = json.loads(json.dumps(lws))
    bad["metadata"]["name"] = "bad"
    bad["spec"]["leaderWorkerTemplate"]["size"] = "two"
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(*args, bad)
    assert err.value.status == 422
    body = json.loads(err.value.body)
    assert "spec.leaderWorkerTemplate.size: Invalid value" in body["message"]
    assert body["details"]["causes"][0]["field"] == "spec.leaderWorkerTemplate.size"

    status = custom.patch_namespaced_custom_object_status(
        *args, "llm", {"status": {"readyReplicas": 2, "replicas": 2}}
    )
    assert status["status"]["readyReplicas"] == 2
    assert custom.get_namespaced_custom_object(*args, "llm")["metadata"]["generation"] == 2
    custom.delete_namespaced_custom_object(*args, "llm")
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(*args, "llm")
    assert gone.value.status == 404


def test_crds_listed_by_apiextensions(api_client: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    crds = {c.metadata.name: c for c in ext.list_custom_resource_definition().items}
    assert {
        "leaderworkersets.leaderworkerset.x-k8s.io",
        "rolebasedgroups.workloads.x-k8s.io",
        "rayclusters.ray.io",
    } <= set(crds)
    lws = crds["leaderworkersets.leaderworkerset.x-k8s.io"]
    assert any(c.type == "Established" and c.status == "True" for c in lws.status.conditions)


def test_owner_references_garbage_collection(
    core: client.CoreV1Api, apps: client.AppsV1Api, ns: str
) -> None:
    for policy, expect_child in (("Background", False), ("Orphan", True), ("Foreground", False)):
        owner = apps.create_namespaced_replica_set(
            ns,
            {
                "metadata": {"name": f"rs-{policy.lower()}"},
                "spec": {
                    "selector": {"matchLabels": {"o": policy}},
                    "template": {
                        "metadata": {"labels": {"o": policy}},
                        "spec": {"containers": [{"name": "c", "image": "x:1"}]},
                    },
                },
            },
        )
        child = _pod(f"child-{policy.lower()}")
        child["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": owner.metadata.name,
                "uid": owner.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        core.create_namespaced_pod(ns, child)
        apps.delete_namespaced_replica_set(
            owner.metadata.name, ns, body=client.V1DeleteOptions(propagation_policy=policy)
        )
        names = [p.metadata.name for p in core.list_namespaced_pod(ns).items]
        assert (f"child-{policy.lower()}" in names) is expect_child, policy
        if expect_child:
            orphan = core.read_namespaced_pod(f"child-{policy.lower()}", ns)
            assert not orphan.metadata.owner_references
        with pytest.raises(ApiException):
            apps.read_namespaced_replica_set(owner.metadata.name, ns)


def test_scale_subresource(apps: client.AppsV1Api, ns: str) -> None:
    apps.create_namespaced_deployment(ns, _deployment("sc"))
    scale = apps.read_namespaced_deployment_scale("sc", ns)
    assert scale.spec.replicas == 1 and scale.status.selector == "app=sc"
    patched = apps.patch_namespaced_deployment_scale("sc", ns, {"spec": {"replicas": 4}})
    assert patched.spec.replicas == 4
    dep = apps.read_namespaced_deployment("sc", ns)
    assert dep.spec.replicas == 4 and dep.metadata.generation == 2
    scale = apps.read_namespaced_deployment_scale("sc", ns)
    scale.spec.replicas = 2
    assert apps.replace_namespaced_deployment_scale("sc", ns, scale).spec.replicas == 2


def test_graceful_pod_deletion_waits_for_the_kubelet(
    core: client.CoreV1Api, plane: ControlPlane, ns: str
) -> None:
    bound = _pod("bound")
    bound["spec"]["nodeName"] = "node-1"
    core.create_namespaced_pod(ns, bound)
    core.create_namespaced_pod(ns, _pod("pending"))
    answer = core.delete_namespaced_pod("bound", ns)
    # A pod on a node is only marked; the kubelet removes it once its containers stopped.
    assert answer.metadata.deletion_timestamp is not None
    assert answer.metadata.deletion_grace_period_seconds == 30
    assert core.read_namespaced_pod("bound", ns).metadata.deletion_timestamp is not None
    plane.store.finalize_pod(ns, "bound")
    # A pod never bound to a node goes at once.
    core.delete_namespaced_pod("pending", ns)
    assert core.list_namespaced_pod(ns).items == []


def test_strategic_merge_patch_is_refused_for_custom_resources(
    custom: client.CustomObjectsApi, ns: str
) -> None:
    args = ("ray.io", "v1", ns, "rayclusters")
    custom.create_namespaced_custom_object(
        *args,
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": "rc"},
            "spec": {
                "headGroupSpec": {
                    "rayStartParams": {"num-gpus": "0"},
                    "template": {"spec": {"containers": [{"name": "head", "image": "ray:2"}]}},
                }
            },
        },
    )
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            *args,
            "rc",
            {"metadata": {"labels": {"a": "b"}}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert err.value.status == 415
    assert json.loads(err.value.body)["reason"] == "UnsupportedMediaType"
