"""Bake: the promoted release watched for a window while the previous one can still take the
traffic back; the first sign that it no longer serves ends the bake as `ReleaseDegraded`."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.kube.objects import get
from llm_rollout.kube.resources import JsonDict, ObjectRef
from llm_rollout.kube.views import ObjectView, items_at, mapping_at
from llm_rollout.kube.watching import (
    Failed,
    Holding,
    Interrupt,
    Selector,
    Verdict,
    WaitFailed,
    WaitTimeout,
    call_with_retry,
    wait_until,
)
from llm_rollout.readiness import pod_selector_for, workload_missing
from llm_rollout.vocabulary import RELEASE_LABEL

# Waiting reasons of a container that is merely starting, not failing.
_STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})
# A bake that cannot even list what it watches within this much extra time gives up.
BAKE_SYNC_SLACK_S = 30.0


class ReleaseDegraded(PermanentError):
    """The promoted release stopped being healthy during its bake window."""

    def __init__(self, workload: ObjectRef, reason: str, after_s: float) -> None:
        super().__init__(f"{workload} degraded {after_s:.1f}s into its bake window: {reason}")
        self.workload = workload
        self.reason = reason
        self.after_s = after_s


@dataclass(frozen=True)
class BakeReport:
    """A bake window that passed: the workload and its pods stayed ready throughout."""

    workload: ObjectRef
    window_s: float
    pods: tuple[ObjectRef, ...]


def _pod_name(pod: Mapping[str, Any]) -> str:
    return str(ObjectView(pod).metadata.name or None)


def _restarts(pod: Mapping[str, Any]) -> dict[str, int]:
    statuses = items_at(pod, "status", "containerStatuses")
    return {str(cs.get("name")): int(cs.get("restartCount") or 0) for cs in statuses}


def pod_degradation(pod: Mapping[str, Any], baseline_restarts: Mapping[str, int]) -> str | None:
    """Why a pod that was ready no longer counts as serving, or None while it still does."""
    view = ObjectView(pod)
    ref = f"Pod {view.metadata.namespace}/{view.metadata.name or None}"
    if view.metadata.deletion_timestamp:
        return f"{ref} is being deleted"
    for cs in items_at(pod, "status", "containerStatuses"):
        name = cs.get("name")
        running_now = mapping_at(cs, "state", "terminated")
        terminated = running_now or mapping_at(cs, "lastState", "terminated")
        restarted = int(cs.get("restartCount") or 0) > baseline_restarts.get(str(name), 0)
        if running_now or restarted:
            why = terminated.get("reason") or "terminated"
            code = terminated.get("exitCode")
            return f"{ref} container {name} exited ({why}, exit code {code})"
        waiting = mapping_at(cs, "state", "waiting")
        reason = waiting.get("reason")
        if reason and reason not in _STARTING_REASONS:
            message = waiting.get("message") or ""
            return f"{ref} container {name}: {reason}" + (f" ({message})" if message else "")
    ready = view.condition("Ready")
    if ready is not None and not ready.is_true:
        return f"{ref} not Ready ({ready.reason or 'no reason given'})"
    return None


def bake(
    api: k8s_client.ApiClient,
    workload: ObjectRef,
    window_s: float,
    *,
    stable_service: str,
    release: str,
    on_event: Callable[[str], None] | None = None,
    interrupt: Interrupt | None = None,
) -> BakeReport:
    """Watch a promoted `workload` and its pods for `window_s`; raise `ReleaseDegraded` at the
    first sign it no longer serves (a pod not Ready, a container exiting or restarting, a pod
    deleted, the workload's own status not ready), or when the stable Service stops selecting
    `release` (someone ran `llm-rollout rollback` meanwhile: retiring the previous release
    then would take down what serves).

    Watch-based: a failure is noticed when the API server reports it, not at the end of the
    window, so the caller can hand traffic back to the previous release at once. An
    `interrupt` (the rollout lease held) ends the bake with its error as soon as it fires.
    """
    if workload.namespace is None:
        raise PermanentError(f"{workload}: serving workloads are namespaced; namespace missing")
    namespace = workload.namespace
    notify = on_event or (lambda message: None)
    initial = call_with_retry(lambda: get(api, workload))
    if initial is None:
        raise ReleaseDegraded(workload, "the workload no longer exists", 0.0)
    selector, pod_filter = pod_selector_for(initial)
    service_ref = ObjectRef("v1", "Service", namespace, stable_service)
    # Restart counts when the bake began: only a count above them is news.
    baseline: dict[str, dict[str, int]] | None = None

    def still_serving(
        picture: tuple[ObjectView | None, list[ObjectView], ObjectView | None],
    ) -> Verdict[BakeReport]:
        nonlocal baseline
        obj, listed, service = picture
        pods = {p.metadata.name: dict(p.raw) for p in listed if pod_filter(dict(p.raw))}
        if baseline is None:
            baseline = {name: _restarts(pod) for name, pod in pods.items()}
            notify(f"baking {workload} with {len(pods)} pod(s) for {window_s:.0f}s")
        reason = _bake_problem(workload, obj.raw if obj is not None else None, pods, baseline)
        routed = service.at("spec", "selector").get(RELEASE_LABEL) if service is not None else None
        if routed != release:
            reason = (
                f"Service {namespace}/{stable_service} no longer routes to "
                f"release {release} (now: {routed or 'nothing'})"
            )
        if reason is not None:
            return Failed(reason)
        pod_refs = tuple(ObjectRef("v1", "Pod", namespace, name) for name in sorted(pods))
        return Holding(BakeReport(workload, window_s, pod_refs))

    started = time.monotonic()
    try:
        return wait_until(
            api,
            (workload, Selector("v1", "Pod", namespace, selector), service_ref),
            still_serving,
            window_s + BAKE_SYNC_SLACK_S,
            hold_s=window_s,
            interrupt=interrupt,
        )
    except WaitFailed as exc:
        raise ReleaseDegraded(workload, exc.reason, time.monotonic() - started) from exc
    except WaitTimeout as exc:
        # The check holds or fails on every full picture: only the first list can time out.
        raise TransientError(f"could not list {workload} and its pods to bake it") from exc


def _bake_problem(
    workload: ObjectRef,
    obj: Mapping[str, Any] | None,
    pods: Mapping[str, JsonDict],
    baseline: Mapping[str, Mapping[str, int]],
) -> str | None:
    if obj is None:
        return f"{workload} was deleted"
    gone = sorted(set(baseline) - set(pods))
    if gone:
        return f"Pod {workload.namespace}/{gone[0]} disappeared"
    if not pods:
        return f"{workload} has no pods"
    for name in sorted(pods):
        problem = pod_degradation(pods[name], baseline.get(name, {}))
        if problem:
            return problem
    missing = workload_missing(obj)
    if missing:
        return f"{workload}: " + "; ".join(missing)
    return None
