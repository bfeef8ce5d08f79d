"""The refresh flow (deployment `refresh-model`, daily by default): keep a service on what the
hub's branch points at now.

Unchanged content and spec: finish with "up to date" after reads only -- no lease, no write to
OSS or the cluster. Otherwise, under the service's rollout lease: copy unchanged files into the
new revision prefix inside OSS, then run the deploy flow as a subflow on the spec pinned to the
new revision (its mirror transfers only what changed; its gate and rollback apply), then
remove older revision prefixes beyond `keep_revisions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prefect import flow
from prefect.logging import get_run_logger
from pydantic import Field

from flows.deploy import deploy
from llm_rollout.refresh import pinned
from llm_rollout.spec import ServiceSpec
from tasks.refresh import clean_revisions, copy_unchanged_files, inspect, rollout_lease


@dataclass
class RefreshResult:
    status: str  # "up-to-date" or "rolled-out"
    revision: str
    reason: str
    release: str | None = None
    copied_bytes: int = 0
    changed_bytes: int = 0
    deleted_revisions: tuple[str, ...] = ()


@flow(
    name="refresh-model",
    flow_run_name="refresh-{spec.namespace}-{spec.name}",
    description="Roll a service forward to what the hub's branch points at now, moving only "
    "changed files; do nothing when up to date.",
)
def refresh(
    spec: ServiceSpec,
    keep_revisions: Annotated[int, Field(ge=1, le=100)] = 2,
    lock_wait_s: Annotated[int, Field(ge=0, le=86_400)] = 1800,
) -> RefreshResult:
    """Refresh `spec`'s service from its hub branch.

    Args:
        spec: The service spec (its `model.modelscope.revision` is the branch to follow).
        keep_revisions: Newest complete revisions kept in OSS after a promotion; the serving
            and previous revisions are always kept.
        lock_wait_s: How long to wait for another rollout of the same service (0: fail fast).
    """
    logger = get_run_logger()
    plan = inspect(spec)
    if plan.up_to_date:
        logger.info("nothing to roll out: %s", plan.reason)
        return RefreshResult("up-to-date", plan.target_revision, plan.reason)
    with rollout_lease(spec.namespace, spec.name, wait_s=float(lock_wait_s)):
        # Another run may have refreshed while this one waited for the lease.
        plan = inspect(spec)
        if plan.up_to_date:
            logger.info("nothing to roll out: %s", plan.reason)
            return RefreshResult("up-to-date", plan.target_revision, plan.reason)
        target = pinned(spec, plan.target_revision)
        if plan.copies:
            copy_unchanged_files(spec, plan)
        logger.info(
            "rolling out revision %s: %d changed file(s), %d bytes to transfer",
            plan.target_revision,
            len(plan.changed),
            plan.changed_bytes,
        )
        result = deploy(target)
        protected = [r for r in (plan.target_revision, plan.deployed_revision) if r]
        deleted = clean_revisions(target, keep_revisions, protected)
    return RefreshResult(
        "rolled-out",
        plan.target_revision,
        plan.reason,
        release=result.release,
        copied_bytes=plan.copied_bytes,
        changed_bytes=plan.changed_bytes,
        deleted_revisions=tuple(deleted),
    )
