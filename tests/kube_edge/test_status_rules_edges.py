"""Edges of the workload and pod readiness classification (`workload_missing`,
`pod_selector_for`, `select_log_lines` and the pod line of a timeout) that
test_status_rules.py leaves open: fields the controllers have not written yet, counts above
what is wanted, every selector operator, the exact texts. Objects go through a JSON round trip
(`_wire`), as from the API server.

Shapes: Deployment/StatefulSet status (k8s.io/api apps/v1 types.go), LeaderWorkerSet
(lws api/leaderworkerset/v1), RoleBasedGroup (sgl-project/rbg api/workloads), RayCluster
(kuberay ray-operator/apis/ray/v1 raycluster_types.go `state`), label selectors
(apimachinery pkg/apis/meta/v1 LabelSelectorOperator In/NotIn/Exists/DoesNotExist).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_rollout.errors import PermanentError
from llm_rollout.kinds.rbg import V07_NAME_LABEL
from llm_rollout.readiness import (
    LOG_ROOT_CAUSE_LINES,
    LOG_TAIL_LINES,
    _pod_ready_missing,
    pod_selector_for,
    select_log_lines,
    workload_missing,
)


def _wire(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _obj(kind: str, spec: dict[str, Any], status: dict[str, Any] | None, **meta: Any) -> Any:
    obj: dict[str, Any] = {
        "apiVersion": "x/v1",
        "kind": kind,
        "metadata": {"name": "w", "namespace": "llm", **meta},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return _wire(obj)


def _cond(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    cond = {"type": type_, "status": status}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


AVAILABLE = [_cond("Available", "True")]


def test_a_deployment_not_yet_observed_lists_everything_in_order() -> None:
    fresh = _obj("Deployment", {"replicas": 2}, None, generation=1)
    assert workload_missing(fresh) == [
        "controller has not observed generation 1 (observed None)",
        "condition Available not reported",
        "readyReplicas 0/2",
    ]


def test_generation_observed_or_not_given() -> None:
    status = {
        "observedGeneration": 4,
        "readyReplicas": 1,
        "updatedReplicas": 1,
        "conditions": AVAILABLE,
    }
    # Observed beyond what we read (a newer spec landed meanwhile) is observed.
    assert workload_missing(_obj("Deployment", {}, status, generation=3)) == []
    assert workload_missing(_obj("Deployment", {}, status, generation=4)) == []
    assert workload_missing(
        _obj("Deployment", {}, {**status, "observedGeneration": 3}, generation=4)
    ) == ["controller has not observed generation 4 (observed 3)"]
    # No generation in the object read: nothing to compare.
    assert workload_missing(_obj("Deployment", {}, {**status, "observedGeneration": None})) == []
    # Once the controller reported, an absent updatedReplicas (omitempty) is none updated:
    # the ready pod is an old ReplicaSet's (kinds/deployment.py).
    old_pods = {k: v for k, v in status.items() if k != "updatedReplicas"}
    assert workload_missing(_obj("Deployment", {}, old_pods, generation=4)) == [
        "updatedReplicas 0/1"
    ]


def test_replicas_default_to_one_wanted_and_more_ready_is_ready() -> None:
    assert workload_missing(_obj("Deployment", {}, {"conditions": AVAILABLE})) == [
        "readyReplicas 0/1"
    ]
    surge = {"readyReplicas": 3, "conditions": AVAILABLE}
    assert workload_missing(_obj("Deployment", {"replicas": 2}, surge)) == []
    odd = {"readyReplicas": "n/a", "conditions": AVAILABLE}
    assert workload_missing(_obj("Deployment", {"replicas": "two"}, odd)) == ["readyReplicas 0/1"]


def test_condition_texts() -> None:
    def available(*cond: dict[str, str]) -> list[str]:
        status = {"readyReplicas": 1, "conditions": list(cond)}
        return workload_missing(_obj("Deployment", {"replicas": 1}, status))

    assert available(_cond("Available", "False", message="Deployment does not have minimum")) == [
        "condition Available=False (Deployment does not have minimum)"
    ]
    assert available(_cond("Available", "False", "MinimumReplicasUnavailable", "m")) == [
        "condition Available=False (MinimumReplicasUnavailable)"
    ]
    assert available(_cond("Available", "Unknown")) == ["condition Available=Unknown"]
    assert available(_cond("Progressing", "True")) == ["condition Available not reported"]


def test_a_statefulset_needs_generation_and_replicas_only() -> None:
    ready = {"observedGeneration": 2, "readyReplicas": 2}
    assert workload_missing(_obj("StatefulSet", {"replicas": 2}, ready, generation=2)) == []
    assert workload_missing(_obj("StatefulSet", {"replicas": 2}, {}, generation=2)) == [
        "controller has not observed generation 2 (observed None)",
        "readyReplicas 0/2",
    ]


def test_a_rolebasedgroup_without_ready_condition_and_role_defaults() -> None:
    spec = {"roles": [{"name": "prefill"}, {"name": "decode"}]}
    status = {
        "roleStatuses": [
            {"name": "prefill", "readyReplicas": 1},  # replicas not reported: 1 wanted
            {"name": "decode", "replicas": 1, "readyReplicas": 2},
        ]
    }
    assert workload_missing(_obj("RoleBasedGroup", spec, status)) == [
        "condition Ready not reported"
    ]
    status["conditions"] = [_cond("Ready", "True")]
    status["roleStatuses"][0] = {"name": "prefill"}
    assert workload_missing(_obj("RoleBasedGroup", spec, status)) == [
        "role prefill: readyReplicas 0/1"
    ]


def test_a_raycluster_in_another_state() -> None:
    assert workload_missing(_obj("RayCluster", {}, {"state": "ready"})) == []
    for state in ("failed", "suspended", "unhealthy"):
        assert workload_missing(_obj("RayCluster", {}, {"state": state})) == [
            f"state {state} (want ready)"
        ]


def test_a_leaderworkerset_read_from_the_api_server() -> None:
    lws = _obj("LeaderWorkerSet", {"replicas": 2}, {"readyReplicas": 2, "conditions": AVAILABLE})
    assert workload_missing(lws) == []
    assert pod_selector_for(lws)[0] == "leaderworkerset.sigs.k8s.io/name=w"


def test_every_role_without_status_or_short_is_listed() -> None:
    spec = {"roles": [{"name": "prefill"}, {"name": "decode"}, {"name": "router"}]}
    status = {
        "conditions": [_cond("Ready", "True")],
        "roleStatuses": [{"name": "router", "replicas": 2, "readyReplicas": 1}],
    }
    assert workload_missing(_obj("RoleBasedGroup", spec, status)) == [
        "role prefill: no status yet",
        "role decode: no status yet",
        "role router: readyReplicas 1/2",
    ]


@pytest.mark.parametrize("kind", ["CronJob", "Service", "Workload"])
def test_kinds_without_a_readiness_rule_are_refused(kind: str) -> None:
    with pytest.raises(PermanentError, match=f"readiness of kind {kind} is not supported"):
        workload_missing(_obj(kind, {}, {"state": "ready", "readyReplicas": 1}))
    with pytest.raises(PermanentError, match=f"readiness of kind {kind} is not supported"):
        pod_selector_for(_obj(kind, {}, {}))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (
            {
                "matchLabels": {"b": "2", "a": "1"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["gpu", "cpu"]},
                    {"key": "zone", "operator": "NotIn", "values": ["z1"]},
                    {"key": "ready", "operator": "Exists"},
                    {"key": "drain", "operator": "DoesNotExist"},
                    {"key": "x", "operator": "Gt", "values": ["1"]},
                ],
            },
            "a=1,b=2,tier in (gpu,cpu),zone notin (z1),ready,!drain",
        ),
        ({}, None),
    ],
)
def test_deployment_and_statefulset_selectors(
    selector: dict[str, Any], expected: str | None
) -> None:
    for kind in ("Deployment", "StatefulSet"):
        found, accept = pod_selector_for(_obj(kind, {"selector": selector}, {}))
        assert found == expected
        assert accept({})


def test_raycluster_and_rbg_v1alpha2_selectors_and_unknown_kind() -> None:
    assert pod_selector_for(_obj("RayCluster", {}, {}))[0] == "ray.io/cluster=w"
    v2 = _wire(
        {
            "apiVersion": "workloads.x-k8s.io/v1alpha2",
            "kind": "RoleBasedGroup",
            "metadata": {"name": "w"},
        }
    )
    selector, accept = pod_selector_for(v2)
    assert selector == f"{V07_NAME_LABEL}=w"
    assert accept({})
    _, either = pod_selector_for(_obj("RoleBasedGroup", {}, {}))
    assert not either(_wire({"metadata": {}})) and not either({})
    rbg = _wire({"kind": "RoleBasedGroup", "metadata": {"name": "qwen-pd"}})
    _, either = pod_selector_for(rbg)
    for label in ("rolebasedgroup.workloads.x-k8s.io/name", V07_NAME_LABEL):
        assert either(_wire({"metadata": {"labels": {label: "qwen-pd"}}}))
    with pytest.raises(PermanentError, match="readiness of kind Job is not supported"):
        pod_selector_for(_obj("Job", {}, {}))


def test_the_pod_line_of_a_timeout() -> None:
    def pod(status: dict[str, Any] | None) -> Any:
        body: dict[str, Any] = {"metadata": {"name": "p", "namespace": "llm"}}
        if status is not None:
            body["status"] = status
        return _wire(body)

    ready = {"phase": "Running", "conditions": [_cond("Ready", "True")]}
    assert _pod_ready_missing(pod(ready)) is None
    not_ready = {"phase": "Running", "conditions": [_cond("Ready", "False", "ContainersNotReady")]}
    assert _pod_ready_missing(pod(not_ready)) == "pod llm/p not Ready (ContainersNotReady)"
    unknown = {"phase": "Running", "conditions": [_cond("Ready", "Unknown")]}
    assert _pod_ready_missing(pod(unknown)) == "pod llm/p not Ready (Running)"
    assert _pod_ready_missing(pod({"phase": "Pending"})) == "pod llm/p not Ready (Pending)"
    assert _pod_ready_missing(pod(None)) == "pod llm/p not Ready (no status)"


def test_log_selection_keeps_at_most_the_latest_root_causes() -> None:
    errors = [f"Error {i}" for i in range(LOG_ROOT_CAUSE_LINES + 3)]
    tail = [f"line {i}" for i in range(LOG_TAIL_LINES)]
    assert select_log_lines(errors + tail) == [
        *errors[-LOG_ROOT_CAUSE_LINES:],
        "...",
        *tail,
    ]
    # One line before the tail is scanned; the tail itself is never repeated as a cause.
    assert select_log_lines(["Traceback (most recent call last):", *tail]) == [
        "Traceback (most recent call last):",
        "...",
        *tail,
    ]
    failing_tail = [f"Error {i}" for i in range(LOG_TAIL_LINES)]
    assert select_log_lines(failing_tail) == failing_tail
    # Only lines before the tail are scanned, however many there are.
    early = [f"Error early {i}" for i in range(25)]
    tail = [f"Error in tail {i}" if i % 5 == 0 else f"line {i}" for i in range(LOG_TAIL_LINES)]
    assert select_log_lines(early + tail) == [*early[-LOG_ROOT_CAUSE_LINES:], "...", *tail]
