"""What `llm-rollout status` shows, all read from the cluster: the serving release, the
readiness of its workloads, and whether the previous release can still take traffic back."""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client as k8s_client

from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import workload_missing
from llm_rollout.release.inventory import release_objects
from llm_rollout.release.state import read_release_state
from llm_rollout.strategy import ReleaseState
from llm_rollout.vocabulary import WORKLOAD_KINDS


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
