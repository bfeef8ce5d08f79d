"""The Kubernetes stages of a planned release (`llm_rollout.plan.ReleasePlan`): volumes, apply,
the late binding of the PD router, promotion, retirement of the previous release and rollback.

Each takes an API client and the plan, writes with server-side apply (dry-run first), and
tells what it did through `log` (the calling task's run logger). None renders: the objects are
the plan's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from kubernetes import client as k8s_client

from llm_rollout.crds import crds_from_cluster
from llm_rollout.credentials import resolve_oss_credentials
from llm_rollout.errors import PermanentError
from llm_rollout.kinds.rbg import PD_BACKEND_ROLES, RoleBasedGroup
from llm_rollout.kube.objects import apply_all
from llm_rollout.kube.resources import JsonDict, ObjectRef
from llm_rollout.kube.watching import Interrupt, wait_pvc_bound
from llm_rollout.plan import ReleasePlan, bind_role_services
from llm_rollout.preflight import credentials_ref
from llm_rollout.release.inventory import ordered_refs, release_objects
from llm_rollout.release.removal import remove_release
from llm_rollout.release.services import (
    point_stable_service,
    restore_stable_service,
    wait_rbg_role_services,
)
from llm_rollout.release.state import read_release_state
from llm_rollout.release.writing import apply_checked, namespace_object
from llm_rollout.render import render_oss_secret
from llm_rollout.strategy import GatePlan, plan_promote, plan_rollback
from llm_rollout.validation import validate_objects

# Deleting a release waits for its pods to go: GPUs are only free once they have.
DELETE_WAIT_S = 300.0


class StageLog(Protocol):
    """What a stage logs through (a Prefect run logger, or any `logging.Logger`)."""

    def info(self, msg: str, *args: Any) -> None: ...
    def warning(self, msg: str, *args: Any) -> None: ...
    def error(self, msg: str, *args: Any) -> None: ...


@dataclass(frozen=True)
class AppliedRelease:
    """What the rollout stage wrote: the new release's workload and its own Service."""

    release: str
    workload: ObjectRef
    applied: list[str] = field(default_factory=list)
    removed_before: list[str] = field(default_factory=list)


def apply_volumes(api: k8s_client.ApiClient, plan: ReleasePlan, log: StageLog) -> list[str]:
    """Namespace (if missing), the OSS Secret (unless RRSA), PV and PVC; wait until Bound.

    The AccessKeys are resolved here, at apply time, from the spec's reference: they never
    travel in the plan and only the Secret's reference is logged.
    """
    spec = plan.spec
    validate_objects(plan.rendered.storage_objects)
    created: list[JsonDict] = []
    if plan.create_namespace:
        # Namespaced objects cannot even be dry-run before their namespace exists.
        created = [namespace_object(spec.namespace)]
        apply_checked(api, created)
        log.info("created Namespace %s", spec.namespace)
    ref = credentials_ref(spec)
    objects: list[dict[str, Any]] = []
    for obj in plan.rendered.storage_objects:
        if obj.get("kind") == "Secret":
            if ref is None:
                raise PermanentError(
                    f"Secret {spec.namespace}/{spec.oss_secret_name}: the mount uses "
                    "AccessKeys but storage.credentials is not set"
                )
            # The only place key values enter an object; it goes straight to the server.
            keys = resolve_oss_credentials(ref).csi_secret_data()
            obj = render_oss_secret(spec, keys["akId"], keys["akSecret"], spec_hash=plan.spec_hash)
        objects.append(obj)
    apply_checked(api, objects)
    applied = ordered_refs(created) + ordered_refs(objects)
    for line in applied:
        log.info("applied %s", line)
    started = time.monotonic()
    wait_pvc_bound(api, spec.namespace, spec.pvc_name, spec.rollout.volume_bound_timeout_s)
    log.info(
        "PersistentVolumeClaim %s/%s Bound to PersistentVolume %s after %.1fs",
        spec.namespace,
        spec.pvc_name,
        spec.pv_name,
        time.monotonic() - started,
    )
    return applied


def apply_release(
    api: k8s_client.ApiClient, plan: ReleasePlan, log: StageLog, *, interrupt: Interrupt | None
) -> AppliedRelease:
    """Validate the plan's objects against the cluster's CRDs, dry-run them all (the stable
    Service too, so the gate cannot fail on a rejected object), then apply the new release.

    With recreate the serving release is removed first (and waited for, so its GPUs are free):
    nothing answers until the new release is ready. With blue-green it stays untouched.
    `interrupt` (the rollout lease held, if any) ends that wait, and the stage, once it fires.
    """
    spec, release, serving = plan.spec, plan.release, plan.serving_release
    validate_objects(plan.rendered.all(), crds_from_cluster(api))
    workload_objects = plan.workload_objects()
    apply_all(api, [*workload_objects, plan.rendered.stable_service], dry_run=True)
    removed: list[str] = []
    if plan.strategy == "recreate" and serving and serving != release:
        log.warning(
            "strategy recreate: removing release %s of Service %s/%s first; the service "
            "does not answer until release %s is ready",
            serving,
            spec.namespace,
            spec.name,
            release,
        )
        removed = remove_release(
            api,
            spec.namespace,
            spec.name,
            serving,
            wait_timeout_s=DELETE_WAIT_S,
            interrupt=interrupt,
        ).lines()
    # A release deployed again under its name is applied without waiting for the earlier
    # workload's children to be collected: readiness counts only the objects the new workload
    # controls (kinds/base.py PodCreator.owner), as kubectl and the controllers judge by
    # controller references (k8s.io/kubectl pkg/util/deployment/deployment.go
    # listReplicaSets, pkg/controller/controller_ref_manager.go), and neither kubectl apply
    # nor the Deployment controller waits for an earlier owner's dependents. Waiting would tie
    # the deploy to the garbage collector's pace and never end for an orphan, which it does not
    # collect; the pods that hold GPUs are waited for where a release is removed.
    apply_checked(api, workload_objects)
    applied = ordered_refs(workload_objects)
    for line in applied:
        log.info("applied %s", line)
    return AppliedRelease(release, plan.workload, applied=applied, removed_before=removed)


def bind_late(api: k8s_client.ApiClient, plan: ReleasePlan, log: StageLog) -> ReleasePlan:
    """Issue 16 point 2: bind the PD router's backend URLs to the headless Services the RBG
    controller created for the roles (their names depend on its version), read from the role
    pods once each role has one; the RoleBasedGroup is applied again when that changes its
    router. Returns the bound plan."""
    spec = plan.spec
    role_services = wait_rbg_role_services(
        api,
        spec.namespace,
        plan.workload.name,
        plan.rendered.rbg_flavor,
        PD_BACKEND_ROLES,
        timeout_s=float(spec.rollout.ready_timeout_s),
    )
    bound = bind_role_services(plan, role_services)

    def group(p: ReleasePlan) -> list[JsonDict]:
        return [o for o in p.workload_objects() if o.get("kind") == RoleBasedGroup.kind]

    if group(bound) != group(plan):
        apply_checked(api, group(bound))
        log.info("router backends re-bound to role Services (%s)", bound.binding())
    else:
        log.info("router backends already name the role Services (%s)", bound.binding())
    return bound


def promote_release(api: k8s_client.ApiClient, plan: ReleasePlan, log: StageLog) -> GatePlan:
    """Point the stable Service at the new release; the previous one stays until retired."""
    spec = plan.spec
    gate = plan_promote(plan.serving_release, plan.release, float(spec.rollout.promote_grace_s))
    point_stable_service(api, plan.rendered.stable_service, plan.release, plan.annotations)
    log.info("Service %s/%s now routes to release %s", spec.namespace, spec.name, plan.release)
    return gate


def retire_releases(
    api: k8s_client.ApiClient,
    plan: ReleasePlan,
    gate: GatePlan,
    log: StageLog,
    *,
    interrupt: Interrupt | None,
) -> list[str]:
    """Remove the releases the promotion replaced (waiting until their pods are gone, unless
    `interrupt`, the rollout lease held, fires first)."""
    spec = plan.spec
    removed: list[str] = []
    for old in gate.remove_releases:
        removal = remove_release(
            api, spec.namespace, spec.name, old, wait_timeout_s=DELETE_WAIT_S, interrupt=interrupt
        )
        for ref in removal.removed:
            log.info("removed %s (previous release %s)", ref, old)
        for pod in removal.stranded:
            log.warning("%s", pod.describe())
        removed.extend(removal.lines())
    return removed


def roll_back_release(
    api: k8s_client.ApiClient, plan: ReleasePlan, log: StageLog, *, interrupt: Interrupt | None
) -> GatePlan:
    """Remove the new release; the serving one (if any is left) keeps the stable Service.

    When the stable Service was already switched to the new release (it degraded while
    baking), it is pointed back at the previous release first, so no request meets a
    release that is being removed. `interrupt` (the rollout lease held, if any) ends the wait
    for its pods once it fires.
    """
    spec, release, serving = plan.spec, plan.release, plan.serving_release
    old_exists = bool(serving and release_objects(api, spec.namespace, spec.name, serving))
    gate = plan_rollback(serving, release, plan.strategy, old_exists)
    switched = read_release_state(api, spec.namespace, spec.name).current_release == release
    if switched and serving and old_exists:
        restore_stable_service(api, spec.namespace, spec.name, serving)
        log.warning("Service %s/%s routes to release %s again", spec.namespace, spec.name, serving)
    removal = remove_release(
        api, spec.namespace, spec.name, release, wait_timeout_s=DELETE_WAIT_S, interrupt=interrupt
    )
    for ref in removal.removed:
        log.info("removed %s (failed release %s)", ref, release)
    if removal.stranded:
        # Logged below and recorded by the flow: the pods left behind and what frees them.
        left = "; ".join(pod.describe() for pod in removal.stranded)
        gate = replace(gate, message=f"{gate.message}\n{left}")
    if gate.serving_during_rollout:
        log.info(gate.message)
    else:
        log.error(gate.message)
    return gate
