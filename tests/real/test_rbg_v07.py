"""RoleBasedGroup v0.7.0's CRD on the real API server: the product's v0.7 behaviour that needs
no RBG controller.

The session cluster serves v0.6.0's CRD; v0.7.0's has the same name, so this module swaps it
in (``ensure_rbg_crd``: our reconciler stops, as it speaks v0.6.0's v1alpha1 only; tests that
need v0.6.0 swap it back, with the reconciler, when they run after these). Upstream v0.7 runs
standalone roles on RoleInstanceSets, RoleInstances and pods of its own making
(``pkg/reconciler/roleinstanceset_reconciler.go``, ``pkg/reconciler/roleinstance``); our
reconciler does not imitate that chain, so nothing here waits for pods: the groups are what
the product renders and applies, judged by the real API server against upstream's schema.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client as k8s

from flows.redeploy import redeploy
from llm_rollout.kinds.rbg import GROUP, RoleBasedGroup
from llm_rollout.kube.resources import served_versions
from llm_rollout.preflight import rbg_flavor_from_versions
from llm_rollout.redeploy import NoEffectError
from llm_rollout.release import (
    apply_checked,
    namespace_object,
    point_stable_service,
    release_objects,
)
from llm_rollout.render import render
from llm_rollout.spec import load_spec
from sandbox.cluster import rbg
from sandbox.cluster.control_plane import Cluster, ensure_rbg_crd
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
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    k8s.CoreV1Api(real_admin).delete_namespace(namespace)
