"""The stable Service switched between releases (promote, rollback, restore after a failed
bake), and the headless Services the RBG controller made for a RoleBasedGroup's roles."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError
from llm_rollout.kinds import RbgFlavor
from llm_rollout.kinds.rbg import role_labels, role_services_from_pods
from llm_rollout.kube.objects import FIELD_MANAGER, apply, get
from llm_rollout.kube.resources import JsonDict, ObjectRef
from llm_rollout.kube.views import ObjectView, mapping_at
from llm_rollout.kube.watching import Done, Selector, Verdict, Waiting, wait_until
from llm_rollout.release.inventory import release_objects
from llm_rollout.release.state import read_release_state, stable_service_ref
from llm_rollout.release.status import release_workloads
from llm_rollout.vocabulary import (
    ANN_PREVIOUS_RELEASE,
    ANN_RELEASE,
    ANNOTATION_PREFIX,
    RELEASE_LABEL,
    WORKLOAD_KINDS,
)

log = logging.getLogger(__name__)


def _applyable(obj: Mapping[str, Any]) -> JsonDict:
    """Strip what the server owns from an object read back, so it can be re-applied."""
    view = ObjectView(obj)
    metadata = view.metadata
    spec = dict(view.spec)
    for server_field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        spec.pop(server_field, None)
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {
            "name": view.ref.name,
            "namespace": metadata.namespace,
            "labels": dict(metadata.labels),
            "annotations": dict(metadata.annotations),
        },
        "spec": spec,
    }


def point_stable_service(
    api: k8s_client.ApiClient,
    stable_service: Mapping[str, Any],
    release: str,
    annotations: Mapping[str, str],
) -> JsonDict:
    """Apply the stable Service selecting `release`'s pods, with `annotations` merged in.

    `stable_service` is either the freshly rendered one or the live one read back (rollback);
    the result is applied whole by the single field manager, so nothing we set is dropped.
    """
    desired = _applyable({"apiVersion": "v1", "kind": "Service", **dict(stable_service)})
    desired["spec"]["selector"] = {
        **mapping_at(desired, "spec", "selector"),
        RELEASE_LABEL: release,
    }
    desired["metadata"]["annotations"].update(annotations)
    desired["metadata"]["annotations"][ANN_RELEASE] = release
    ref = ObjectRef.of(desired)
    result = apply(api, desired, field_manager=FIELD_MANAGER, force=True)
    log.info("%s now selects release %s", ref, release)
    return result


def rollback_to_previous(api: k8s_client.ApiClient, namespace: str, name: str) -> str:
    """Point the stable Service back at the previous release if its workload still exists.

    Returns what happened; raises `PermanentError` saying plainly what is possible when it
    cannot (no stable Service, no previous release recorded, or its workload already removed).
    """
    service = get(api, stable_service_ref(namespace, name))
    if service is None:
        raise PermanentError(f"Service {namespace}/{name} does not exist: nothing to roll back")
    state = read_release_state(api, namespace, name)
    previous = state.previous_release
    if not previous:
        raise PermanentError(
            f"Service {namespace}/{name} records no previous release; redeploy an earlier "
            "spec with `llm-rollout deploy` instead"
        )
    if not release_workloads(api, namespace, name, previous):
        raise PermanentError(
            f"the workload of previous release {previous} of Service {namespace}/{name} was "
            "already removed (after the promote grace period); redeploy the earlier spec with "
            "`llm-rollout deploy` to bring that revision back"
        )
    annotations = {ANN_PREVIOUS_RELEASE: state.current_release or ""}
    if not state.current_release:
        annotations = {}
    point_stable_service(api, service, previous, annotations)
    return (
        f"Service {namespace}/{name} now routes to release {previous} "
        f"(was {state.current_release or 'none'})"
    )


def restore_stable_service(
    api: k8s_client.ApiClient, namespace: str, name: str, release: str
) -> bool:
    """Point the stable Service back at `release`, with that release's own record annotations
    (taken from its workload), so `status` describes what serves again. False when there is
    no stable Service or no workload of `release` left to route to."""
    service = get(api, stable_service_ref(namespace, name))
    workloads = [
        o for o in release_objects(api, namespace, name, release) if o.get("kind") in WORKLOAD_KINDS
    ]
    if service is None or not workloads:
        return False
    recorded = {
        k: v
        for k, v in ObjectView(workloads[0]).metadata.annotations.items()
        if k.startswith(ANNOTATION_PREFIX)
    }
    kept = {
        k: v
        for k, v in ObjectView(service).metadata.annotations.items()
        if not k.startswith(ANNOTATION_PREFIX)
    }
    base = dict(service)
    base["metadata"] = {**mapping_at(service, "metadata"), "annotations": kept}
    point_stable_service(api, base, release, recorded)
    return True


def wait_rbg_role_services(
    api: k8s_client.ApiClient,
    namespace: str,
    workload: str,
    rbg_flavor: RbgFlavor,
    roles: Sequence[str],
    timeout_s: float,
) -> dict[str, str]:
    """The headless Service of each of `roles`, read from the pods the RBG controller created
    for them (their `spec.subdomain`, `kinds.rbg.role_services_from_pods`), once every role
    has a pod. Roles without dependencies get their pods at once, whatever the controller's
    version; a role that waits on them (the PD router) is not created before they are Ready,
    so its template can still be bound to what was read."""
    name_label = next(iter(role_labels(workload, roles[0], rbg_flavor)))

    def every_role_has_a_pod(pods: list[ObjectView]) -> Verdict[dict[str, str]]:
        services = role_services_from_pods([p.raw for p in pods], workload, rbg_flavor, roles)
        if set(services) >= set(roles):
            return Done(services)
        return Waiting(
            tuple(
                f"RoleBasedGroup {namespace}/{workload}: no pod of role {role} yet"
                for role in roles
                if role not in services
            )
        )

    pods = Selector("v1", "Pod", namespace, label_selector=f"{name_label}={workload}")
    return wait_until(api, pods, every_role_has_a_pod, timeout_s)
