"""The deploy flow: from a validated spec to a verified, serving endpoint (or a clean rollback).

Stages: preflight -> mirror -> volumes -> rollout -> readiness -> smoke -> gate -> record.
Every stage is a task with its own retries (transient errors only) and timeout; this flow only
sequences them, times them, and turns a failed readiness or smoke test into a rollback.

The gate promotes in three steps: the stable Service switches to the new release; the new
release is baked (watched) for `rollout.promote_grace_s` while the previous release still
runs; only then is the previous release retired. A release that degrades while baking is
rolled back: the Service goes back to the previous release and the new one is removed.

One rollout per service at a time: after a first, read-only preflight (so a refused spec
writes nothing, not even a lock), the flow takes the service's rollout Lease (`tasks.refresh.
rollout_lease`, re-entrant for the root flow run, so refresh running this flow as a subflow
does not wait for itself), waiting up to `rollout.lock_wait_s` for another run and otherwise
failing with a message naming the holder. Under the lease preflight runs again: what the first
pass read (serving release, free GPUs) may have changed while another run held the lease.

The flow parameter is the `ServiceSpec` itself (the UI renders it as a form). It holds no
secret: OSS keys are resolved by the tasks that need them, from the spec's references.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from llm_rollout.artifacts import RUN_SUMMARY, ServiceId, artifact_key
from llm_rollout.errors import PermanentError, RolloutError
from llm_rollout.kube.watching import call_with_retry
from llm_rollout.locking import ServiceLock, lease_name
from llm_rollout.preflight import PreflightReport
from llm_rollout.readiness_rules import tolerances_of
from llm_rollout.record import Outcome, RunSummary, SmokeSummary, StageTiming, smoke_summary
from llm_rollout.spec import ServiceSpec, spec_hash
from llm_rollout.strategy import Strategy, new_release_id
from tasks.kubernetes import (
    AppliedRelease,
    bake_release,
    promote,
    retire_previous,
    rollback,
    rollout,
    volumes,
)
from tasks.mirror import is_mirrored_task, mirror_model_task
from tasks.policy import bounded_by
from tasks.preflight import preflight
from tasks.readiness import wait_workload_ready
from tasks.record import record_run
from tasks.refresh import rollout_lease
from tasks.smoke import SMOKE_CALLS_MAX, smoke_test


class RolloutFailed(PermanentError):
    """The new release did not pass readiness or the smoke gate and was rolled back."""


@dataclass
class DeployResult:
    """What a successful run returns (and the CLI prints)."""

    service: str
    namespace: str
    release: str
    strategy: str
    answer: str
    ttft_s: float | None
    flow_run_id: str
    summary_markdown_key: str


@dataclass
class _Timer:
    timings: list[StageTiming] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[list[str]]:
        """Time one stage; the yielded list collects a short detail for the summary."""
        detail: list[str] = []
        started = time.monotonic()
        try:
            yield detail
        except BaseException as exc:
            reason = type(exc).__name__
            self.timings.append(
                StageTiming(
                    name, time.monotonic() - started, f"failed: {reason}", "; ".join(detail)
                )
            )
            raise
        self.timings.append(StageTiming(name, time.monotonic() - started, "ok", "; ".join(detail)))

    def skipped(self, name: str, why: str) -> None:
        self.timings.append(StageTiming(name, 0.0, "skipped", why))


def _summary(
    spec: ServiceSpec,
    *,
    outcome: Outcome,
    message: str,
    release: str | None,
    report: PreflightReport | None,
    timer: _Timer,
    objects: list[str],
    smoke: SmokeSummary | None,
) -> RunSummary:
    source = spec.model.modelscope
    return RunSummary(
        kind=ServiceId.of(spec).kind,
        service=spec.name,
        namespace=spec.namespace,
        model=source.model_id if source else str(spec.model.oss_uri),
        revision=spec.model_revision,
        engine=spec.serving.engine,
        shape=spec.serving.shape,
        requested_strategy=spec.rollout.strategy,
        strategy=report.strategy if report else None,
        release=release,
        previous_release=report.serving_release if report else None,
        spec_hash=spec_hash(spec),
        outcome=outcome,
        message=message,
        objects_applied=objects,
        timings=list(timer.timings),
        smoke=smoke,
        warnings=list(report.warnings) if report else [],
        extra={
            "Kubernetes": report.server_version if report else "-",
            "free GPUs at preflight": str(report.gpus_free) if report else "-",
            **({"RBG flavor": report.rbg_flavor} if report and report.rbg_flavor else {}),
        },
    )


@dataclass
class _Run:
    """What one run has gathered so far, for the summary of whichever way it ends."""

    spec: ServiceSpec
    release: str
    timer: _Timer = field(default_factory=_Timer)
    objects: list[str] = field(default_factory=list)
    report: PreflightReport | None = None
    smoke: SmokeSummary | None = None

    def summary(self, outcome: Outcome, message: str) -> RunSummary:
        return _summary(
            self.spec,
            outcome=outcome,
            message=message,
            release=self.release,
            report=self.report,
            timer=self.timer,
            objects=self.objects,
            smoke=self.smoke,
        )

    def fail(self, outcome: Outcome, message: str) -> None:
        record_run(self.summary(outcome, message))


@flow(
    name="deploy-model",
    flow_run_name="deploy-{spec.namespace}-{spec.name}",
    description="Mirror a model to OSS and roll it out to Kubernetes behind a smoke-test gate.",
)
def deploy(spec: ServiceSpec) -> DeployResult:
    """Deploy `spec`: preflight, lease, mirror, volumes, rollout, readiness, smoke, gate,
    record."""
    logger = get_run_logger()
    run = _Run(spec, new_release_id(spec_hash(spec), int(time.time() * 1000)))
    logger.info(
        "deploying Service %s/%s as release %s (%s on %s)",
        spec.namespace,
        spec.name,
        run.release,
        spec.serving.engine,
        spec.serving.shape,
    )
    with ExitStack() as held:
        try:
            # Reads only: a spec the cluster, OSS or hub cannot take is refused before any
            # write (the lease is one).
            with run.timer.stage("preflight") as detail:
                run.report = preflight(spec, run.release)
                detail.append(f"strategy {run.report.strategy}")
            with run.timer.stage("lease") as detail:
                asked = time.monotonic()
                # A throttled or failed read of the Lease is retried, not a failed run.
                lock: ServiceLock = call_with_retry(
                    lambda: held.enter_context(
                        rollout_lease(
                            spec.namespace, spec.name, wait_s=float(spec.rollout.lock_wait_s)
                        )
                    )
                )
                detail.append(
                    "held by the parent run"
                    if lock.reentrant
                    else f"Lease {spec.namespace}/{lease_name(spec.name)} taken after "
                    f"{time.monotonic() - asked:.1f}s"
                )
        except RolloutError as exc:
            run.fail("failed", str(exc))
            raise
        return _deploy_locked(run, fresh_preflight=not lock.reentrant)


def _deploy_locked(run: _Run, *, fresh_preflight: bool) -> DeployResult:
    """Everything after the lease is held: its own release is the only writer."""
    logger = get_run_logger()
    spec, release, timer = run.spec, run.release, run.timer
    try:
        if fresh_preflight:
            # Another run may have changed the service while this one waited for the lease.
            with timer.stage("preflight (under lease)") as detail:
                run.report = preflight(spec, release)
                detail.append(f"strategy {run.report.strategy}")
        report = run.report
        assert report is not None  # the first preflight ran
        if report.decision is None or report.decision.strategy is None:
            raise PermanentError("preflight passed without choosing a strategy")
        strategy: Strategy = report.decision.strategy
        if spec.model.modelscope is None:
            timer.skipped("mirror", f"weights already at {spec.model.oss_uri}")
        else:
            with timer.stage("mirror") as detail:
                status = is_mirrored_task(spec)
                if status.complete:
                    detail.append(f"skipped: already mirrored ({status.manifest_uri})")
                else:
                    mirrored = mirror_model_task(spec)
                    detail.append(
                        f"mirrored {mirrored.bytes_sent} bytes in {mirrored.seconds:.1f}s"
                    )
        with timer.stage("volumes") as detail:
            run.objects += bounded_by(volumes, spec.rollout.volume_bound_timeout_s)(
                spec, release, not report.namespace_exists
            )
            detail.append(f"PersistentVolumeClaim {spec.namespace}/{spec.pvc_name} Bound")
        with timer.stage("rollout") as detail:
            applied: AppliedRelease = rollout(
                spec,
                release,
                strategy,
                report.serving_release,
                report.rbg_flavor,
                report.max_model_len,
            )
            run.objects += applied.applied
            detail.append(f"{applied.workload} applied ({strategy})")
            if applied.rbg_role_services:
                bound = ", ".join(f"{r}: {s}" for r, s in sorted(applied.rbg_role_services.items()))
                detail.append(f"router backends bound to the role Services read back ({bound})")
    except RolloutError as exc:
        # Nothing of the new release serves yet; what was applied stays for inspection.
        run.fail("failed", str(exc))
        raise

    gate_error: RolloutError | None = None
    try:
        with timer.stage("readiness") as detail:
            ready = bounded_by(wait_workload_ready, spec.rollout.ready_timeout_s)(
                applied.workload,
                service_id=ServiceId.of(spec),
                timeout_s=float(spec.rollout.ready_timeout_s),
                tolerances=tolerances_of(spec.rollout),
            )
            detail.append(f"{len(ready.pods)} pod(s) ready after {ready.elapsed_s:.1f}s")
        with timer.stage("smoke") as detail:
            outcome = bounded_by(smoke_test, SMOKE_CALLS_MAX * spec.rollout.smoke_timeout_s)(
                spec.smoke,
                service_id=ServiceId.of(spec),
                model=spec.served_model_name,
                namespace=spec.namespace,
                service=applied.service_name,
                port=applied.service_port,
                timeout_s=float(spec.rollout.smoke_timeout_s),
                base_url=str(spec.smoke.base_url) if spec.smoke.base_url else None,
                api_key=spec.serving.api_key,
            )
            run.smoke = smoke_summary(outcome.report, outcome.verdict)
            detail.append("passed" if run.smoke.passed else "FAILED")
        if not outcome.verdict.passed:
            raise RolloutFailed("smoke test failed: " + "; ".join(outcome.verdict.failures))
    except RolloutError as exc:
        gate_error = exc

    def roll_back(stage: str, why: str, cause: RolloutError) -> RolloutFailed:
        """Remove the new release (the previous one keeps or regains the Service); record."""
        with timer.stage(stage):
            back = rollback(spec, release, report.serving_release, strategy)
        message = f"release {release} failed{why}: {cause}\n{back.message}"
        logger.error(message)
        run.fail("rolled-back", message)
        return RolloutFailed(message)

    if gate_error is not None:
        raise roll_back("gate", "", gate_error) from gate_error

    with timer.stage("gate") as detail:
        plan = promote(spec, release, report.serving_release, strategy)
        detail.append(plan.message)
    if plan.remove_releases and plan.remove_after_s > 0:
        try:
            with timer.stage("bake") as detail:
                baked = bake_release(spec, release, applied.workload, plan.remove_after_s)
                detail.append(f"{len(baked.pods)} pod(s) ready for {plan.remove_after_s:.0f}s")
        except RolloutError as exc:
            raise roll_back("rollback", " while baking", exc) from exc
    if plan.remove_releases:
        with timer.stage("retire") as detail:
            detail.extend(retire_previous(spec, plan))
    smoke = run.smoke
    assert smoke is not None  # the smoke stage ran to get here
    summary = run.summary(
        "promoted", f"Service {spec.namespace}/{spec.name} serves release {release}"
    )
    with timer.stage("record"):
        record_run(summary)
    return DeployResult(
        service=spec.name,
        namespace=spec.namespace,
        release=release,
        strategy=strategy,
        answer=smoke.answer,
        ttft_s=smoke.ttft_s,
        flow_run_id=str(flow_run.id),
        summary_markdown_key=artifact_key(RUN_SUMMARY, ServiceId.of(spec)),
    )
