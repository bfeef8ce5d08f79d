"""Preflight stage: read-only checks of cluster, OSS and hub, failing with every problem at once."""

from __future__ import annotations

import functools

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from llm_rollout.kube.session import process_session
from llm_rollout.plan import render_for
from llm_rollout.preflight import PreflightReport, run_preflight
from llm_rollout.release.inventory import find_serving_release
from llm_rollout.render import RenderedRelease
from llm_rollout.spec import ServiceSpec
from tasks.policy import retry_transient_only


@task(
    name="preflight",
    retries=2,
    retry_delay_seconds=[2, 5],
    retry_condition_fn=retry_transient_only,
    timeout_seconds=120,
    cache_policy=NO_CACHE,
)
def preflight(
    spec: ServiceSpec, release: str, spec_hash: str, rendered: RenderedRelease | None = None
) -> PreflightReport:
    """Check everything the rollout of `release` (of the spec hashed `spec_hash`) needs; raise
    `PreflightError` listing problems.

    The report carries the release as rendered for its capacity check (for the release plan);
    `rendered`, from an earlier pass of the same run, is reused when it still fits.
    """
    logger = get_run_logger()
    api = process_session().api
    report = run_preflight(
        api,
        spec,
        render_release=functools.partial(
            render_for, spec, release, spec_hash=spec_hash, reuse=rendered
        ),
        find_serving=lambda a: find_serving_release(a, spec.namespace, spec.name),
    )
    for check in report.checks:
        logger.info("preflight ok: %s", check)
    for warning in report.warnings:
        logger.warning("preflight: %s", warning)
    logger.info(
        "preflight for Service %s/%s: strategy %s, serving release %s",
        spec.namespace,
        spec.name,
        report.strategy,
        report.serving_release or "none",
    )
    return report
