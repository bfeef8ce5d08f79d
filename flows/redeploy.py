"""The redeploy flow (deployment `redeploy`, run from the UI or CLI): restart, update the engine
image / args / replicas, scale, or roll back a serving service -- under the service's rollout
lease, through readiness and, when pods restart, the smoke gate (a failed gate restores the
workload as it was)."""

from __future__ import annotations

from prefect import flow
from prefect.logging import get_run_logger

from llm_rollout.artifacts import ServiceId
from llm_rollout.errors import PermanentError, RolloutError
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import ReadyReport
from llm_rollout.redeploy import ROLL_PROOF_S, Action, RedeployRequest
from llm_rollout.smoke import SmokeTarget
from llm_rollout.spec import SmokeSpec
from tasks.policy import bounded_by
from tasks.readiness import wait_workload_ready
from tasks.redeploy import apply_change, prove_rolled, revert_change, route_to_previous
from tasks.refresh import rollout_lease
from tasks.smoke import SMOKE_CALLS_MAX, smoke_test


class RedeployFailed(PermanentError):
    """The change did not pass readiness or the smoke gate and was reverted."""


@flow(
    name="redeploy",
    flow_run_name="redeploy-{namespace}-{service}-{action}",
    description="Restart, update, scale or roll back a serving model service.",
)
def redeploy(
    service: str,
    namespace: str,
    action: Action,
    image: str | None = None,
    engine_args: list[str] | None = None,
    replicas: int | None = None,
    smoke: SmokeSpec | None = None,
    ready_timeout_s: int = 1800,
    smoke_timeout_s: int = 300,
    lock_wait_s: int = 900,
) -> str:
    """Apply one day-2 action to a serving service.

    Args:
        service: Service name (the stable Service), as in the spec's `name`.
        namespace: Namespace of the service (no default).
        action: restart (new pods, same settings), update (image / engine_args / replicas),
            scale (replicas only) or rollback (route to the previous release again).
        image: update: the new engine image.
        engine_args: update: engine flags to set, one token each, e.g. ["--max-model-len",
            "4096"]; an existing flag gets the new value, a new one is appended.
        replicas: update/scale: serving replicas.
        smoke: Smoke-test gate after pods restarted; default: the spec's default gate.
        ready_timeout_s: Wait for the workload to become ready (s).
        smoke_timeout_s: Time limit of the smoke test (s).
        lock_wait_s: Wait this long for another rollout of the service (0: fail fast).
    """
    # Validated here, before any side effect: errors name the offending field.
    request = RedeployRequest(
        service=service,
        namespace=namespace,
        action=action,
        image=image,
        engine_args=engine_args or [],
        replicas=replicas,
        smoke=smoke or SmokeSpec(),
        ready_timeout_s=ready_timeout_s,
        smoke_timeout_s=smoke_timeout_s,
        lock_wait_s=lock_wait_s,
    )
    logger = get_run_logger()

    def wait_ready(workload: ObjectRef) -> ReadyReport:
        return bounded_by(wait_workload_ready, request.ready_timeout_s)(
            workload,
            service_id=ServiceId(workload.kind, namespace, service),
            timeout_s=float(request.ready_timeout_s),
        )

    with rollout_lease(namespace, service, wait_s=float(request.lock_wait_s)):
        if request.action == "rollback":
            workload = route_to_previous(namespace, service)
            wait_ready(workload)
            return f"Service {namespace}/{service} routes to the previous release ({workload})"
        change = apply_change(request)
        try:
            ready = wait_ready(change.workload)
            logger.info("%s ready: %d pod(s)", change.workload, len(ready.pods))
            # Ready alone does not say the pods run the change (issue 16, B7).
            prove_rolled(change, timeout_s=min(float(request.ready_timeout_s), ROLL_PROOF_S))
            if request.restarts_pods:
                target = SmokeTarget(
                    kind=change.workload.kind,
                    namespace=namespace,
                    name=service,
                    service=change.service_name,
                    port=change.service_port,
                    model=change.model,
                    smoke=request.smoke,
                    timeout_s=float(request.smoke_timeout_s),
                    api_key=change.api_key,
                )
                outcome = bounded_by(smoke_test, SMOKE_CALLS_MAX * request.smoke_timeout_s)(target)
                if not outcome.verdict.passed:
                    raise RedeployFailed(
                        "smoke test failed: " + "; ".join(outcome.verdict.failures)
                    )
        # Any failure of the gate reverts, transient ones included, or the rejected change stays
        # applied: a smoke test still unreachable after its retries, a stage past its bound (a
        # task's timeout raises prefect task_engine.py TaskRunTimeoutError, a TimeoutError).
        # A lost Lease reaches here too; revert_change's own Lease check then refuses to write.
        except (RolloutError, TimeoutError) as exc:
            reverted = revert_change(change)
            wait_ready(change.workload)
            # As for the change: ready alone does not say the pods run the restored template.
            prove_rolled(reverted, timeout_s=min(float(request.ready_timeout_s), ROLL_PROOF_S))
            raise RedeployFailed(f"{action} of {namespace}/{service} reverted: {exc}") from exc
    return f"{action} of Service {namespace}/{service} done (release {change.release})"
