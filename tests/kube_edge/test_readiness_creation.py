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

from llm_rollout.kinds import kind_of, rendered_kinds
from llm_rollout.rbac import render_worker_rbac
from llm_rollout.readiness_rules import (
    DEFAULT_TOLERANCES,
    Failed,
    Ready,
    Seen,
    Signal,
    Waiting,
    creation_signals,
    decide,
    descendants,
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


WORKLOAD_UID = "uid-now"  # the current workload's
CHILD_UID = "uid-child"  # an object it controls


def _event(
    kind: str,
    name: str,
    reason: str,
    message: str,
    at: str,
    type_: str = "Warning",
    uid: str = CHILD_UID,
) -> dict[str, Any]:
    return {
        "involvedObject": {
            "apiVersion": "apps/v1",
            "kind": kind,
            "namespace": "llm",
            "name": name,
            "uid": uid,
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "lastTimestamp": at,
    }


def _owned(uid: str, owner: str | None, created: str = "2026-12-07T02:00:00Z") -> dict[str, Any]:
    """An object as readiness holds it: its uid, creation and controller reference (none for
    an orphan)."""
    refs = [{"uid": owner, "controller": True}] if owner else []
    return {"metadata": {"uid": uid, "creationTimestamp": created, "ownerReferences": refs}}


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
        "metadata": {"name": name, "uid": WORKLOAD_UID},
        "status": status,
    }


def _lws(name: str = "qwen-lws") -> dict[str, Any]:
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "uid": WORKLOAD_UID},
    }


def _signals(
    workload: dict[str, Any],
    events: Sequence[dict[str, Any]],
    held: Sequence[dict[str, Any]] | None = None,
) -> list[Signal]:
    """The creation signals with `held` as the objects readiness watches (by default one
    object the workload controls, `CHILD_UID`, which the events are about)."""
    kind = kind_of(workload)
    assert kind is not None
    if held is None:
        held = [_owned(CHILD_UID, workload["metadata"].get("uid"))]
    return creation_signals(kind.pod_creators(workload), events, held)


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
        "metadata": {"name": "pd", "uid": WORKLOAD_UID},
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
        "metadata": {"name": "pd", "uid": WORKLOAD_UID},
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
EARLIER = "uid-earlier"  # the earlier workload of the same name
LATER = "2026-12-07T02:00:07Z"


def _current(workload: dict[str, Any], uid: str = WORKLOAD_UID) -> dict[str, Any]:
    return {
        **workload,
        "metadata": {**workload["metadata"], "uid": uid, "creationTimestamp": CREATED},
    }


def _refusal(kind: str, name: str, uid: str, first: str, message: str = WEBHOOK_DENIED) -> Any:
    event = _event(kind, name, "FailedCreate", message, first, uid=uid)
    event["firstTimestamp"] = first
    return event


_RBG_V1 = {
    "apiVersion": "workloads.x-k8s.io/v1alpha1",
    "kind": "RoleBasedGroup",
    "metadata": {"name": "pd"},
    "spec": {"roles": [{"name": "prefill"}]},
}
_RBG_V2 = {**_RBG_V1, "apiVersion": "workloads.x-k8s.io/v1alpha2"}
# (workload, the creator's kind and name): a child of one level below the workload.
ONE_LEVEL = [
    pytest.param(_lws(), "StatefulSet", "qwen-lws", id="lws-leader-statefulset"),
    pytest.param(_deployment(), "ReplicaSet", "qwen-abc-7d9f8b6c5", id="deployment-replicaset"),
    pytest.param(_RBG_V1, "StatefulSet", "pd-prefill", id="rbg-v0.6-role-statefulset"),
]


@pytest.mark.parametrize(("workload", "kind", "name"), ONE_LEVEL)
def test_an_old_childs_fresh_refusal_does_not_fail_the_current_workload(
    workload: dict[str, Any], kind: str, name: str
) -> None:
    """Issue 16 point 3. The name was deployed before; its workload is gone, but a child of it
    is still there (the garbage collector removes dependents after their owner with Background
    propagation, or the child was orphaned) and records a refusal after the current workload
    was created. It is not a child of the current workload (its controller reference names
    the earlier workload's uid, or nothing), so it never counts, whatever its time; a refusal
    about the current child of the same name fails at once."""
    current = _current(workload)
    stale = _refusal(kind, name, "uid-old-child", LATER)
    for old_child in (_owned("uid-old-child", EARLIER), _owned("uid-old-child", None)):
        held = [old_child, _owned(CHILD_UID, WORKLOAD_UID)]
        assert _signals(current, [stale], held) == []
        _, verdict = _verdict(_signals(current, [stale], held), {}, 0.0)
        assert isinstance(verdict, Waiting) and not verdict.tolerated
        # Its own child's refusal, alongside, is the one that fails.
        now = _refusal(kind, name, CHILD_UID, LATER)
        _, verdict = _verdict(_signals(current, [stale, now], held), {}, 0.0)
        assert isinstance(verdict, Failed) and verdict.signal.pod == name
    # An object readiness does not hold (deleted since, or not listed yet) decides nothing.
    assert _signals(current, [_refusal(kind, name, CHILD_UID, LATER)], []) == []


def test_the_lws_worker_statefulset_counts_through_its_leader_pod() -> None:
    """Two levels (lws pkg/controllers/pod_controller.go: the worker StatefulSet is controlled
    by the group's leader pod, which the leader StatefulSet controls): the current group's
    worker StatefulSet counts, an earlier group's of the same name does not, even when the
    earlier group's leader pod is still held (being deleted)."""
    lws = _current(_lws())
    held = [
        _owned("uid-leader-sts", WORKLOAD_UID),
        _owned("uid-leader-pod", "uid-leader-sts"),
        _owned("uid-worker-sts", "uid-leader-pod"),
        _owned("uid-old-leader-sts", EARLIER),
        _owned("uid-old-leader-pod", "uid-old-leader-sts"),
        _owned("uid-old-worker-sts", "uid-old-leader-pod"),
    ]
    old = _refusal("StatefulSet", "qwen-lws-0", "uid-old-worker-sts", LATER)
    assert _signals(lws, [old], held) == []
    current = _refusal("StatefulSet", "qwen-lws-0", "uid-worker-sts", LATER, QUOTA)
    assert [(s.pod, s.bound) for s in _signals(lws, [old, current], held)] == [
        ("qwen-lws-0", "pod_create")
    ]
    # Without its leader pod the chain is broken: nothing proves it is the current group's.
    without_leader = [h for h in held if h["metadata"]["uid"] != "uid-leader-pod"]
    assert _signals(lws, [current], without_leader) == []


def test_an_rbg_v07_role_instance_counts_through_its_role_instance_set() -> None:
    """RBG v0.7: group -> RoleInstanceSet -> RoleInstance, each a controller reference
    (sgl-project/rbg pkg/reconciler/roleinstanceset_reconciler.go,
    roleinstanceset/statefulmode/stateful_instance_set_utils.go newVersionedInstance)."""
    rbg = _current(_RBG_V2)
    held = [
        _owned("uid-set", WORKLOAD_UID),
        _owned("uid-instance", "uid-set"),
        _owned("uid-old-set", EARLIER),
        _owned("uid-old-instance", "uid-old-set"),
    ]
    old = _refusal("RoleInstance", "pd-prefill-0", "uid-old-instance", LATER)
    assert _signals(rbg, [old], held) == []
    current = _refusal("RoleInstance", "pd-prefill-0", "uid-instance", LATER)
    assert [s.pod for s in _signals(rbg, [old, current], held)] == ["pd-prefill-0"]


def test_an_adopted_childs_refusals_from_before_the_workload_are_its_past() -> None:
    """The Deployment controller adopts an orphaned ReplicaSet its selector matches
    (pkg/controller/controller_ref_manager.go ClaimReplicaSets): it becomes the Deployment's,
    created before it. Its refusals first seen before the Deployment's creation are from its
    previous owner's time; those from then on count."""
    deployment = _current(_deployment())
    held = [_owned(CHILD_UID, WORKLOAD_UID, created="2026-12-07T01:30:00Z")]
    before = _refusal("ReplicaSet", "qwen-abc-7d9f8b6c5", CHILD_UID, "2026-12-07T01:59:30Z")
    assert _signals(deployment, [before], held) == []
    for first in (CREATED, LATER):
        after = _refusal("ReplicaSet", "qwen-abc-7d9f8b6c5", CHILD_UID, first)
        assert [s.pod for s in _signals(deployment, [after], held)] == ["qwen-abc-7d9f8b6c5"]
    # A child it made itself counts by ownership alone (no clock is compared).
    made = [_owned(CHILD_UID, WORKLOAD_UID, created=CREATED)]
    assert [s.pod for s in _signals(deployment, [before], made)] == ["qwen-abc-7d9f8b6c5"]


def test_a_quota_refusal_repeated_since_the_workloads_creation_is_current() -> None:
    """A refusal of a current child that repeats (client-go's recorder counts the repeats on
    one event, tools/record/events_cache.go eventObserve) is tolerated and then fails; an
    earlier child's event repeated as long is not."""
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
    earlier = _event(
        "StatefulSet", "qwen-lws-0", "FailedCreate", QUOTA, "2026-12-07T02:03:00Z", uid="uid-old"
    )
    held = [_owned(CHILD_UID, WORKLOAD_UID), _owned("uid-old", EARLIER)]
    assert _signals(lws, [earlier], held) == []


def test_descendants_follow_controller_references_only() -> None:
    """Only the `controller: true` reference makes a child (a Service owned by a StatefulSet
    without the flag, as RBG's headless Services are, is not one); a cycle ends the walk."""
    objects = [
        _owned("a", "root"),
        _owned("b", "a"),
        {"metadata": {"uid": "svc", "ownerReferences": [{"uid": "a"}]}},
        _owned("x", "y"),
        _owned("y", "x"),
        _owned("z", "elsewhere"),
    ]
    assert sorted(descendants("root", objects)) == ["a", "b"]
    assert descendants("root", []) == {}


def test_each_kind_watches_the_chain_its_controllers_make() -> None:
    """What readiness watches to follow the ownership (label selectors from the upstream
    files cited in each kind's `children`)."""
    selectors = {
        "Deployment": _deployment() | {"spec": {"selector": {"matchLabels": {"app": "qwen"}}}},
        "LeaderWorkerSet": _lws(),
        "v1alpha1": _RBG_V1,
        "v1alpha2": _RBG_V2,
        "RayCluster": {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "r"}},
    }
    found = {}
    for key, obj in selectors.items():
        kind = kind_of(obj)
        assert kind is not None
        found[key] = [(c.kind, c.label_selector) for c in kind.children(obj)]
        assert {c.kind for c in kind.children(obj)} <= {c.kind for c in kind.child_kinds}
    assert found == {
        "Deployment": [("ReplicaSet", "app=qwen")],
        "LeaderWorkerSet": [("StatefulSet", "leaderworkerset.sigs.k8s.io/name=qwen-lws")],
        "v1alpha1": [("StatefulSet", "rolebasedgroup.workloads.x-k8s.io/name=pd")],
        "v1alpha2": [
            ("RoleInstanceSet", "rbg.workloads.x-k8s.io/group-name=pd"),
            ("RoleInstance", "rbg.workloads.x-k8s.io/group-name=pd"),
        ],
        "RayCluster": [],
    }
    lws_role = {"name": "w", "workload": {"apiVersion": "x/v1", "kind": "LeaderWorkerSet"}}
    deploy_role = {"name": "r", "workload": {"apiVersion": "apps/v1", "kind": "Deployment"}}
    mixed = {**_RBG_V1, "spec": {"roles": [lws_role, deploy_role]}}
    kind = kind_of(mixed)
    assert kind is not None
    assert [(c.kind, c.label_selector) for c in kind.children(mixed)] == [
        ("StatefulSet", "rolebasedgroup.workloads.x-k8s.io/name=pd"),
        ("Deployment", "rolebasedgroup.workloads.x-k8s.io/name=pd"),
        ("ReplicaSet", "rolebasedgroup.workloads.x-k8s.io/name=pd"),
        ("LeaderWorkerSet", "rolebasedgroup.workloads.x-k8s.io/name=pd"),
        ("StatefulSet", "leaderworkerset.sigs.k8s.io/name in (pd-w)"),
    ]


def test_an_earlier_raycluster_of_the_same_name_is_told_apart_by_uid() -> None:
    """KubeRay records its pod-create outcomes on the RayCluster itself; an earlier RayCluster
    of the name has another uid, whatever the times (the uid, not the clock, decides)."""
    ray = _current(
        {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "qwen-ray"}}
    )
    later = "2026-12-07T02:00:05Z"
    stale = _event(
        "RayCluster", "qwen-ray", "FailedToCreateWorkerPod", WEBHOOK_DENIED, later, uid=EARLIER
    )
    assert _signals(ray, [stale]) == []
    current = _event(
        "RayCluster", "qwen-ray", "FailedToCreateWorkerPod", WEBHOOK_DENIED, later, uid=WORKLOAD_UID
    )
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


def test_the_worker_may_list_and_watch_every_chain_kind() -> None:
    """Readiness under the worker's RBAC (llm-rollout rbac) watches each kind's `children`: a
    missing grant would fail every wait with 403."""
    role = next(o for o in render_worker_rbac("llm") if o["kind"] == "Role")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    wanted = {
        (child.group, child.plural, verb)
        for kind in rendered_kinds()
        for child in kind.child_kinds
        for verb in ("list", "watch")
    }
    assert {("apps", "statefulsets", "watch"), ("apps", "replicasets", "list")} <= wanted
    assert wanted - granted == set()
