"""Readiness stage: watch the new release's workload until it serves, or explain why not."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from llm_rollout.artifacts import (
    READINESS,
    ServiceId,
    artifact_key,
    readiness_failure_markdown,
    readiness_timeout_markdown,
)
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.session import process_session
from llm_rollout.locking import held_lease
from llm_rollout.readiness import ReadinessTimeout, ReadyReport, WorkloadFailed, wait_ready
from llm_rollout.readiness_rules import DEFAULT_TOLERANCES, Tolerances
from tasks.policy import retry_transient_only

# The task's own limit only backstops `timeout_s`, which `wait_ready` enforces precisely.
TASK_TIMEOUT_S = 3 * 3600


@task(
    name="readiness",
    retries=2,
    retry_delay_seconds=[5, 15],
    retry_condition_fn=retry_transient_only,
    timeout_seconds=TASK_TIMEOUT_S,
    cache_policy=NO_CACHE,
)
def wait_workload_ready(
    workload: ObjectRef,
    *,
    service_id: ServiceId,
    timeout_s: float,
    pod_selector: str | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> ReadyReport:
    """Block until `workload` and all its serving pods are ready.

    `tolerances` (from the spec's rollout section) bound how long a signal that can clear by
    itself (a pull rate limit, a slow mount, a NotReady node, a pending scale-up) may persist.

    Raises `WorkloadFailed` (reason, pod, event, log lines) or `ReadinessTimeout` (what is
    missing); both are permanent and also published as a markdown artifact in the history of
    `service_id`. Under a rollout lease, `LeaseLostError` as soon as the lease is lost.
    """
    logger = get_run_logger()
    logger.info("waiting up to %.0fs for %s to become ready", timeout_s, workload)
    api = process_session().api
    try:
        report = wait_ready(
            api,
            workload,
            timeout_s=timeout_s,
            pod_selector=pod_selector,
            tolerances=tolerances,
            on_event=lambda ref, message: logger.info("%s: %s", ref, message),
            # A rollout lease lost meanwhile ends the wait at once (LeaseLostError).
            interrupt=held_lease(),
        )
    except WorkloadFailed as exc:
        logger.error("%s failed: %s", workload, exc)
        create_markdown_artifact(
            key=artifact_key(READINESS, service_id),
            markdown=readiness_failure_markdown(
                str(workload), exc.reason, str(exc.pod or "-"), exc.event_message, exc.log_lines
            ),
            description=f"{workload} failed: {exc.reason}",
        )
        raise
    except ReadinessTimeout as exc:
        logger.error("%s", exc)
        create_markdown_artifact(
            key=artifact_key(READINESS, service_id),
            markdown=readiness_timeout_markdown(str(workload), timeout_s, exc.missing),
            description=f"{workload} readiness timeout",
        )
        raise
    logger.info(
        "%s ready after %.1fs with %d pod(s): %s",
        workload,
        report.elapsed_s,
        len(report.pods),
        ", ".join(str(p) for p in report.pods),
    )
    return report
