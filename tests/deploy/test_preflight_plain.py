"""Plain-function tests of the preflight building blocks (no cluster needed)."""

from __future__ import annotations

from llm_rollout.preflight import (
    node_capacities,
    pods_by_node,
    rbg_flavor_from_versions,
    required_apis,
)
from llm_rollout.strategy import PodDemand


def _node(name: str, gpus: int, *, ready: bool = True, cordoned: bool = False) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus), "aliyun/erdma": "2"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _pod(node: str | None, gpus: int, phase: str = "Running") -> dict:
    return {
        "spec": {
            "nodeName": node,
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": phase},
    }


def test_node_capacities_subtract_bound_running_pods_only() -> None:
    nodes = [_node("a", 4), _node("b", 2, ready=False), _node("c", 2, cordoned=True)]
    pods = [_pod("a", 1), _pod("a", 2, phase="Succeeded"), _pod(None, 4), _pod("a", 1)]
    caps = node_capacities(nodes, pods)
    assert [c.name for c in caps] == ["a"]  # NotReady and cordoned nodes cannot take pods
    assert caps[0].gpus_free == 2 and caps[0].erdma_free == 2


def test_pods_by_node_sums_what_removal_frees() -> None:
    freed = pods_by_node([_pod("a", 1), _pod("a", 1), _pod("b", 2), _pod("b", 2, "Failed")])
    assert freed == {"a": PodDemand(2), "b": PodDemand(2)}


def test_rbg_flavor_follows_served_versions() -> None:
    assert rbg_flavor_from_versions(["v1alpha2", "v1alpha1"]) == "v0.7"
    assert rbg_flavor_from_versions(["v1alpha1"]) == "v0.6"
    assert rbg_flavor_from_versions([]) is None


def test_required_apis_per_shape() -> None:
    assert required_apis("single-gpu") == [] and required_apis("tensor-parallel") == []
    assert required_apis("multi-node")[0].kind == "LeaderWorkerSet"
    assert required_apis("pd-disaggregated")[0].group == "workloads.x-k8s.io"
    assert required_apis("ray-cluster")[0].kind == "RayCluster"
