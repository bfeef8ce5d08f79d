"""Per-kind decisions the mutation run (bench/mutation.py, the "kinds" targets) found no test
for: readiness when a controller reports more updated pods or groups than are wanted, the
generation check of the custom kinds whose status may lack observedGeneration, and a
RayCluster's pod roll read from the API server. Plain functions, objects JSON round-tripped as
from the API server; no cluster.

Status shapes: Deployment (kubernetes pkg/controller/deployment/sync.go calculateStatus:
updatedReplicas counts the newest ReplicaSet's pods, which a scale-down leaves above
spec.replicas until they are gone), LeaderWorkerSet (lws api/leaderworkerset/v1
leaderworkerset_types.go), RoleBasedGroup (sgl-project/rbg api/workloads), RayCluster
(kuberay ray-operator/apis/ray/v1 raycluster_types.go).
"""

from __future__ import annotations

import json
from typing import Any

from llm_rollout.readiness import workload_missing
from llm_rollout.redeploy import RedeployRequest, expected_roll


def _wire(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _obj(kind: str, spec: dict[str, Any], status: dict[str, Any], **meta: Any) -> Any:
    return _wire(
        {
            "apiVersion": "x/v1",
            "kind": kind,
            "metadata": {"name": "w", "namespace": "llm", **meta},
            "spec": spec,
            "status": status,
        }
    )


AVAILABLE = [{"type": "Available", "status": "True"}]


def test_a_deployment_scaled_down_with_surplus_updated_pods_is_ready() -> None:
    status = {
        "observedGeneration": 2,
        "readyReplicas": 3,
        "updatedReplicas": 3,
        "conditions": AVAILABLE,
    }
    assert workload_missing(_obj("Deployment", {"replicas": 1}, status, generation=2)) == []
    short = {**status, "updatedReplicas": 0}
    assert workload_missing(_obj("Deployment", {"replicas": 1}, short, generation=2)) == [
        "updatedReplicas 0/1"
    ]


def test_a_leaderworkerset_with_more_groups_updated_than_wanted_is_ready() -> None:
    status = {
        "observedGeneration": 3,
        "readyReplicas": 2,
        "updatedReplicas": 3,
        "conditions": AVAILABLE,
    }
    assert workload_missing(_obj("LeaderWorkerSet", {"replicas": 2}, status, generation=3)) == []
    exact = {**status, "updatedReplicas": 2}
    assert workload_missing(_obj("LeaderWorkerSet", {"replicas": 2}, exact, generation=3)) == []
    short = {**status, "updatedReplicas": 1}
    assert workload_missing(_obj("LeaderWorkerSet", {"replicas": 2}, short, generation=3)) == [
        "updatedReplicas (groups) 1/2"
    ]


def test_a_leaderworkerset_generation_is_checked_only_where_its_status_reports_one() -> None:
    status = {"observedGeneration": 2, "readyReplicas": 1, "conditions": AVAILABLE}
    assert workload_missing(_obj("LeaderWorkerSet", {"replicas": 1}, status, generation=3)) == [
        "controller has not observed generation 3 (observed 2)"
    ]
    # An LWS version whose status has no observedGeneration: nothing to compare.
    older = {"readyReplicas": 1, "conditions": AVAILABLE}
    assert workload_missing(_obj("LeaderWorkerSet", {"replicas": 1}, older, generation=3)) == []


def test_a_rolebasedgroup_role_with_more_updated_than_wanted_is_ready() -> None:
    spec = {"roles": [{"name": "prefill"}]}
    role = {"name": "prefill", "replicas": 1, "readyReplicas": 2, "updatedReplicas": 2}
    status = {"conditions": [{"type": "Ready", "status": "True"}], "roleStatuses": [role]}
    assert workload_missing(_obj("RoleBasedGroup", spec, status)) == []
    status["roleStatuses"] = [{**role, "updatedReplicas": 1}]
    assert workload_missing(_obj("RoleBasedGroup", spec, status)) == []
    status["roleStatuses"] = [{**role, "updatedReplicas": 0}]
    assert workload_missing(_obj("RoleBasedGroup", spec, status)) == [
        "role prefill: updatedReplicas 0/1"
    ]


def test_a_rolebasedgroup_generation_is_checked_only_where_its_status_reports_one() -> None:
    spec = {"roles": [{"name": "decode"}]}
    role = {"name": "decode", "replicas": 1, "readyReplicas": 1}
    status = {
        "observedGeneration": 4,
        "conditions": [{"type": "Ready", "status": "True"}],
        "roleStatuses": [role],
    }
    assert workload_missing(_obj("RoleBasedGroup", spec, status, generation=5)) == [
        "controller has not observed generation 5 (observed 4)"
    ]
    del status["observedGeneration"]
    assert workload_missing(_obj("RoleBasedGroup", spec, status, generation=5)) == []


def test_a_raycluster_read_from_the_api_server_with_recreate_replaces_its_pods() -> None:
    # Decoded JSON, as the API server sends it: the strategy's value is a fresh string, so the
    # rule must compare values (KubeRay >= v1.6 spec.upgradeStrategy.type, ray-operator
    # apis/ray/v1 raycluster_types.go).
    recreate = _obj("RayCluster", {"upgradeStrategy": {"type": "Recreate"}}, {"state": "ready"})
    restart = RedeployRequest(service="s", namespace="llm", action="restart")
    roll = expected_roll(recreate, restart)
    assert roll is not None and roll.mode == "replace"
