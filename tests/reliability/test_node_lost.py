"""Readiness when the node under a pod is lost: NotReady, or deleted, while the rollout waits.

The cluster evicts pods of a lost node after the real default (the DefaultTolerationSeconds
300 s), so the pod stays bound to its dead node as it would on a real cluster; the report must
come from the node, within seconds, naming the pod and the node.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch

from llm_rollout.kube.objects import apply
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import (
    ReadinessTimeout,
    WorkloadFailed,
    wait_ready,
)
from llm_rollout.readiness_rules import DEFAULT_TOLERANCES
from sandbox.kube.backends import BackendBehavior
from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.kube.kubelet import Timings
from sandbox.kube.nodes import NodeSpec

# Fixtures: a client of `cluster` below, and a namespace per test.
from tests.kube_edge.conftest import api as api
from tests.kube_edge.conftest import deployment
from tests.kube_edge.conftest import namespace as namespace

# A NotReady node is tolerated for node_not_ready_s (it may come back); these tests are about
# the report once that is used up, so they set it to 0. A deleted node never is tolerated.
NODE_AT_ONCE = replace(DEFAULT_TOLERANCES, node_not_ready_s=0.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxCluster]:
    nodes = [NodeSpec(f"node-{i}") for i in range(4)]
    config = ClusterConfig(nodes=nodes, timings=Timings(node_eviction_s=300))
    with SandboxCluster(config, tmp_path_factory.mktemp("kube")) as cluster:
        yield cluster


def _deploy(api: k8s_client.ApiClient, namespace: str) -> ObjectRef:
    """Deployment `namespace/vllm`: one pod."""
    obj = deployment(namespace, "vllm")
    # A node to itself (a quantity is a string on a real API server).
    obj["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": "8"}
    }
    apply(api, obj)
    return ObjectRef.of(obj)


def _bound_pod(api: k8s_client.ApiClient, namespace: str) -> Any:
    """The Deployment's pod, once the scheduler bound it to a node."""
    core = k8s_client.CoreV1Api(api)
    stream = k8s_watch.Watch()
    for event in stream.stream(core.list_namespaced_pod, namespace, timeout_seconds=30):
        if event["object"].spec.node_name:
            stream.stop()
            return event["object"]
    raise AssertionError(f"no pod of {namespace} was bound to a node within 30s")


def _loading_pod(
    cluster: SandboxCluster, api: k8s_client.ApiClient, namespace: str
) -> tuple[ObjectRef, Any]:
    """The Deployment, and its pod once bound to a node, the model still loading (not Ready)."""
    cluster.scripted.set_behavior(
        lambda pod: pod["metadata"].get("namespace") == namespace,
        BackendBehavior(load_delay_s=120),
    )
    workload = _deploy(api, namespace)
    return workload, _bound_pod(api, namespace)


def _lost(failure: WorkloadFailed, workload: ObjectRef, pod: Any) -> str:
    node = pod.spec.node_name
    assert failure.reason == "NodeLost"
    assert failure.pod == ObjectRef("v1", "Pod", pod.metadata.namespace, pod.metadata.name)
    message = str(failure)
    assert message.startswith(f"{workload}: NodeLost on Pod {failure.pod.namespace}/")
    assert f"Node {node} " in message
    return message


def test_a_pod_still_loading_on_a_node_that_stops_reporting(
    cluster: SandboxCluster, api: k8s_client.ApiClient, namespace: str
) -> None:
    """No pod condition changes (it was never Ready): the node's Ready=Unknown is the news."""
    workload, pod = _loading_pod(cluster, api, namespace)
    cluster.kubelet.lose_node(pod.spec.node_name)
    try:
        # The verdict, not the 60 s timeout (that would be ReadinessTimeout); how soon after
        # the loss it comes is bench/reliability.py's "NodeLost reported" figure.
        with pytest.raises(WorkloadFailed) as info:
            wait_ready(api, workload, timeout_s=60, tolerances=NODE_AT_ONCE)
    finally:
        cluster.kubelet.restore_node(pod.spec.node_name)
    message = _lost(info.value, workload, pod)
    assert (
        f"Node {pod.spec.node_name} is not ready: Ready=Unknown (NodeStatusUnknown: Kubelet "
        "stopped posting node status.)"
    ) in message
    assert info.value.log_lines == []  # nobody on that node answers for its containers
    # No event explains a pod that never was Ready: decided once the grace for one ran out.
    assert info.value.event_message == ""


def test_a_ready_pod_whose_node_is_lost_is_explained_by_the_node_controller_event(
    cluster: SandboxCluster, api: k8s_client.ApiClient, namespace: str
) -> None:
    workload = _deploy(api, namespace)
    ready = wait_ready(api, workload, timeout_s=60)
    pod = k8s_client.CoreV1Api(api).read_namespaced_pod(ready.pods[0].name, namespace)
    cluster.kubelet.lose_node(pod.spec.node_name)
    try:
        with pytest.raises(WorkloadFailed) as info:
            wait_ready(api, workload, timeout_s=60, tolerances=NODE_AT_ONCE)
    finally:
        cluster.kubelet.restore_node(pod.spec.node_name)
    _lost(info.value, workload, pod)
    assert info.value.event_message == "Node is not ready"  # MarkPodsNotReady's Warning


def test_a_node_deleted_while_readiness_waits(
    cluster: SandboxCluster, api: k8s_client.ApiClient, namespace: str
) -> None:
    workload, pod = _loading_pod(cluster, api, namespace)
    watching = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            wait_ready, api, workload, timeout_s=60, on_event=lambda ref, m: watching.set()
        )
        assert watching.wait(10)  # synced: the node has been seen
        k8s_client.CoreV1Api(api).delete_node(pod.spec.node_name)
        # A bound on the wait only (the readiness timeout is 60 s): the deletion is a watch
        # event, and the verdict is a WorkloadFailed, not a ReadinessTimeout.
        with pytest.raises(WorkloadFailed) as info:
            waiting.result(timeout=30)
    message = _lost(info.value, workload, pod)
    assert f"Node {pod.spec.node_name} was deleted" in message


def test_a_node_not_ready_inside_the_tolerance_does_not_fail_the_rollout(
    cluster: SandboxCluster, api: k8s_client.ApiClient, namespace: str
) -> None:
    """While the node is within node_not_ready_s, the wait goes on (here until its own short
    timeout). The node coming back and the pod then turning Ready is covered by
    tests/kube_edge/test_readiness_rules.py: the stand-in's `restore_node` does not resume the
    node's pods, and sandbox/kube/ gets no new behaviour."""
    workload, pod = _loading_pod(cluster, api, namespace)
    cluster.kubelet.lose_node(pod.spec.node_name)
    notes: list[str] = []
    try:
        with pytest.raises(ReadinessTimeout) as info:
            wait_ready(api, workload, timeout_s=3, on_event=lambda ref, m: notes.append(m))
    finally:
        cluster.kubelet.restore_node(pod.spec.node_name)
    assert any(
        n.startswith("tolerating NodeLost") and f"Node {pod.spec.node_name} is not ready" in n
        for n in notes
    ), notes
    # The timeout names the signal still inside its bound.
    assert f"NodeLost on pod {pod.metadata.name} for " in str(info.value)
    assert "(tolerated up to 300s)" in str(info.value)
