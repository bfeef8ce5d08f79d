"""RoleBasedGroup v0.7.0's CRD on the real API server, with v0.7's controller chain.

The session cluster serves v0.6.0's CRD; v0.7.0's has the same name, so this module swaps it
in (``ensure_rbg_crd``), with the RoleInstanceSet and RoleInstance kinds and our v0.7
reconciler (``sandbox/cluster/rbg_v07.py``: upstream's group, RoleInstanceSet and RoleInstance
controllers, ``pkg/reconciler/roleinstanceset_reconciler.go``, ``pkg/reconciler/roleinstance``);
tests that need v0.6.0 swap it back, with its reconciler, when they run after these. Here: the
product's v1alpha2 group through discovery and upstream's schema, the refused annotation-only
restart, the PD example deployed end to end on v0.7 (RoleInstanceSets, RoleInstances and their
pods, readiness on v0.7's status, the router bound late to the Services the created pods name,
the smoke test through the real router), and a v0.7 pod creation refused by a ResourceQuota,
which readiness names from the RoleInstance's own event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from flows.redeploy import redeploy
from llm_rollout.kinds.rbg import GROUP, RoleBasedGroup
from llm_rollout.kube.objects import FIELD_MANAGER
from llm_rollout.kube.resources import ObjectRef, served_versions
from llm_rollout.preflight import rbg_flavor_from_versions
from llm_rollout.readiness import WorkloadFailed, wait_ready
from llm_rollout.readiness_rules import DEFAULT_TOLERANCES
from llm_rollout.redeploy import NoEffectError
from llm_rollout.release.inventory import release_objects
from llm_rollout.release.services import point_stable_service
from llm_rollout.release.writing import apply_checked, namespace_object
from llm_rollout.render import render
from llm_rollout.spec import load_spec
from sandbox.cluster import rbg
from sandbox.cluster.control_plane import Cluster, ensure_rbg_crd
from tests.real.test_deploy_pd_rbg import _router_argv, _summary, deploy_pd_example
from tests.real_cluster import counted_pod_quota
from tests.real_deploy import RealStores, write_real_spec

pytestmark = pytest.mark.usefixtures("prefect_server")

EXAMPLE = "seed-sglang-pd-rbg"
RELEASE = "r7"
# Applying v0.7.0's 2.9 MB CRD took most of a swap; the bound leaves room for a loaded machine.
SWAP_TIMEOUT_S = 240.0
# The session's nodes offer no aliyun/erdma devices.
NO_ERDMA = {"resources": {"erdma": 0}}


@pytest.fixture(scope="module")
def rbg_v07(real_cluster: Cluster) -> Cluster:
    took_s = ensure_rbg_crd(real_cluster, rbg.CRD_V07, timeout_s=SWAP_TIMEOUT_S)
    print(f"RBG_SWAP_FIGURES v0.7.0 CRD in: {took_s:.1f} s")
    return real_cluster


@pytest.mark.timeout(120, func_only=True)
def test_v07_is_detected_and_its_group_is_stored_and_listed_at_v1alpha2(
    rbg_v07: Cluster, real_deploy_env: RealStores, real_admin: k8s.ApiClient, tmp_path: Path
) -> None:
    """Discovery of the real API server says v0.7 (v1alpha2 served beside v1alpha1); the
    rendered v1alpha2 group passes upstream's schema there, and the product's release listing,
    which asks under both served versions, finds it once, at v1alpha2."""
    namespace = "real-rbg07-names"
    path, _ = write_real_spec(
        real_deploy_env, EXAMPLE, tmp_path, namespace=namespace, serving=NO_ERDMA
    )
    spec = load_spec(path)
    versions = served_versions(real_admin, GROUP)
    assert versions == ["v1alpha2", "v1alpha1"]
    flavor = rbg_flavor_from_versions(versions)
    assert flavor == "v0.7"
    rendered = render(spec, release=RELEASE, rbg_flavor=flavor)
    apply_checked(real_admin, [namespace_object(namespace)])
    apply_checked(real_admin, rendered.workload_objects)
    found = [
        o
        for o in release_objects(real_admin, namespace, spec.name, RELEASE)
        if o["kind"] == RoleBasedGroup.kind
    ]
    assert [o["apiVersion"] for o in found] == [f"{GROUP}/v1alpha2"]
    roles = {r["name"]: r for r in found[0]["spec"]["roles"]}
    assert set(roles) == {"prefill", "decode", "router"}
    assert all("standalonePattern" in r and "template" not in r for r in roles.values())
    # The same group read through the older served version (no conversion webhook here: the
    # API server only relabels it) is still the one object.
    again = k8s.CustomObjectsApi(real_admin).get_namespaced_custom_object(
        GROUP, "v1alpha1", namespace, RoleBasedGroup.plural, found[0]["metadata"]["name"]
    )
    assert again["metadata"]["uid"] == found[0]["metadata"]["uid"]
    k8s.CoreV1Api(real_admin).delete_namespace(namespace)


@pytest.mark.timeout(120, func_only=True)
def test_annotation_only_restart_of_an_rbg_v07_group_is_refused(
    rbg_v07: Cluster, real_deploy_env: RealStores, real_admin: k8s.ApiClient, tmp_path: Path
) -> None:
    """A restart only changes a pod-template annotation, which RBG v0.7's in-place update
    patches into the running pods without restarting a container
    (``pkg/inplace/pod/inplaceupdate/inplace_update_defaults.go``): redeploy refuses it before
    writing anything. The serving release is what deploy leaves: the group and its Service
    applied, the stable Service pointing at the release."""
    namespace = "real-rbg07-restart"
    path, data = write_real_spec(
        real_deploy_env, EXAMPLE, tmp_path, namespace=namespace, serving=NO_ERDMA
    )
    spec = load_spec(path)
    rendered = render(spec, release=RELEASE, rbg_flavor="v0.7")
    apply_checked(real_admin, [namespace_object(namespace)])
    apply_checked(real_admin, rendered.workload_objects)
    point_stable_service(real_admin, rendered.stable_service, RELEASE, {})
    custom = k8s.CustomObjectsApi(real_admin)
    (before,) = custom.list_namespaced_custom_object(
        GROUP, "v1alpha2", namespace, RoleBasedGroup.plural
    )["items"]

    with pytest.raises(NoEffectError, match="updates pods in place"):
        redeploy(data["name"], namespace, "restart")

    (after,) = custom.list_namespaced_custom_object(
        GROUP, "v1alpha2", namespace, RoleBasedGroup.plural
    )["items"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    # v0.7's controller writes the group's status and its discovery-mode annotation meanwhile,
    # so its resourceVersion moves; the product's own writes are what must not have.
    assert _written_by_us(after) == _written_by_us(before)
    k8s.CoreV1Api(real_admin).delete_namespace(namespace)


def _written_by_us(obj: dict[str, Any]) -> list[dict[str, Any]]:
    entries = obj["metadata"].get("managedFields") or []
    return [m for m in entries if m.get("manager") == FIELD_MANAGER]


V2 = (GROUP, "v1alpha2")


@pytest.mark.timeout(300, func_only=True)
def test_pd_on_rbg_v07_serves_through_the_real_router_bound_to_the_created_role_instances(
    rbg_v07: Cluster,
    real_deploy_env: RealStores,
    real_admin: k8s.ApiClient,
    real_cleanup: Callable[[str, str], None],
    tmp_path: Path,
) -> None:
    """The PD example on RBG v0.7: deploy detects v0.7 by discovery and applies the v1alpha2
    group; the v0.7 controller chain makes a RoleInstanceSet per role, a RoleInstance per
    replica and a pod per RoleInstance (named as it, hostname and subdomain set by the
    RoleInstance, ``pkg/reconciler/roleinstance/core/instance_core.go``); readiness passes on
    the group's v0.7 status, the router's backends are bound late to the Services those pods
    name, and the smoke test goes through the real router to a prefill and the decode server."""
    namespace = "real-pd-rbg07"
    _, data, result = deploy_pd_example(
        real_deploy_env, real_admin, real_cleanup, tmp_path, namespace
    )

    custom = k8s.CustomObjectsApi(real_admin)
    core = k8s.CoreV1Api(real_admin)
    (group,) = custom.list_namespaced_custom_object(*V2, namespace, RoleBasedGroup.plural)["items"]
    name = group["metadata"]["name"]
    sets = {
        s["metadata"]["name"]: s
        for s in custom.list_namespaced_custom_object(*V2, namespace, "roleinstancesets")["items"]
    }
    instances = {
        i["metadata"]["name"]: i
        for i in custom.list_namespaced_custom_object(*V2, namespace, "roleinstances")["items"]
    }
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
    replicas = {"prefill": 2, "decode": 1, "router": 1}
    assert sorted(sets) == sorted(f"{name}-{role}" for role in replicas)
    assert sorted(instances) == sorted(
        f"{name}-{role}-{i}" for role, n in replicas.items() for i in range(n)
    )
    for instance_name, instance in instances.items():
        (ref,) = instance["metadata"]["ownerReferences"]
        assert ref["kind"] == "RoleInstanceSet" and instance_name.startswith(ref["name"] + "-")
        ready = {c["type"]: c["status"] for c in instance["status"]["conditions"]}
        assert ready["RoleInstanceReady"] == "True", instance["status"]
        pod = pods[instance_name]
        (pod_ref,) = pod.metadata.owner_references
        assert (pod_ref.kind, pod_ref.name) == ("RoleInstance", instance_name)
        assert pod.metadata.labels["rbg.workloads.x-k8s.io/role-instance-name"] == instance_name
        gates = {c.type: c.status for c in pod.status.conditions}
        assert gates["InPlaceUpdateReady"] == gates["InstancePodReady"] == "True", gates
    port = data["serving"].get("port", 8000)
    for role in ("prefill", "decode"):
        assert pods[f"{name}-{role}-0"].spec.subdomain == f"s-{name}-{role}"
        env = {e.name: e for e in pods[f"{name}-{role}-0"].spec.containers[0].env}
        assert env["RBG_GROUP_NAME"].value == name and env["RBG_ROLE_NAME"].value == role
    argv = _router_argv(pods[f"{name}-router-0"])
    prefill = [argv[i + 1] for i, a in enumerate(argv) if a == "--prefill"]
    decode = [argv[i + 1] for i, a in enumerate(argv) if a == "--decode"]
    assert prefill == [
        f"http://{name}-prefill-{i}.s-{name}-prefill.{namespace}.svc:{port}" for i in range(2)
    ]
    assert decode == [f"http://{name}-decode-0.s-{name}-decode.{namespace}.svc:{port}"]
    summary = _summary(result.summary_markdown_key)
    assert (
        f"router backends bound to the role Services read back (decode: s-{name}-decode, "
        f"prefill: s-{name}-prefill)" in summary
    )
    router_ip = pods[f"{name}-router-0"].status.pod_ip
    request = f'[standin] {router_ip} "POST /v1/chat/completions HTTP/1.1" 200'
    assert request in core.read_namespaced_pod_log(f"{name}-decode-0", namespace)
    assert any(
        request in core.read_namespaced_pod_log(f"{name}-prefill-{i}", namespace) for i in range(2)
    )
    status = group["status"]
    assert status["observedGeneration"] == group["metadata"]["generation"]
    (ready_condition,) = status["conditions"]
    assert (ready_condition["type"], ready_condition["status"]) == ("Ready", "True")
    assert ready_condition["observedGeneration"] == group["metadata"]["generation"]
    assert {r["name"]: r["readyReplicas"] for r in status["roleStatuses"]} == replicas


@pytest.mark.timeout(120, func_only=True)
def test_a_pod_quota_on_rbg_v07_fails_readiness_naming_the_role_instance_and_the_quota(
    rbg_v07: Cluster, real_deploy_env: RealStores, real_admin: k8s.ApiClient, tmp_path: Path
) -> None:
    """No pod of a v0.7 group can be created: the RoleInstances record the API server's
    refusal on themselves (``pkg/reconciler/roleinstance/sync/instance_scale.go``
    createOnePod), which readiness reads as a pod-creation failure of the RoleInstance past
    its tolerance, without the refused pod's JSON that the event carries."""
    namespace = "real-rbg07-quota"
    path, _ = write_real_spec(
        real_deploy_env, EXAMPLE, tmp_path, namespace=namespace, serving=NO_ERDMA
    )
    rendered = render(load_spec(path), release=RELEASE, rbg_flavor="v0.7")
    apply_checked(real_admin, [namespace_object(namespace)])
    core = k8s.CoreV1Api(real_admin)
    counted_pod_quota(core, namespace, "pods", 0)
    (group,) = [o for o in rendered.workload_objects if o["kind"] == RoleBasedGroup.kind]
    apply_checked(real_admin, [group])
    tolerances = replace(DEFAULT_TOLERANCES, pod_create_s=2.0)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, ObjectRef.of(group), timeout_s=60.0, tolerances=tolerances)
    failure = info.value
    name = group["metadata"]["name"]
    assert failure.reason == "FailedCreate", failure
    assert failure.pod is not None and failure.pod.kind == "RoleInstance", failure
    assert failure.pod.name in (f"{name}-prefill-0", f"{name}-prefill-1", f"{name}-decode-0")
    assert "exceeded quota: pods" in failure.detail, failure
    assert "(persisted " in failure.detail
    assert '"spec"' not in str(failure)
    instance = k8s.CustomObjectsApi(real_admin).get_namespaced_custom_object(
        *V2, namespace, "roleinstances", failure.pod.name
    )
    scale = {c["type"]: c for c in instance["status"]["conditions"]}["FailedScale"]
    assert scale["status"] == "True" and "exceeded quota: pods" in scale["message"]
    core.delete_namespace(namespace)
