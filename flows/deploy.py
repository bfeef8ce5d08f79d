"""The deploy flow: from a validated spec to a verified, serving endpoint (or a clean rollback).

Stages: preflight -> plan -> mirror -> volumes -> rollout -> (late binding) -> readiness ->
smoke -> gate -> record. Every stage is a task with its own retries (transient errors only) and
timeout; this flow only sequences them, times them, and turns a failed readiness or smoke test
into a rollback.

Planned once: right after preflight the flow builds the release plan
(`llm_rollout.plan.ReleasePlan`) from the objects preflight rendered to size the cluster, and
every later stage takes that plan; nothing renders again. A RoleBasedGroup's router is bound
late to the role Services its controller created (`late binding`), into a new plan that the
run record names.

The gate promotes in three steps: the stable Service switches to the new release; the new
release is baked (watched) for `rollout.promote_grace_s` while the previous release still
runs; only then is the previous release retired. A release that degrades while baking is
rolled back: the Service goes back to the previous release and the new one is removed.

One rollout per service at a time: after a first, read-only preflight (so a refused spec
writes nothing, not even a lock), the flow takes the service's rollout Lease (`tasks.refresh.
rollout_lease`, re-entrant for the root flow run, so refresh running this flow as a subflow
does not wait for itself), waiting up to `rollout.lock_wait_s` for another run and otherwise
failing with a message naming the holder. Under the lease preflight runs again: what the first
pass read (serving release, free GPUs) may have changed while another run held the lease; it
reuses the first pass's rendering when the RBG flavour and sequence length are the same.

The flow parameter is the `ServiceSpec` itself (the UI renders it as a form). It holds no
secret: OSS keys are resolved by the tasks that need them, from the spec's references.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from llm_rollout.artifacts import RUN_SUMMARY, ServiceId, artifact_key
from llm_rollout.errors import PermanentError, RolloutError
from llm_rollout.kube.watching import call_with_retry
from llm_rollout.locking import ServiceLock, lease_name
from llm_rollout.plan import ReleasePlan, new_release, plan_release
from llm_rollout.preflight import PreflightReport
from llm_rollout.readiness_rules import tolerances_of
from llm_rollout.record import Outcome, RunSummary, SmokeSummary, StageTiming, smoke_summary
from llm_rollout.spec import ServiceSpec
from tasks.kubernetes import (
    AppliedRelease,
    bake_release,
    bind_router_backends,
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
    digest: str,
    report: PreflightReport | None,
    plan: ReleasePlan | None,
    timer: _Timer,
    objects: list[str],
    smoke: SmokeSummary | None,
) -> RunSummary:
    source = spec.model.modelscope
    binding = plan.binding() if plan is not None else ""
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
        spec_hash=digest,
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
            **({"router backends (bound late)": binding} if binding else {}),
        },
    )


@dataclass
class _Run:
    """What one run has gathered so far, for the summary of whichever way it ends."""

    spec: ServiceSpec
    release: str
    spec_hash: str
    timer: _Timer = field(default_factory=_Timer)
    objects: list[str] = field(default_factory=list)
    report: PreflightReport | None = None
    plan: ReleasePlan | None = None
    smoke: SmokeSummary | None = None

    def summary(self, outcome: Outcome, message: str) -> RunSummary:
        return _summary(
            self.spec,
            outcome=outcome,
            message=message,
            release=self.release,
            digest=self.spec_hash,
            report=self.report,
            plan=self.plan,
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
    named = new_release(spec, int(time.time() * 1000))
    run = _Run(spec, named.release, named.spec_hash)
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
                run.report = preflight(spec, run.release, run.spec_hash)
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
                assert run.report is not None  # the first preflight ran
                run.report = preflight(spec, release, run.spec_hash, run.report.rendered)
                detail.append(f"strategy {run.report.strategy}")
        report = run.report
        assert report is not None  # the first preflight ran
        # Planned once: every later stage applies and checks this plan; nothing renders again.
        plan = run.plan = plan_release(
            spec, release=release, spec_hash=run.spec_hash, report=report, now=datetime.now(UTC)
        )
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
            run.objects += bounded_by(volumes, spec.rollout.volume_bound_timeout_s)(plan)
            detail.append(f"PersistentVolumeClaim {spec.namespace}/{spec.pvc_name} Bound")
        with timer.stage("rollout") as detail:
            applied: AppliedRelease = rollout(plan)
            run.objects += applied.applied
            detail.append(f"{applied.workload} applied ({plan.strategy})")
        if plan.needs_binding:
            with timer.stage("late binding") as detail:
                # What only exists once the controller acted: the role Services of the router.
                plan = run.plan = bounded_by(bind_router_backends, spec.rollout.ready_timeout_s)(
                    plan
                )
                detail.append(
                    f"router backends bound to the role Services read back ({plan.binding()})"
                )
    except RolloutError as exc:
        # Nothing of the new release serves yet; what was applied stays for inspection.
        run.fail("failed", str(exc))
        raise

    gate_error: RolloutError | None = None
    try:
        with timer.stage("readiness") as detail:
            ready = bounded_by(wait_workload_ready, spec.rollout.ready_timeout_s)(
                plan.workload,
                service_id=plan.service_id,
                timeout_s=float(spec.rollout.ready_timeout_s),
                tolerances=tolerances_of(spec.rollout),
            )
            detail.append(f"{len(ready.pods)} pod(s) ready after {ready.elapsed_s:.1f}s")
        with timer.stage("smoke") as detail:
            outcome = bounded_by(smoke_test, SMOKE_CALLS_MAX * spec.rollout.smoke_timeout_s)(
                plan.smoke
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
            back = rollback(plan)
        message = f"release {release} failed{why}: {cause}\n{back.message}"
        logger.error(message)
        run.fail("rolled-back", message)
        return RolloutFailed(message)

    if gate_error is not None:
        raise roll_back("gate", "", gate_error) from gate_error

    with timer.stage("gate") as detail:
        gate = promote(plan)
        detail.append(gate.message)
    if gate.remove_releases and gate.remove_after_s > 0:
        try:
            with timer.stage("bake") as detail:
                baked = bake_release(plan, gate.remove_after_s)
                detail.append(f"{len(baked.pods)} pod(s) ready for {gate.remove_after_s:.0f}s")
        except RolloutError as exc:
            raise roll_back("rollback", " while baking", exc) from exc
    if gate.remove_releases:
        with timer.stage("retire") as detail:
            detail.extend(retire_previous(plan, gate))
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
        strategy=plan.strategy,
        answer=smoke.answer,
        ttft_s=smoke.ttft_s,
        flow_run_id=str(flow_run.id),
        summary_markdown_key=artifact_key(RUN_SUMMARY, plan.service_id),
    )
