"""Watch-based readiness of a serving workload, with fast, explained failure.

`wait_ready` watches four streams at once (the workload itself, its pods, the Events of its
namespace, and the Nodes) and re-evaluates on every change, so readiness is noticed as soon as
the API server reports it and a failing pod as soon as its status or Warning event lands. Ready
means the workload's own status says so AND every serving pod is Ready.

Nodes are watched because a lost node says nothing on most of its pods: the node lifecycle
controller only flips Ready to False (with a NodeNotReady event) on pods that were Ready, and a
pod still loading its model waits, bound to the dead node, until the NoExecute eviction
(300 s by default) lets its controller replace it. The node's own Ready condition says it at
once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError, RolloutError
from llm_rollout.kube.objects import get
from llm_rollout.kube.resources import JsonDict, ObjectRef, read_pod_log
from llm_rollout.kube.watching import (
    WaitTimeout,
    WatchSpec,
    call_with_retry,
    wait_deleted,
    wait_pvc_bound,
    watching,
)

__all__ = [
    "EVENT_GRACE_S",
    "LOG_TAIL_LINES",
    "ReadinessTimeout",
    "ReadyReport",
    "WorkloadFailed",
    "pod_selector_for",
    "wait_deleted",
    "wait_pvc_bound",
    "wait_ready",
    "workload_missing",
]

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
# How far back the log is scanned for the root cause. Engines such as vLLM report the real
# error from a child process and then print their own shutdown traceback, which pushes the
# cause out of the last few lines.
LOG_SCAN_LINES = 400
LOG_ROOT_CAUSE_LINES = 8
_ROOT_CAUSE = re.compile(r"(Error|Exception|Traceback|FATAL|[Ff]atal|out of memory|[Ff]ailed)")
# When a pod's status shows a failure before its Warning event has arrived, wait this long for
# the event so the report can quote it; the failure is raised either way.
EVENT_GRACE_S = 1.0

OnEvent = Callable[[ObjectRef, str], None]

IMAGE_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
MOUNT_EVENT_REASONS = frozenset({"FailedMount", "FailedAttachVolume"})
# Which Warning event reasons explain each failure, best first.
EVENT_REASONS_FOR: dict[str, tuple[str, ...]] = {
    "ErrImagePull": ("Failed", "ErrImagePull", "BackOff"),
    "ImagePullBackOff": ("Failed", "BackOff", "ErrImagePull"),
    "InvalidImageName": ("InspectFailed", "InvalidImageName", "Failed"),
    "ErrImageNeverPull": ("ErrImageNeverPull", "Failed"),
    "CrashLoopBackOff": ("BackOff",),
    "OOMKilled": ("OOMKilling", "BackOff"),
    "Unschedulable": ("FailedScheduling",),
    "FailedMount": ("FailedMount", "FailedAttachVolume"),
    "NodeLost": ("NodeNotReady",),
    "CreateContainerConfigError": ("Failed",),
    "CreateContainerError": ("Failed",),
    "RunContainerError": ("Failed",),
}
# Failures whose explanation is in the container's own output.
LOG_REASONS = frozenset({"CrashLoopBackOff", "OOMKilled", "RunContainerError", "Error"})
# The pod's node stopped reporting or was deleted (the reason the node controller once gave
# such pods). It stays a failure after the pod is gone: a controller replacing the pod, or a
# NoExecute toleration of 0 s evicting it at once, does not undo the lost rollout step.
NODE_LOST = "NodeLost"

RBG_LABELS_V1ALPHA1 = "rolebasedgroup.workloads.x-k8s.io/name"
RBG_LABELS_V07 = "rbg.workloads.x-k8s.io/group-name"


class WorkloadFailed(PermanentError):
    """A serving pod failed in a way waiting cannot fix."""

    def __init__(
        self,
        workload: ObjectRef,
        *,
        reason: str,
        pod: ObjectRef | None,
        detail: str,
        event_message: str,
        log_lines: list[str],
    ) -> None:
        where = f" on {pod}" if pod else ""
        parts = [f"{workload}: {reason}{where}"]
        if detail:
            parts.append(detail)
        if event_message and event_message != detail:
            parts.append(f"event: {event_message}")
        message = "; ".join(parts)
        if log_lines:
            message += "\nlast container log lines:\n" + "\n".join(f"  {ln}" for ln in log_lines)
        super().__init__(message)
        self.workload = workload
        self.reason = reason
        self.pod = pod
        self.detail = detail
        self.event_message = event_message
        self.log_lines = list(log_lines)


class ReadinessTimeout(WaitTimeout):
    """The workload was not ready in time; `missing` lists what was still not ready."""

    def __init__(self, workload: ObjectRef, timeout_s: float, missing: list[str]) -> None:
        super().__init__(
            f"{workload} not ready after {timeout_s:.0f}s: " + "; ".join(missing), missing=missing
        )
        self.workload = workload


@dataclass(frozen=True)
class ReadyReport:
    """The outcome of a successful `wait_ready`."""

    workload: ObjectRef
    elapsed_s: float
    noticed_at: float  # wall clock (time.time()) when readiness was established
    pods: list[ObjectRef]
    status: JsonDict = field(default_factory=dict)
    watch_resyncs: int = 0


def _conditions(obj: Mapping[str, Any]) -> dict[str, JsonDict]:
    status = obj.get("status") or {}
    return {str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, dict)}


def _condition_true(obj: Mapping[str, Any], name: str) -> bool:
    return str(_conditions(obj).get(name, {}).get("status")) == "True"


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _generation_missing(obj: Mapping[str, Any]) -> list[str]:
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if generation is not None and _int(observed, -1) < _int(generation):
        return [f"controller has not observed generation {generation} (observed {observed})"]
    return []


def _replicas_missing(obj: Mapping[str, Any], what: str = "readyReplicas") -> list[str]:
    want = _int((obj.get("spec") or {}).get("replicas"), 1)
    have = _int((obj.get("status") or {}).get("readyReplicas"))
    return [] if have >= want else [f"{what} {have}/{want}"]


def _condition_missing(obj: Mapping[str, Any], name: str) -> list[str]:
    cond = _conditions(obj).get(name)
    if cond is None:
        return [f"condition {name} not reported"]
    if str(cond.get("status")) != "True":
        why = cond.get("reason") or cond.get("message") or ""
        return [f"condition {name}={cond.get('status')}" + (f" ({why})" if why else "")]
    return []


def workload_missing(obj: Mapping[str, Any]) -> list[str]:
    """What the workload's own status still lacks before it counts as ready ([] = ready).

    Deployment: observed generation current, Available=True, readyReplicas == replicas.
    StatefulSet: observed generation current, readyReplicas == replicas.
    LeaderWorkerSet: Available=True, readyReplicas (ready groups) == replicas.
    RoleBasedGroup: Ready=True and every role's readyReplicas == its replicas.
    RayCluster: status.state == "ready".
    """
    kind = str(obj.get("kind"))
    if kind == "Deployment":
        return (
            _generation_missing(obj) + _condition_missing(obj, "Available") + _replicas_missing(obj)
        )
    if kind == "StatefulSet":
        return _generation_missing(obj) + _replicas_missing(obj)
    if kind == "LeaderWorkerSet":
        return _condition_missing(obj, "Available") + _replicas_missing(
            obj, "readyReplicas (groups)"
        )
    if kind == "RoleBasedGroup":
        missing = _condition_missing(obj, "Ready")
        spec_roles = [str(r.get("name")) for r in (obj.get("spec") or {}).get("roles") or []]
        statuses = {
            str(s.get("name")): s for s in (obj.get("status") or {}).get("roleStatuses") or []
        }
        for role in spec_roles:
            role_status = statuses.get(role)
            if role_status is None:
                missing.append(f"role {role}: no status yet")
                continue
            want = _int(role_status.get("replicas"), 1)
            have = _int(role_status.get("readyReplicas"))
            if have < want:
                missing.append(f"role {role}: readyReplicas {have}/{want}")
        return missing
    if kind == "RayCluster":
        state = str((obj.get("status") or {}).get("state") or "")
        return [] if state == "ready" else [f"state {state or 'not reported'} (want ready)"]
    raise PermanentError(f"readiness of kind {kind} is not supported")


def _selector_string(selector: Mapping[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key"), expr.get("operator")
        values = ",".join(expr.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def pod_selector_for(obj: Mapping[str, Any]) -> tuple[str | None, Callable[[JsonDict], bool]]:
    """The server-side label selector for a workload's pods and a client-side filter.

    RoleBasedGroup v1alpha1 is served by both v0.6 (labels `rolebasedgroup.workloads.x-k8s.io/*`)
    and v0.7+ (`rbg.workloads.x-k8s.io/*`), so for it pods are matched on either label.
    """
    kind = str(obj.get("kind"))
    name = str((obj.get("metadata") or {}).get("name"))
    if kind in ("Deployment", "StatefulSet"):
        selector = _selector_string((obj.get("spec") or {}).get("selector") or {})
        return selector or None, _accept_all
    if kind == "LeaderWorkerSet":
        return f"leaderworkerset.sigs.k8s.io/name={name}", _accept_all
    if kind == "RayCluster":
        return f"ray.io/cluster={name}", _accept_all
    if kind == "RoleBasedGroup":
        if str(obj.get("apiVersion", "")).endswith("/v1alpha2"):
            return f"{RBG_LABELS_V07}={name}", _accept_all

        def either_label(pod: JsonDict) -> bool:
            labels = (pod.get("metadata") or {}).get("labels") or {}
            return bool(
                labels.get(RBG_LABELS_V1ALPHA1) == name or labels.get(RBG_LABELS_V07) == name
            )

        return None, either_label
    raise PermanentError(f"readiness of kind {kind} is not supported")


def _accept_all(pod: JsonDict) -> bool:
    return True


def _pod_ref(pod: Mapping[str, Any]) -> ObjectRef:
    meta = pod.get("metadata") or {}
    return ObjectRef("v1", "Pod", meta.get("namespace"), str(meta.get("name")))


def _pod_ready_missing(pod: Mapping[str, Any]) -> str | None:
    ready = _conditions(pod).get("Ready")
    if ready is not None and str(ready.get("status")) == "True":
        return None
    ref = _pod_ref(pod)
    why = (ready or {}).get("reason") or (pod.get("status") or {}).get("phase") or "no status"
    return f"pod {ref.namespace}/{ref.name} not Ready ({why})"


@dataclass(frozen=True)
class _Failure:
    reason: str
    pod: JsonDict
    container: str | None
    detail: str


def _container_failure(pod: JsonDict) -> _Failure | None:
    status = pod.get("status") or {}
    statuses = list(status.get("initContainerStatuses") or []) + list(
        status.get("containerStatuses") or []
    )
    for cs in statuses:
        name = cs.get("name")
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        message = str(waiting.get("message") or "")
        if reason in IMAGE_REASONS or reason in CONFIG_REASONS:
            return _Failure(reason, pod, name, message)
        for terminated in ((cs.get("lastState") or {}).get("terminated"), state.get("terminated")):
            if isinstance(terminated, dict) and terminated.get("reason") == "OOMKilled":
                code = terminated.get("exitCode")
                return _Failure("OOMKilled", pod, name, f"container {name} OOMKilled (exit {code})")
        if reason == "CrashLoopBackOff":
            return _Failure(reason, pod, name, message or f"container {name} keeps crashing")
    return None


@dataclass(frozen=True)
class _Nodes:
    """The cluster's Nodes as last seen, and those seen before that no longer exist."""

    current: Mapping[str, JsonDict]
    deleted: Set[str]


def _node_lost(pod: JsonDict, nodes: _Nodes) -> _Failure | None:
    """A failure when the node `pod` is bound to is not Ready or was deleted.

    Container states on such a node are stale (nobody reports them), so this comes first.
    """
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    if not node:
        return None
    if node in nodes.deleted:
        return _Failure(NODE_LOST, pod, None, f"Node {node} was deleted")
    ready = _conditions(nodes.current.get(node) or {}).get("Ready")
    if ready is None or str(ready.get("status")) == "True":
        return None
    why = ": ".join(str(ready[k]) for k in ("reason", "message") if ready.get(k))
    return _Failure(
        NODE_LOST,
        pod,
        None,
        f"Node {node} is not ready: Ready={ready.get('status')}" + (f" ({why})" if why else ""),
    )


def _pod_failure(pod: JsonDict, pod_events: list[JsonDict], nodes: _Nodes) -> _Failure | None:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    failure = _node_lost(pod, nodes) or _container_failure(pod)
    if failure is not None:
        return failure
    status = pod.get("status") or {}
    scheduled = _conditions(pod).get("PodScheduled") or {}
    if str(scheduled.get("status")) == "False" and scheduled.get("reason") == "Unschedulable":
        return _Failure("Unschedulable", pod, None, str(scheduled.get("message") or ""))
    for event in pod_events:
        reason = str(event.get("reason") or "")
        if reason in MOUNT_EVENT_REASONS:
            return _Failure("FailedMount", pod, None, str(event.get("message") or ""))
        if reason == "FailedScheduling" and not (pod.get("spec") or {}).get("nodeName"):
            return _Failure("Unschedulable", pod, None, str(event.get("message") or ""))
    if status.get("phase") == "Failed":
        return _Failure(
            str(status.get("reason") or "PodFailed"), pod, None, str(status.get("message") or "")
        )
    return None


def _first_failure(
    pods: list[JsonDict], events: list[JsonDict], nodes: _Nodes
) -> tuple[_Failure | None, list[JsonDict]]:
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        pod_events = _events_for(pod, events)
        failure = _pod_failure(pod, pod_events, nodes)
        if failure is not None:
            return failure, pod_events
    return None, []


def _events_for(pod: Mapping[str, Any], events: Iterable[JsonDict]) -> list[JsonDict]:
    """Warning events about this pod (same uid when the event names one), oldest first."""
    meta = pod.get("metadata") or {}
    name, uid = meta.get("name"), meta.get("uid")
    found = []
    for event in events:
        involved = event.get("involvedObject") or event.get("regarding") or {}
        if involved.get("kind") != "Pod" or involved.get("name") != name:
            continue
        if uid and involved.get("uid") and involved.get("uid") != uid:
            continue
        if event.get("type") != "Warning":
            continue
        found.append(event)
    found.sort(key=_event_time)
    return found


def _event_time(event: Mapping[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def _explaining_event(reason: str, pod_events: list[JsonDict]) -> str:
    wanted = EVENT_REASONS_FOR.get(reason, ())
    for event_reason in wanted:
        for event in reversed(pod_events):
            if event.get("reason") == event_reason:
                return str(event.get("message") or "")
    return str(pod_events[-1].get("message") or "") if pod_events and not wanted else ""


def _log_lines(api: k8s_client.ApiClient, failure: _Failure) -> list[str]:
    if failure.reason not in LOG_REASONS:
        return []
    ref = _pod_ref(failure.pod)
    assert ref.namespace is not None
    namespace = ref.namespace
    for previous in (True, False):

        def read(previous: bool = previous) -> list[str]:
            return read_pod_log(
                api,
                namespace,
                ref.name,
                container=failure.container,
                previous=previous,
                tail_lines=LOG_SCAN_LINES,
            )

        try:
            lines: list[str] = call_with_retry(read, attempts=3)
        except RolloutError as exc:
            log.info("no %slogs for %s: %s", "previous " if previous else "", ref, exc)
            continue
        if lines:
            return select_log_lines(lines)
    return []


def select_log_lines(lines: list[str]) -> list[str]:
    """The last `LOG_TAIL_LINES` lines, preceded by earlier lines that name an error.

    The tail shows how the container ended; the earlier error lines (at most
    `LOG_ROOT_CAUSE_LINES`, the latest ones) keep a root cause that a long shutdown trace
    would otherwise push out of view.
    """
    tail = lines[-LOG_TAIL_LINES:]
    earlier = lines[: max(0, len(lines) - LOG_TAIL_LINES)]
    causes = [ln for ln in earlier if _ROOT_CAUSE.search(ln)][-LOG_ROOT_CAUSE_LINES:]
    if not causes:
        return tail
    return [*causes, "...", *tail]


def wait_ready(
    api: k8s_client.ApiClient,
    workload: ObjectRef,
    *,
    timeout_s: float,
    pod_selector: str | None = None,
    on_event: OnEvent | None = None,
) -> ReadyReport:
    """Block until `workload` is ready; raise `WorkloadFailed` or `ReadinessTimeout`.

    `pod_selector` overrides the label selector derived from the workload (see
    `pod_selector_for`). `on_event(ref, message)` receives progress lines (status changes,
    Warning events, watch re-lists), each about the object `ref`.
    """
    if workload.namespace is None:
        raise PermanentError(f"{workload}: serving workloads are namespaced; namespace missing")
    namespace = workload.namespace
    started = time.monotonic()
    deadline = started + timeout_s
    notify = on_event or (lambda ref, message: None)
    workload_spec = WatchSpec(workload.api_version, workload.kind, namespace, name=workload.name)
    event_spec = WatchSpec("v1", "Event", namespace)
    node_spec = WatchSpec("v1", "Node", None)
    seen_nodes: set[str] = set()

    # The pod selector depends on the workload's spec, so the workload is read first.
    initial = call_with_retry(lambda: get(api, workload))
    if initial is None:
        raise PermanentError(f"{workload} does not exist: nothing to wait for")

    selector: str | None
    pod_filter: Callable[[JsonDict], bool]
    if pod_selector is not None:
        selector, pod_filter = pod_selector, _accept_all
    else:
        selector, pod_filter = pod_selector_for(initial)
    pod_spec = WatchSpec("v1", "Pod", namespace, label_selector=selector)
    last_note: dict[ObjectRef, str] = {}

    def note(ref: ObjectRef, message: str) -> None:
        if last_note.get(ref) != message:
            last_note[ref] = message
            notify(ref, message)

    pending: tuple[_Failure, float] | None = None
    with watching(api, [workload_spec, pod_spec, event_spec, node_spec]) as group:
        while True:
            if group.all_synced:
                current_nodes = group.cache[node_spec]
                seen_nodes.update(current_nodes)
                nodes = _Nodes(current_nodes, seen_nodes - current_nodes.keys())
                obj = group.cache[workload_spec].get(workload.name)
                pods = [
                    p
                    for p in group.cache[pod_spec].values()
                    if pod_filter(p) and not (p.get("metadata") or {}).get("deletionTimestamp")
                ]
                events = list(group.cache[event_spec].values())
                failure, pod_events = _first_failure(pods, events, nodes)
                if failure is None and pending is not None and pending[0].reason == NODE_LOST:
                    failure = pending[0]
                    pod_events = _events_for(failure.pod, events)
                if failure is None:
                    pending = None
                else:
                    event_message = _explaining_event(failure.reason, pod_events)
                    if pending is None:
                        pending = (failure, time.monotonic())
                    if event_message or time.monotonic() - pending[1] >= EVENT_GRACE_S:
                        raise WorkloadFailed(
                            workload,
                            reason=failure.reason,
                            pod=_pod_ref(failure.pod),
                            detail=failure.detail,
                            event_message=event_message,
                            log_lines=_log_lines(api, failure),
                        )
                missing = _missing(workload, obj, pods, selector)
                if obj is not None:
                    note(workload, "waiting: " + "; ".join(missing) if missing else "ready")
                for pod in pods:
                    pod_missing = _pod_ready_missing(pod)
                    note(_pod_ref(pod), pod_missing or "Ready")
                if not missing and pending is None:
                    return ReadyReport(
                        workload=workload,
                        elapsed_s=time.monotonic() - started,
                        noticed_at=time.time(),
                        pods=sorted((_pod_ref(p) for p in pods), key=lambda r: r.name),
                        status=dict((obj or {}).get("status") or {}),
                        watch_resyncs=group.resyncs,
                    )
            now = time.monotonic()
            remaining = deadline - now
            if pending is not None:
                remaining = min(remaining, pending[1] + EVENT_GRACE_S - now)
            if deadline - now <= 0:
                obj = group.cache[workload_spec].get(workload.name)
                pods = [p for p in group.cache[pod_spec].values() if pod_filter(p)]
                raise ReadinessTimeout(
                    workload, timeout_s, _missing(workload, obj, pods, selector) or ["not synced"]
                )
            message = group.next(max(remaining, 0.0))
            if message is None:
                continue
            if message.kind == "resync":
                notify(workload, f"watch on {message.spec.describe()} restarted: {message.note}")
            elif message.kind == "event" and message.spec == event_spec and message.obj:
                tracked = {workload.name} | set(group.cache[pod_spec])
                _note_event(message.obj, namespace, tracked, notify)


def _missing(
    workload: ObjectRef, obj: JsonDict | None, pods: list[JsonDict], selector: str | None
) -> list[str]:
    if obj is None:
        return [f"{workload} does not exist"]
    missing = [f"{workload}: {m}" for m in workload_missing(obj)]
    if not pods:
        missing.append(f"no pods{' matching ' + selector if selector else ''} yet")
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        pod_missing = _pod_ready_missing(pod)
        if pod_missing:
            missing.append(pod_missing)
    return missing


def _note_event(event: JsonDict, namespace: str, tracked: set[str], notify: OnEvent) -> None:
    involved = event.get("involvedObject") or event.get("regarding") or {}
    if event.get("type") != "Warning" or involved.get("name") not in tracked:
        return
    ref = ObjectRef(
        str(involved.get("apiVersion") or "v1"),
        str(involved.get("kind") or "Object"),
        str(involved.get("namespace") or namespace),
        str(involved.get("name") or "?"),
    )
    notify(ref, f"Warning {event.get('reason')}: {event.get('message')}")
