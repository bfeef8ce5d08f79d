"""RoleBasedGroup (v0.6 and v0.7 flavours), RayCluster and PV/PVC binding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import watch

from sandbox.kube.cluster import ClusterConfig, SandboxCluster

from .conftest import Kube, container, wait_for

RBG_GROUP = "workloads.x-k8s.io"


def _pd_roles(api_version: str) -> list[dict[str, Any]]:
    """SGLang PD shape: prefill and decode, a router that depends on both."""

    def tmpl(name: str, gpus: int) -> dict[str, Any]:
        return {
            "spec": {"containers": [container(name, image="lmsysorg/sglang:v0.5.9", gpus=gpus)]}
        }

    if api_version == "v1alpha2":
        return [
            {
                "name": "router",
                "replicas": 1,
                "dependencies": ["prefill", "decode"],
                "standalonePattern": {"template": tmpl("router", 0)},
            },
            {
                "name": "prefill",
                "replicas": 2,
                "standalonePattern": {"template": tmpl("prefill", 2)},
            },
            {
                "name": "decode",
                "replicas": 1,
                "leaderWorkerPattern": {"size": 2, "template": tmpl("decode", 2)},
            },
        ]
    return [
        {
            "name": "router",
            "replicas": 1,
            "dependencies": ["prefill", "decode"],
            "template": tmpl("router", 0),
        },
        {"name": "prefill", "replicas": 2, "template": tmpl("prefill", 2)},
        {
            "name": "decode",
            "replicas": 1,
            "template": tmpl("decode", 2),
            "workload": {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet"},
            "leaderWorkerSet": {"size": 2},
        },
    ]


def _run_pd(kube: Kube, ns: str, api_version: str) -> tuple[dict[str, Any], list[str]]:
    body = {
        "apiVersion": f"{RBG_GROUP}/{api_version}",
        "kind": "RoleBasedGroup",
        "metadata": {"name": "pd"},
        "spec": {"roles": _pd_roles(api_version)},
    }
    created_order: list[str] = []
    w = watch.Watch()
    kube.custom.create_namespaced_custom_object(RBG_GROUP, api_version, ns, "rolebasedgroups", body)
    for ev in w.stream(
        kube.custom.list_namespaced_custom_object,
        RBG_GROUP,
        api_version,
        ns,
        "rolebasedgroups",
        timeout_seconds=15,
    ):
        obj = ev["object"]
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        if conds.get("Ready", {}).get("status") == "True":
            w.stop()
    obj = kube.custom.get_namespaced_custom_object(
        RBG_GROUP, api_version, ns, "rolebasedgroups", "pd"
    )
    for kind_list in (
        kube.apps.list_namespaced_stateful_set(ns).items,
        kube.apps.list_namespaced_deployment(ns).items,
    ):
        created_order += [
            f"{o.metadata.creation_timestamp.isoformat()} {o.metadata.name}" for o in kind_list
        ]
    return obj, created_order


def _check_pd(
    kube: Kube, ns: str, obj: dict[str, Any], name_label: str, role_label: str, env: str
) -> None:
    conds = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conds["Ready"]["status"] == "True"
    assert conds["Ready"]["reason"] == "AllRolesReady"
    roles = {r["name"]: r for r in obj["status"]["roleStatuses"]}
    assert roles["prefill"] == {
        "name": "prefill",
        "replicas": 2,
        "readyReplicas": 2,
        "updatedReplicas": 2,
    }
    assert roles["router"]["readyReplicas"] == 1 and roles["decode"]["readyReplicas"] == 1
    for role in ("router", "prefill", "decode"):
        svc = kube.core.read_namespaced_service(f"s-pd-{role}", ns)
        assert svc.spec.cluster_ip == "None"
        assert svc.spec.selector == {name_label: "pd", role_label: role}
    pods = {p.metadata.name: p for p in kube.pods(ns, f"{name_label}=pd")}
    assert {"pd-router-0", "pd-prefill-0", "pd-prefill-1", "pd-decode-0", "pd-decode-0-1"} == set(
        pods
    )
    prefill = pods["pd-prefill-1"]
    assert prefill.metadata.labels[role_label] == "prefill"
    penv = {e.name: e for e in prefill.spec.containers[0].env}
    assert penv[f"{env}GROUP_NAME"].value == "pd"
    assert penv[f"{env}ROLE_NAME"].value == "prefill"
    assert penv[f"{env}ROLE_INDEX"].value_from.field_ref.field_path == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    decode_env = {e.name: e.value for e in pods["pd-decode-0-1"].spec.containers[0].env}
    assert decode_env["LWS_LEADER_ADDRESS"] == f"pd-decode-0.pd-decode.{ns}"
    # The router depends on prefill and decode: its pod came after both were Ready.
    router_created = pods["pd-router-0"].metadata.creation_timestamp
    for dep in ("pd-prefill-0", "pd-prefill-1", "pd-decode-0", "pd-decode-0-1"):
        ready = next(
            c.last_transition_time for c in pods[dep].status.conditions if c.type == "Ready"
        )
        assert router_created >= ready
    assert any(e.reason == "DependencyNotMet" for e in kube.events(ns))


def test_rbg_v06_roles_in_dependency_order_with_v1alpha1_labels_and_env(
    kube: Kube, ns: str
) -> None:
    obj, _ = _run_pd(kube, ns, "v1alpha1")
    _check_pd(
        kube,
        ns,
        obj,
        "rolebasedgroup.workloads.x-k8s.io/name",
        "rolebasedgroup.workloads.x-k8s.io/role",
        "",
    )
    sts = kube.apps.read_namespaced_stateful_set("pd-prefill", ns)
    assert sts.metadata.owner_references[0].kind == "RoleBasedGroup"


@pytest.fixture(scope="module")
def kube_v07(tmp_path_factory: pytest.TempPathFactory, shared_crds: Path) -> Iterator[Kube]:
    config = ClusterConfig(crd_dir=shared_crds, rbg_version="v0.7")
    with SandboxCluster(config, tmp_path_factory.mktemp("kube07")) as cluster:
        yield Kube(cluster)
        assert cluster.controller_errors() == []


@pytest.mark.parametrize("api_version", ["v1alpha2", "v1alpha1"])
def test_rbg_v07_labels_and_rbg_env(kube_v07: Kube, api_version: str) -> None:
    ns = kube_v07.new_namespace()
    obj, _ = _run_pd(kube_v07, ns, api_version)
    _check_pd(
        kube_v07,
        ns,
        obj,
        "rbg.workloads.x-k8s.io/group-name",
        "rbg.workloads.x-k8s.io/role-name",
        "RBG_",
    )
    decode = kube_v07.core.read_namespaced_pod("pd-decode-0-1", ns)
    env = {e.name: e.value for e in decode.spec.containers[0].env}
    assert env["RBG_LWP_LEADER_ADDRESS"] == "$(LWS_LEADER_ADDRESS)"
    assert "GROUP_NAME" not in env


def test_raycluster_head_workers_service_and_ready_state(kube: Kube, ns: str) -> None:
    head = container("ray-head", image="rayproject/ray:2.9.0", port=8265)
    worker = container("ray-worker", image="rayproject/ray:2.9.0", port=None, gpus=2)
    rc = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "vllm-ray"},
        "spec": {
            "rayVersion": "2.9.0",
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0"},
                "template": {"spec": {"containers": [head]}},
            },
            "workerGroupSpecs": [
                {
                    "groupName": "gpu",
                    "replicas": 2,
                    "minReplicas": 1,
                    "maxReplicas": 4,
                    "rayStartParams": {"num-gpus": "2"},
                    "template": {"spec": {"containers": [worker]}},
                }
            ],
        },
    }
    kube.custom.create_namespaced_custom_object("ray.io", "v1", ns, "rayclusters", rc)
    obj = wait_for(
        lambda: (
            (
                o := kube.custom.get_namespaced_custom_object(
                    "ray.io", "v1", ns, "rayclusters", "vllm-ray"
                )
            )
            and (o.get("status") or {}).get("state") == "ready"
            and o
        ),
        10,
        "RayCluster ready",
    )
    st = obj["status"]
    assert st["readyWorkerReplicas"] == 2 and st["desiredWorkerReplicas"] == 2
    assert st["desiredGPU"] == "4"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["HeadPodReady"]["status"] == "True"
    assert conds["RayClusterProvisioned"]["status"] == "True"
    heads = kube.pods(ns, "ray.io/cluster=vllm-ray,ray.io/node-type=head")
    workers = kube.pods(ns, "ray.io/cluster=vllm-ray,ray.io/node-type=worker")
    assert len(heads) == 1 and heads[0].metadata.name.startswith("vllm-ray-head-")
    assert len(workers) == 2 and all(
        w.metadata.name.startswith("vllm-ray-gpu-worker-") for w in workers
    )
    assert st["head"]["podName"] == heads[0].metadata.name
    svc = kube.core.read_namespaced_service("vllm-ray-head-svc", ns)
    assert svc.spec.selector == {"ray.io/cluster": "vllm-ray", "ray.io/node-type": "head"}
    wenv = {e.name: e.value for e in workers[0].spec.containers[0].env}
    assert wenv["FQ_RAY_IP"] == f"vllm-ray-head-svc.{ns}.svc.cluster.local"


def _oss_pv(name: str, storage: str = "100Gi") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"alicloud-pvname": name}},
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": ["ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "csi": {
                "driver": "ossplugin.csi.alibabacloud.com",
                "volumeHandle": name,
                "volumeAttributes": {
                    "bucket": "models",
                    "url": "oss-cn-hangzhou-internal.aliyuncs.com",
                    "path": "/Qwen3-32B",
                    "otherOpts": "-o umask=022",
                },
            },
        },
    }


def _pvc(name: str, *, selector: str | None = None, volume: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadOnlyMany"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "",
    }
    if selector:
        spec["selector"] = {"matchLabels": {"alicloud-pvname": selector}}
    if volume:
        spec["volumeName"] = volume
    return {"metadata": {"name": name}, "spec": spec}


def test_pvc_binds_by_label_selector_and_by_volume_name(kube: Kube, ns: str) -> None:
    pv1, pv2 = f"{ns}-model-a", f"{ns}-model-b"
    kube.core.create_persistent_volume(_oss_pv(pv1))
    kube.core.create_persistent_volume(_oss_pv(pv2))
    try:
        kube.core.create_namespaced_persistent_volume_claim(ns, _pvc("by-label", selector=pv2))
        kube.core.create_namespaced_persistent_volume_claim(ns, _pvc("by-name", volume=pv1))
        for claim, pv in (("by-label", pv2), ("by-name", pv1)):
            bound = wait_for(
                lambda c=claim: (
                    (p := kube.core.read_namespaced_persistent_volume_claim(c, ns))
                    and p.status.phase == "Bound"
                    and p
                ),
                10,
                f"{claim} Bound",
            )
            assert bound.spec.volume_name == pv
            assert bound.status.capacity == {"storage": "100Gi"}
            volume = kube.core.read_persistent_volume(pv)
            assert volume.status.phase == "Bound"
            assert volume.spec.claim_ref.name == claim and volume.spec.claim_ref.namespace == ns
    finally:
        # The sandbox API server answers this delete with a Status body, which the typed client
        # cannot deserialize as a PersistentVolume; read the raw response instead.
        kube.core.delete_persistent_volume(pv1, _preload_content=False)
        kube.core.delete_persistent_volume(pv2, _preload_content=False)


def test_pod_with_unbound_claim_stays_pending(kube: Kube, ns: str) -> None:
    kube.core.create_namespaced_persistent_volume_claim(ns, _pvc("orphan", selector="no-such-pv"))
    pod = {
        "metadata": {"name": "uses-claim"},
        "spec": {
            "containers": [container()],
            "volumes": [{"name": "model", "persistentVolumeClaim": {"claimName": "orphan"}}],
        },
    }
    kube.core.create_namespaced_pod(ns, pod)
    events = wait_for(lambda: kube.events(ns, "FailedScheduling"), 10, "FailedScheduling")
    assert events[0].message.startswith(
        "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims."
    )
    assert kube.core.read_namespaced_pod("uses-claim", ns).status.phase == "Pending"
    claim = kube.core.read_namespaced_persistent_volume_claim("orphan", ns)
    assert claim.status.phase == "Pending"
    assert kube.events(ns, "FailedBinding")
