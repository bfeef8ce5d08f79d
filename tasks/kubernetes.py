"""Kubernetes stages of a rollout: volumes, release apply, the late binding of the PD router,
the gate (promote / bake / retire / roll back). Each task takes the release plan
(`llm_rollout.plan.ReleasePlan`), uses the process's Kubernetes session
(`kube.session.process_session`) and runs one stage of
`llm_rollout.stages`; retries only on transient API errors.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from llm_rollout.kube.session import process_session
from llm_rollout.locking import held_lease
from llm_rollout.plan import ReleasePlan
from llm_rollout.release.bake import BakeReport, ReleaseDegraded, bake
from llm_rollout.stages import (
    AppliedRelease,
    apply_release,
    apply_volumes,
    bind_late,
    promote_release,
    retire_releases,
    roll_back_release,
)
from llm_rollout.strategy import GatePlan
from tasks.policy import api_task, retry_transient_only

__all__ = [
    "AppliedRelease",
    "bake_release",
    "bind_router_backends",
    "promote",
    "retire_previous",
    "rollback",
    "rollout",
    "volumes",
]


@api_task("volumes", timeout_seconds=900)
def volumes(plan: ReleasePlan) -> list[str]:
    """Namespace (if missing), the OSS Secret (unless RRSA), PV and PVC; wait until Bound."""
    api = process_session().api
    return apply_volumes(api, plan, get_run_logger())


@api_task("rollout", timeout_seconds=1800)
def rollout(plan: ReleasePlan) -> AppliedRelease:
    """Validate, dry-run everything, then apply the new release (after removing the serving
    one first with recreate)."""
    api = process_session().api
    # A rollout lease lost while recreate waits for the old release's pods ends the stage.
    return apply_release(api, plan, get_run_logger(), interrupt=held_lease())


@api_task("bind-router-backends", timeout_seconds=1800)
def bind_router_backends(plan: ReleasePlan) -> ReleasePlan:
    """The late binding of a RoleBasedGroup's PD router: its backend URLs name the role
    Services the controller created; returns the bound plan."""
    api = process_session().api
    return bind_late(api, plan, get_run_logger())


@api_task("promote", timeout_seconds=300)
def promote(plan: ReleasePlan) -> GatePlan:
    """Point the stable Service at the new release; the previous one stays until retired."""
    api = process_session().api
    return promote_release(api, plan, get_run_logger())


@task(
    name="bake",
    retries=2,
    retry_delay_seconds=[1, 3],
    retry_condition_fn=retry_transient_only,
    timeout_seconds=3900,
    cache_policy=NO_CACHE,
)
def bake_release(plan: ReleasePlan, window_s: float) -> BakeReport:
    """Watch the promoted release for `window_s` while the previous one can take traffic back.

    Raises `ReleaseDegraded` as soon as a pod or the workload stops serving: the flow then
    rolls back instead of retiring the previous release. Under a rollout lease,
    `LeaseLostError` as soon as the lease is lost (the flow's rollback then writes nothing).
    """
    logger = get_run_logger()
    spec, workload = plan.spec, plan.workload
    logger.info(
        "baking %s behind Service %s/%s for %.0fs (the previous release stays until then)",
        workload,
        spec.namespace,
        spec.name,
        window_s,
    )
    api = process_session().api
    try:
        report = bake(
            api,
            workload,
            window_s,
            stable_service=spec.name,
            release=plan.release,
            on_event=logger.info,
            # A rollout lease lost meanwhile ends the hold at once (LeaseLostError).
            interrupt=held_lease(),
        )
    except ReleaseDegraded as exc:
        logger.error("%s", exc)
        raise
    logger.info("%s stayed ready for %.0fs with %d pod(s)", workload, window_s, len(report.pods))
    return report


@api_task("retire-previous", timeout_seconds=900)
def retire_previous(plan: ReleasePlan, gate: GatePlan) -> list[str]:
    """Remove the releases the promotion replaced (waiting until their pods are gone)."""
    api = process_session().api
    return retire_releases(api, plan, gate, get_run_logger(), interrupt=held_lease())


@api_task("rollback", timeout_seconds=900)
def rollback(plan: ReleasePlan) -> GatePlan:
    """Remove the new release; the serving one (if any is left) keeps the stable Service."""
    api = process_session().api
    return roll_back_release(api, plan, get_run_logger(), interrupt=held_lease())
