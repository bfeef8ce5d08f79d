"""Helpers shared by the real-cluster tests of the Ray shapes (LeaderWorkerSet and KubeRay)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from flows.deploy import DeployResult, deploy
from llm_rollout import render
from llm_rollout.kube.objects import delete
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.spec import ServiceSpec
from sandbox.cluster.waits import wait_for

# ray/scripts/scripts.py `ray start` (ray 2.48.0, the vLLM image's): cli_logger.success("Ray
# runtime started.") on head and worker alike, once the node's raylet is in the GCS's node
# table (ray/_private/node.py `Node.__init__` waits through services.wait_for_node); a worker
# prints "Local node IP: <ip>" (the address it reaches the head from) just before.
RAY_STARTED = "Ray runtime started."
# KubeRay v1.6.2 controllers/ray/utils/constant.go RayClusterLabelKey, RayNodeTypeLabelKey.
CLUSTER_LABEL = "ray.io/cluster"
NODE_TYPE_LABEL = "ray.io/node-type"


def print_events(admin: k8s.ApiClient, namespace: str) -> None:
    """The namespace's events and its pods' last log lines (this run's and the previous
    one's), printed for the report of a failed or slow run."""
    core = k8s.CoreV1Api(admin)
    items = core.list_namespaced_event(namespace).items
    lines = [f"{e.involved_object.name} {e.reason} x{e.count or 1}: {e.message}" for e in items]
    print("events:\n" + "\n".join(lines))
    for pod in core.list_namespaced_pod(namespace).items:
        names = [c.name for c in (pod.spec.init_containers or []) + pod.spec.containers]
        for container in names:
            for previous in (False, True):
                try:
                    log = core.read_namespaced_pod_log(
                        pod.metadata.name, namespace, container=container, previous=previous
                    )
                except k8s.ApiException as exc:
                    log = f"(no log: {exc.status} {exc.reason})"
                tail = "\n".join(str(log).splitlines()[-25:])
                which = "previous" if previous else "current"
                print(f"--- {pod.metadata.name}/{container} ({which}):\n{tail}")


def timed_deploy(
    spec: ServiceSpec, admin: k8s.ApiClient, namespace: str
) -> tuple[DeployResult, float]:
    """The deploy flow's result for ``spec`` and its wall time; the namespace's events and
    logs are printed whatever the outcome."""
    t0 = time.monotonic()
    try:
        result = deploy(spec)
    finally:
        print_events(admin, namespace)
    assert isinstance(result, DeployResult)
    return result, time.monotonic() - t0


def pod_log(core: k8s.CoreV1Api, pod: k8s.V1Pod, container: str) -> str:
    """The container's log through the API server; printed on the way for the report."""
    log: str = core.read_namespaced_pod_log(
        pod.metadata.name, pod.metadata.namespace, container=container
    )
    tail = "\n".join(log.splitlines()[-40:])
    print(f"--- {pod.metadata.name}/{container} (last 40 lines)\n{tail}")
    return log


def delete_now(admin: k8s.ApiClient, workload: ObjectRef, pod_selector: str) -> None:
    """Delete ``workload``, the StatefulSets its controllers made and its pods (all matching
    ``pod_selector``), the pods without their grace period, and wait until no pod is left.

    The templates give 60 s of grace, in which a Ray or vLLM process of the test would outlive
    it. The workload goes first and its StatefulSets (LWS's) next, so no controller is left
    to make a pod again: a StatefulSet being deleted creates none (kubernetes v1.36.3
    pkg/controller/statefulset/stateful_set_control.go updateStatefulSet L643-647); KubeRay
    makes a RayCluster's pods itself.
    """
    assert workload.namespace is not None, workload
    namespace = workload.namespace
    delete(admin, workload, propagation="Background")
    k8s.AppsV1Api(admin).delete_collection_namespaced_stateful_set(
        namespace, label_selector=pod_selector
    )
    core = k8s.CoreV1Api(admin)
    core.delete_collection_namespaced_pod(
        namespace, label_selector=pod_selector, grace_period_seconds=0
    )
    wait_for(
        core.list_namespaced_pod,
        lambda items: items == [],
        namespace=namespace,
        label_selector=pod_selector,
        timeout_s=120,
        what=f"the pods of {workload} gone",
    )


def ready_after_s(pod: k8s.V1Pod) -> float:
    """Seconds from the pod's creation to its Ready condition turning True."""
    ready = next(c for c in pod.status.conditions or [] if c.type == "Ready")
    assert ready.status == "True", (pod.metadata.name, ready)
    return float((ready.last_transition_time - pod.metadata.creation_timestamp).total_seconds())


def rayclusters(namespace: str, admin: k8s.ApiClient) -> list[dict[str, Any]]:
    listed = k8s.CustomObjectsApi(admin).list_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayclusters"
    )
    return list(listed["items"])


def raycluster_pods(core: k8s.CoreV1Api, namespace: str, cluster: str) -> dict[str, k8s.V1Pod]:
    """The RayCluster's pods by node type ("head", "worker"; one worker assumed)."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"{CLUSTER_LABEL}={cluster}").items
    return {p.metadata.labels[NODE_TYPE_LABEL]: p for p in pods}


@dataclass(frozen=True)
class ReadyRayCluster:
    body: dict[str, Any]
    head: k8s.V1Pod
    worker: k8s.V1Pod

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


def ready_raycluster(admin: k8s.ApiClient, namespace: str) -> ReadyRayCluster:
    """The namespace's one RayCluster, asserted ready under KubeRay with its one worker, and
    its head and worker pods."""
    (cluster,) = rayclusters(namespace, admin)
    status = cluster["status"]
    assert status["state"] == "ready", status
    assert status["readyWorkerReplicas"] == 1 and status["desiredWorkerReplicas"] == 1
    pods = raycluster_pods(k8s.CoreV1Api(admin), namespace, cluster["metadata"]["name"])
    assert set(pods) == {"head", "worker"}, sorted(pods)
    assert status["head"]["podName"] == pods["head"].metadata.name
    return ReadyRayCluster(cluster, pods["head"], pods["worker"])


# --- the Ray templates as they stood before issue 16's fixes ----------------------------------

# Commit 818048d ("Issue 16: fix in the spec, templates and examples what real KubeRay, LWS, ...")
# fixed F1 and F2 in manifests/vllm/ray-cluster.yaml.j2 and F5 in
# manifests/vllm/multi-node-lws.yaml.j2; the files below are those templates at its parent
# (`git show 818048d^:manifests/vllm/...`), rendered with today's render context and macros.
OLD_TEMPLATES = Path(__file__).parent / "old_templates"
OLD_RAY_CLUSTER = OLD_TEMPLATES / "vllm-ray-cluster.before-818048d.yaml.j2"
OLD_MULTI_NODE_LWS = OLD_TEMPLATES / "vllm-multi-node-lws.before-818048d.yaml.j2"


def render_old_workload(spec: ServiceSpec, release: str, template: Path) -> dict[str, Any]:
    """The workload object ``template`` renders for ``spec`` and ``release``."""
    ctx = render._Ctx(spec, release, "v0.6")
    text = render._environment().from_string(template.read_text()).render(c=ctx, spec=spec)
    (doc,) = [d for d in yaml.safe_load_all(text) if d]
    assert isinstance(doc, dict)
    return doc
