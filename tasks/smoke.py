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
from typing import Any

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
from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.objects import secret_value
from llm_rollout.metrics import MetricsReading, fetch_metrics
from llm_rollout.smoke import (
    SmokeReport,
    SmokeRoute,
    SmokeVerdict,
    run_smoke,
    smoke_endpoint,
    validate_smoke,
)
from llm_rollout.spec import SecretKeyRef, SmokeSpec
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
def smoke_test(
    smoke: SmokeSpec,
    *,
    service_id: ServiceId,
    model: str,
    namespace: str,
    service: str,
    port: int,
    timeout_s: float,
    base_url: str | None = None,
    api_key: SecretKeyRef | None = None,
) -> SmokeOutcome:
    """Smoke-test Service `namespace/service` on `port` serving `model`.

    The route follows `smoke.via` (see `SmokeSpec.route`): the API server's service proxy
    (works from outside the cluster with the kubeconfig alone), a port-forward to one Ready pod
    (the same reach, and request headers arrive untouched: chosen when there is an API key), or
    `base_url` (default `smoke.base_url`) directly, for in-cluster workers. `api_key` names the
    Kubernetes Secret key holding the server's API key: the value is read here and never
    becomes a parameter, log line or artifact.
    """
    logger = get_run_logger()
    direct = base_url or (str(smoke.base_url) if smoke.base_url else None)
    route = _route(smoke, direct=direct, api_key=api_key is not None)
    api = load_api_client()
    try:
        key = secret_value(api, namespace, api_key.secret_name, api_key.key) if api_key else None
        with smoke_endpoint(
            api,
            namespace=namespace,
            service=service,
            port=port,
            route=route,
            base_url=direct,
            timeout_s=timeout_s,
        ) as endpoint:
            logger.info(
                "smoke test of Service %s/%s port %d via %s",
                namespace,
                service,
                port,
                endpoint.route,
            )
            report = run_smoke(
                endpoint.client,
                endpoint.base_url,
                model=model,
                messages=[m.model_dump() for m in smoke.messages],
                max_tokens=smoke.max_tokens,
                api_key=key,
                timeout_s=timeout_s,
                sampling=_sampling(smoke),
                stream=smoke.stream,
            )
            metrics = fetch_metrics(endpoint.client, endpoint.base_url, timeout_s=timeout_s)
    finally:
        api.close()  # type: ignore[no-untyped-call]
    verdict = validate_smoke(report, smoke.expect)
    for call in report.calls:
        logger.info(
            "Service %s/%s smoke %s: HTTP %s, %s ms, TTFT %s ms",
            namespace,
            service,
            call.call,
            call.status,
            _ms(call.latency_ms),
            _ms(call.ttft_ms),
        )
    if verdict.passed:
        logger.info(
            "Service %s/%s smoke test passed; answer: %r", namespace, service, report.answer[:200]
        )
    else:
        logger.warning(
            "Service %s/%s smoke test failed: %s", namespace, service, "; ".join(verdict.failures)
        )
    create_table_artifact(
        key=artifact_key(SMOKE_CALLS, service_id),
        table=[{k: v for k, v in row.items() if v is not None} for row in report.as_rows()],
        description=f"Smoke-test calls to Service {namespace}/{service}",
    )
    if metrics.summary is not None:
        summary = metrics.summary
        ttft = summary.ttft
        logger.info(
            "Service %s/%s /metrics: %s requests, %s prompt / %s generation tokens, TTFT avg %s ms "
            "over %s requests",
            namespace,
            service,
            summary.requests,
            summary.prompt_tokens,
            summary.generation_tokens,
            _ms(ttft.avg_s * 1000 if ttft and ttft.avg_s is not None else None),
            ttft.count if ttft else 0,
        )
        create_table_artifact(
            key=artifact_key(SMOKE_METRICS, service_id),
            table=_metrics_rows(metrics),
            description=f"Engine /metrics of Service {namespace}/{service} after the smoke test",
        )
    else:
        logger.warning(
            "Service %s/%s /metrics not summarized: %s", namespace, service, metrics.error
        )
    create_markdown_artifact(
        key=artifact_key(SMOKE_VERDICT, service_id),
        markdown=smoke_verdict_markdown(namespace, service, report, verdict, metrics),
        description=f"Smoke verdict for Service {namespace}/{service}",
    )
    return SmokeOutcome(report=report, verdict=verdict, metrics=metrics)


def _route(smoke: SmokeSpec, *, direct: str | None, api_key: bool) -> SmokeRoute:
    # A base URL given by the caller (not in the spec) counts as smoke.base_url for `auto`.
    if smoke.via == "auto" and direct is not None:
        return "base-url"
    return smoke.route(api_key=api_key)


def _metrics_rows(metrics: MetricsReading) -> list[dict[str, Any]]:
    assert metrics.summary is not None
    return metrics.summary.as_rows()


def _sampling(smoke: SmokeSpec) -> dict[str, float | int]:
    sampling: dict[str, float | int] = {"temperature": smoke.temperature, "top_p": smoke.top_p}
    if smoke.seed is not None:
        sampling["seed"] = smoke.seed
    return sampling


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
