"""Release decisions that need no cluster: when a baked pod stops counting as serving, the first
problem a bake reports, and the object shapes re-applied to the stable Service.

Pod shapes follow the kubelet's container states (k8s.io/api core/v1 types.go: ContainerState
waiting/running/terminated, lastState, restartCount, the Ready pod condition)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_rollout.kube.resources import ObjectRef
from llm_rollout.release.bake import _bake_problem, _pod_name, _restarts, pod_degradation
from llm_rollout.release.inventory import ordered_refs
from llm_rollout.release.services import _applyable
from llm_rollout.release.writing import namespace_object, with_annotations
from llm_rollout.vocabulary import release_selector

WORKLOAD = ObjectRef("apps/v1", "Deployment", "llm", "qwen-r2")


def _pod(
    name: str = "p0",
    *,
    containers: list[dict[str, Any]] | None = None,
    ready: str | None = "True",
    reason: str | None = None,
    **meta: Any,
) -> dict[str, Any]:
    conditions = []
    if ready is not None:
        condition = {"type": "Ready", "status": ready}
        if reason:
            condition["reason"] = reason
        conditions = [{"type": "PodScheduled", "status": "False"}, condition]
    statuses = containers if containers is not None else [_running("engine")]
    return {
        "metadata": {"name": name, "namespace": "llm", **meta},
        "status": {"containerStatuses": statuses, "conditions": conditions},
    }


def _running(name: str, restarts: int = 0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "restartCount": restarts, "state": {"running": {}}, **extra}


def _workload(ready: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "qwen-r2", "namespace": "llm", "generation": 1},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 1,
            "readyReplicas": ready,
            "updatedReplicas": 1,
            "conditions": [{"type": "Available", "status": "True"}],
        },
    }


# --- pod_degradation --------------------------------------------------------------------------


def test_a_ready_running_pod_still_serves() -> None:
    pod = _pod(containers=[_running("engine", restarts=2), _running("sidecar")])
    assert pod_degradation(pod, {"engine": 2}) is None


def test_a_pod_being_deleted_is_degraded() -> None:
    pod = _pod(deletionTimestamp="2026-12-06T18:00:00Z")
    assert pod_degradation(pod, {}) == "Pod llm/p0 is being deleted"


def test_a_restart_after_the_baseline_names_the_last_termination() -> None:
    last = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
    pod = _pod(containers=[_running("sidecar"), _running("engine", restarts=3, lastState=last)])
    assert pod_degradation(pod, {"engine": 2}) == (
        "Pod llm/p0 container engine exited (OOMKilled, exit code 137)"
    )
    # The baseline is per container: the same count is no restart.
    assert pod_degradation(pod, {"engine": 3}) is None
    # A container missing from the baseline started at 0 restarts.
    assert pod_degradation(pod, {}) == pod_degradation(pod, {"engine": 2})


def test_a_terminated_container_is_degraded_even_without_restart() -> None:
    state = {"terminated": {"reason": "Error", "exitCode": 1}}
    pod = _pod(containers=[{"name": "engine", "restartCount": 0, "state": state}])
    assert pod_degradation(pod, {}) == "Pod llm/p0 container engine exited (Error, exit code 1)"


def test_a_restart_without_recorded_termination_says_terminated() -> None:
    pod = _pod(containers=[_running("engine", restarts=1)])
    assert pod_degradation(pod, {"engine": 0}) == (
        "Pod llm/p0 container engine exited (terminated, exit code None)"
    )


def test_waiting_for_a_bad_reason_is_degraded_with_its_message() -> None:
    waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}
    pod = _pod(containers=[{"name": "engine", "restartCount": 0, "state": waiting}])
    assert pod_degradation(pod, {}) == (
        "Pod llm/p0 container engine: CrashLoopBackOff (back-off 10s)"
    )
    bare = {"waiting": {"reason": "ImagePullBackOff"}}
    pod = _pod(containers=[{"name": "engine", "restartCount": 0, "state": bare}])
    assert pod_degradation(pod, {}) == "Pod llm/p0 container engine: ImagePullBackOff"


@pytest.mark.parametrize("reason", ["ContainerCreating", "PodInitializing"])
def test_a_container_still_starting_is_judged_by_the_ready_condition(reason: str) -> None:
    waiting = {"waiting": {"reason": reason}}
    containers = [{"name": "engine", "restartCount": 0, "state": waiting}]
    assert pod_degradation(_pod(containers=containers), {}) is None
    not_ready = _pod(containers=containers, ready="False", reason="ContainersNotReady")
    assert pod_degradation(not_ready, {}) == "Pod llm/p0 not Ready (ContainersNotReady)"


def test_a_pod_not_ready_without_reason_says_so() -> None:
    assert pod_degradation(_pod(ready="False"), {}) == "Pod llm/p0 not Ready (no reason given)"
    # No Ready condition reported at all is not a degradation of a pod that was ready.
    assert pod_degradation(_pod(ready=None), {}) is None


def test_values_as_read_from_the_api_server() -> None:
    # A JSON round trip, as from the API server: values are compared, not string objects.
    ready = json.loads(json.dumps(_pod()))
    assert pod_degradation(ready, {}) is None
    unknown = json.loads(json.dumps(_pod(ready="Unknown", reason="NodeLost")))
    assert pod_degradation(unknown, {}) == "Pod llm/p0 not Ready (NodeLost)"


def test_only_the_ready_condition_decides() -> None:
    # Other conditions (a readiness gate's among them: the kubelet folds those into Ready)
    # are not read on their own.
    pod = _pod()
    pod["status"]["conditions"].append({"type": "target-health.example.com/lb", "status": "False"})
    assert pod_degradation(pod, {}) is None


def test_a_restart_count_below_the_baseline_is_no_new_restart() -> None:
    # The baseline is what the pod had when the bake began; only a count above it is news.
    pod = _pod(containers=[_running("engine", restarts=1)])
    assert pod_degradation(pod, {"engine": 3}) is None


def test_restart_baseline_and_pod_name() -> None:
    pod = _pod(containers=[_running("engine", restarts=2), {"name": "sidecar"}])
    assert _restarts(pod) == {"engine": 2, "sidecar": 0}
    assert _restarts({"metadata": {"name": "p"}}) == {}
    assert _pod_name(pod) == "p0"
    assert _pod_name({}) == "None"


# --- _bake_problem ----------------------------------------------------------------------------


def test_bake_problem_order_deleted_gone_empty_pod_workload() -> None:
    ok = {"p0": _pod("p0"), "p1": _pod("p1")}
    baseline: dict[str, dict[str, int]] = {"p0": {}, "p1": {}}
    assert _bake_problem(WORKLOAD, _workload(), ok, baseline) is None
    assert _bake_problem(WORKLOAD, None, ok, baseline) == f"{WORKLOAD} was deleted"
    gone = {"p1": _pod("p1")}
    assert _bake_problem(WORKLOAD, _workload(), gone, {"p0": {}, "p1": {}, "p2": {}}) == (
        "Pod llm/p0 disappeared"
    )
    assert _bake_problem(WORKLOAD, _workload(), {}, {}) == f"{WORKLOAD} has no pods"
    # A new pod (not in the baseline) is judged from 0 restarts; the first problem by name.
    bad = {
        "p1": _pod("p1", ready="False", reason="B"),
        "p0": _pod("p0", ready="False", reason="A"),
        "p2": _pod("p2", containers=[_running("engine", restarts=1)]),
    }
    assert _bake_problem(WORKLOAD, _workload(), bad, {"p0": {}, "p1": {}}) == (
        "Pod llm/p0 not Ready (A)"
    )
    restarted = {"p0": _pod("p0", containers=[_running("engine", restarts=1)])}
    assert _bake_problem(WORKLOAD, _workload(), restarted, {"p0": {"engine": 1}}) is None
    assert "container engine exited" in str(_bake_problem(WORKLOAD, _workload(), restarted, {}))
    assert _bake_problem(WORKLOAD, _workload(ready=0), ok, baseline) == (
        f"{WORKLOAD}: readyReplicas 0/1"
    )


# --- shapes -----------------------------------------------------------------------------------


def test_applyable_keeps_what_we_own_and_drops_server_fields() -> None:
    read_back: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "qwen",
            "namespace": "llm",
            "labels": {"a": "1"},
            "annotations": {"b": "2"},
            "uid": "u",
            "resourceVersion": "9",
        },
        "spec": {
            "selector": {"release": "r1"},
            "ports": [{"port": 80}],
            "clusterIP": "10.0.0.1",
            "clusterIPs": ["10.0.0.1"],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
        },
        "status": {"loadBalancer": {}},
    }
    assert _applyable(read_back) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "qwen",
            "namespace": "llm",
            "labels": {"a": "1"},
            "annotations": {"b": "2"},
        },
        "spec": {"selector": {"release": "r1"}, "ports": [{"port": 80}]},
    }
    assert read_back["spec"]["clusterIP"] == "10.0.0.1"  # input untouched
    bare = _applyable({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}})
    assert bare["metadata"] == {"name": "s", "namespace": None, "labels": {}, "annotations": {}}
    assert bare["spec"] == {}


def test_with_annotations_merges_into_a_copy() -> None:
    obj: dict[str, Any] = {
        "kind": "Deployment",
        "metadata": {"name": "w", "annotations": {"a": "1", "b": "1"}},
    }
    merged = with_annotations(obj, {"b": "2", "c": "3"})
    assert merged["metadata"] == {"name": "w", "annotations": {"a": "1", "b": "2", "c": "3"}}
    assert obj["metadata"]["annotations"] == {"a": "1", "b": "1"}
    assert with_annotations({"kind": "X"}, {"c": "3"})["metadata"] == {"annotations": {"c": "3"}}


def test_selectors_names_and_namespace() -> None:
    assert release_selector("qwen", "r2") == (
        "app.kubernetes.io/part-of=qwen,llm-rollout.io/release=r2"
    )
    assert namespace_object("llm") == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "llm", "labels": {"app.kubernetes.io/managed-by": "llm-rollout"}},
    }
    objs = [_workload(), {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}]
    assert ordered_refs(objs) == [str(WORKLOAD), str(ObjectRef("v1", "Service", None, "s"))]
