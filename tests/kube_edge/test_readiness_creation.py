"""Pod-creation failures in the readiness verdict, without a cluster.

The events are shaped as kube-controller-manager and KubeRay record them: `FailedCreate` /
`SuccessfulCreate` on a ReplicaSet (kubernetes pkg/controller/controller_utils.go
RealPodControl.createPods, "Error creating: %v" / "Created pod: %v") and on a StatefulSet
(pkg/controller/statefulset/stateful_pod_control.go recordPodEvent, "create Pod %s in
StatefulSet %s failed error: %s"), `FailedToCreateWorkerPod` / `CreatedWorkerPod` on a
RayCluster (ray-operator controllers/ray/raycluster_controller.go). The refusals quote the API
server: apiserver pkg/admission/plugin/resourcequota/controller.go (quota), apimachinery
pkg/api/errors/errors.go NewInvalid (validation), apiserver
pkg/admission/plugin/webhook/errors/statuserror.go (webhook denial).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from llm_rollout.kinds import kind_of
from llm_rollout.readiness_rules import (
    DEFAULT_TOLERANCES,
    Failed,
    Ready,
    Seen,
    Signal,
    Waiting,
    creation_signals,
    decide,
    track,
)
from llm_rollout.spec import RolloutSpec

QUOTA = (
    'Error creating: pods "qwen-abc-7d9f8b6c5-" is forbidden: exceeded quota: pods, '
    "requested: pods=1, used: pods=1, limited: pods=1"
)
LABEL_TOO_LONG = (
    "create Pod qwen-40-characters-long-name-xxxxxxxxx-0-0 in StatefulSet "
    "qwen-40-characters-long-name-xxxxxxxxx-0 failed error: Pod "
    '"qwen-40-characters-long-name-xxxxxxxxx-0-0" is invalid: '
    'metadata.labels: Invalid value: "qwen-40-characters-long-name-xxxxxxxxx-0-1234567890": '
    "must be no more than 63 bytes"
)
WEBHOOK_DENIED = (
    'Error creating: admission webhook "validate.kyverno.svc" denied the request: '
    "image registry not allowed"
)
WEBHOOK_DOWN = (
    'Error creating: Internal error occurred: failed calling webhook "validate.kyverno.svc": '
    "failed to call webhook: connection refused"
)
QUOTA_NEEDS_LIMITS = (
    'Error creating: pods "qwen-abc-7d9f8b6c5-" is forbidden: failed quota: compute: '
    "must specify limits.cpu for: engine"
)
POD_SECURITY = (
    'Error creating: pods "qwen-abc-7d9f8b6c5-" is forbidden: violates PodSecurity '
    '"restricted:latest": privileged'
)


def _event(
    kind: str, name: str, reason: str, message: str, at: str, type_: str = "Warning"
) -> dict[str, Any]:
    return {
        "involvedObject": {"apiVersion": "apps/v1", "kind": kind, "namespace": "llm", "name": name},
        "reason": reason,
        "message": message,
        "type": type_,
        "lastTimestamp": at,
    }


def _deployment(name: str = "qwen-abc", *, failing: bool = True) -> dict[str, Any]:
    """A Deployment whose controller copied a ReplicaSet's ReplicaFailure condition
    (pkg/controller/deployment/progress.go getReplicaFailures), or none."""
    status: dict[str, Any] = {"conditions": []}
    if failing:
        status["conditions"].append(
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": QUOTA}
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "status": status,
    }


def _lws(name: str = "qwen-lws") -> dict[str, Any]:
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name},
    }


def _signals(workload: dict[str, Any], events: Sequence[dict[str, Any]]) -> list[Signal]:
    kind = kind_of(workload)
    assert kind is not None
    return creation_signals(kind.pod_creators(workload), events)


def _verdict(
    signals: Sequence[Signal], seen: dict[str, Seen], now_s: float
) -> tuple[dict[str, Seen], object]:
    tracked = track(seen, signals, now_s)
    missing = ["no pods yet"]
    return tracked, decide(signals, tracked, DEFAULT_TOLERANCES, now_s, missing)


def test_an_exceeded_quota_is_tolerated_then_fails_naming_the_replica_set_and_message() -> None:
    events = [_event("ReplicaSet", "qwen-abc-7d9f8b6c5", "FailedCreate", QUOTA, "T1")]
    signals = _signals(_deployment(), events)
    assert [(s.kind, s.pod, s.reason, s.bound) for s in signals] == [
        ("ReplicaSet", "qwen-abc-7d9f8b6c5", "FailedCreate", "pod_create")
    ]
    assert signals[0].detail == QUOTA
    bound_s = DEFAULT_TOLERANCES.pod_create_s
    seen, first = _verdict(signals, {}, 0.0)
    assert isinstance(first, Waiting)
    assert first.recheck_in_s == bound_s
    seen, before = _verdict(signals, seen, bound_s - 1)
    assert isinstance(before, Waiting)
    _, after = _verdict(signals, seen, bound_s)
    assert isinstance(after, Failed)
    assert after.signal.api_version == "apps/v1"
    assert after.persisted_s == bound_s


def test_a_quota_freed_inside_the_tolerance_clears_with_the_created_pod() -> None:
    failed = _event(
        "ReplicaSet", "qwen-abc-7d9f8b6c5", "FailedCreate", QUOTA, "2026-12-07T01:00:05Z"
    )
    created = _event(
        "ReplicaSet",
        "qwen-abc-7d9f8b6c5",
        "SuccessfulCreate",
        "Created pod: qwen-abc-7d9f8b6c5-x2x4q",
        "2026-12-07T01:00:40Z",
        "Normal",
    )
    seen, waiting = _verdict(_signals(_deployment(), [failed]), {}, 0.0)
    assert isinstance(waiting, Waiting)
    assert _signals(_deployment(), [failed, created]) == []
    _, ready = _verdict([], seen, 40.0)
    assert isinstance(ready, Waiting) and not ready.tolerated  # only the pods are missing now
    assert isinstance(decide([], {}, DEFAULT_TOLERANCES, 40.0, []), Ready)


def test_a_failure_after_an_earlier_success_is_current() -> None:
    """A second replica refused after the first was created (quota for one pod only)."""
    created = _event(
        "ReplicaSet",
        "qwen-abc-7d9f8b6c5",
        "SuccessfulCreate",
        "Created pod: a",
        "2026-12-07T01:00:01Z",
        "Normal",
    )
    failed = _event(
        "ReplicaSet", "qwen-abc-7d9f8b6c5", "FailedCreate", QUOTA, "2026-12-07T01:00:02Z"
    )
    assert [s.reason for s in _signals(_deployment(), [created, failed])] == ["FailedCreate"]


@pytest.mark.parametrize(
    "message", [LABEL_TOO_LONG, WEBHOOK_DENIED, QUOTA_NEEDS_LIMITS, POD_SECURITY]
)
def test_a_refusal_no_retry_can_change_fails_at_once(message: str) -> None:
    events = [_event("StatefulSet", "qwen-lws-0", "FailedCreate", message, "T1")]
    signals = _signals(_lws(), events)
    assert [s.bound for s in signals] == ["none"]
    _, verdict = _verdict(signals, {}, 0.0)
    assert isinstance(verdict, Failed)
    assert verdict.signal.kind == "StatefulSet"
    assert verdict.signal.pod == "qwen-lws-0"
    assert verdict.signal.detail == message


def test_within_one_second_a_final_refusal_outranks_one_that_may_clear() -> None:
    at = "2026-12-07T01:00:00Z"
    no_account = (
        'Error creating: pods "qwen-abc-7d9f8b6c5-" is forbidden: error looking up service '
        'account llm/default: serviceaccount "default" not found'
    )
    events = [
        _event("ReplicaSet", "qwen-abc-7d9f8b6c5", "FailedCreate", POD_SECURITY, at),
        _event("ReplicaSet", "qwen-abc-7d9f8b6c5", "FailedCreate", no_account, at),
    ]
    for ordered in (events, events[::-1]):
        assert [(s.detail, s.bound) for s in _signals(_deployment(), ordered)] == [
            (POD_SECURITY, "none")
        ]
    later = _event(
        "ReplicaSet", "qwen-abc-7d9f8b6c5", "FailedCreate", QUOTA, "2026-12-07T01:00:01Z"
    )
    assert [s.bound for s in _signals(_deployment(), [*events, later])] == ["pod_create"]


def test_a_webhook_that_cannot_be_called_is_tolerated() -> None:
    events = [_event("ReplicaSet", "qwen-abc-7d9f8b6c5", "FailedCreate", WEBHOOK_DOWN, "T1")]
    assert [s.bound for s in _signals(_deployment(), events)] == ["pod_create"]


def test_an_earlier_replica_sets_last_refusal_is_stale_without_replica_failure() -> None:
    """The ReplicaSet controller removes ReplicaFailure on its next good sync (e.g. once scaled
    to 0), while the refusal stays among the events for their TTL."""
    stale = _event(
        "ReplicaSet", "qwen-abc-6c5b4d9f8", "FailedCreate", QUOTA, "2026-12-07T00:30:00Z"
    )
    assert _signals(_deployment(failing=False), [stale]) == []
    assert len(_signals(_deployment(failing=True), [stale])) == 1


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("ReplicaSet", "qwen-abc-router-7d9f8b6c5"),  # another Deployment's ReplicaSet
        ("ReplicaSet", "qwen-abcd-7d9f8b6c5"),
        ("StatefulSet", "qwen-abc"),  # not a kind the Deployment creates pods with
        ("Pod", "qwen-abc-7d9f8b6c5-x2x4q"),
    ],
)
def test_events_of_objects_the_workload_does_not_own_are_ignored(kind: str, name: str) -> None:
    assert _signals(_deployment(), [_event(kind, name, "FailedCreate", QUOTA, "T1")]) == []


def test_lws_leader_and_worker_statefulsets_are_followed_and_nothing_else() -> None:
    leader = _event("StatefulSet", "qwen-lws", "FailedCreate", QUOTA, "T1")
    worker = _event("StatefulSet", "qwen-lws-1", "FailedCreate", QUOTA, "T1")
    other = _event("StatefulSet", "qwen-lws-router", "FailedCreate", QUOTA, "T1")
    assert sorted(s.pod for s in _signals(_lws(), [leader, worker, other])) == [
        "qwen-lws",
        "qwen-lws-1",
    ]


def test_rbg_v1alpha1_roles_workloads_are_followed() -> None:
    rbg = {
        "apiVersion": "workloads.x-k8s.io/v1alpha1",
        "kind": "RoleBasedGroup",
        "metadata": {"name": "pd"},
        "spec": {"roles": [{"name": "prefill"}, {"name": "router"}]},
    }
    events = [
        _event("StatefulSet", "pd-prefill", "FailedCreate", QUOTA, "T1"),
        _event("ReplicaSet", "pd-router-7d9f8b6c5", "FailedCreate", QUOTA, "T1"),
        _event("StatefulSet", "pd-decode", "FailedCreate", QUOTA, "T1"),  # not a role
    ]
    assert sorted(s.pod for s in _signals(rbg, events)) == ["pd-prefill", "pd-router-7d9f8b6c5"]


def test_rbg_v1alpha2_role_instances_are_followed_without_repeating_the_pod() -> None:
    """RBG v0.7's RoleInstance records the refusal on itself, the refused pod's JSON appended
    (sgl-project/rbg v0.7.0 pkg/reconciler/roleinstance/sync/instance_scale.go createOnePod);
    its `SuccessfulCreate` clears it; the set's own events (RoleInstances, not pods) do not."""
    rbg = {
        "apiVersion": "workloads.x-k8s.io/v1alpha2",
        "kind": "RoleBasedGroup",
        "metadata": {"name": "pd"},
        "spec": {"roles": [{"name": "prefill"}, {"name": "decode"}]},
    }
    refused = (
        'failed to create pod: pods "pd-prefill-0" is forbidden: exceeded quota: pods, '
        'requested: pods=1, used: pods=0, limited: pods=0, pod: {"metadata":{"name":'
        '"pd-prefill-0"},"spec":{"containers":[{"name":"engine","args":["--api-key","x"]}]}}'
    )
    events = [
        _event("RoleInstance", "pd-prefill-0", "FailedCreate", refused, "2026-12-07T01:00:01Z"),
        _event("RoleInstance", "pd-decode-0", "FailedCreate", refused, "2026-12-07T01:00:01Z"),
        _event(
            "RoleInstance",
            "pd-decode-0",
            "SuccessfulCreate",
            "succeed to create pod pd-decode-0",
            "2026-12-07T01:00:05Z",
            "Normal",
        ),
        _event("RoleInstanceSet", "pd-prefill", "FailedCreate", QUOTA, "2026-12-07T01:00:01Z"),
        _event("RoleInstance", "pd-router-0", "FailedCreate", refused, "2026-12-07T01:00:01Z"),
    ]
    (signal,) = _signals(rbg, events)
    assert (signal.kind, signal.pod, signal.reason) == (
        "RoleInstance",
        "pd-prefill-0",
        "FailedCreate",
    )
    assert signal.detail.endswith("limited: pods=0"), signal.detail
    assert "--api-key" not in signal.detail
    assert signal.bound == "pod_create"


def test_kuberay_head_and_worker_creation_are_told_apart() -> None:
    ray = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "qwen-ray"}}
    head_failed = _event(
        "RayCluster", "qwen-ray", "FailedToCreateHeadPod", QUOTA, "2026-12-07T01:00:01Z"
    )
    worker_created = _event(
        "RayCluster",
        "qwen-ray",
        "CreatedWorkerPod",
        "Created worker Pod llm/w",
        "2026-12-07T01:00:09Z",
        "Normal",
    )
    signals = _signals(ray, [head_failed, worker_created])
    assert [(s.kind, s.reason) for s in signals] == [("RayCluster", "FailedToCreateHeadPod")]
    head_created = _event(
        "RayCluster",
        "qwen-ray",
        "CreatedHeadPod",
        "Created head Pod llm/h",
        "2026-12-07T01:00:09Z",
        "Normal",
    )
    assert _signals(ray, [head_failed, worker_created, head_created]) == []


def test_the_tolerance_comes_from_the_rollout_spec() -> None:
    assert RolloutSpec().pod_create_tolerance_s == DEFAULT_TOLERANCES.pod_create_s
    assert RolloutSpec.model_fields["pod_create_tolerance_s"].description


# --- events about an earlier object of the same name ---------------------------------------------

CREATED = "2026-12-07T02:00:00Z"  # the current workload's creationTimestamp


def _current(workload: dict[str, Any], uid: str = "uid-now") -> dict[str, Any]:
    return {
        **workload,
        "metadata": {**workload["metadata"], "uid": uid, "creationTimestamp": CREATED},
    }


def _with_uid(event: dict[str, Any], uid: str) -> dict[str, Any]:
    return {**event, "involvedObject": {**event["involvedObject"], "uid": uid}}


@pytest.mark.parametrize(
    ("workload", "kind", "name"),
    [
        (_lws(), "StatefulSet", "qwen-lws-0"),  # a worker StatefulSet of an earlier LWS
        (_lws(), "StatefulSet", "qwen-lws"),
        (_deployment(), "ReplicaSet", "qwen-abc-7d9f8b6c5"),  # same name, same template hash
        (
            {
                "apiVersion": "workloads.x-k8s.io/v1alpha1",
                "kind": "RoleBasedGroup",
                "metadata": {"name": "pd"},
                "spec": {"roles": [{"name": "prefill"}]},
            },
            "StatefulSet",
            "pd-prefill",
        ),
    ],
)
def test_an_earlier_same_named_childs_last_refusal_does_not_fail_the_current_workload(
    workload: dict[str, Any], kind: str, name: str
) -> None:
    """The release was deployed before under the same name and its last pod create was refused
    (a refusal no retry changes, which would fail at once); the name's events outlive it. The
    current workload's children are created after it, so their events come later."""
    current = _current(workload)
    # Last seen before it, or repeated up to its creation second: first seen before it.
    for last in ("2026-12-07T01:59:30Z", CREATED):
        stale = _with_uid(_event(kind, name, "FailedCreate", WEBHOOK_DENIED, last), "uid-earlier")
        stale["firstTimestamp"] = "2026-12-07T01:59:30Z"
        assert _signals(current, [stale]) == []
        _, verdict = _verdict(_signals(current, [stale]), {}, 0.0)
        assert isinstance(verdict, Waiting) and not verdict.tolerated
    # The current child's own refusal, from the workload's creation second on, fails at once.
    for first in (CREATED, "2026-12-07T02:00:01Z"):
        now = _with_uid(_event(kind, name, "FailedCreate", WEBHOOK_DENIED, first), "uid-child")
        now["firstTimestamp"] = first
        _, verdict = _verdict(_signals(current, [now]), {}, 0.0)
        assert isinstance(verdict, Failed) and verdict.signal.pod == name


def test_a_quota_refusal_repeated_since_the_workloads_creation_is_current() -> None:
    """A refusal that started with the workload and repeats (client-go's recorder counts the
    repeats on one event, tools/record/events_cache.go eventObserve) is tolerated and then
    fails as before; an earlier object's event repeated until then is not."""
    lws = _current(_lws())
    repeated = _event("StatefulSet", "qwen-lws-0", "FailedCreate", QUOTA, "2026-12-07T02:03:00Z")
    repeated |= {"firstTimestamp": CREATED, "count": 9}
    signals = _signals(lws, [repeated])
    assert [(s.pod, s.bound) for s in signals] == [("qwen-lws-0", "pod_create")]
    bound_s = DEFAULT_TOLERANCES.pod_create_s
    seen, waiting = _verdict(signals, {}, 0.0)
    assert isinstance(waiting, Waiting)
    _, failed = _verdict(signals, seen, bound_s)
    assert isinstance(failed, Failed)
    earlier = {**repeated, "firstTimestamp": "2026-12-07T01:59:59Z", "lastTimestamp": CREATED}
    assert _signals(lws, [earlier]) == []


def test_an_earlier_raycluster_of_the_same_name_is_told_apart_by_uid() -> None:
    """KubeRay records its pod-create outcomes on the RayCluster itself; an earlier RayCluster
    of the name has another uid, whatever the times (the uid, not the clock, decides)."""
    ray = _current(
        {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "qwen-ray"}}
    )
    later = "2026-12-07T02:00:05Z"
    stale = _with_uid(
        _event("RayCluster", "qwen-ray", "FailedToCreateWorkerPod", WEBHOOK_DENIED, later),
        "uid-earlier",
    )
    assert _signals(ray, [stale]) == []
    current = _with_uid(stale, "uid-now")
    assert [(s.reason, s.bound) for s in _signals(ray, [stale, current])] == [
        ("FailedToCreateWorkerPod", "none")
    ]


def test_events_k8s_io_series_times_order_the_outcomes() -> None:
    """An events.k8s.io/v1 event (client-go tools/events, as KubeRay's master records them)
    has `eventTime` and, once repeated, `series.lastObservedTime`, both MicroTimes, and no
    `lastTimestamp`: the refusal repeated after the success is the latest outcome."""
    ray = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "qwen-ray"}}

    def series_event(reason: str, type_: str, at: str, last: str | None) -> dict[str, Any]:
        event = _event("RayCluster", "qwen-ray", reason, QUOTA, "", type_)
        event.pop("lastTimestamp")
        event["eventTime"] = at
        if last is not None:
            event["series"] = {"count": 2, "lastObservedTime": last}
        return event

    failed = series_event("FailedToCreateHeadPod", "Warning", "2026-12-07T02:00:00.100000Z", None)
    created = series_event("CreatedHeadPod", "Normal", "2026-12-07T02:00:03.500000Z", None)
    assert _signals(ray, [failed, created]) == []
    repeated = series_event(
        "FailedToCreateHeadPod",
        "Warning",
        "2026-12-07T02:00:00.100000Z",
        "2026-12-07T02:00:09.250000Z",
    )
    assert [s.reason for s in _signals(ray, [repeated, created])] == ["FailedToCreateHeadPod"]
