"""Prefect edge of the day-2 actions: read the serving workload, apply a change, revert it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from prefect.logging import get_run_logger

from llm_rollout.errors import PermanentError
from llm_rollout.kinds import PodRoll
from llm_rollout.kube.objects import FIELD_MANAGER, apply, get
from llm_rollout.kube.resources import JsonDict, ObjectRef
from llm_rollout.kube.session import process_session
from llm_rollout.kube.watching import call_with_retry
from llm_rollout.locking import held_lease
from llm_rollout.redeploy import (
    PodIncarnations,
    RedeployRequest,
    applyable,
    changed_workload,
    expected_roll,
    release_service,
    revert_incarnations,
    served_model,
    serving_workload,
    wait_rolled,
    workload_incarnations,
)
from llm_rollout.release.services import rollback_to_previous
from llm_rollout.spec import SecretKeyRef
from tasks.policy import api_task


@dataclass(frozen=True)
class AppliedChange:
    release: str
    workload: ObjectRef
    before: JsonDict  # the workload as it was, applyable: what a failed gate restores
    service_name: str
    service_port: int
    model: str
    api_key: SecretKeyRef | None
    # How the pods take the change (None: no pod-template change) and who ran before it.
    roll: PodRoll | None = None
    pods_before: PodIncarnations | None = None


@api_task("apply-change", timeout_seconds=300)
def apply_change(request: RedeployRequest) -> AppliedChange:
    """Apply the request's change to the serving release's workload (SSA, one field manager)."""
    logger = get_run_logger()
    api = process_session().api
    release, workload = serving_workload(api, request.namespace, request.service)
    roll = expected_roll(workload, request)  # refuses a change the pods would not see
    desired = changed_workload(workload, request, datetime.now(UTC))
    before = workload_incarnations(api, workload) if roll is not None else None
    ref = ObjectRef.of(desired)
    # What the smoke gate needs is read before any write, so a workload it cannot test
    # is refused unchanged.
    service_name, port = release_service(api, request.namespace, request.service, release)
    model, key = served_model(desired)
    apply(api, desired, field_manager=FIELD_MANAGER, force=True, dry_run=True)
    apply(api, desired, field_manager=FIELD_MANAGER, force=True)
    logger.info("%s: applied %s to %s (release %s)", request.action, _what(request), ref, release)
    return AppliedChange(
        release, ref, applyable(workload), service_name, port, model, key, roll, before
    )


def _what(request: RedeployRequest) -> str:
    parts = []
    if request.image:
        parts.append(f"image {request.image}")
    if request.engine_args:
        parts.append("engine args " + " ".join(request.engine_args))
    if request.replicas is not None:
        parts.append(f"replicas {request.replicas}")
    return ", ".join(parts) or "a pod-template restart annotation"


@api_task("prove-rolled", timeout_seconds=300)
def prove_rolled(change: AppliedChange, timeout_s: float) -> list[str]:
    """Wait until every pod of the workload runs the changed template; return their names."""
    if change.roll is None or change.pods_before is None:
        return []
    api = process_session().api
    workload = call_with_retry(lambda: get(api, change.workload))
    if workload is None:
        raise PermanentError(f"{change.workload} disappeared after the change")
    # A rollout lease lost meanwhile ends the wait at once (LeaseLostError).
    pods = wait_rolled(
        api, workload, change.pods_before, change.roll, timeout_s, interrupt=held_lease()
    )
    how = "restarted in place or replaced" if change.roll.mode == "in-place" else "new"
    get_run_logger().info(
        "%s: the change reached every pod (%s): %s", change.workload, how, ", ".join(pods)
    )
    return pods


@api_task("revert-change", timeout_seconds=300)
def revert_change(change: AppliedChange) -> AppliedChange:
    """Apply the workload as it was before the change; return the revert as a change whose
    roll `prove_rolled` can wait for (the pods the change made must go again)."""
    api = process_session().api
    pods_before = None
    if change.roll is not None and change.pods_before is not None:
        now = workload_incarnations(api, change.before)
        pods_before = revert_incarnations(change.pods_before, now)
    apply(api, change.before, field_manager=FIELD_MANAGER, force=True)
    get_run_logger().warning("%s restored to its state before the change", change.workload)
    return replace(change, pods_before=pods_before)


@api_task("route-to-previous", timeout_seconds=300)
def route_to_previous(namespace: str, service: str) -> ObjectRef:
    """Point the stable Service at the previous release; return that release's workload."""
    api = process_session().api
    message = rollback_to_previous(api, namespace, service)
    get_run_logger().info(message)
    _, workload = serving_workload(api, namespace, service)
    return ObjectRef.of(workload)
