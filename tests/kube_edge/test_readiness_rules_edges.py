"""Edges of the readiness rules that the scenario tests in test_readiness_rules.py leave open:
which field values count (the condition and reason values the kubelet, scheduler and
cluster-autoscaler actually write), several containers in one pod, pods without some fields,
and the exact details and keys of signals.

Every object goes through a JSON round trip first (`_wire`), as it does from the API server:
a rule must compare values, not rely on identical string objects.

Value sets used, upstream: PodScheduled=False reasons Unschedulable / SchedulingGated
(k8s.io/api core/v1 types.go PodReasonUnschedulable, PodReasonSchedulingGated); container
terminated reasons OOMKilled / Error / StartError (containerd's CRI); pod phases
(core/v1 PodPhase); node Ready True / False / Unknown (core/v1 ConditionStatus).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_rollout.readiness_rules import (
    GROUP_CRASH_LOOP,
    NO_AUTOSCALER,
    Autoscaler,
    Crash,
    Failed,
    Incarnations,
    Nodes,
    Ready,
    Signal,
    Waiting,
    autoscaler_from_configmap,
    crash_to_capture,
    decide,
    group_signals,
    observe_incarnations,
    pod_signals,
    stable_slot,
    track,
)
from tests.kube_edge.test_readiness_rules import TOL

RATE_LIMITED = 'Failed to pull image "vllm/vllm-openai:v1": 429 Too Many Requests'
MOUNT_TIMEOUT = 'MountVolume.SetUp failed for volume "model" : mount timed out'
RUNNING = {"running": {"startedAt": "2026-12-06T10:00:00Z"}}


def _wire(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _node(name: str, ready: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


HEALTHY = Nodes(_wire({"node-a": _node("node-a", "True")}), frozenset())


def _pod(
    containers: list[dict[str, Any]] | None = None,
    *,
    node: str | None = "node-a",
    conditions: list[dict[str, Any]] | None = None,
    uid: str | None = "u1",
    **status: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "qwen-0", "namespace": "llm"}
    if uid is not None:
        meta["uid"] = uid
    body: dict[str, Any] = {"conditions": conditions or [], **status}
    if containers is not None:
        body["containerStatuses"] = containers
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": body}


def _cs(name: str = "vllm", restarts: int = 0, **fields: Any) -> dict[str, Any]:
    return {"name": name, "restartCount": restarts, **fields}


def _waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": message}}


def _event(reason: str, message: str) -> dict[str, Any]:
    return {"reason": reason, "message": message}


def _signals(
    pod: dict[str, Any],
    events: list[dict[str, Any]] | None = None,
    nodes: Nodes = HEALTHY,
    autoscaler: Autoscaler = NO_AUTOSCALER,
) -> list[Signal]:
    return pod_signals(_wire(pod), _wire(events or []), nodes, autoscaler)


def _reasons(signals: list[Signal]) -> list[tuple[str, str | None]]:
    return [(s.reason, s.container) for s in signals]


# ------------------------------------------------------------------------------- started


MOUNT = [_event("FailedMount", MOUNT_TIMEOUT)]


@pytest.mark.parametrize(
    "container",
    [
        _cs(state=_waiting("CrashLoopBackOff"), lastState={"terminated": {"exitCode": 1}}),
        _cs(restarts=1, state=_waiting("ContainerCreating")),
        _cs(state={"terminated": {"exitCode": 0, "reason": "Completed"}}),
    ],
    ids=["last-terminated", "restarted", "terminated"],
)
def test_a_container_that_ran_means_volumes_were_mounted(container: dict[str, Any]) -> None:
    # Its mount events are from an earlier try; only the container's own state counts.
    signals = _signals(_pod([container]), MOUNT)
    assert "FailedMount" not in [s.reason for s in signals]


def test_a_running_init_container_means_volumes_were_mounted() -> None:
    pod = _pod([_cs(state=_waiting("PodInitializing"))])
    pod["status"]["initContainerStatuses"] = [_cs("fetch", state=RUNNING)]
    assert _signals(pod, MOUNT) == []


def test_a_pod_that_never_started_reports_its_mount_event() -> None:
    pod = _pod([_cs(state=_waiting("ContainerCreating"))])
    (signal,) = _signals(pod, MOUNT)
    assert (signal.key, signal.reason, signal.detail, signal.bound) == (
        "mount:u1",
        "FailedMount",
        MOUNT_TIMEOUT,
        "mount",
    )


@pytest.mark.parametrize(("ready", "reported"), [("True", False), ("Unknown", True)])
def test_only_ready_true_hides_a_mount_event(ready: str, reported: bool) -> None:
    pod = _pod(conditions=[{"type": "Ready", "status": ready}])
    assert bool(_signals(pod, MOUNT)) is reported


# ------------------------------------------------------------------------------- nodes


@pytest.mark.parametrize("status", ["False", "Unknown"])
def test_a_node_ready_false_or_unknown_is_a_lost_node(status: str) -> None:
    nodes = Nodes(_wire({"node-a": _node("node-a", status)}), frozenset())
    (signal,) = _signals(_pod([_cs(state=RUNNING)]), nodes=nodes)
    assert (signal.reason, signal.key, signal.bound) == ("NodeLost", "node:node-a:u1", "node")
    assert signal.detail == f"Node node-a is not ready: Ready={status}"


def test_a_healthy_node_or_one_not_seen_yet_is_no_signal() -> None:
    running = _pod([_cs(state=RUNNING)], conditions=[{"type": "Ready", "status": "True"}])
    assert _signals(running) == []
    assert _signals(running, nodes=Nodes({}, frozenset())) == []


# ------------------------------------------------------------------------------- pulls


def test_a_final_registry_answer_wins_over_an_older_retryable_event() -> None:
    denied = "pull access denied for vllm/nope, repository does not exist"
    pod = _pod([_cs(state=_waiting("ImagePullBackOff", denied))])
    (signal,) = _signals(pod, [_event("Failed", RATE_LIMITED)])
    assert (signal.detail, signal.bound) == (denied, "none")


def test_only_the_kubelets_failed_event_explains_a_back_off() -> None:
    # Other reasons carrying a pull message (before and after "Failed" in sort order) are not
    # the kubelet's pull failure; the newest Failed event is.
    pod = _pod([_cs(state=_waiting("ImagePullBackOff", 'Back-off pulling image "x"'))])
    events = [
        _event("Failed", RATE_LIMITED),
        _event("BackOff", 'Failed to pull image "x": not found'),
        _event("Pulling", 'Failed to pull image "x": not found'),
    ]
    (signal,) = _signals(pod, events)
    assert (signal.detail, signal.bound, signal.key) == (
        RATE_LIMITED,
        "image_pull",
        "image:u1:vllm",
    )


# -------------------------------------------------------------------- several containers


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (_cs("a", state=_waiting("ImagePullBackOff", RATE_LIMITED)), "ImagePullBackOff"),
        (
            _cs("a", state=_waiting("CreateContainerConfigError", "no secret")),
            "CreateContainerConfigError",
        ),
        (_cs("a", lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}}), "OOMKilled"),
    ],
)
def test_every_container_of_a_pod_is_judged(first: dict[str, Any], reason: str) -> None:
    second = _cs("b", restarts=4, state=_waiting("CrashLoopBackOff", "back-off 40s"))
    assert _reasons(_signals(_pod([first, second]))) == [(reason, "a"), ("CrashLoopBackOff", "b")]


@pytest.mark.parametrize("exit_reason", ["Error", "StartError"])
def test_a_crash_loop_after_another_exit_is_no_oom(exit_reason: str) -> None:
    cs = _cs(
        restarts=3,
        state=_waiting("CrashLoopBackOff", "back-off 40s restarting failed container"),
        lastState={"terminated": {"reason": exit_reason, "exitCode": 1}},
    )
    (signal,) = _signals(_pod([cs]))
    assert (signal.reason, signal.detail) == (
        "CrashLoopBackOff",
        "back-off 40s restarting failed container",
    )


def test_an_oom_kill_names_its_exit_code() -> None:
    cs = _cs(state={"terminated": {"reason": "OOMKilled", "exitCode": 137}})
    (signal,) = _signals(_pod([cs]))
    assert (signal.key, signal.detail) == ("oom:u1:vllm", "container vllm OOMKilled (exit 137)")


def test_a_container_still_initializing_is_no_signal() -> None:
    assert _signals(_pod([_cs(state=_waiting("PodInitializing"))])) == []


# ------------------------------------------------------------------------------ scheduling


def test_a_gated_pod_is_not_unschedulable() -> None:
    gated = [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]
    assert _signals(_pod(node=None, conditions=gated)) == []


def test_an_unbound_pod_without_condition_or_event_has_no_signal() -> None:
    assert _signals(_pod(node=None)) == []


def test_an_unbound_pod_is_explained_by_its_failed_scheduling_event() -> None:
    # Newer events of other reasons (both sides of "FailedScheduling" in sort order) do not
    # replace the scheduler's message.
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    events = [
        _event("FailedScheduling", message),
        _event("TriggeredScaleUp", "pod triggered scale-up: [{gpu-pool 1->2 (max: 4)}]"),
        _event("FailedMount", MOUNT_TIMEOUT),
    ]
    signals = _signals(_pod(node=None), events)
    (sched,) = [s for s in signals if s.reason == "Unschedulable"]
    assert sched.key == "sched:u1"
    assert sched.detail == (
        f"{message}; cluster-autoscaler: pod triggered scale-up: [{{gpu-pool 1->2 (max: 4)}}]"
    )
    assert sched.bound == "scale_up"


def test_a_bound_pod_ignores_an_old_failed_scheduling_event() -> None:
    pod = _pod([_cs(state=RUNNING)], conditions=[{"type": "Ready", "status": "False"}])
    assert _signals(pod, [_event("FailedScheduling", "0/4 nodes are available")]) == []


def test_unschedulable_condition_without_autoscaler_events_or_status() -> None:
    cond = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4"}
    ]
    (signal,) = _signals(_pod(node=None, conditions=cond))
    assert (signal.detail, signal.bound) == ("0/4", "none")
    (signal,) = _signals(_pod(node=None, conditions=cond), autoscaler=Autoscaler(True, ""))
    assert (signal.detail, signal.bound) == ("0/4; cluster-autoscaler present", "scale_up")
    not_triggered = [_event("NotTriggerScaleUp", "")]
    (signal,) = _signals(_pod(node=None, conditions=cond), not_triggered)
    assert (signal.detail, signal.bound) == ("0/4; cluster-autoscaler: no scale-up", "none")


# --------------------------------------------------------------------------- failed pods


def test_a_failed_pod_reports_its_reason_and_message() -> None:
    evicted = _pod(phase="Failed", reason="Evicted", message="low on ephemeral storage")
    (signal,) = _signals(evicted)
    assert (signal.key, signal.reason, signal.detail, signal.bound) == (
        "failed:u1",
        "Evicted",
        "low on ephemeral storage",
        "none",
    )
    (signal,) = _signals(_pod(phase="Failed"))
    assert (signal.reason, signal.detail) == ("PodFailed", "")


def test_a_pod_without_phase_or_uid_is_keyed_by_name() -> None:
    pod = _pod([_cs(state=_waiting("ErrImageNeverPull", "never pull"))], uid=None)
    (signal,) = _signals(pod)
    assert signal.key == "config:qwen-0:vllm"


# ---------------------------------------------------------------------- group recreation


def _owned(kind: str, uid: str, revision: str = "r1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": "qwen-0",
            "uid": uid,
            "ownerReferences": [{"kind": kind, "name": "qwen"}],
            "labels": {"controller-revision-hash": revision},
        }
    }


@pytest.mark.parametrize("kind", ["ReplicaSet", "Workload"])
def test_only_statefulset_pods_have_a_stable_slot(kind: str) -> None:
    assert stable_slot(_wire(_owned(kind, "u1"))) is None
    assert stable_slot(_wire(_owned("StatefulSet", "u1"))) == "qwen-0@r1"


def test_incarnations_skip_unowned_and_uidless_pods_and_keep_counting() -> None:
    uidless = _owned("StatefulSet", "")
    pods = [_owned("ReplicaSet", "x1"), uidless, _owned("StatefulSet", "u1")]
    seen = observe_incarnations(Incarnations(), _wire(pods))
    assert seen.uids == {"qwen-0@r1": ["u1"]}
    seen = observe_incarnations(
        seen, _wire([_owned("StatefulSet", "u1"), _owned("StatefulSet", "u2")])
    )
    assert seen.uids == {"qwen-0@r1": ["u1", "u2"]}


def test_more_recreations_than_the_tolerance_still_fail() -> None:
    seen = Incarnations({"qwen-0@r1": ["u1", "u2", "u3", "u4", "u5"]})
    (signal,) = group_signals(seen, TOL)
    assert signal.reason == GROUP_CRASH_LOOP
    assert signal.detail.startswith("pod qwen-0 was recreated 4 times")
    crash = Crash("qwen-0", "vllm", None, "Error")
    (signal,) = group_signals(Incarnations(seen.uids, crash), TOL)
    assert signal.detail.endswith("last crash: container vllm of pod qwen-0 Error")


@pytest.mark.parametrize(
    ("cs", "captured"),
    [
        (
            _cs(restarts=2, lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}}),
            ("vllm", 137, "OOMKilled", True),
        ),
        (_cs(restarts=1, lastState={"terminated": {"exitCode": 1}}), ("vllm", 1, "Error", True)),
        (
            _cs(restarts=1, state={"terminated": {"reason": "Error", "exitCode": 2}}),
            ("vllm", 2, "Error", False),
        ),
        (
            _cs(state={"terminated": {"reason": "StartError", "exitCode": 128}}),
            ("vllm", 128, "StartError", False),
        ),
        (_cs(state={"terminated": {"exitCode": 3}}), ("vllm", 3, "Error", False)),
        (_cs(state=RUNNING, lastState={"terminated": {"exitCode": 9}}), None),
        (_cs(state={"terminated": {"exitCode": 0, "reason": "Completed"}}), None),
        (_cs(state=RUNNING), None),
    ],
)
def test_the_exit_to_capture(cs: dict[str, Any], captured: tuple[Any, ...] | None) -> None:
    assert crash_to_capture(_wire(_pod([cs]))) == captured


def test_a_container_stopped_by_its_pods_deletion_is_not_the_crash() -> None:
    """Seen on the real cluster: LWS deletes the group after the worker's restart, and the
    leader's container ends with 137 after its grace period; the worker's exit is the cause."""
    killed = _cs(state={"terminated": {"reason": "Error", "exitCode": 137}})
    deleting = _pod([killed])
    deleting["metadata"]["deletionTimestamp"] = "2026-12-06T22:20:00Z"
    assert crash_to_capture(_wire(deleting)) is None
    # The restart that made the controller delete the pod still counts while it goes.
    restarted = _cs(restarts=1, lastState={"terminated": {"exitCode": 1}})
    deleting["status"]["containerStatuses"] = [restarted]
    assert crash_to_capture(_wire(deleting)) == ("vllm", 1, "Error", True)


# ------------------------------------------------------------------------------ verdict


def test_a_signal_first_seen_long_ago_fails_even_if_observed_late() -> None:
    pull = Signal("image:u1:vllm", "ErrImagePull", "qwen-0", "vllm", RATE_LIMITED, "image_pull")
    seen = track({}, [pull], 0.0)
    seen = track(seen, [pull], 100.0)
    verdict = decide([pull], seen, TOL, 100.0, ["x"])
    assert verdict == Failed(pull, 100.0)


def test_recheck_is_when_the_first_tolerated_signal_runs_out() -> None:
    pull = Signal("image:u1:vllm", "ErrImagePull", "qwen-0", "vllm", RATE_LIMITED, "image_pull")
    mount = Signal("mount:u2", "FailedMount", "qwen-1", None, MOUNT_TIMEOUT, "mount")
    seen = track({}, [pull, mount], 0.0)
    verdict = decide([pull, mount], track(seen, [pull, mount], 45.0), TOL, 45.0, [])
    assert isinstance(verdict, Waiting)
    assert verdict.recheck_in_s == 15.0
    assert [(s.key, e, b) for s, e, b in verdict.tolerated] == [
        ("image:u1:vllm", 45.0, 60.0),
        ("mount:u2", 45.0, 120.0),
    ]
    assert isinstance(decide([], {}, TOL, 45.0, []), Ready)


def test_an_autoscaler_status_that_is_not_yaml_is_read_as_text() -> None:
    text = (
        "Cluster-autoscaler status at 2026-12-06:\nCluster-wide:\n"
        "  Health:      Healthy (ready=3)\n  ScaleUp:     Backoff (ready=3 registered=3)\n"
        "  key: [unclosed\n"
    )
    assert autoscaler_from_configmap(_wire({"data": {"status": text}})) == Autoscaler(
        True, "Backoff"
    )
