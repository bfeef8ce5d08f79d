"""Which deleted pods a release's removal waits for (issue 16 B4), decided without a cluster.

Node shapes are those the node-lifecycle controller writes (k8s.io/kubernetes
pkg/controller/nodelifecycle/node_lifecycle_controller.go: tryUpdateNodeHealth's Ready=Unknown
"NodeStatusUnknown" / "Kubelet stopped posting node status.", the unreachable and not-ready
NoExecute taints) and the kubelet writes (Ready=False "KubeletNotReady"); the out-of-service
taint is the one a person sets after a non-graceful shutdown, which
pkg/controller/podgc/gc_controller.go gcTerminating acts on. The real-cluster case is
tests/real/test_readiness_node_lost.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from llm_rollout.kube.resources import ObjectRef
from llm_rollout.release.removal import Removal, StrandedPod, unconfirmable_deletion

NODE = "gpu-1"
GRACE_ENDS = "2026-12-07T01:00:30Z"
UNKNOWN = {
    "type": "Ready",
    "status": "Unknown",
    "reason": "NodeStatusUnknown",
    "message": "Kubelet stopped posting node status.",
}
NOT_READY = {
    "type": "Ready",
    "status": "False",
    "reason": "KubeletNotReady",
    "message": "container runtime network not ready",
}
READY = {"type": "Ready", "status": "True", "reason": "KubeletReady"}


def _taint(key: str) -> dict[str, str]:
    return {"key": key, "effect": "NoExecute", "timeAdded": "2026-12-07T01:00:10Z"}


UNREACHABLE = _taint("node.kubernetes.io/unreachable")
NOT_READY_TAINT = _taint("node.kubernetes.io/not-ready")
OUT_OF_SERVICE = {**_taint("node.kubernetes.io/out-of-service"), "value": "nodeshutdown"}


def _node(ready: dict[str, str], *taints: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": NODE},
        "spec": {"taints": list(taints)} if taints else {},
        "status": {"conditions": [{"type": "MemoryPressure", "status": "Unknown"}, ready]},
    }


def _pod(*, deleted: bool = True, node: str | None = NODE) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "qwen-r2-7f9c-x1", "namespace": "llm"}
    if deleted:
        metadata["deletionTimestamp"] = GRACE_ENDS
        metadata["deletionGracePeriodSeconds"] = 30
    return {"metadata": metadata, "spec": {"nodeName": node} if node else {}}


POD = ObjectRef("v1", "Pod", "llm", "qwen-r2-7f9c-x1")


def test_a_deleted_pod_on_an_unreachable_node_is_not_waited_for_and_says_what_frees_it() -> None:
    stranded = unconfirmable_deletion(_pod(), {NODE: _node(UNKNOWN, UNREACHABLE)})
    assert stranded is not None
    assert (stranded.pod, stranded.node, stranded.grace_ends) == (POD, NODE, GRACE_ENDS)
    assert stranded.cause.startswith(
        f"Node {NODE} is unreachable (Ready=Unknown (NodeStatusUnknown: Kubelet stopped "
        "posting node status.); tainted node.kubernetes.io/unreachable)"
    )
    assert f"kubectl delete node {NODE}" in stranded.remedy
    assert (
        f"kubectl taint nodes {NODE} node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"
        in stranded.remedy
    )
    assert stranded.describe().startswith(
        f"Pod llm/qwen-r2-7f9c-x1 on Node {NODE} was not waited for (deleted, grace period "
        f"ending {GRACE_ENDS}): Node {NODE} is unreachable"
    )


def test_a_deleted_pod_whose_node_no_longer_exists_is_left_to_the_pod_gc() -> None:
    stranded = unconfirmable_deletion(_pod(), {"gpu-0": _node(READY)})
    assert stranded is not None
    assert stranded.cause == (
        f"Node {NODE} no longer exists, so no kubelet will confirm the deletion"
    )
    assert "force-deletes pods of a missing Node" in stranded.remedy


def test_an_out_of_service_node_is_named_for_the_pod_gc_not_for_the_user() -> None:
    """Both taints: the person already did what the unreachable case asks."""
    stranded = unconfirmable_deletion(_pod(), {NODE: _node(UNKNOWN, UNREACHABLE, OUT_OF_SERVICE)})
    assert stranded is not None
    assert "tainted node.kubernetes.io/out-of-service" in stranded.cause
    assert stranded.remedy.endswith("nothing to do")
    assert "kubectl" not in stranded.remedy


@pytest.mark.parametrize(
    ("node", "why"),
    [
        (_node(READY), "a Ready node's kubelet confirms the deletion"),
        (
            _node(NOT_READY, NOT_READY_TAINT),
            "Ready=False is posted by a kubelet that still reports, and confirms deletions",
        ),
        (
            _node(UNKNOWN),
            "Unknown without the unreachable taint: the controller's full-disruption mode, "
            "or the moment before it taints; the taint's arrival is a Node event",
        ),
        (
            _node(READY, OUT_OF_SERVICE),
            "podgc acts on out-of-service only for a node that is not Ready",
        ),
    ],
)
def test_a_pod_whose_node_can_still_confirm_is_waited_for(node: dict[str, Any], why: str) -> None:
    assert unconfirmable_deletion(_pod(), {NODE: node}) is None, why


def test_only_pods_marked_for_deletion_and_bound_to_a_node_are_ever_set_aside() -> None:
    lost = {NODE: _node(UNKNOWN, UNREACHABLE)}
    # The garbage collector has not reached it yet: it will, within moments.
    assert unconfirmable_deletion(_pod(deleted=False), lost) is None
    # Never bound: the API server deletes it without a kubelet (podgc gcUnscheduledTerminating
    # catches any left).
    assert unconfirmable_deletion(_pod(node=None), lost) is None


def test_a_removal_lists_what_it_deleted_then_what_it_left() -> None:
    workload = ObjectRef("apps/v1", "Deployment", "llm", "qwen-r2")
    left = StrandedPod(POD, NODE, GRACE_ENDS, "cause", "remedy")
    removal = Removal([workload], (left,))
    assert removal.lines() == ["Deployment llm/qwen-r2", left.describe()]
    assert Removal([workload]).lines() == ["Deployment llm/qwen-r2"]
