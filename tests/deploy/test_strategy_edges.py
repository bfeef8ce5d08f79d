"""Edges of the strategy decision that test_strategy.py leaves open: exact release ids, what
each workload shape asks for when fields are left out, the packing order, capacity after a
removal, the texts of decisions and plans. Workload shapes as rendered (and as upstream
defaults them: Deployment/LWS replicas 1, LWS size 1, leader = worker template when absent,
lws api/leaderworkerset/v1; RBG v1alpha1 `leaderWorkerSet` / v1alpha2 `leaderWorkerPattern`
and `standalonePattern`, sgl-project/rbg api/workloads)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_rollout.strategy import (
    NodeCapacity,
    PodDemand,
    choose_strategy,
    container_demand,
    fits,
    new_release_id,
    plan_promote,
    plan_rollback,
    pod_demands,
    release_freed,
)


def _tpl(gpus: int | str | None = None, erdma: int | None = None, **requests: Any) -> Any:
    limits: dict[str, Any] = {}
    if gpus is not None:
        limits["nvidia.com/gpu"] = gpus
    if erdma is not None:
        limits["aliyun/erdma"] = erdma
    resources: dict[str, Any] = {"limits": limits}
    if requests:
        resources["requests"] = {k.replace("_", "/"): v for k, v in requests.items()}
    return {"spec": {"containers": [{"name": "c", "resources": resources}]}}


# --- release ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_hash", "now_ms", "rid"),
    [
        ("AB-12cd34", 1_700_000_000_000, "royw3v28ab12"),  # base36 of the ms, last 7 digits
        ("", 35, "rz0000"),
        ("--", 36**7, "r00000000000"),
        ("ab12", 0, "r0ab12"),
        ("ab12", -5, "r0ab12"),
    ],
)
def test_release_ids(spec_hash: str, now_ms: int, rid: str) -> None:
    assert new_release_id(spec_hash, now_ms) == rid


# --- demands ----------------------------------------------------------------------------------


def test_container_demand_sums_containers_and_requests_override_limits() -> None:
    spec = {
        "containers": [
            {"resources": {"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": 1}}},
            {"resources": {"limits": {"nvidia.com/gpu": 3, "aliyun/erdma": "1"}}},
            {"resources": None},
            {"name": "no-resources"},
            {"resources": {"limits": {"nvidia.com/gpu": "1Gi"}}},  # not an integer: nothing
        ]
    }
    assert container_demand(spec) == PodDemand(gpus=4, erdma=1)
    assert container_demand({"containers": None}) == PodDemand(0)
    assert container_demand({}) == PodDemand(0)


def test_replicas_left_out_mean_one_and_zero_means_none() -> None:
    deployment = {"kind": "Deployment", "spec": {"template": _tpl(1)}}
    assert pod_demands([deployment]) == [PodDemand(1)]
    deployment["spec"]["replicas"] = None
    assert pod_demands([deployment]) == [PodDemand(1)]
    deployment["spec"]["replicas"] = 0
    assert pod_demands([deployment]) == []
    sts = {"kind": "StatefulSet", "spec": {"replicas": 3, "template": _tpl(2)}}
    assert pod_demands([sts]) == [PodDemand(2)] * 3
    assert pod_demands([{"kind": "Deployment", "spec": None}]) == [PodDemand(0)]


def test_lws_defaults_size_one_and_leader_as_worker() -> None:
    lws = {"kind": "LeaderWorkerSet", "spec": {"leaderWorkerTemplate": {"workerTemplate": _tpl(4)}}}
    assert pod_demands([lws]) == [PodDemand(4)]
    lws["spec"] = {
        "replicas": 2,
        "leaderWorkerTemplate": {"size": 3, "workerTemplate": _tpl(4)},
    }
    assert pod_demands([lws]) == [PodDemand(4)] * 6
    lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"] = _tpl(0)
    assert pod_demands([lws]) == [PodDemand(0), PodDemand(4), PodDemand(4)] * 2
    assert pod_demands([{"kind": "LeaderWorkerSet", "spec": {}}]) == [PodDemand(0)]


def test_rbg_role_shapes_of_both_versions() -> None:
    rbg = {
        "kind": "RoleBasedGroup",
        "spec": {
            "roles": [
                # v1alpha1: leaderWorkerSet beside the role's template (the worker's default).
                {
                    "name": "prefill",
                    "replicas": 2,
                    "template": _tpl(2, erdma=1),
                    "leaderWorkerSet": {"size": 2, "leaderTemplate": _tpl(1)},
                },
                # v1alpha2: leaderWorkerPattern with its own worker template.
                {
                    "name": "decode",
                    "leaderWorkerPattern": {"size": 2, "workerTemplate": _tpl(8)},
                    "template": _tpl(99),
                },
                {"name": "router", "standalonePattern": {"template": _tpl(0)}},
                {"name": "cache", "replicas": None, "template": _tpl(1)},
            ]
        },
    }
    assert pod_demands([rbg]) == [
        PodDemand(1),
        PodDemand(2, 1),
        PodDemand(1),
        PodDemand(2, 1),
        PodDemand(8),
        PodDemand(8),
        PodDemand(0),
        PodDemand(1),
    ]
    assert pod_demands([{"kind": "RoleBasedGroup", "spec": {"roles": None}}]) == []


def test_raycluster_worker_groups() -> None:
    ray = {
        "kind": "RayCluster",
        "spec": {
            "headGroupSpec": {"template": _tpl(0)},
            "workerGroupSpecs": [
                {"replicas": 2, "template": _tpl(8)},
                {"template": _tpl(4)},
                {"replicas": None, "template": _tpl(1)},
            ],
        },
    }
    assert pod_demands([ray]) == [
        PodDemand(0),
        PodDemand(8),
        PodDemand(8),
        PodDemand(4),
        PodDemand(1),
    ]
    assert pod_demands([{"kind": "RayCluster", "spec": {}}]) == [PodDemand(0)]


# --- packing ----------------------------------------------------------------------------------


def test_packing_places_the_largest_pods_first() -> None:
    # Smallest first would put a 2 on the 3-GPU node and strand the second 2.
    nodes = [NodeCapacity("a", 3), NodeCapacity("b", 2)]
    assert fits([PodDemand(1), PodDemand(2), PodDemand(2)], nodes)


def test_packing_uses_the_tightest_node_that_fits() -> None:
    # The largest node first would leave 1 + 1 free, and the last 2 nowhere.
    nodes = [NodeCapacity("big", 4), NodeCapacity("small", 3)]
    assert fits([PodDemand(2), PodDemand(3), PodDemand(2)], nodes)
    assert not fits([PodDemand(2), PodDemand(3), PodDemand(3)], nodes)


def test_packing_counts_erdma_apart_from_gpus() -> None:
    nodes = [NodeCapacity("a", 8, erdma_allocatable=1), NodeCapacity("b", 8)]
    assert fits([PodDemand(4, 1), PodDemand(4), PodDemand(8)], nodes)
    assert not fits([PodDemand(0, 1), PodDemand(0, 1)], nodes)
    # A node with eRDMA to spare takes pods that ask for none.
    assert fits([PodDemand(4), PodDemand(4, 1)], [NodeCapacity("a", 8, erdma_allocatable=2)])
    assert fits([PodDemand(0, 0)] * 5, [])
    assert not fits([PodDemand(1)], [])


def test_free_capacity_never_goes_negative() -> None:
    over = NodeCapacity("a", 2, gpus_requested=3, erdma_allocatable=1, erdma_requested=2)
    assert (over.gpus_free, over.erdma_free) == (0, 0)
    some = NodeCapacity("b", 8, gpus_requested=3, erdma_allocatable=4, erdma_requested=3)
    assert (some.gpus_free, some.erdma_free) == (5, 1)
    assert not fits([PodDemand(0, 1)], [over])


def test_release_freed_gives_back_only_what_the_old_pods_held() -> None:
    nodes = [
        NodeCapacity("a", 8, gpus_requested=8, erdma_allocatable=4, erdma_requested=3),
        NodeCapacity("b", 8, gpus_requested=2),
    ]
    freed = release_freed(nodes, {"a": PodDemand(6, 1), "c": PodDemand(8)})
    assert freed == [
        NodeCapacity("a", 8, gpus_requested=2, erdma_allocatable=4, erdma_requested=2),
        NodeCapacity("b", 8, gpus_requested=2),
    ]
    assert release_freed([NodeCapacity("a", 1, 1)], {"a": PodDemand(4, 4)}) == [
        NodeCapacity("a", 1, 0)
    ]


# --- decisions --------------------------------------------------------------------------------


def test_first_release_with_recreate_requested_stays_recreate() -> None:
    decision = choose_strategy("recreate", [PodDemand(1)], [NodeCapacity("a", 1)], None)
    assert (decision.strategy, decision.warnings, decision.problems) == ("recreate", (), ())


def test_first_release_that_does_not_fit_says_what_it_needs() -> None:
    demands = [PodDemand(2, 1), PodDemand(2, 1), PodDemand(0)]
    decision = choose_strategy("auto", demands, [], None)
    assert decision.problems == (
        "capacity: the release needs 4 nvidia.com/gpu over 2 pod(s) and 2 aliyun/erdma; "
        "nodes have no schedulable nodes",
    )
    nodes = [NodeCapacity("a", 1), NodeCapacity("b", 2, gpus_requested=2)]
    decision = choose_strategy("blue-green", [PodDemand(2)], nodes, None)
    assert decision.problems == (
        "capacity: the release needs 2 nvidia.com/gpu over 1 pod(s); "
        "nodes have a=1, b=0 free nvidia.com/gpu",
    )


def test_requested_recreate_with_room_for_both_is_recreate_without_warning() -> None:
    nodes = [NodeCapacity("a", 2, gpus_requested=1)]
    decision = choose_strategy("recreate", [PodDemand(1)], nodes, {"a": PodDemand(1)})
    assert (decision.strategy, decision.warnings, decision.problems) == ("recreate", (), ())


def test_requested_blue_green_with_room_and_the_texts_of_refusals() -> None:
    nodes = [NodeCapacity("a", 2, gpus_requested=1)]
    decision = choose_strategy("blue-green", [PodDemand(1)], nodes, {"a": PodDemand(1)})
    assert (decision.strategy, decision.problems) == ("blue-green", ())
    refused = choose_strategy("blue-green", [PodDemand(2)], nodes, {"a": PodDemand(1)})
    assert refused.problems == (
        "capacity: rollout.strategy is blue-green but the new release (2 nvidia.com/gpu over "
        "1 pod(s)) does not fit beside the serving one (a=1 free nvidia.com/gpu); use strategy "
        "auto or recreate, or add GPU nodes",
    )
    fallback = choose_strategy("auto", [PodDemand(2)], nodes, {"a": PodDemand(1)})
    assert fallback.strategy == "recreate"
    assert fallback.warnings == (
        "not enough free GPUs to run the new release beside the serving one (2 nvidia.com/gpu "
        "over 1 pod(s) needed; a=1 free nvidia.com/gpu): falling back to recreate, the "
        "service will not answer between removal of the old release and readiness of the new "
        "one",
    )
    never = choose_strategy("auto", [PodDemand(3)], nodes, {"a": PodDemand(1)})
    assert never.strategy is None
    assert never.problems == (
        "capacity: the release needs 3 nvidia.com/gpu over 1 pod(s), which does not fit even "
        "after removing the serving release (a=1 free nvidia.com/gpu)",
    )


# --- plans ------------------------------------------------------------------------------------


def test_promote_plans() -> None:
    first = plan_promote(None, "r2", 30.0)
    assert (first.action, first.serve_release, first.remove_releases) == ("promote", "r2", ())
    assert first.message == "promote release r2"
    assert first.serving_during_rollout
    again = plan_promote("r2", "r2", 30.0)
    assert again.remove_releases == () and again.message == "promote release r2"
    plan = plan_promote("r1", "r2", 2.5)
    assert plan.remove_releases == ("r1",) and plan.remove_after_s == 2.5
    assert plan.message == "promote release r2; release r1 is removed after 2.5 s"


def test_rollback_plans() -> None:
    keep = plan_rollback("r1", "r2", "recreate", old_workload_exists=True)
    assert (keep.action, keep.serve_release, keep.remove_releases, keep.remove_after_s) == (
        "rollback",
        "r1",
        ("r2",),
        0.0,
    )
    assert keep.message == "rolled back: release r2 removed; release r1 keeps serving"
    recreated = plan_rollback("r1", "r2", "recreate", old_workload_exists=False)
    assert recreated.message == (
        "rolled back: release r2 removed; the strategy was recreate, so the previous release "
        "r1 was already removed and NOTHING IS SERVING"
    )
    assert (recreated.serve_release, recreated.remove_releases) == (None, ("r2",))
    for old, strategy in ((None, "recreate"), (None, "blue-green"), ("r1", "blue-green")):
        plan = plan_rollback(old, "r2", strategy, old_workload_exists=False)  # type: ignore[arg-type]
        assert plan.message == (
            "rolled back: release r2 removed; no previous release, NOTHING IS SERVING"
        )
        assert not plan.serving_during_rollout and plan.serve_release is None
    assert plan_rollback(None, "r2", "blue-green", old_workload_exists=True).serve_release is None


def _parsed(value: str) -> Any:
    """`value` as a spec or the cluster hands it over: parsed, so not the literal's object."""
    return json.loads(json.dumps(value))


def test_values_parsed_from_a_spec_or_the_cluster_are_compared_by_value() -> None:
    first = choose_strategy(_parsed("recreate"), [PodDemand(1)], [NodeCapacity("a", 1)], None)
    assert first.strategy == "recreate"
    assert plan_promote(_parsed("r2-abc"), "r2-abc", 1.0).remove_releases == ()
    nodes = [NodeCapacity("a", 2, gpus_requested=1)]
    both = choose_strategy(_parsed("auto"), [PodDemand(1)], nodes, {"a": PodDemand(1)})
    assert both.strategy == "blue-green"
    fallback = choose_strategy(_parsed("auto"), [PodDemand(2)], nodes, {"a": PodDemand(1)})
    assert fallback.strategy == "recreate" and len(fallback.warnings) == 1
    recreated = plan_rollback("r1", "r2", _parsed("recreate"), old_workload_exists=False)
    assert "the strategy was recreate" in recreated.message


@pytest.mark.parametrize(
    "kind", ["ConfigMap", "PersistentVolumeClaim", "PersistentVolume", "Secret", "Service"]
)
def test_objects_that_are_not_workloads_create_no_pods(kind: str) -> None:
    assert pod_demands([{"kind": kind, "spec": {"template": _tpl(1), "replicas": 2}}]) == []
