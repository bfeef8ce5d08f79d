"""Preflight stage: read-only checks of cluster, OSS and hub, failing with every problem at once."""

from __future__ import annotations

import os

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from llm_rollout.credentials import resolve_oss_credentials
from llm_rollout.errors import PermanentError
from llm_rollout.hub import HubClient, HubSource
from llm_rollout.mirror.manifest import is_mirrored
from llm_rollout.mirror.run import mirror_model
from llm_rollout.oss import OssTarget
from llm_rollout.preflight import PreflightReport, RbgFlavor, credentials_ref, run_preflight
from llm_rollout.release import cluster_api, find_serving_release
from llm_rollout.render import render
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
def preflight(spec: ServiceSpec, release: str) -> PreflightReport:
    """Check everything the rollout of `release` needs; raise `PreflightError` listing problems."""
    logger = get_run_logger()
    with cluster_api() as api:

        def render_workloads(flavor: RbgFlavor | None) -> list[dict[str, object]]:
            # Without an RBG API the flavor does not matter for shapes that use no RBG.
            rendered = render(spec, release=release, rbg_flavor=flavor or "v0.7")
            return list(rendered.workload_objects)

        report = run_preflight(
            api,
            spec,
            render_workloads=render_workloads,
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


@task(
    name="mirror",
    retries=3,
    retry_delay_seconds=[5, 15, 45],
    retry_condition_fn=retry_transient_only,
    timeout_seconds=24 * 3600,
    cache_policy=NO_CACHE,
)
def mirror_stage(spec: ServiceSpec) -> str:
    """Mirror the spec's ModelScope revision into OSS unless it is already mirrored and
    verified (or the spec points at weights already in OSS). Returns what happened."""
    logger = get_run_logger()
    source = spec.model.modelscope
    if source is None:
        logger.info("model comes from %s; nothing to mirror", spec.model.oss_uri)
        return f"skipped: weights already at {spec.model.oss_uri}"
    ref = credentials_ref(spec)
    if ref is None:  # the spec refuses a ModelScope source without keys; keep mypy honest
        raise PermanentError("storage.credentials: mirroring needs OSS AccessKeys")
    credentials = resolve_oss_credentials(ref)
    target = OssTarget(
        endpoint=spec.storage.endpoint,
        bucket=spec.storage.bucket,
        region=spec.storage.region,
        prefix=spec.model_object_prefix,
    )
    hub_source = HubSource(
        model_id=source.model_id,
        revision=source.revision,
        allow_patterns=tuple(source.allow_patterns),
        ignore_patterns=tuple(source.ignore_patterns),
    )
    hub = HubClient(endpoint=os.environ.get("MODELSCOPE_ENDPOINT") or None)
    status = is_mirrored(target, credentials, hub.list_files(hub_source))
    if status.complete:
        logger.info(
            "%s@%s already mirrored and verified at %s",
            source.model_id,
            source.revision,
            status.manifest_uri,
        )
        return f"skipped: already mirrored ({status.manifest_uri})"
    logger.info(
        "mirroring %s@%s to %s (%s)",
        source.model_id,
        source.revision,
        target.uri(target.key()),
        status.reason or "no manifest",
    )
    result = mirror_model(hub_source, target, credentials, hub=hub)
    logger.info(
        "mirrored %d bytes in %.1fs; manifest %s",
        result.bytes_sent,
        result.seconds,
        result.manifest_uri,
    )
    return f"mirrored {result.bytes_sent} bytes in {result.seconds:.1f}s"
