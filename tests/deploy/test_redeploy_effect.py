"""Redeploy proves its effect (issue 16, B7): a pod-template change either reaches the pods,
shown by new pod UIDs (or, for in-place kinds, restarted containers), or the run says plainly
that the kind does not roll its pods and what to do instead.

The facts per kind live in `llm_rollout/kinds` (`pod_roll`) with their upstream sources:
KubeRay `ray-operator/controllers/ray/raycluster_controller.go` (pods recreated only with
`spec.upgradeStrategy.type: Recreate`), RBG `pkg/inplace/pod/inplaceupdate/
inplace_update_defaults.go` (metadata patched in place, image changes restart containers in
place). The sandbox's RayCluster controller, like KubeRay without Recreate, never rolls pods
on a spec change, which is what the Recreate case below relies on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from flows.redeploy import RedeployFailed, redeploy
from llm_rollout.kinds import PodRoll, kind_named
from llm_rollout.kube.client import load_api_client
from llm_rollout.redeploy import (
    NoEffectError,
    RedeployRequest,
    expected_roll,
    incarnations,
    not_rolled,
)
from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.kube.nodes import NodeSpec
from tests.deploy.conftest import Stores, cli, cluster_env, write_spec

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def cluster(stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxCluster]:
    nodes = [NodeSpec(f"gpu-node-{i}") for i in range(4)]
    with cluster_env(ClusterConfig(nodes=nodes), tmp_path_factory.mktemp("kube")) as cluster:
        yield cluster
        assert cluster.controller_errors() == []


def _deploy(stores: Stores, example: str, namespace: str, tmp_path: Path) -> dict[str, Any]:
    path, data = write_spec(stores, example, tmp_path, namespace=namespace)
    result = cli("deploy", str(path))
    assert result.exit_code == 0, result.output
    return data


def _workload(namespace: str, kind: str) -> dict[str, Any]:
    api = load_api_client()
    try:
        group, version, plural = _group_version_plural(kind)
        listed = k8s_client.CustomObjectsApi(api).list_namespaced_custom_object(
            group, version, namespace, plural
        )
        items = listed["items"]
    finally:
        api.close()  # type: ignore[no-untyped-call]
    assert len(items) == 1, items
    return dict(items[0])


def _group_version_plural(kind: str) -> tuple[str, str, str]:
    found = kind_named(kind)
    assert found is not None
    return found.group, found.versions[0], found.plural


def _pod_uids(namespace: str) -> set[str]:
    api = load_api_client()
    try:
        pods = k8s_client.CoreV1Api(api).list_namespaced_pod(namespace).items
    finally:
        api.close()  # type: ignore[no-untyped-call]
    return {p.metadata.uid for p in pods if p.metadata.deletion_timestamp is None}


def _set_ray_upgrade_strategy(namespace: str, name: str, strategy: str) -> None:
    api = load_api_client()
    try:
        k8s_client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "ray.io",
            "v1",
            namespace,
            "rayclusters",
            name,
            {"spec": {"upgradeStrategy": {"type": strategy}}},
        )
    finally:
        api.close()  # type: ignore[no-untyped-call]


def test_restart_of_a_raycluster_is_refused_with_what_to_do_instead(
    stores: Stores, cluster: SandboxCluster, tmp_path: Path
) -> None:
    namespace = "b7-ray-refused"
    data = _deploy(stores, "seed-qwen14b-ray-tp2", namespace, tmp_path)
    before = _workload(namespace, "RayCluster")
    uids = _pod_uids(namespace)
    with pytest.raises(NoEffectError) as refused:
        redeploy(data["name"], namespace, "restart")
    message = str(refused.value)
    assert "KubeRay does not restart a RayCluster's pods" in message
    assert "raycluster_controller.go" in message and "deploy-model" in message
    after = _workload(namespace, "RayCluster")
    # Nothing was applied: same generation, same pods.
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert _pod_uids(namespace) == uids
    assert cli("teardown", data["name"], "-n", namespace, "--timeout-s", "20").exit_code == 0


def test_a_change_that_does_not_reach_the_pods_fails_and_is_reverted(
    stores: Stores, cluster: SandboxCluster, tmp_path: Path
) -> None:
    """With `upgradeStrategy: Recreate` KubeRay (>= v1.6) would replace the pods; the
    sandbox's controller does not, standing in for any controller that leaves the pods be.
    The run must say so instead of reporting the restart as done."""
    namespace = "b7-ray-recreate"
    data = _deploy(stores, "seed-qwen14b-ray-tp2", namespace, tmp_path)
    name = _workload(namespace, "RayCluster")["metadata"]["name"]
    _set_ray_upgrade_strategy(namespace, name, "Recreate")
    uids = _pod_uids(namespace)
    with pytest.raises(RedeployFailed) as failed:
        redeploy(data["name"], namespace, "restart", ready_timeout_s=10)
    message = str(failed.value)
    assert "reverted" in message and "did not reach its pods" in message
    assert "is still the one from before the change" in message
    assert _pod_uids(namespace) == uids
    annotations = [
        (g.get("template", {}).get("metadata") or {}).get("annotations") or {}
        for g in [
            _workload(namespace, "RayCluster")["spec"]["headGroupSpec"],
            *_workload(namespace, "RayCluster")["spec"]["workerGroupSpecs"],
        ]
    ]
    assert not any("llm-rollout.io/restarted-at" in a for a in annotations), annotations
    assert cli("teardown", data["name"], "-n", namespace, "--timeout-s", "20").exit_code == 0


def test_annotation_only_restart_of_an_rbg_v07_group_is_refused(
    stores: Stores, tmp_path: Path
) -> None:
    namespace = "b7-rbg07"
    with cluster_env(ClusterConfig(rbg_version="v0.7"), tmp_path / "kube07"):
        data = _deploy(stores, "seed-sglang-pd-rbg", namespace, tmp_path)
        workload = _workload(namespace, "RoleBasedGroup")
        assert workload["apiVersion"].endswith("/v1alpha2")
        with pytest.raises(NoEffectError, match="updates pods in place"):
            redeploy(data["name"], namespace, "restart")
        again = _workload(namespace, "RoleBasedGroup")
        assert again["metadata"]["generation"] == workload["metadata"]["generation"]


# --- the rules without a cluster -------------------------------------------------------------


def _pod(uid: str, container_id: str = "c1", restarts: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": f"pod-{uid}", "uid": uid},
        "status": {
            "containerStatuses": [
                {"name": "engine", "containerID": container_id, "restartCount": restarts}
            ]
        },
    }


def test_replaced_pods_must_all_be_new() -> None:
    before = incarnations([_pod("a"), _pod("b")])
    replace = PodRoll("replace")
    assert not_rolled(before, [_pod("c"), _pod("d")], replace) == []
    assert not_rolled(before, [_pod("c"), _pod("b")], replace) == [
        "pod pod-b (uid b) is still the one from before the change"
    ]
    going = {**_pod("a"), "metadata": {"name": "pod-a", "uid": "a", "deletionTimestamp": "t"}}
    assert not_rolled(before, [going, _pod("c")], replace) == []
    assert not_rolled(before, [], replace) == ["no live pods yet"]


def test_in_place_pods_count_when_a_container_restarted() -> None:
    before = incarnations([_pod("a", "c1", 0)])
    in_place = PodRoll("in-place")
    assert not_rolled(before, [_pod("a", "c2", 1)], in_place) == []
    assert not_rolled(before, [_pod("a", "c1", 0)], in_place) == [
        "pod pod-a (uid a): no container restarted since the change"
    ]


@pytest.mark.parametrize(
    ("api_version", "spec", "request_args", "mode"),
    [
        ("ray.io/v1", {}, {"action": "restart"}, "none"),
        ("ray.io/v1", {"upgradeStrategy": {"type": "Recreate"}}, {"action": "restart"}, "replace"),
        ("workloads.x-k8s.io/v1alpha2", {}, {"action": "restart"}, "none"),
        ("workloads.x-k8s.io/v1alpha2", {}, {"action": "update", "image": "a/b:2"}, "in-place"),
        (
            "workloads.x-k8s.io/v1alpha2",
            {},
            {"action": "update", "engine_args": ["--max-model-len", "4096"]},
            "replace",
        ),
        ("workloads.x-k8s.io/v1alpha1", {}, {"action": "restart"}, "replace"),
        ("apps/v1", {}, {"action": "restart"}, "replace"),
    ],
)
def test_expected_roll_per_kind(
    api_version: str, spec: dict[str, Any], request_args: dict[str, Any], mode: str
) -> None:
    kinds = {"ray.io": "RayCluster", "workloads.x-k8s.io": "RoleBasedGroup", "apps": "Deployment"}
    workload = {
        "apiVersion": api_version,
        "kind": kinds[api_version.split("/")[0]],
        "metadata": {"name": "w", "namespace": "ns"},
        "spec": spec,
    }
    request = RedeployRequest(service="s", namespace="ns", **request_args)
    if mode == "none":
        with pytest.raises(NoEffectError, match="not applied"):
            expected_roll(workload, request)
    else:
        roll = expected_roll(workload, request)
        assert roll is not None and roll.mode == mode
    assert (
        expected_roll(
            workload, RedeployRequest(service="s", namespace="ns", action="scale", replicas=2)
        )
        is None
    )
