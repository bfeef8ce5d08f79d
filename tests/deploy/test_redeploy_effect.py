"""Redeploy proves its effect (issue 16, B7): a pod-template change either reaches the pods,
shown by new pod UIDs (or, for in-place kinds, restarted containers), or the run says plainly
that the kind does not roll its pods and what to do instead. Here the rules, without a cluster;
on the real cluster: tests/real/test_redeploy_kinds.py (Deployment, LeaderWorkerSet,
RoleBasedGroup), tests/real/test_redeploy_raycluster.py (KubeRay with and without Recreate) and
tests/real/test_worker_flows.py (a Deployment restart replacing every pod).

The facts per kind live in `llm_rollout/kinds` (`pod_roll`) with their upstream sources:
KubeRay `ray-operator/controllers/ray/raycluster_controller.go` (pods recreated only with
`spec.upgradeStrategy.type: Recreate`), RBG `pkg/inplace/pod/inplaceupdate/
inplace_update_defaults.go` (metadata patched in place, image changes restart containers in
place).
"""

from __future__ import annotations

from typing import Any

import pytest

from llm_rollout.kinds import PodRoll
from llm_rollout.redeploy import (
    NoEffectError,
    RedeployRequest,
    expected_roll,
    incarnations,
    not_rolled,
)

# --- the rules without a cluster -------------------------------------------------------------


def _pod(
    uid: str, container_id: str = "c1", restarts: int = 0, *, ready: bool = True
) -> dict[str, Any]:
    return {
        "metadata": {"name": f"pod-{uid}", "uid": uid},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [
                {"name": "engine", "containerID": container_id, "restartCount": restarts}
            ],
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
    # A new pod counts once Ready, and as many as the workload asks for must be there (a
    # StatefulSet creates an ordinal's new pod only after the old one is gone).
    assert not_rolled(before, [_pod("c"), _pod("d", ready=False)], replace) == [
        "pod pod-d (uid d) runs the change but is not Ready yet"
    ]
    assert not_rolled(before, [going, _pod("c")], replace, expected_pods=2) == [
        "1 of 2 pods run the change and are Ready"
    ]
    assert not_rolled(before, [_pod("c"), _pod("d")], replace, expected_pods=2) == []


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
