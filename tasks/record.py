"""Record stage: the run-summary artifact and the outcome event.

The markdown is built by `llm_rollout.artifacts`, the payload by `llm_rollout.record`; this
edge only hands them to Prefect. The event is emitted from the flow's own run context so
Prefect relates it to the run.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.logging import get_run_logger

from llm_rollout.artifacts import RUN_SUMMARY, ServiceId, artifact_key, summary_markdown
from llm_rollout.record import (
    EVENT_FAILED,
    EVENT_READY,
    RunSummary,
    event_payload,
    service_resource_id,
)
from tasks.policy import retry_transient_only


@task(
    name="record",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient_only,
    timeout_seconds=60,
)
def record_run(summary: RunSummary) -> str:
    """Publish the summary artifact (keyed by the service) and the ready/failed event.

    Returns the event name emitted.
    """
    logger = get_run_logger()
    markdown = summary_markdown(summary)
    create_markdown_artifact(
        markdown=markdown,
        key=artifact_key(RUN_SUMMARY, ServiceId(summary.kind, summary.namespace, summary.service)),
        description=f"Rollout of {summary.namespace}/{summary.service}: {summary.outcome}",
    )
    event = EVENT_READY if summary.outcome == "promoted" else EVENT_FAILED
    emit_event(
        event=event,
        resource={
            "prefect.resource.id": service_resource_id(summary.namespace, summary.service),
            "prefect.resource.name": summary.service,
            "llm-rollout.namespace": summary.namespace,
        },
        payload=event_payload(summary),
    )
    logger.info(
        "recorded %s for Service %s/%s (release %s)",
        event,
        summary.namespace,
        summary.service,
        summary.release or "-",
    )
    return event
