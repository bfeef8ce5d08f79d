"""The readiness rules per workload kind, on status documents shaped like the upstream ones."""

from __future__ import annotations

from typing import Any

import pytest

from llm_rollout.errors import PermanentError
from llm_rollout.readiness import pod_selector_for, workload_missing


def _obj(kind: str, spec: dict[str, Any], status: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "x/v1",
        "kind": kind,
        "metadata": {"name": "w", "namespace": "llm", **meta},
        "spec": spec,
        "status": status,
    }


def _cond(type_: str, status: str, reason: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason}


def test_deployment_needs_current_generation_available_and_all_replicas() -> None:
    ready = _obj(
        "Deployment",
        {"replicas": 2},
        {
            "observedGeneration": 3,
            "readyReplicas": 2,
            "updatedReplicas": 2,
            "conditions": [_cond("Available", "True")],
        },
        generation=3,
    )
    assert workload_missing(ready) == []
    stale = _obj(
        "Deployment", {"replicas": 2}, {**ready["status"], "observedGeneration": 2}, generation=3
    )
    assert any("generation 3" in m for m in workload_missing(stale))
    short = _obj(
        "Deployment", {"replicas": 2}, {**ready["status"], "readyReplicas": 1}, generation=3
    )
    assert workload_missing(short) == ["readyReplicas 1/2"]


def test_deployment_whose_ready_pods_are_the_old_ones_is_not_ready() -> None:
    """B7: right after a template change the controller has observed the new generation, the
    old ReplicaSet's pods are still Ready and Available holds, but no pod runs the new
    template; the status then omits `updatedReplicas` (zero counters are omitempty,
    kubernetes `pkg/controller/deployment/sync.go` calculateStatus)."""
    rolling = _obj(
        "Deployment",
        {"replicas": 2},
        {"observedGeneration": 4, "readyReplicas": 2, "conditions": [_cond("Available", "True")]},
        generation=4,
    )
    assert workload_missing(rolling) == ["updatedReplicas 0/2"]
    rolling["status"]["updatedReplicas"] = 1
    assert workload_missing(rolling) == ["updatedReplicas 1/2"]


def test_leaderworkerset_needs_available_condition_and_ready_groups() -> None:
    lws = _obj(
        "LeaderWorkerSet",
        {"replicas": 1},
        {"readyReplicas": 0, "conditions": [_cond("Available", "False", "Pending")]},
    )
    assert workload_missing(lws) == [
        "condition Available=False (Pending)",
        "readyReplicas (groups) 0/1",
    ]
    lws["status"] = {"readyReplicas": 1, "conditions": [_cond("Available", "True")]}
    assert workload_missing(lws) == []


def test_rolebasedgroup_needs_ready_and_every_role_ready() -> None:
    spec = {"roles": [{"name": "prefill"}, {"name": "decode"}, {"name": "router"}]}
    status = {
        "conditions": [_cond("Ready", "True")],
        "roleStatuses": [
            {"name": "prefill", "replicas": 2, "readyReplicas": 2},
            {"name": "decode", "replicas": 1, "readyReplicas": 0},
        ],
    }
    assert workload_missing(_obj("RoleBasedGroup", spec, status)) == [
        "role decode: readyReplicas 0/1",
        "role router: no status yet",
    ]


def test_raycluster_ready_state_and_unsupported_kind() -> None:
    assert workload_missing(_obj("RayCluster", {}, {"state": "ready"})) == []
    assert workload_missing(_obj("RayCluster", {}, {})) == ["state not reported (want ready)"]
    with pytest.raises(PermanentError, match="CronJob"):
        workload_missing(_obj("CronJob", {}, {}))


def test_pod_selectors_follow_each_controller_labels() -> None:
    dep = _obj("Deployment", {"selector": {"matchLabels": {"app": "q", "release": "r1"}}}, {})
    assert pod_selector_for(dep)[0] == "app=q,release=r1"
    assert pod_selector_for(_obj("LeaderWorkerSet", {}, {}))[0] == (
        "leaderworkerset.sigs.k8s.io/name=w"
    )
    rbg = _obj("RoleBasedGroup", {}, {})
    selector, accept = pod_selector_for(rbg)
    assert selector is None
    old = {"metadata": {"labels": {"rolebasedgroup.workloads.x-k8s.io/name": "w"}}}
    new = {"metadata": {"labels": {"rbg.workloads.x-k8s.io/group-name": "w"}}}
    other = {"metadata": {"labels": {"rbg.workloads.x-k8s.io/group-name": "x"}}}
    assert accept(old) and accept(new) and not accept(other)


def test_log_selection_keeps_an_early_root_cause() -> None:
    from llm_rollout.readiness import LOG_TAIL_LINES, select_log_lines

    noise = [f"shutdown step {i}" for i in range(60)]
    lines = [
        "INFO starting engine",
        "ValueError: To serve at least one request the KV cache needs more memory",
        *noise,
    ]
    picked = select_log_lines(lines)
    assert picked[0].startswith("ValueError: To serve")
    assert picked[1] == "..."
    assert picked[2:] == noise[-LOG_TAIL_LINES:]
    assert "INFO starting engine" not in picked


def test_log_selection_is_the_plain_tail_without_errors() -> None:
    from llm_rollout.readiness import LOG_TAIL_LINES, select_log_lines

    lines = [f"line {i}" for i in range(100)]
    assert select_log_lines(lines) == lines[-LOG_TAIL_LINES:]
    assert select_log_lines(lines[:5]) == lines[:5]
