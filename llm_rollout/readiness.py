"""Watch-based readiness of a serving workload, with fast, explained failure.

`wait_ready` watches four streams at once (the workload itself, its pods, the Events of its
namespace, and the Nodes) and re-evaluates on every change, so readiness is noticed as soon as
the API server reports it and a failing pod as soon as its status or Warning event lands. Ready
means the workload's own status says so AND every serving pod is Ready.

What each snapshot means is decided by the pure functions of `readiness_rules`: a signal that
can clear by itself (a rate-limited pull, a slow mount, a NotReady node, an Unschedulable pod
while cluster-autoscaler scales up) fails the rollout only once it has persisted past its
tolerance (the spec's rollout section); one that cannot clear fails at once; and a pod that
its controller keeps recreating (an LWS group on every container restart) is a crash loop
after k recreations, reported with the log captured before the pod was deleted.

A workload whose controller cannot create its pods (an exceeded ResourceQuota, an invalid
label, an admission webhook's denial) shows nothing on pods, since there are none: the
controller's Warning events on its own objects (each kind's `pod_creators`) say why, and are
read from the same event stream. Those objects (a Deployment's ReplicaSets, a
LeaderWorkerSet's StatefulSets, RBG v0.7's RoleInstanceSets and RoleInstances: each kind's
`children`) are watched too, so that only the events about the ones the workload controls
count, not those of an earlier workload's of the same names.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError, RolloutError
from llm_rollout.kinds import WorkloadKind, kind_of
from llm_rollout.kinds.base import accept_all
from llm_rollout.kinds.base import conditions as _conditions
from llm_rollout.kube.errors import UnauthorizedError
from llm_rollout.kube.objects import get
from llm_rollout.kube.resources import JsonDict, ObjectRef, read_pod_log
from llm_rollout.kube.views import PodView, mapping_at
from llm_rollout.kube.watching import (
    Done,
    Interrupt,
    Selector,
    StreamMessage,
    Verdict,
    WaitTimeout,
    WatchGroup,
    call_with_retry,
    wait_deleted,
    wait_pvc_bound,
    watch_until,
)
from llm_rollout.kube.watching import Waiting as KeepWaiting
from llm_rollout.readiness_rules import (
    DEFAULT_TOLERANCES,
    GROUP_CRASH_LOOP,
    NO_AUTOSCALER,
    SCALE_UP_EVENT_REASONS,
    Autoscaler,
    Crash,
    Failed,
    Incarnations,
    Nodes,
    Ready,
    Seen,
    Signal,
    Tolerances,
    Waiting,
    autoscaler_from_configmap,
    crash_to_capture,
    creation_signals,
    decide,
    event_order,
    group_signals,
    observe_incarnations,
    pod_signals,
    stable_slot,
    track,
)

__all__ = [
    "EVENT_GRACE_S",
    "LOG_TAIL_LINES",
    "ReadinessTimeout",
    "ReadyReport",
    "Tolerances",
    "WorkloadFailed",
    "pod_selector_for",
    "read_autoscaler_status",
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
LOG_REASONS = frozenset(
    {"CrashLoopBackOff", "OOMKilled", "RunContainerError", "Error", GROUP_CRASH_LOOP}
)
# cluster-autoscaler's status ConfigMap (cluster-autoscaler/clusterstate/utils/status.go
# StatusConfigMapName; kube-system is its default --namespace).
AUTOSCALER_STATUS = ObjectRef("v1", "ConfigMap", "kube-system", "cluster-autoscaler-status")
AUTOSCALER_REFRESH_S = 10.0


class WorkloadFailed(PermanentError):
    """A serving pod failed in a way waiting cannot fix; `pod` names it, or the object whose
    controller could not create the pods (a ReplicaSet, a StatefulSet, a RayCluster)."""

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


def workload_missing(obj: Mapping[str, Any]) -> list[str]:
    """What the workload's own status still lacks before it counts as ready ([] = ready).

    Each kind states its rule (`llm_rollout.kinds`, `WorkloadKind.ready_missing`).
    """
    return _kind(obj).ready_missing(obj)


def pod_selector_for(obj: Mapping[str, Any]) -> tuple[str | None, Callable[[JsonDict], bool]]:
    """The server-side label selector for a workload's pods and a client-side filter."""
    return _kind(obj).pod_selector(obj)


def _kind(obj: Mapping[str, Any]) -> WorkloadKind:
    kind = kind_of(obj)
    if kind is None:
        raise PermanentError(f"readiness of kind {obj.get('kind')} is not supported")
    return kind


def _pod_ref(pod: Mapping[str, Any]) -> ObjectRef:
    meta = pod.get("metadata") or {}
    return ObjectRef("v1", "Pod", meta.get("namespace"), str(meta.get("name")))


def _pod_ready_missing(pod: Mapping[str, Any]) -> str | None:
    ready = _conditions(pod).get("Ready")
    if ready is not None and str(ready.get("status")) == "True":
        return None
    ref = _pod_ref(pod)
    why = (ready or {}).get("reason") or PodView(pod).phase or "no status"
    return f"pod {ref.namespace}/{ref.name} not Ready ({why})"


def _events_for(pod: Mapping[str, Any], events: Iterable[JsonDict]) -> list[JsonDict]:
    """Warning events about this pod (same uid when the event names one), and the Normal
    ones cluster-autoscaler records on it, oldest first."""
    meta = pod.get("metadata") or {}
    name, uid = meta.get("name"), meta.get("uid")
    found = []
    for event in events:
        involved = event.get("involvedObject") or event.get("regarding") or {}
        if involved.get("kind") != "Pod" or involved.get("name") != name:
            continue
        if uid and involved.get("uid") and involved.get("uid") != uid:
            continue
        if event.get("type") != "Warning" and event.get("reason") not in SCALE_UP_EVENT_REASONS:
            continue
        found.append(event)
    found.sort(key=event_order)
    return found


def _explaining_event(reason: str, pod_events: list[JsonDict]) -> str:
    wanted = EVENT_REASONS_FOR.get(reason, ())
    for event_reason in wanted:
        for event in reversed(pod_events):
            if event.get("reason") == event_reason:
                return str(event.get("message") or "")
    return str(pod_events[-1].get("message") or "") if pod_events and not wanted else ""


def _read_log_lines(
    api: k8s_client.ApiClient,
    namespace: str,
    pod: str,
    container: str | None,
    order: tuple[bool, ...] = (True, False),
) -> list[str]:
    """The selected lines of the container's log, the previous instance's first."""
    for previous in order:

        def read(previous: bool = previous) -> list[str]:
            return read_pod_log(
                api,
                namespace,
                pod,
                container=container,
                previous=previous,
                tail_lines=LOG_SCAN_LINES,
            )

        try:
            lines: list[str] = call_with_retry(read, attempts=3)
        except RolloutError as exc:
            log.info(
                "no %slogs for %s/%s: %s", "previous " if previous else "", namespace, pod, exc
            )
            continue
        if lines:
            return select_log_lines(lines)
    return []


def _log_lines(api: k8s_client.ApiClient, namespace: str, signal: Signal) -> list[str]:
    if signal.log_lines:
        return list(signal.log_lines)
    if signal.reason not in LOG_REASONS or not signal.pod:
        return []
    return _read_log_lines(api, namespace, signal.pod, signal.container)


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
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    interrupt: Interrupt | None = None,
) -> ReadyReport:
    """Block until `workload` is ready; raise `WorkloadFailed` or `ReadinessTimeout`.

    `pod_selector` overrides the label selector derived from the workload (see
    `pod_selector_for`). `on_event(ref, message)` receives progress lines (status changes,
    Warning events, tolerated signals, watch re-lists), each about the object `ref`.
    `tolerances` bound how long a signal that can clear by itself may persist (see
    `readiness_rules`); the verdict itself comes from `readiness_rules.decide`. An
    `interrupt` (the run's rollout lease, `locking.ServiceLock`) ends the wait with its own
    error as soon as it fires.

    The waiting is the session's (`kube.watching.watch_until` over the four streams and the
    workload kind's `children`); what a snapshot means is `_ReadinessCheck`'s.
    """
    if workload.namespace is None:
        raise PermanentError(f"{workload}: serving workloads are namespaced; namespace missing")
    started = time.monotonic()
    # The pod selector depends on the workload's spec, so the workload is read first.
    initial = call_with_retry(lambda: get(api, workload))
    if initial is None:
        raise PermanentError(f"{workload} does not exist: nothing to wait for")
    readiness = _ReadinessCheck(
        api, workload, initial, pod_selector, on_event, tolerances, started=started
    )
    try:
        return watch_until(
            api,
            readiness.selectors,
            readiness.check,
            # The deadline counts from the call, the read of the workload included.
            timeout_s - (time.monotonic() - started),
            on_message=readiness.on_message,
            interrupt=interrupt,
        )
    except WaitTimeout as exc:
        raise ReadinessTimeout(workload, timeout_s, exc.missing) from exc


class _ReadinessCheck:
    """The readiness rules over the watched snapshot, with what they remember between looks:
    when each signal began, the pods' incarnations and captured crash logs, a decided failure
    waiting up to EVENT_GRACE_S for its explaining event, and the progress lines already told."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        workload: ObjectRef,
        initial: JsonDict,
        pod_selector: str | None,
        on_event: OnEvent | None,
        tolerances: Tolerances,
        *,
        started: float,
    ) -> None:
        assert workload.namespace is not None  # wait_ready refused a cluster-scoped one
        self.api = api
        self.workload = workload
        self.namespace = workload.namespace
        self.initial = initial
        self.tolerances = tolerances
        self.started = started
        self.notify: OnEvent = on_event or (lambda ref, message: None)
        self.selector: str | None
        self.pod_filter: Callable[[JsonDict], bool]
        if pod_selector is not None:
            self.selector, self.pod_filter = pod_selector, accept_all
        else:
            self.selector, self.pod_filter = pod_selector_for(initial)
        self.kind = _kind(initial)
        self.workload_spec = Selector.of(workload)
        self.pod_spec = Selector("v1", "Pod", self.namespace, label_selector=self.selector)
        self.event_spec = Selector("v1", "Event", self.namespace)
        self.node_spec = Selector("v1", "Node", None)
        self.child_specs = list(
            dict.fromkeys(
                Selector(c.api_version, c.kind, self.namespace, label_selector=c.label_selector)
                for c in self.kind.children(initial)
            )
        )
        self.selectors = [
            self.workload_spec,
            self.pod_spec,
            self.event_spec,
            self.node_spec,
            *self.child_specs,
        ]
        self.seen_nodes: set[str] = set()
        self.last_note: dict[ObjectRef, str] = {}
        self.autoscaler = _AutoscalerView(api)
        self.seen: dict[str, Seen] = {}
        self.incarnations = Incarnations()
        self.captured: set[tuple[str, str, int]] = set()
        # A failure is final once decided; it waits at most EVENT_GRACE_S for an explaining
        # event.
        self.failed: tuple[Failed, float] | None = None
        self.announced: set[tuple[str, str]] = set()  # (pod, reason) tolerated signals logged

    def note(self, ref: ObjectRef, message: str) -> None:
        if self.last_note.get(ref) != message:
            self.last_note[ref] = message
            self.notify(ref, message)

    def check(self, group: WatchGroup) -> Verdict[ReadyReport]:
        workload, namespace, tolerances = self.workload, self.namespace, self.tolerances
        now = time.monotonic()
        current_nodes = group.cache[self.node_spec]
        self.seen_nodes.update(current_nodes)
        nodes = Nodes(current_nodes, self.seen_nodes - current_nodes.keys())
        obj = group.cache[self.workload_spec].get(workload.name)
        all_pods = [p for p in group.cache[self.pod_spec].values() if self.pod_filter(p)]
        pods = [p for p in all_pods if not PodView(p).is_terminating]
        events = list(group.cache[self.event_spec].values())
        self.incarnations = _capture_crashes(
            self.api,
            namespace,
            observe_incarnations(self.incarnations, all_pods),
            all_pods,
            self.captured,
        )
        signals = [
            signal
            for pod in pods
            for signal in pod_signals(
                pod, _events_for(pod, events), nodes, self.autoscaler.view(pods, now)
            )
        ]
        signals += group_signals(self.incarnations, tolerances)
        chain = [o for spec in self.child_specs for o in group.cache[spec].values()]
        signals += creation_signals(
            self.kind.pod_creators(obj or self.initial),
            events,
            [*chain, *group.cache[self.pod_spec].values()],
        )
        self.seen = track(self.seen, signals, now)
        missing = _missing(workload, obj, pods, self.selector)
        verdict = decide(signals, self.seen, tolerances, now, missing)
        if self.failed is None and isinstance(verdict, Failed):
            self.failed = (verdict, now)
        recheck_at: float | None = None
        tolerated = (
            [
                f"{signal.reason} on {_subject(namespace, signal)} for {elapsed_s:.0f}s "
                f"(tolerated up to {bound_s:.0f}s): {signal.detail}"
                for signal, elapsed_s, bound_s in verdict.tolerated
            ]
            if isinstance(verdict, Waiting)
            else []
        )
        if isinstance(verdict, Waiting):
            current = {(signal.pod, signal.reason) for signal, _, _ in verdict.tolerated}
            # Once per onset: the signal's own events keep arriving while it is tolerated,
            # and a line per event would drown the log.
            self.announced &= current
            for signal, _elapsed_s, bound_s in verdict.tolerated:
                if (signal.pod, signal.reason) in self.announced:
                    continue
                self.announced.add((signal.pod, signal.reason))
                self.note(
                    _subject(namespace, signal),
                    f"tolerating {signal.reason} for up to {bound_s:.0f}s: {signal.detail}",
                )
            if verdict.recheck_in_s is not None:
                recheck_at = now + verdict.recheck_in_s
        if self.failed is not None:
            self._raise_failed(self.failed, pods, events, now)
        if obj is not None:
            self.note(workload, "waiting: " + "; ".join(missing) if missing else "ready")
        for pod in pods:
            pod_missing = _pod_ready_missing(pod)
            self.note(_pod_ref(pod), pod_missing or "Ready")
        if isinstance(verdict, Ready) and self.failed is None:
            return Done(
                ReadyReport(
                    workload=workload,
                    elapsed_s=time.monotonic() - self.started,
                    noticed_at=time.time(),
                    pods=sorted((_pod_ref(p) for p in pods), key=lambda r: r.name),
                    status=dict(mapping_at(obj, "status")),
                    watch_resyncs=group.resyncs,
                )
            )
        wake_at = [t for t in (recheck_at,) if t is not None]
        if self.failed is not None:
            wake_at.append(self.failed[1] + EVENT_GRACE_S)
        # What a timeout names: the workload's and every matched pod's state (terminating
        # ones too), then the signals still inside their tolerance.
        timeout_missing = _missing(workload, obj, all_pods, self.selector) or ["not synced"]
        return KeepWaiting(
            tuple(timeout_missing + tolerated),
            recheck_in_s=max(0.0, min(wake_at) - time.monotonic()) if wake_at else None,
        )

    def _raise_failed(
        self, failed: tuple[Failed, float], pods: list[JsonDict], events: list[JsonDict], now: float
    ) -> None:
        """Raise the decided failure once its explaining event arrived or its grace ran out."""
        signal = failed[0].signal
        on_pod = signal.kind == "Pod"
        pod_events = _events_by_name(signal.pod, pods, events) if on_pod else []
        # A pod-creation failure is its controller's event already.
        event_message = _explaining_event(signal.reason, pod_events) if on_pod else ""
        # A group crash loop is explained by its captured log, not by an event.
        wanted = EVENT_REASONS_FOR.get(signal.reason, ())
        if event_message or not wanted or now - failed[1] >= EVENT_GRACE_S:
            raise WorkloadFailed(
                self.workload,
                reason=signal.reason,
                pod=_subject(self.namespace, signal) if signal.pod else None,
                detail=_with_persistence(signal.detail, failed[0].persisted_s),
                event_message=event_message,
                log_lines=_log_lines(self.api, self.namespace, signal),
            )

    def on_message(self, message: StreamMessage, group: WatchGroup) -> None:
        """Progress lines for what the streams deliver between looks."""
        if message.kind == "resync" and message.spec is not None:
            self.notify(
                self.workload, f"watch on {message.spec.describe()} restarted: {message.note}"
            )
        elif message.kind == "event" and message.spec == self.event_spec and message.obj:
            tracked = {self.workload.name} | set(group.cache[self.pod_spec])
            _note_event(message.obj, self.namespace, tracked, self.notify)


def _with_persistence(detail: str, persisted_s: float) -> str:
    if persisted_s < 1.0:
        return detail
    return f"{detail} (persisted {persisted_s:.0f}s)"


def _subject(namespace: str, signal: Signal) -> ObjectRef:
    """The object a signal is about: a pod, or the object that could not create one."""
    return ObjectRef(signal.api_version, signal.kind, namespace, signal.pod)


def _events_by_name(name: str, pods: list[JsonDict], events: list[JsonDict]) -> list[JsonDict]:
    pod = next((p for p in pods if mapping_at(p, "metadata").get("name") == name), None)
    return _events_for(pod or {"metadata": {"name": name}}, events)


def _capture_crashes(
    api: k8s_client.ApiClient,
    namespace: str,
    seen: Incarnations,
    pods: list[JsonDict],
    captured: set[tuple[str, str, int]],
) -> Incarnations:
    """Read the log of each container exit on a stable-named pod once, as soon as it shows.

    Its controller may delete the pod right after (LWS recreates the group on the first
    restart), and with the pod goes its log; the lines are kept for the crash-loop report.
    """
    crash = seen.last_crash
    for pod in pods:
        meta = pod.get("metadata") or {}
        if stable_slot(pod) is None:
            continue
        found = crash_to_capture(pod)
        if found is None:
            continue
        container, exit_code, reason, previous = found
        restarts = max(
            (cs.restart_count for cs in PodView(pod).container_statuses if cs.name == container),
            default=0,
        )
        key = (str(meta.get("uid")), container, restarts)
        if key in captured:
            continue
        captured.add(key)
        order = (True, False) if previous else (False, True)
        lines = _read_log_lines(api, namespace, str(meta.get("name")), container, order)
        # A pod deleted before its log was read leaves no lines: an earlier crash that has
        # them explains the loop better than the latest that has none.
        if lines or crash is None or not crash.log_lines:
            crash = Crash(str(meta.get("name")), container, exit_code, reason, tuple(lines))
    return Incarnations(seen.uids, crash)


def read_autoscaler_status(api: k8s_client.ApiClient) -> JsonDict | None:
    """cluster-autoscaler's status ConfigMap (None when there is none); the worker's RBAC
    grants `get` on exactly this object (manifests/rbac/worker.yaml.j2)."""
    configmap: JsonDict | None = call_with_retry(lambda: get(api, AUTOSCALER_STATUS))
    return configmap


class _AutoscalerView:
    """cluster-autoscaler's status ConfigMap, read when an unschedulable pod needs it.

    Read at most every AUTOSCALER_REFRESH_S: the autoscaler rewrites it once per loop
    (--scan-interval, 10 s by default). A client not allowed to read kube-system sees no
    autoscaler, and Unschedulable pods then rely on the per-pod events alone.
    """

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self._api = api
        self._state: Autoscaler = NO_AUTOSCALER
        self._read_at: float | None = None

    def view(self, pods: list[JsonDict], now: float) -> Autoscaler:
        if not any(_unscheduled(p) for p in pods):
            return self._state
        if self._read_at is not None and now - self._read_at < AUTOSCALER_REFRESH_S:
            return self._state
        self._read_at = now
        try:
            configmap = read_autoscaler_status(self._api)
        except UnauthorizedError as exc:
            log.info("cannot read %s: %s", AUTOSCALER_STATUS, exc)
            configmap = None
        except RolloutError as exc:
            # Advisory only: keep the last answer rather than end the wait over it.
            log.warning("reading %s failed: %s", AUTOSCALER_STATUS, exc)
            return self._state
        self._state = autoscaler_from_configmap(configmap)
        return self._state


def _unscheduled(pod: Mapping[str, Any]) -> bool:
    """The scheduler found no node for it (not merely: not bound yet)."""
    scheduled = _conditions(pod).get("PodScheduled") or {}
    return str(scheduled.get("status")) == "False" and scheduled.get("reason") == "Unschedulable"


def _missing(
    workload: ObjectRef, obj: JsonDict | None, pods: list[JsonDict], selector: str | None
) -> list[str]:
    if obj is None:
        return [f"{workload} does not exist"]
    missing = [f"{workload}: {m}" for m in workload_missing(obj)]
    if not pods:
        missing.append(f"no pods{' matching ' + selector if selector else ''} yet")
    for pod in sorted(pods, key=lambda p: str(mapping_at(p, "metadata").get("name"))):
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
