"""The objects and pods of one release, or of every release and the storage of a service, as
the cluster lists them by our labels (`llm_rollout.vocabulary`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client as k8s_client

from llm_rollout.kube.errors import NotFoundError
from llm_rollout.kube.resources import JsonDict, ObjectRef, list_objects
from llm_rollout.kube.views import ObjectView
from llm_rollout.preflight import ServingRelease, pods_by_node
from llm_rollout.release.state import read_release_state
from llm_rollout.vocabulary import (
    RELEASE_KINDS,
    STORAGE_KINDS_REVERSED,
    release_selector,
    service_selector,
)


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
            key = (kind, ObjectView(item).metadata.name)
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


def service_objects(api: k8s_client.ApiClient, namespace: str, name: str) -> list[ObjectRef]:
    """Every object of service `name` (all releases, stable Service, PVC, PV, Secret), in the
    order to delete them: release Services and workloads, then storage."""
    selector = service_selector(name)
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


def ordered_refs(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Human-readable "Kind namespace/name" lines for the summary, in the given order."""
    return [str(ObjectRef.of(obj)) for obj in objects]
