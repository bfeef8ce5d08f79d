"""Plain-function tests of release ids, capacity fitting and the strategy decision."""

from __future__ import annotations

import re

from llm_rollout.strategy import (
    NodeCapacity,
    PodDemand,
    choose_strategy,
    fits,
    new_release_id,
    plan_promote,
    plan_rollback,
    pod_demands,
)


def _gpu_template(gpus: int, erdma: int = 0) -> dict:
    limits = {"nvidia.com/gpu": str(gpus)}
    if erdma:
        limits["aliyun/erdma"] = str(erdma)
    return {"spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]}}


def test_release_id_is_a_short_dns_label_ordered_by_time() -> None:
    a = new_release_id("ab12cd34", 1_700_000_000_000)
    b = new_release_id("ab12cd34", 1_700_000_001_000)
    assert a != b
    for rid in (a, b):
        assert re.fullmatch(r"[a-z][a-z0-9]{1,11}", rid), rid
    assert a.endswith("ab12")


def test_pod_demands_for_every_workload_kind() -> None:
    deployment = {"kind": "Deployment", "spec": {"replicas": 2, "template": _gpu_template(1)}}
    lws = {
        "kind": "LeaderWorkerSet",
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "leaderTemplate": _gpu_template(1),
                "workerTemplate": _gpu_template(1),
            },
        },
    }
    rbg = {
        "kind": "RoleBasedGroup",
        "spec": {
            "roles": [
                {"name": "router", "replicas": 1, "template": {"spec": {"containers": [{}]}}},
                {"name": "prefill", "replicas": 2, "template": _gpu_template(2, erdma=1)},
                {"name": "decode", "replicas": 1, "template": _gpu_template(2, erdma=1)},
            ]
        },
    }
    ray = {
        "kind": "RayCluster",
        "spec": {
            "headGroupSpec": {"template": _gpu_template(8)},
            "workerGroupSpecs": [{"replicas": 1, "template": _gpu_template(8)}],
        },
    }
    service = {"kind": "Service", "spec": {}}
    assert pod_demands([deployment]) == [PodDemand(1), PodDemand(1)]
    assert pod_demands([lws, service]) == [PodDemand(1), PodDemand(1)]
    assert sorted(d.gpus for d in pod_demands([rbg])) == [0, 2, 2, 2]
    assert sum(d.erdma for d in pod_demands([rbg])) == 3
    assert pod_demands([ray]) == [PodDemand(8), PodDemand(8)]


def test_fits_packs_per_node_not_in_total() -> None:
    nodes = [NodeCapacity("a", 2, gpus_requested=1), NodeCapacity("b", 2, gpus_requested=1)]
    # two GPUs free in total, but no single node has two
    assert not fits([PodDemand(2)], nodes)
    assert fits([PodDemand(1), PodDemand(1)], nodes)
    assert not fits([PodDemand(1, erdma=1)], nodes)


def test_auto_prefers_blue_green_when_room_for_both() -> None:
    nodes = [NodeCapacity("a", 1, gpus_requested=1), NodeCapacity("b", 1)]
    decision = choose_strategy("auto", [PodDemand(1)], nodes, {"a": PodDemand(1)})
    assert decision.strategy == "blue-green"
    assert not decision.problems and not decision.warnings


def test_auto_falls_back_to_recreate_with_a_warning() -> None:
    nodes = [NodeCapacity("a", 1, gpus_requested=1)]
    decision = choose_strategy("auto", [PodDemand(1)], nodes, {"a": PodDemand(1)})
    assert decision.strategy == "recreate"
    assert decision.warnings and "recreate" in decision.warnings[0]
    assert "not answer" in decision.warnings[0]


def test_forced_blue_green_without_room_is_refused() -> None:
    nodes = [NodeCapacity("a", 1, gpus_requested=1)]
    decision = choose_strategy("blue-green", [PodDemand(1)], nodes, {"a": PodDemand(1)})
    assert decision.strategy is None
    assert "blue-green" in decision.problems[0] and "does not fit" in decision.problems[0]


def test_nothing_fits_even_after_removal() -> None:
    nodes = [NodeCapacity("a", 1, gpus_requested=1)]
    decision = choose_strategy("recreate", [PodDemand(2)], nodes, {"a": PodDemand(1)})
    assert decision.strategy is None
    assert "even after removing" in decision.problems[0]


def test_first_release_needs_only_its_own_room() -> None:
    nodes = [NodeCapacity("a", 1)]
    assert choose_strategy("blue-green", [PodDemand(1)], nodes, None).strategy == "blue-green"
    missing = choose_strategy("auto", [PodDemand(2)], nodes, None)
    assert missing.strategy is None and "a=1 free" in missing.problems[0]


def test_promote_and_rollback_plans() -> None:
    promote = plan_promote("rold", "rnew", 30.0)
    assert promote.serve_release == "rnew" and promote.remove_releases == ("rold",)
    assert promote.remove_after_s == 30.0
    keep_old = plan_rollback("rold", "rnew", "blue-green", old_workload_exists=True)
    assert keep_old.serve_release == "rold" and keep_old.remove_releases == ("rnew",)
    assert keep_old.serving_during_rollout
    gone = plan_rollback("rold", "rnew", "recreate", old_workload_exists=False)
    assert gone.serve_release is None and not gone.serving_during_rollout
    assert "NOTHING IS SERVING" in gone.message and "recreate" in gone.message
