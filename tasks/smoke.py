"""Smoke-test stage: call the new release through the API server's service proxy, a
port-forward to one of its pods (the default when the server requires an API key: the proxy
cannot carry one) or a direct URL, then judge the answers with great-expectations. The verdict
is returned, not raised: the gate decides what a failed smoke test means. Afterwards the
server's Prometheus `/metrics` is read along the same route and summarized (requests, tokens,
time to first token) in the outcome and the artifacts; an unreadable `/metrics` is noted, it
never fails the smoke test.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from llm_rollout.artifacts import (
    SMOKE_CALLS,
    SMOKE_METRICS,
    SMOKE_VERDICT,
    ServiceId,
    artifact_key,
    smoke_verdict_markdown,
)
from llm_rollout.kube.session import process_session
from llm_rollout.locking import held_lease
from llm_rollout.metrics import MetricsReading
from llm_rollout.smoke import (
    SmokeReport,
    SmokeTarget,
    SmokeVerdict,
    smoke_release,
    validate_smoke,
)
from tasks.policy import retry_transient_only

# The calls of one smoke test, each bounded by the spec's smoke_timeout_s (an httpx timeout
# per call): /v1/models, the chat completion, the streamed one, /metrics.
SMOKE_CALLS_MAX = 4


@dataclass(frozen=True)
class SmokeOutcome:
    """The observations and the verdict of one smoke test."""

    report: SmokeReport
    verdict: SmokeVerdict
    # The server's /metrics after the calls (through one pod behind the Service); None when
    # it was not read.
    metrics: MetricsReading | None = None


@task(
    name="smoke-test",
    retries=3,
    retry_delay_seconds=[3, 10, 20],
    retry_condition_fn=retry_transient_only,
    timeout_seconds=3600,
    cache_policy=NO_CACHE,
)
def smoke_test(target: SmokeTarget) -> SmokeOutcome:
    """Smoke-test `target` (`llm_rollout.smoke.SmokeTarget`), judge the answers, publish them.

    The route follows `smoke.via` (see `SmokeSpec.route`): the API server's service proxy
    (works from outside the cluster with the kubeconfig alone), a port-forward to one Ready pod
    (the same reach, and request headers arrive untouched: chosen when there is an API key), or
    `smoke.base_url` directly, for in-cluster workers. The API key is read from the Secret its
    reference names and never becomes a parameter, log line or artifact. Under a rollout
    lease, `LeaseLostError` as soon as the lease is lost, the call in progress cut.
    """
    logger = get_run_logger()
    where = f"Service {target.namespace}/{target.service}"
    api = process_session().api
    report, metrics = smoke_release(
        api,
        target,
        on_route=lambda route: logger.info(
            "smoke test of %s port %d via %s", where, target.port, route
        ),
        # A rollout lease lost meanwhile cuts the call in progress (LeaseLostError).
        interrupt=held_lease(),
    )
    verdict = validate_smoke(report, target.smoke.expect)
    _log_outcome(where, report, verdict, metrics)
    service_id = ServiceId(target.kind, target.namespace, target.name)
    create_table_artifact(
        key=artifact_key(SMOKE_CALLS, service_id),
        table=[{k: v for k, v in row.items() if v is not None} for row in report.as_rows()],
        description=f"Smoke-test calls to {where}",
    )
    if metrics.summary is not None:
        create_table_artifact(
            key=artifact_key(SMOKE_METRICS, service_id),
            table=metrics.summary.as_rows(),
            description=f"Engine /metrics of {where} after the smoke test",
        )
    create_markdown_artifact(
        key=artifact_key(SMOKE_VERDICT, service_id),
        markdown=smoke_verdict_markdown(target.namespace, target.service, report, verdict, metrics),
        description=f"Smoke verdict for {where}",
    )
    return SmokeOutcome(report=report, verdict=verdict, metrics=metrics)


def _log_outcome(
    where: str, report: SmokeReport, verdict: SmokeVerdict, metrics: MetricsReading
) -> None:
    logger = get_run_logger()
    for call in report.calls:
        logger.info(
            "%s smoke %s: HTTP %s, %s ms, TTFT %s ms",
            where,
            call.call,
            call.status,
            _ms(call.latency_ms),
            _ms(call.ttft_ms),
        )
    if verdict.passed:
        logger.info("%s smoke test passed; answer: %r", where, report.answer[:200])
    else:
        logger.warning("%s smoke test failed: %s", where, "; ".join(verdict.failures))
    summary = metrics.summary
    if summary is None:
        logger.warning("%s /metrics not summarized: %s", where, metrics.error)
        return
    ttft = summary.ttft
    logger.info(
        "%s /metrics: %s requests, %s prompt / %s generation tokens, TTFT avg %s ms over %s "
        "requests",
        where,
        summary.requests,
        summary.prompt_tokens,
        summary.generation_tokens,
        _ms(ttft.avg_s * 1000 if ttft and ttft.avg_s is not None else None),
        ttft.count if ttft else 0,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
