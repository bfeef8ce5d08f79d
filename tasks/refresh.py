"""Prefect edge of the refresh: read-only inspection, server-side copies, retention, and the
per-service rollout lease held by a flow run. Logic lives in `llm_rollout.refresh`,
`llm_rollout.incremental`, `llm_rollout.retention` and `llm_rollout.locking`."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import oss2
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from llm_rollout.artifacts import REFRESH_COPIES, ServiceId, artifact_key
from llm_rollout.credentials import resolve_oss_credentials
from llm_rollout.errors import PermanentError
from llm_rollout.hub import HubClient
from llm_rollout.incremental import CopyResult, copy_unchanged
from llm_rollout.kube.session import process_session
from llm_rollout.locking import ServiceLock, service_lock
from llm_rollout.mirror.manifest import manifest_key
from llm_rollout.oss import open_bucket
from llm_rollout.preflight import credentials_ref
from llm_rollout.refresh import RefreshPlan, inspect_refresh, revision_target
from llm_rollout.retention import (
    delete_revision,
    list_revisions,
    model_root,
    plan_retention,
    revisions_in_use,
)
from llm_rollout.spec import ServiceSpec
from tasks.policy import api_task


def _bucket(spec: ServiceSpec, revision: str) -> oss2.Bucket:
    ref = credentials_ref(spec)
    if ref is None:
        raise PermanentError("storage.credentials: a refresh reads and writes OSS")
    return open_bucket(revision_target(spec, revision), resolve_oss_credentials(ref))


@api_task("inspect-refresh", timeout_seconds=300)
def inspect(spec: ServiceSpec) -> RefreshPlan:
    """Compare the hub's branch now with the serving revision's manifest (reads only)."""
    logger = get_run_logger()
    api = process_session().api
    assert spec.model.modelscope is not None  # inspect_refresh says so clearly otherwise
    plan = inspect_refresh(
        spec,
        hub=HubClient(),
        bucket=_bucket(spec, spec.model.modelscope.revision),
        api=api,
    )
    logger.info("%s/%s: %s", spec.namespace, spec.name, plan.reason)
    return plan


@api_task("copy-unchanged", timeout_seconds=6 * 3600)
def copy_unchanged_files(spec: ServiceSpec, plan: RefreshPlan) -> CopyResult:
    """Copy the unchanged files into the new revision prefix inside OSS (idempotent)."""
    logger = get_run_logger()
    result = copy_unchanged(_bucket(spec, plan.target_revision), plan.copies)
    logger.info(
        "copied %d unchanged file(s), %d bytes, inside OSS in %.1fs; %d already present",
        len(result.copied),
        result.bytes_copied,
        result.seconds,
        len(plan.copies) - len(result.copied),
    )
    create_table_artifact(
        key=artifact_key(REFRESH_COPIES, ServiceId.of(spec)),
        table=[
            {"path": o.path, "method": o.method, "bytes": o.size, "requests": o.requests}
            for o in result.outcomes
        ],
        description=f"Server-side copies into revision {plan.target_revision}",
    )
    return result


@api_task("clean-revisions", timeout_seconds=1800)
def clean_revisions(spec: ServiceSpec, keep: int, protected: list[str]) -> list[str]:
    """Delete revision prefixes beyond the newest `keep`, never a protected or in-use one."""
    logger = get_run_logger()
    source = spec.model.modelscope
    if source is None:
        return []
    bucket = _bucket(spec, source.revision)
    target = revision_target(spec, source.revision)
    root = model_root(spec.storage.prefix, source.model_id)
    api = process_session().api
    in_use = revisions_in_use(api, source.model_id)
    plan = plan_retention(
        list_revisions(bucket, target, root), keep=keep, protected={*protected, *in_use}
    )
    for revision in plan.incomplete:
        logger.info("leaving %s%s/ alone: no manifest (maybe a mirror in progress)", root, revision)
    deleted: list[str] = []
    for revision in plan.delete:
        folder = f"{root}{revision}/"
        gone = delete_revision(bucket, folder, manifest_key(revision_target(spec, revision)))
        logger.info("deleted revision %s: %d objects, %d bytes", folder, gone.objects, gone.bytes)
        deleted.append(revision)
    logger.info("kept revisions %s of %s", ", ".join(plan.keep), source.model_id)
    return deleted


@contextmanager
def rollout_lease(namespace: str, service: str, *, wait_s: float) -> Iterator[ServiceLock]:
    """Hold the service's rollout lease for this flow run (re-entrant across its subflows)."""
    logger = get_run_logger()
    run_id = str(flow_run.get_id() or "local")
    owner = str(flow_run.get_root_flow_run_id() or run_id)
    holder = f"{flow_run.get_flow_name()}/{flow_run.get_name()} (flow run {run_id}) on " + (
        socket.gethostname()
    )
    api = process_session().api
    with service_lock(api, namespace, service, holder=holder, owner=owner, wait_s=wait_s) as lock:
        logger.info("rollout lease of %s/%s held by %s", namespace, service, holder)
        yield lock
        logger.info("rollout lease of %s/%s released by %s", namespace, service, holder)
