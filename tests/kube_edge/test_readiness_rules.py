"""The readiness verdict over sequences of observed states, without a cluster.

Each test replays snapshots through `track` and `decide` the way `wait_ready` does, with
explicit observation times, so "persists past the tolerance" is a matter of the times fed in.
Object shapes follow the upstream ones (kubelet container states, scheduler conditions,
cluster-autoscaler events and status ConfigMap, LWS pod labels and owner references).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from llm_rollout.readiness_rules import (
    AT_ONCE,
    DEFAULT_TOLERANCES,
    NO_AUTOSCALER,
    Autoscaler,
    Crash,
    Failed,
    Incarnations,
    Nodes,
    Ready,
    Seen,
    Signal,
    Tolerances,
    Verdict,
    Waiting,
    autoscaler_from_configmap,
    crash_to_capture,
    decide,
    group_signals,
    observe_incarnations,
    pod_signals,
    track,
)
from llm_rollout.spec import RolloutSpec

NO_NODES = Nodes({}, frozenset())
TOL = Tolerances(
    image_pull_s=60,
    mount_s=120,
    node_not_ready_s=30,
    scale_up_wait_s=600,
    pod_create_s=90,
    group_recreations=3,
)
RATE_LIMITED = (
    'Failed to pull image "vllm/vllm-openai:v0.10.0": failed to copy: httpReadSeeker: failed '
    "open: unexpected status code https://registry-1.docker.io/v2/vllm/vllm-openai/manifests/"
    "sha256:0123: 429 Too Many Requests - Server message: toomanyrequests: You have reached "
    "your pull rate limit."
)
NOT_FOUND = (
    'Failed to pull image "vllm/vllm-openai:nope": rpc error: code = NotFound desc = failed to '
    'pull and unpack image "docker.io/vllm/vllm-openai:nope": failed to resolve reference '
    '"docker.io/vllm/vllm-openai:nope": docker.io/vllm/vllm-openai:nope: not found'
)


def _pod(
    name: str = "qwen-0",
    uid: str = "u1",
    *,
    node: str | None = "node-a",
    ready: bool = False,
    waiting: str | None = None,
    waiting_message: str = "",
    running: bool = False,
    restarts: int = 0,
    last_exit: int | None = None,
    unschedulable: str | None = None,
    owner: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if waiting:
        state = {"waiting": {"reason": waiting, "message": waiting_message}}
    elif running:
        state = {"running": {"startedAt": "2026-12-06T10:00:00Z"}}
    status: dict[str, Any] = {
        "phase": "Running" if running else "Pending",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [{"name": "vllm", "state": state, "restartCount": restarts}],
    }
    if last_exit is not None:
        status["containerStatuses"][0]["lastState"] = {
            "terminated": {"exitCode": last_exit, "reason": "Error"}
        }
    if unschedulable is not None:
        status["conditions"].append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
        status.pop("containerStatuses")
        node = None
    meta: dict[str, Any] = {"name": name, "namespace": "llm", "uid": uid, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": "StatefulSet", "name": owner, "controller": True}]
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": status}


def _event(reason: str, message: str, type_: str = "Warning") -> dict[str, Any]:
    return {"reason": reason, "message": message, "type": type_}


def _node(name: str, ready: str, reason: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason}]},
    }


@dataclass
class Replay:
    """Feeds snapshots (time, signals, what is missing) through track/decide."""

    tolerances: Tolerances = TOL
    seen: dict[str, Seen] | None = None

    def at(self, now_s: float, signals: Sequence[Signal], missing: Sequence[str] = ()) -> Verdict:
        self.seen = track(self.seen or {}, signals, now_s)
        return decide(signals, self.seen, self.tolerances, now_s, missing)


def _signals(pod: dict[str, Any], events: Sequence[dict[str, Any]] = (), **kw: Any) -> list[Signal]:
    return pod_signals(
        pod, list(events), kw.pop("nodes", NO_NODES), kw.pop("autoscaler", NO_AUTOSCALER)
    )


# --------------------------------------------------------------------------- image pulls


def test_a_rate_limited_pull_that_clears_inside_the_tolerance_passes() -> None:
    replay = Replay()
    pulling = _pod(waiting="ErrImagePull", waiting_message=RATE_LIMITED)
    backoff = _pod(waiting="ImagePullBackOff", waiting_message='Back-off pulling image "x"')
    first = replay.at(0, _signals(pulling), ["pod not Ready"])
    assert isinstance(first, Waiting)
    assert first.recheck_in_s == 60
    # The kubelet alternates the two reasons between retries: one signal, one clock.
    assert isinstance(replay.at(40, _signals(backoff), ["pod not Ready"]), Waiting)
    running = _pod(running=True, ready=True)
    assert isinstance(replay.at(55, _signals(running)), Ready)


def test_a_rate_limited_pull_that_persists_fails_after_the_tolerance() -> None:
    replay = Replay()
    pulling = _pod(waiting="ErrImagePull", waiting_message=RATE_LIMITED)
    assert isinstance(replay.at(0, _signals(pulling), ["x"]), Waiting)
    assert isinstance(replay.at(59, _signals(pulling), ["x"]), Waiting)
    verdict = replay.at(60, _signals(pulling), ["x"])
    assert isinstance(verdict, Failed)
    assert verdict.signal.reason == "ErrImagePull"
    assert verdict.signal.container == "vllm"
    assert verdict.persisted_s == 60


def test_a_pull_that_clears_and_comes_back_starts_a_new_clock() -> None:
    replay = Replay()
    pulling = _pod(waiting="ErrImagePull", waiting_message=RATE_LIMITED)
    replay.at(0, _signals(pulling), ["x"])
    replay.at(50, _signals(_pod(running=True)), ["x"])
    assert isinstance(replay.at(100, _signals(pulling), ["x"]), Waiting)
    assert isinstance(replay.at(160, _signals(pulling), ["x"]), Failed)


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ErrImagePull", NOT_FOUND),
        ("ImagePullBackOff", "pull access denied, repository does not exist"),
        ("InvalidImageName", 'Failed to apply default image tag "vllm:": invalid reference'),
        ("ErrImageNeverPull", 'Container image "vllm" is not present with pull policy of Never'),
        ("CreateContainerConfigError", 'secret "hf-token" not found'),
    ],
)
def test_an_image_or_config_that_cannot_appear_fails_at_once(reason: str, message: str) -> None:
    verdict = Replay().at(0, _signals(_pod(waiting=reason, waiting_message=message)), ["x"])
    assert isinstance(verdict, Failed)
    assert verdict.signal.reason == reason


# ------------------------------------------------------------------------------- mounts


def test_a_stale_failed_mount_event_does_not_fail_a_ready_pod() -> None:
    stale = _event("FailedMount", 'MountVolume.SetUp failed for volume "model" : timed out')
    pod = _pod(running=True, ready=True)
    assert _signals(pod, [stale]) == []
    assert isinstance(Replay(AT_ONCE).at(0, _signals(pod, [stale])), Ready)


def test_a_failed_mount_event_from_an_earlier_try_does_not_fail_a_started_pod() -> None:
    stale = _event("FailedMount", 'object "llm"/"kube-root-ca.crt" not registered')
    loading = _pod(running=True, ready=False)  # model still loading: not Ready, but started
    assert _signals(loading, [stale]) == []


def test_a_slow_mount_is_tolerated_and_a_persistent_one_fails() -> None:
    timed_out = _event(
        "FailedMount",
        "Unable to attach or mount volumes: unmounted volumes=[model]: timed out waiting for "
        "the condition",
    )
    creating = _pod(waiting="ContainerCreating")
    replay = Replay()
    assert isinstance(replay.at(0, _signals(creating, [timed_out]), ["x"]), Waiting)
    assert isinstance(replay.at(119, _signals(creating, [timed_out]), ["x"]), Waiting)
    failed = replay.at(120, _signals(creating, [timed_out]), ["x"])
    assert isinstance(failed, Failed) and failed.signal.reason == "FailedMount"
    # The same event sequence where the mount then succeeds: the container starts, ready.
    replay = Replay()
    replay.at(0, _signals(creating, [timed_out]), ["x"])
    assert isinstance(replay.at(100, _signals(_pod(running=True, ready=True), [timed_out])), Ready)


def test_a_missing_secret_for_a_volume_fails_at_once() -> None:
    missing = _event(
        "FailedMount",
        'MountVolume.SetUp failed for volume "pv" : kubernetes.io/csi: mounter.SetUpAt failed '
        'to get node publish secret: secrets "oss-secret" not found',
    )
    verdict = Replay().at(0, _signals(_pod(waiting="ContainerCreating"), [missing]), ["x"])
    assert isinstance(verdict, Failed) and "oss-secret" in verdict.signal.detail


# ---------------------------------------------------------------------------- scheduling

INSUFFICIENT = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."


def test_unschedulable_without_an_autoscaler_fails_at_once() -> None:
    verdict = Replay().at(0, _signals(_pod(unschedulable=INSUFFICIENT)), ["x"])
    assert isinstance(verdict, Failed)
    assert verdict.signal.reason == "Unschedulable"
    assert verdict.signal.detail == INSUFFICIENT


def test_triggered_scale_up_waits_and_a_node_added_mid_wait_lets_it_through() -> None:
    triggered = _event(
        "TriggeredScaleUp",
        "pod triggered scale-up: [{ack-gpu-pool 1->2 (max: 4)}]",
        type_="Normal",
    )
    pending = _pod(unschedulable=INSUFFICIENT)
    replay = Replay()
    first = replay.at(0, _signals(pending, [triggered]), ["x"])
    assert isinstance(first, Waiting)
    assert "ack-gpu-pool 1->2" in first.tolerated[0][0].detail
    assert isinstance(replay.at(300, _signals(pending, [triggered]), ["x"]), Waiting)
    # The new node registered; the scheduler binds the pod; it pulls, starts, turns Ready.
    scheduled = _pod(node="node-new", waiting="ContainerCreating")
    assert isinstance(replay.at(320, _signals(scheduled, [triggered]), ["x"]), Waiting)
    assert isinstance(
        replay.at(400, _signals(_pod(node="node-new", running=True, ready=True))), Ready
    )


def test_a_scale_up_that_never_lands_fails_after_scale_up_wait() -> None:
    triggered = _event("TriggeredScaleUp", "pod triggered scale-up: [{pool 1->2}]", "Normal")
    pending = _pod(unschedulable=INSUFFICIENT)
    replay = Replay()
    replay.at(0, _signals(pending, [triggered]), ["x"])
    verdict = replay.at(600, _signals(pending, [triggered]), ["x"])
    assert isinstance(verdict, Failed) and verdict.persisted_s == 600


def test_not_trigger_scale_up_fails_at_once_with_its_message() -> None:
    refused = _event(
        "NotTriggerScaleUp",
        "pod didn't trigger scale-up: 1 max node group size reached",
        type_="Normal",
    )
    present = Autoscaler(present=True, scale_up="NoActivity")
    verdict = Replay().at(
        0, _signals(_pod(unschedulable=INSUFFICIENT), [refused], autoscaler=present), ["x"]
    )
    assert isinstance(verdict, Failed)
    assert "max node group size reached" in verdict.signal.detail


def test_the_latest_autoscaler_event_decides() -> None:
    refused = _event("NotTriggerScaleUp", "pod didn't trigger scale-up: ", "Normal")
    triggered = _event("TriggeredScaleUp", "pod triggered scale-up: [{pool 1->2}]", "Normal")
    signal = _signals(_pod(unschedulable=INSUFFICIENT), [refused, triggered])[0]
    assert signal.bound == "scale_up"


def test_an_autoscaler_that_has_not_yet_spoken_about_the_pod_is_waited_for() -> None:
    present = Autoscaler(present=True, scale_up="InProgress")
    verdict = Replay().at(0, _signals(_pod(unschedulable=INSUFFICIENT), autoscaler=present), ["x"])
    assert isinstance(verdict, Waiting)
    assert "scale-up InProgress" in verdict.tolerated[0][0].detail


def test_the_status_configmap_in_both_upstream_formats() -> None:
    # cluster-autoscaler 1.30+: YAML (clusterstate/utils/status_test.yaml).
    yaml_status = {
        "data": {
            "status": 'time: "2026-12-06 10:00:00 +0000 UTC"\nautoscalerStatus: "Running"\n'
            'clusterWide:\n  scaleUp:\n    status: "InProgress"\n'
        }
    }
    assert autoscaler_from_configmap(yaml_status) == Autoscaler(True, "InProgress")
    # Older releases: text with "ScaleUp: <status>" lines (clusterstate/utils/status.go).
    text_status = {
        "data": {
            "status": "Cluster-autoscaler status at 2026-12-06 10:00:00 +0000 UTC:\n"
            "Cluster-wide:\n  Health:      Healthy (ready=3 unready=0)\n"
            "  ScaleUp:     NoActivity (ready=3 registered=3)\n"
        }
    }
    assert autoscaler_from_configmap(text_status) == Autoscaler(True, "NoActivity")
    assert autoscaler_from_configmap(None) == NO_AUTOSCALER


# --------------------------------------------------------------------------------- nodes


def test_a_node_briefly_not_ready_is_tolerated_and_one_that_stays_fails() -> None:
    pod = _pod(running=True)
    down = Nodes({"node-a": _node("node-a", "Unknown", "NodeStatusUnknown")}, frozenset())
    up = Nodes({"node-a": _node("node-a", "True")}, frozenset())
    replay = Replay()
    assert isinstance(replay.at(0, _signals(pod, nodes=down), ["x"]), Waiting)
    assert isinstance(replay.at(20, _signals(pod, nodes=up), ["x"]), Waiting)  # cleared
    assert isinstance(replay.at(40, _signals(pod, nodes=down), ["x"]), Waiting)
    verdict = replay.at(70, _signals(pod, nodes=down), ["x"])
    assert isinstance(verdict, Failed) and verdict.signal.reason == "NodeLost"
    assert "Ready=Unknown (NodeStatusUnknown)" in verdict.signal.detail


def test_a_deleted_node_fails_at_once() -> None:
    gone = Nodes({}, frozenset({"node-a"}))
    verdict = Replay().at(0, _signals(_pod(running=True), nodes=gone), ["x"])
    assert isinstance(verdict, Failed) and verdict.signal.detail == "Node node-a was deleted"


# ------------------------------------------------------------------- group recreation

LWS_LABELS = {
    "leaderworkerset.sigs.k8s.io/name": "qwen",
    "leaderworkerset.sigs.k8s.io/group-index": "0",
    "leaderworkerset.sigs.k8s.io/worker-index": "0",
    "leaderworkerset.sigs.k8s.io/template-revision-hash": "rev1",
}


def _leader(uid: str, **kw: Any) -> dict[str, Any]:
    return _pod("qwen-0", uid, owner="qwen", labels=LWS_LABELS, **kw)


def test_the_kth_group_recreation_is_a_crash_loop_with_the_captured_log() -> None:
    seen = Incarnations()
    replay = Replay()
    log = ("loading weights", "RuntimeError: Failed to connect to the Ray head at qwen-0:6379")
    for n, uid in enumerate(["u1", "u2", "u3"]):
        seen = observe_incarnations(seen, [_leader(uid, running=True)])
        crashed = _leader(uid, running=True, restarts=1, last_exit=1)
        found = crash_to_capture(crashed)
        assert found == ("vllm", 1, "Error", True)
        seen = Incarnations(seen.uids, Crash("qwen-0", "vllm", 1, "Error", log))
        # Two recreations so far at most: still waiting.
        assert group_signals(seen, TOL) == []
        assert isinstance(replay.at(float(n), group_signals(seen, TOL), ["x"]), Waiting)
    seen = observe_incarnations(seen, [_leader("u4", waiting="ContainerCreating")])
    signals = group_signals(seen, TOL)
    verdict = replay.at(3.0, signals, ["x"])
    assert isinstance(verdict, Failed)
    assert verdict.signal.reason == "GroupCrashLoop"
    assert verdict.signal.container == "vllm"
    assert verdict.signal.log_lines == log
    assert "recreated 3 times" in verdict.signal.detail and "exit code 1" in verdict.signal.detail


def test_a_rolled_revision_or_a_deployment_pod_is_not_a_recreation() -> None:
    rolled = {**LWS_LABELS, "leaderworkerset.sigs.k8s.io/template-revision-hash": "rev2"}
    seen = observe_incarnations(
        Incarnations(),
        [
            _leader("u1"),
            _pod("qwen-0", "u2", owner="qwen", labels=rolled),
            _pod("qwen-7d9f-abcde", "u3"),  # a Deployment's pod: new name each time
        ],
    )
    assert group_signals(seen, AT_ONCE) == []


def test_the_defaults_come_from_the_spec() -> None:
    rollout = RolloutSpec()
    assert DEFAULT_TOLERANCES.image_pull_s == rollout.image_pull_tolerance_s == 330
    assert DEFAULT_TOLERANCES.group_recreations == rollout.crash_loop_group_recreations == 3


def test_during_back_off_the_pull_error_comes_from_the_kubelet_event() -> None:
    backoff = _pod(waiting="ImagePullBackOff", waiting_message='Back-off pulling image "x"')
    missing = [_event("Failed", NOT_FOUND), _event("Failed", "Error: ErrImagePull")]
    [signal] = _signals(backoff, missing)
    assert signal.bound == "none" and signal.detail == NOT_FOUND
    limited = [_event("Failed", RATE_LIMITED), _event("Failed", "Error: ImagePullBackOff")]
    [signal] = _signals(backoff, limited)
    assert signal.bound == "image_pull" and "429 Too Many Requests" in signal.detail


def test_another_containers_pull_error_does_not_decide_this_ones() -> None:
    """The kubelet names the container in the event's fieldPath (kubernetes
    pkg/kubelet/container/ref.go); a sidecar's missing image does not make the engine's
    rate-limited pull final, nor the reverse."""
    backoff = _pod(waiting="ImagePullBackOff", waiting_message='Back-off pulling image "x"')

    def pull(message: str, container: str) -> dict[str, Any]:
        event = _event("Failed", message)
        event["involvedObject"] = {"kind": "Pod", "fieldPath": f"spec.containers{{{container}}}"}
        return event

    engine_limited, sidecar_missing = pull(RATE_LIMITED, "vllm"), pull(NOT_FOUND, "sidecar")
    [signal] = _signals(backoff, [engine_limited, sidecar_missing])
    assert signal.bound == "image_pull" and "429 Too Many Requests" in signal.detail
    engine_missing, sidecar_limited = pull(NOT_FOUND, "vllm"), pull(RATE_LIMITED, "sidecar")
    [signal] = _signals(backoff, [engine_missing, sidecar_limited])
    assert signal.bound == "none" and signal.detail == NOT_FOUND
