"""Releases as the cluster sees them: which one serves, which objects and pods belong to one,
and the two writes that move traffic (switch the stable Service) or remove a release.

The cluster is the only source of truth: the stable Service's selector names the serving
release, its annotations name the one before it. Nothing here keeps local state, so `status`
and `rollback` from another machine see exactly what the deploy flow left.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError
from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.errors import NotFoundError
from llm_rollout.kube.objects import FIELD_MANAGER, apply, apply_all, delete, get
from llm_rollout.kube.readiness import workload_missing
from llm_rollout.kube.resources import JsonDict, ObjectRef, list_objects
from llm_rollout.preflight import ServingRelease, pods_by_node
from llm_rollout.record import ANN_PREVIOUS_RELEASE, ANN_RELEASE, ANN_REVISION, ANN_SPEC_HASH
from llm_rollout.render import PART_OF_LABEL, RELEASE_LABEL
from llm_rollout.strategy import ReleaseState

log = logging.getLogger(__name__)

# Kinds a release may own, in dependency order (a release's Services select its pods, so they
# go after the workload when applying and before it when deleting).
RELEASE_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    ("workloads.x-k8s.io/v1alpha2", "RoleBasedGroup"),
    ("workloads.x-k8s.io/v1alpha1", "RoleBasedGroup"),
    ("ray.io/v1", "RayCluster"),
    ("v1", "Service"),
)


@contextmanager
def cluster_api() -> Iterator[k8s_client.ApiClient]:
    """An API client from the standard sources (KUBECONFIG, in-cluster), closed afterwards."""
    api = load_api_client()
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


def stable_service_ref(namespace: str, name: str) -> ObjectRef:
    return ObjectRef("v1", "Service", namespace, name)


def read_release_state(api: k8s_client.ApiClient, namespace: str, name: str) -> ReleaseState:
    """The serving release of service `name`, from its stable Service (None when absent)."""
    service = get(api, stable_service_ref(namespace, name))
    if service is None:
        return ReleaseState(service=name, namespace=namespace, current_release=None)
    selector = (service.get("spec") or {}).get("selector") or {}
    annotations = dict((service.get("metadata") or {}).get("annotations") or {})
    return ReleaseState(
        service=name,
        namespace=namespace,
        current_release=selector.get(RELEASE_LABEL),
        previous_release=annotations.get(ANN_PREVIOUS_RELEASE),
        revision=annotations.get(ANN_REVISION),
        spec_hash=annotations.get(ANN_SPEC_HASH),
        annotations=annotations,
    )


def release_selector(name: str, release: str) -> str:
    return f"{PART_OF_LABEL}={name},{RELEASE_LABEL}={release}"


def release_objects(
    api: k8s_client.ApiClient, namespace: str, name: str, release: str
) -> list[JsonDict]:
    """Every workload and Service labelled as `release` of service `name`, in apply order.

    Kinds whose API the cluster does not serve are skipped: a cluster without KubeRay cannot
    hold a RayCluster of this release. The stable Service carries no release label.
    """
    found: list[JsonDict] = []
    seen: set[tuple[str, str]] = set()
    for api_version, kind in RELEASE_KINDS:
        try:
            items, _ = list_objects(
                api, api_version, kind, namespace, label_selector=release_selector(name, release)
            )
        except NotFoundError:
            continue
        for item in items:
            key = (kind, str((item.get("metadata") or {}).get("name")))
            if key not in seen:  # an RBG listed under both served versions is one object
                seen.add(key)
                found.append(item)
    return found


def release_pods(
    api: k8s_client.ApiClient, namespace: str, name: str, release: str
) -> list[JsonDict]:
    pods, _ = list_objects(
        api, "v1", "Pod", namespace, label_selector=release_selector(name, release)
    )
    return pods


def find_serving_release(api: k8s_client.ApiClient, namespace: str, name: str) -> ServingRelease:
    """The serving release and the GPUs its pods hold per node (what recreate would free)."""
    state = read_release_state(api, namespace, name)
    if state.current_release is None:
        return ServingRelease(release=None, pods_by_node={})
    pods = release_pods(api, namespace, name, state.current_release)
    return ServingRelease(release=state.current_release, pods_by_node=pods_by_node(pods))


def _applyable(obj: Mapping[str, Any]) -> JsonDict:
    """Strip what the server owns from an object read back, so it can be re-applied."""
    metadata = obj.get("metadata") or {}
    spec = dict(obj.get("spec") or {})
    for server_field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        spec.pop(server_field, None)
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata.get("namespace"),
            "labels": dict(metadata.get("labels") or {}),
            "annotations": dict(metadata.get("annotations") or {}),
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
        **dict(desired["spec"].get("selector") or {}),
        RELEASE_LABEL: release,
    }
    desired["metadata"]["annotations"].update(annotations)
    desired["metadata"]["annotations"][ANN_RELEASE] = release
    ref = ObjectRef.of(desired)
    result = apply(api, desired, field_manager=FIELD_MANAGER, force=True)
    log.info("%s now selects release %s", ref, release)
    return result


def remove_release(
    api: k8s_client.ApiClient,
    namespace: str,
    name: str,
    release: str,
    *,
    wait_timeout_s: float | None,
) -> list[ObjectRef]:
    """Delete every object of `release` (Services first, then the workload); return refs."""
    if not release:
        raise PermanentError("remove_release: an empty release id would match nothing safely")
    refs = [ObjectRef.of(obj) for obj in release_objects(api, namespace, name, release)]
    removed: list[ObjectRef] = []
    for ref in reversed(refs):
        if delete(api, ref, propagation="Foreground", wait_timeout_s=wait_timeout_s):
            removed.append(ref)
    return removed


def ordered_refs(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Human-readable "Kind namespace/name" lines for the summary, in the given order."""
    return [str(ObjectRef.of(obj)) for obj in objects]


# Shared by every release and removed only by teardown, in reverse dependency order.
STORAGE_KINDS_REVERSED: tuple[tuple[str, str], ...] = (
    ("v1", "PersistentVolumeClaim"),
    ("v1", "PersistentVolume"),
    ("v1", "Secret"),
)


def service_objects(api: k8s_client.ApiClient, namespace: str, name: str) -> list[ObjectRef]:
    """Every object of service `name` (all releases, stable Service, PVC, PV, Secret), in the
    order to delete them: release Services and workloads, then storage."""
    selector = f"{PART_OF_LABEL}={name}"
    refs: list[ObjectRef] = []
    seen: set[tuple[str, str]] = set()
    for api_version, kind in (*reversed(RELEASE_KINDS), *STORAGE_KINDS_REVERSED):
        scope = None if kind == "PersistentVolume" else namespace
        try:
            items, _ = list_objects(api, api_version, kind, scope, label_selector=selector)
        except NotFoundError:
            continue
        for item in items:
            ref = ObjectRef.of(item)
            if (kind, ref.name) not in seen:
                seen.add((kind, ref.name))
                refs.append(ref)
    return refs


def namespace_object(namespace: str) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
    }


def with_annotations(obj: Mapping[str, Any], annotations: Mapping[str, str]) -> JsonDict:
    """A copy of a rendered object with `annotations` merged into its metadata."""
    copy = dict(obj)
    metadata = dict(copy.get("metadata") or {})
    metadata["annotations"] = {**dict(metadata.get("annotations") or {}), **annotations}
    copy["metadata"] = metadata
    return copy


def apply_checked(
    api: k8s_client.ApiClient, objects: Sequence[Mapping[str, Any]]
) -> list[JsonDict]:
    """Dry-run every object first, then apply them in order: a rejected object stops the
    stage before anything of it was written."""
    apply_all(api, objects, field_manager=FIELD_MANAGER, dry_run=True)
    return apply_all(api, objects, field_manager=FIELD_MANAGER)


@dataclass(frozen=True)
class WorkloadStatus:
    ref: ObjectRef
    ready: bool
    missing: tuple[str, ...]


@dataclass(frozen=True)
class ServiceStatus:
    """What `llm-rollout status` shows, all read from the cluster."""

    state: ReleaseState
    workloads: tuple[WorkloadStatus, ...]
    previous_release_present: bool


WORKLOAD_KINDS = frozenset({"Deployment", "LeaderWorkerSet", "RoleBasedGroup", "RayCluster"})


def release_workloads(
    api: k8s_client.ApiClient, namespace: str, name: str, release: str
) -> list[WorkloadStatus]:
    """Readiness of each workload of `release`, from the workloads' own status."""
    result: list[WorkloadStatus] = []
    for obj in release_objects(api, namespace, name, release):
        if obj.get("kind") not in WORKLOAD_KINDS:
            continue
        missing = workload_missing(obj)
        result.append(WorkloadStatus(ObjectRef.of(obj), not missing, tuple(missing)))
    return result


def service_status(api: k8s_client.ApiClient, namespace: str, name: str) -> ServiceStatus:
    state = read_release_state(api, namespace, name)
    workloads: list[WorkloadStatus] = []
    if state.current_release:
        workloads = release_workloads(api, namespace, name, state.current_release)
    previous_present = bool(
        state.previous_release and release_objects(api, namespace, name, state.previous_release)
    )
    return ServiceStatus(state, tuple(workloads), previous_present)


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


def teardown(
    api: k8s_client.ApiClient, namespace: str, name: str, *, wait_timeout_s: float
) -> list[ObjectRef]:
    """Remove every release, the stable Service, PVC, PV and Secret of a service (never the
    OSS data). Each object is waited for before the next, so the PVC outlives its pods."""
    removed: list[ObjectRef] = []
    for ref in service_objects(api, namespace, name):
        if delete(api, ref, propagation="Foreground", wait_timeout_s=wait_timeout_s):
            removed.append(ref)
    return removed
