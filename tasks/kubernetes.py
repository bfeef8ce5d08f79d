"""Kubernetes stages of a rollout: volumes, release apply, the gate (promote / roll back), and
teardown. Each task builds its own API client from the standard sources (KUBECONFIG, in-cluster)
and delegates to `llm_rollout.release`; retries only on transient API errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from llm_rollout.crds import crds_from_cluster
from llm_rollout.credentials import resolve_oss_credentials
from llm_rollout.errors import PermanentError
from llm_rollout.kinds import RbgFlavor
from llm_rollout.kinds.rbg import PD_BACKEND_ROLES, RoleBasedGroup
from llm_rollout.kube.objects import apply_all
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.watching import wait_pvc_bound
from llm_rollout.preflight import credentials_ref
from llm_rollout.record import deployment_annotations
from llm_rollout.release import (
    WORKLOAD_KINDS,
    BakeReport,
    ReleaseDegraded,
    apply_checked,
    bake,
    cluster_api,
    namespace_object,
    ordered_refs,
    point_stable_service,
    read_release_state,
    release_objects,
    remove_release,
    restore_stable_service,
    wait_rbg_role_services,
    with_annotations,
)
from llm_rollout.render import render, render_oss_secret
from llm_rollout.spec import ServiceSpec, spec_hash
from llm_rollout.strategy import GatePlan, Strategy, plan_promote, plan_rollback
from llm_rollout.validation import validate_objects
from tasks.policy import api_task, retry_transient_only

# Deleting a release waits for its pods to go: GPUs are only free once they have.
DELETE_WAIT_S = 300.0


@dataclass(frozen=True)
class AppliedRelease:
    """What the rollout stage wrote: the new release's workload and its own Service."""

    release: str
    workload: ObjectRef
    service_name: str
    service_port: int
    applied: list[str] = field(default_factory=list)
    removed_before: list[str] = field(default_factory=list)
    # RoleBasedGroup: the headless Service of each role the router addresses, as read from the
    # pods the controller created (empty for other kinds).
    rbg_role_services: dict[str, str] = field(default_factory=dict)


def _annotations(
    spec: ServiceSpec, release: str, serving_release: str | None, strategy: Strategy
) -> dict[str, str]:
    source = spec.model.modelscope
    return deployment_annotations(
        release=release,
        previous_release=serving_release,
        model=source.model_id
        if source
        else f"oss://{spec.model_bucket}/{spec.model_object_prefix}",
        revision=spec.model_revision,
        spec_hash=spec_hash(spec),
        strategy=strategy,
        deployed_at_iso=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


@api_task("volumes", timeout_seconds=900)
def volumes(spec: ServiceSpec, release: str, create_namespace: bool) -> list[str]:
    """Namespace (if missing), the OSS Secret (unless RRSA), PV and PVC; wait until Bound.

    The AccessKeys are resolved here, at apply time, from the spec's reference: they never
    travel as a parameter and only the Secret's reference is logged.
    """
    logger = get_run_logger()
    with cluster_api() as api:
        rendered = render(spec, release=release)
        validate_objects(rendered.storage_objects)
        objects: list[dict[str, Any]] = []
        if create_namespace:
            # Namespaced objects cannot even be dry-run before their namespace exists.
            namespace = namespace_object(spec.namespace)
            apply_checked(api, [namespace])
            logger.info("created Namespace %s", spec.namespace)
        ref = credentials_ref(spec)
        for obj in rendered.storage_objects:
            if obj.get("kind") == "Secret":
                if ref is None:
                    raise PermanentError(
                        f"Secret {spec.namespace}/{spec.oss_secret_name}: the mount uses "
                        "AccessKeys but storage.credentials is not set"
                    )
                # The only place key values enter an object; it goes straight to the server.
                keys = resolve_oss_credentials(ref).csi_secret_data()
                obj = render_oss_secret(spec, keys["akId"], keys["akSecret"])
            objects.append(obj)
        apply_checked(api, objects)
        applied = ordered_refs([namespace] if create_namespace else []) + ordered_refs(objects)
        for line in applied:
            logger.info("applied %s", line)
        started = time.monotonic()
        wait_pvc_bound(api, spec.namespace, spec.pvc_name, spec.rollout.volume_bound_timeout_s)
        logger.info(
            "PersistentVolumeClaim %s/%s Bound to PersistentVolume %s after %.1fs",
            spec.namespace,
            spec.pvc_name,
            spec.pv_name,
            time.monotonic() - started,
        )
        return applied


@api_task("rollout", timeout_seconds=1800)
def rollout(
    spec: ServiceSpec,
    release: str,
    strategy: Strategy,
    serving_release: str | None,
    rbg_flavor: RbgFlavor | None,
    max_model_len: int | None = None,
) -> AppliedRelease:
    """Render, validate offline, dry-run everything, then apply the new release.

    `max_model_len` is the sequence length preflight's KV-cache fit was checked for when the
    spec sets none (`PreflightReport.max_model_len`): pinned so the engine cannot start with a
    longer default than the one that was shown to fit.

    With recreate the serving release is removed first (and waited for, so its GPUs are free):
    nothing answers until the new release is ready. With blue-green it stays untouched.
    """
    logger = get_run_logger()
    with cluster_api() as api:
        rendered = render(
            spec,
            release=release,
            rbg_flavor=rbg_flavor or "v0.7",
            max_model_len=max_model_len,
        )
        validate_objects(rendered.all(), crds_from_cluster(api))
        annotations = _annotations(spec, release, serving_release, strategy)
        workload_objects = [with_annotations(o, annotations) for o in rendered.workload_objects]
        # The stable Service is dry-run here too, so the gate cannot fail on a rejected object.
        apply_all(api, [*workload_objects, rendered.stable_service], dry_run=True)
        removed: list[str] = []
        if strategy == "recreate" and serving_release and serving_release != release:
            logger.warning(
                "strategy recreate: removing release %s of Service %s/%s first; the service "
                "does not answer until release %s is ready",
                serving_release,
                spec.namespace,
                spec.name,
                release,
            )
            removed = [
                str(r)
                for r in remove_release(
                    api, spec.namespace, spec.name, serving_release, wait_timeout_s=DELETE_WAIT_S
                )
            ]
        apply_checked(api, workload_objects)
        applied = ordered_refs(workload_objects)
        for line in applied:
            logger.info("applied %s", line)
        workload = next(
            ObjectRef.of(o) for o in workload_objects if o.get("kind") in WORKLOAD_KINDS
        )
        role_services: dict[str, str] = {}
        if workload.kind == RoleBasedGroup.kind:
            flavor: RbgFlavor = rbg_flavor or "v0.7"
            # Issue 16 point 2: the router's backend URLs name each role's headless Service,
            # whose name depends on the controller's version; bind them to what it created.
            role_services = wait_rbg_role_services(
                api,
                spec.namespace,
                workload.name,
                flavor,
                PD_BACKEND_ROLES,
                timeout_s=float(spec.rollout.ready_timeout_s),
            )
            rebound = render(
                spec,
                release=release,
                rbg_flavor=flavor,
                rbg_role_services=role_services,
                max_model_len=max_model_len,
            )
            group = [
                with_annotations(o, annotations)
                for o in rebound.workload_objects
                if o.get("kind") == RoleBasedGroup.kind
            ]
            if group != [o for o in workload_objects if o.get("kind") == RoleBasedGroup.kind]:
                apply_checked(api, group)
                logger.info("router backends re-bound to role Services %s", role_services)
        release_service = next(o for o in workload_objects if o.get("kind") == "Service")
        port = int(((release_service.get("spec") or {}).get("ports") or [{}])[0].get("port"))
        return AppliedRelease(
            release=release,
            workload=workload,
            service_name=str(release_service["metadata"]["name"]),
            service_port=port,
            applied=applied,
            removed_before=removed,
            rbg_role_services=role_services,
        )


@api_task("promote", timeout_seconds=300)
def promote(
    spec: ServiceSpec,
    release: str,
    serving_release: str | None,
    strategy: Strategy,
) -> GatePlan:
    """Point the stable Service at the new release; the previous one stays until retired."""
    logger = get_run_logger()
    plan = plan_promote(serving_release, release, float(spec.rollout.promote_grace_s))
    with cluster_api() as api:
        rendered = render(spec, release=release)
        annotations = _annotations(spec, release, serving_release, strategy)
        point_stable_service(api, rendered.stable_service, release, annotations)
    logger.info("Service %s/%s now routes to release %s", spec.namespace, spec.name, release)
    return plan


@task(
    name="bake",
    retries=2,
    retry_delay_seconds=[1, 3],
    retry_condition_fn=retry_transient_only,
    timeout_seconds=3900,
    cache_policy=NO_CACHE,
)
def bake_release(
    spec: ServiceSpec, release: str, workload: ObjectRef, window_s: float
) -> BakeReport:
    """Watch the promoted release for `window_s` while the previous one can take traffic back.

    Raises `ReleaseDegraded` as soon as a pod or the workload stops serving: the flow then
    rolls back instead of retiring the previous release.
    """
    logger = get_run_logger()
    logger.info(
        "baking %s behind Service %s/%s for %.0fs (the previous release stays until then)",
        workload,
        spec.namespace,
        spec.name,
        window_s,
    )
    with cluster_api() as api:
        try:
            report = bake(
                api,
                workload,
                window_s,
                stable_service=spec.name,
                release=release,
                on_event=logger.info,
            )
        except ReleaseDegraded as exc:
            logger.error("%s", exc)
            raise
    logger.info("%s stayed ready for %.0fs with %d pod(s)", workload, window_s, len(report.pods))
    return report


@api_task("retire-previous", timeout_seconds=900)
def retire_previous(spec: ServiceSpec, plan: GatePlan) -> list[str]:
    """Remove the releases the promote plan replaced (waiting until their pods are gone)."""
    logger = get_run_logger()
    removed: list[str] = []
    with cluster_api() as api:
        for old in plan.remove_releases:
            for ref in remove_release(
                api, spec.namespace, spec.name, old, wait_timeout_s=DELETE_WAIT_S
            ):
                logger.info("removed %s (previous release %s)", ref, old)
                removed.append(str(ref))
    return removed


@api_task("rollback", timeout_seconds=900)
def rollback(
    spec: ServiceSpec,
    release: str,
    serving_release: str | None,
    strategy: Strategy,
) -> GatePlan:
    """Remove the new release; the serving one (if any is left) keeps the stable Service.

    When the stable Service was already switched to the new release (it degraded while
    baking), it is pointed back at the previous release first, so no request meets a
    release that is being removed.
    """
    logger = get_run_logger()
    with cluster_api() as api:
        old_exists = bool(
            serving_release and release_objects(api, spec.namespace, spec.name, serving_release)
        )
        plan = plan_rollback(serving_release, release, strategy, old_exists)
        switched = read_release_state(api, spec.namespace, spec.name).current_release == release
        if switched and serving_release and old_exists:
            restore_stable_service(api, spec.namespace, spec.name, serving_release)
            logger.warning(
                "Service %s/%s routes to release %s again",
                spec.namespace,
                spec.name,
                serving_release,
            )
        for ref in remove_release(
            api, spec.namespace, spec.name, release, wait_timeout_s=DELETE_WAIT_S
        ):
            logger.info("removed %s (failed release %s)", ref, release)
        if plan.serving_during_rollout:
            logger.info(plan.message)
        else:
            logger.error(plan.message)
        return plan
