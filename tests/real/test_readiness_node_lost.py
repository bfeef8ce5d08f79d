"""Readiness and rollback when the node under a pod is lost, on the session's real cluster.

The node agent stops one node's heartbeats (``node_agent.heartbeats_stopped_file``); the real
node-lifecycle controller then judges it (the session cluster's
``--node-monitor-grace-period=16s``; see tests/cluster/test_node_loss.py for the controller's
own steps, cited there):
- k8s.io/kubernetes ``pkg/controller/nodelifecycle/node_lifecycle_controller.go``
  ``tryUpdateNodeHealth``: Ready=Unknown, "NodeStatusUnknown", "Kubelet stopped posting node
  status."; the ``node.kubernetes.io/unreachable`` taints;
- ``pkg/controller/util/node/controller_utils.go`` ``MarkPodsNotReady``: a Ready pod's Ready
  turns False and a Warning ``NodeNotReady`` "Node is not ready" is recorded on it;
- ``pkg/controller/tainteviction/taint_eviction.go``: a pod whose toleration of the unreachable
  taint runs out is deleted gracefully, and nobody confirms it (the node's kubelet is cut
  off): it stays Terminating. The session cluster keeps upstream's 300 s default toleration
  (DefaultTolerationSeconds), so the pod that must be evicted declares its own 1 s one, which
  the admission plugin leaves alone.
Removing a release then waits for its pods on the healthy node and sets aside the one on the
lost node (``llm_rollout.release.removal.unconfirmable_deletion``, issue 16 B4).

One loss serves every test of the module (the fixture cuts the node once and restores it at
the end, waiting until it is Ready again so later tests find it whole).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pytest
from kubernetes import client as k8s

from bench.readiness import shell_deployment
from llm_rollout.errors import PermanentError
from llm_rollout.kube.objects import apply
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import ReadinessTimeout, WorkloadFailed, wait_ready
from llm_rollout.readiness_rules import DEFAULT_TOLERANCES
from llm_rollout.release.removal import remove_release, teardown
from llm_rollout.vocabulary import PART_OF_LABEL, RELEASE_LABEL
from sandbox.cluster.control_plane import Cluster
from sandbox.cluster.node_agent import NodeSpec, heartbeats_stopped_file
from sandbox.cluster.waits import wait_for

# A NotReady node is tolerated for node_not_ready_s (it may come back); the verdict tests are
# about the report once that is used up, so they set it to 0. A deleted node never is.
NODE_AT_ONCE = replace(DEFAULT_TOLERANCES, node_not_ready_s=0.0)
# Bounds on waits for the controllers, not expectations: the grace period is 16 s.
NODE_WAIT_S = 90.0
# The removal's bound: far above the healthy pod's 3 s grace period, and below the test's own
# timeout (tests/real_cluster.py), so a wait for the lost node's pod ends in its WaitTimeout.
REMOVAL_WAIT_S = 60.0
SERVICE, RELEASE = "edge", "r1"


def _deployment(
    namespace: str,
    name: str,
    node: str,
    *,
    probe_port: int | None = None,
    labels: dict[str, str] | None = None,
    unreachable_toleration_s: int | None = None,
    stop_grace_s: int | None = None,
) -> dict[str, Any]:
    """A pod of the shell image on ``node``; with ``stop_grace_s`` it ignores SIGTERM, so its
    kubelet confirms its deletion only once that grace period has run out."""
    spec: dict[str, Any] = {"nodeSelector": {"kubernetes.io/hostname": node}}
    container: dict[str, Any] = {}
    if stop_grace_s is not None:
        spec["terminationGracePeriodSeconds"] = stop_grace_s
        container["command"] = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
    if probe_port is not None:
        # Nothing listens there: the pod runs and never turns Ready (a model still loading).
        container["readinessProbe"] = {
            "httpGet": {"path": "/health", "port": probe_port},
            "periodSeconds": 1,
        }
    if unreachable_toleration_s is not None:
        spec["tolerations"] = [
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": unreachable_toleration_s,
            }
        ]
    return shell_deployment(namespace, name, labels=labels, pod_spec=spec, container=container)


def _pods(api: k8s.ApiClient, namespace: str, app: str) -> list[Any]:
    items: list[Any] = (
        k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}").items
    )
    return items


def _running(api: k8s.ApiClient, namespace: str, app: str) -> Any:
    (pod,) = wait_for(
        k8s.CoreV1Api(api).list_namespaced_pod,
        lambda pods: len(pods) == 1 and pods[0].status.phase == "Running",
        namespace=namespace,
        label_selector=f"app={app}",
        timeout_s=NODE_WAIT_S,
        what=f"the pod of {app} running",
    )
    return pod


def _ready_condition(node: Any) -> Any:
    return next(c for c in node.status.conditions or [] if c.type == "Ready")


def _wait_node(api: k8s.ApiClient, name: str, status: str) -> None:
    wait_for(
        k8s.CoreV1Api(api).list_node,
        lambda nodes: any(
            n.metadata.name == name and _ready_condition(n).status == status for n in nodes
        ),
        timeout_s=NODE_WAIT_S,
        what=f"Node {name} Ready={status}",
    )


@dataclass(frozen=True)
class LostNode:
    namespace: str
    node: str
    loading: ObjectRef  # runs, never Ready
    ready: ObjectRef  # was Ready before the loss
    released: ObjectRef  # a release's workload whose pod is evicted and stays Terminating
    lingering: ObjectRef  # the same release's workload on a healthy node, slow to stop
    loading_pod: Any
    ready_pod: Any


@pytest.fixture(scope="module")
def lost(
    real_cluster: Cluster, real_admin: k8s.ApiClient, real_gpu_nodes: tuple[NodeSpec, ...]
) -> Iterator[LostNode]:
    api = real_admin
    node, healthy = real_gpu_nodes[-1].name, real_gpu_nodes[0].name
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    core = k8s.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    release_labels = {PART_OF_LABEL: SERVICE, RELEASE_LABEL: RELEASE}
    objects = {
        "loading": _deployment(namespace, "loading", node, probe_port=8000),
        "ready": _deployment(namespace, "ready", node),
        "released": _deployment(
            namespace, "released", node, labels=release_labels, unreachable_toleration_s=1
        ),
        "lingering": _deployment(
            namespace, "lingering", healthy, labels=release_labels, stop_grace_s=3
        ),
    }
    for obj in objects.values():
        apply(api, obj)
    refs = {key: ObjectRef.of(obj) for key, obj in objects.items()}
    wait_ready(api, refs["ready"], timeout_s=NODE_WAIT_S)
    wait_ready(api, refs["released"], timeout_s=NODE_WAIT_S)
    wait_ready(api, refs["lingering"], timeout_s=NODE_WAIT_S)
    loading_pod = _running(api, namespace, "loading")
    ready_pod = _running(api, namespace, "ready")
    stopped = heartbeats_stopped_file(real_cluster.run_dir, node)
    stopped.touch()
    try:
        _wait_node(api, node, "Unknown")
        yield LostNode(
            namespace=namespace,
            node=node,
            loading=refs["loading"],
            ready=refs["ready"],
            released=refs["released"],
            lingering=refs["lingering"],
            loading_pod=loading_pod,
            ready_pod=ready_pod,
        )
    finally:
        stopped.unlink()
        _wait_node(api, node, "True")
        core.delete_namespace(namespace)


def _lost_verdict(failure: WorkloadFailed, workload: ObjectRef, pod: Any, node: str) -> str:
    assert failure.reason == "NodeLost"
    assert failure.pod == ObjectRef("v1", "Pod", pod.metadata.namespace, pod.metadata.name)
    message = str(failure)
    assert message.startswith(f"{workload}: NodeLost on Pod {pod.metadata.namespace}/")
    assert f"Node {node} " in message
    return message


def test_a_node_not_ready_inside_the_tolerance_does_not_fail_the_rollout(
    real_admin: k8s.ApiClient, lost: LostNode
) -> None:
    """While the node is within node_not_ready_s (300 s by default) the wait goes on, here
    until its own short timeout, which names the signal still inside its bound."""
    notes: list[str] = []
    with pytest.raises(ReadinessTimeout) as info:
        wait_ready(real_admin, lost.loading, timeout_s=3, on_event=lambda ref, m: notes.append(m))
    assert any(
        n.startswith("tolerating NodeLost") and f"Node {lost.node} is not ready" in n for n in notes
    ), notes
    pod = ObjectRef("v1", "Pod", lost.namespace, lost.loading_pod.metadata.name)
    assert f"NodeLost on {pod} for " in str(info.value)
    assert "(tolerated up to 300s)" in str(info.value)


def test_a_pod_still_loading_on_a_node_that_stops_reporting(
    real_admin: k8s.ApiClient, lost: LostNode
) -> None:
    """No pod condition changes (it was never Ready): the node's Ready=Unknown is the news."""
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, lost.loading, timeout_s=60, tolerances=NODE_AT_ONCE)
    message = _lost_verdict(info.value, lost.loading, lost.loading_pod, lost.node)
    assert (
        f"Node {lost.node} is not ready: Ready=Unknown (NodeStatusUnknown: Kubelet "
        "stopped posting node status.)"
    ) in message
    assert info.value.log_lines == []  # nobody on that node answers for its containers
    # MarkPodsNotReady records its event only on a pod whose Ready it turns False.
    assert info.value.event_message == ""


def test_a_ready_pod_whose_node_is_lost_is_explained_by_the_node_controller_event(
    real_admin: k8s.ApiClient, lost: LostNode
) -> None:
    # MarkPodsNotReady runs on the controller's next monitor pass after the node turned
    # Unknown: wait for its event rather than race it.
    wait_for(
        k8s.CoreV1Api(real_admin).list_namespaced_event,
        lambda events: any(e.reason == "NodeNotReady" for e in events),
        namespace=lost.namespace,
        field_selector=f"involvedObject.name={lost.ready_pod.metadata.name}",
        timeout_s=NODE_WAIT_S,
        what="MarkPodsNotReady's event on the Ready pod",
    )
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, lost.ready, timeout_s=60, tolerances=NODE_AT_ONCE)
    _lost_verdict(info.value, lost.ready, lost.ready_pod, lost.node)
    assert info.value.event_message == "Node is not ready"


def test_removing_a_release_sets_aside_the_pod_its_lost_node_cannot_confirm(
    real_admin: k8s.ApiClient, lost: LostNode
) -> None:
    """Issue 16 B4: the taint manager evicts the pod, nobody confirms it, and it really stays
    Terminating. The removal ends without waiting for it (the old wait ran out its bound and
    raised WaitTimeout), names it with its Node and what frees it, and still waits for the
    release's pod on the healthy node."""
    core = k8s.CoreV1Api(real_admin)
    pods = wait_for(
        core.list_namespaced_pod,
        lambda pods: any(p.metadata.deletion_timestamp is not None for p in pods),
        namespace=lost.namespace,
        label_selector="app=released",
        timeout_s=NODE_WAIT_S,
        what="the released pod evicted by the taint manager",
    )
    # Its ReplicaSet has made a replacement, which cannot be scheduled (the node is tainted).
    (evicted,) = [p for p in pods if p.metadata.deletion_timestamp is not None]
    removal = remove_release(
        real_admin, lost.namespace, SERVICE, RELEASE, wait_timeout_s=REMOVAL_WAIT_S
    )
    assert set(removal.removed) == {lost.released, lost.lingering}
    (left,) = removal.stranded
    assert left.pod == ObjectRef("v1", "Pod", lost.namespace, evicted.metadata.name)
    assert left.node == lost.node
    assert left.cause.startswith(
        f"Node {lost.node} is unreachable (Ready=Unknown (NodeStatusUnknown: Kubelet stopped "
        "posting node status.); tainted node.kubernetes.io/unreachable)"
    )
    assert f"kubectl delete node {lost.node}" in left.remedy
    assert left.describe() in removal.lines()
    # The healthy node's pod ignored SIGTERM for its 3 s grace period: it was waited for.
    assert _pods(real_admin, lost.namespace, "lingering") == []
    # The workload itself is gone; only the pod the lost node never confirmed remains.
    assert (
        not k8s.AppsV1Api(real_admin)
        .list_namespaced_deployment(lost.namespace, label_selector=f"{RELEASE_LABEL}={RELEASE}")
        .items
    )
    (still,) = [
        p
        for p in _pods(real_admin, lost.namespace, "released")
        if p.metadata.name == evicted.metadata.name
    ]
    assert still.metadata.deletion_timestamp is not None
    # Teardown would next delete the claim, which pvc-protection keeps while that pod exists:
    # it stops there, naming the pod, instead of waiting out the claim's bound.
    with pytest.raises(PermanentError) as info:
        teardown(real_admin, lost.namespace, SERVICE, wait_timeout_s=REMOVAL_WAIT_S)
    assert str(info.value).startswith(
        f"teardown of {lost.namespace}/{SERVICE} stopped before its storage: {left.describe()}"
    )


def test_a_node_deleted_while_readiness_waits(real_admin: k8s.ApiClient, lost: LostNode) -> None:
    """A Node object of the test's own (no agent behind it) with a pod bound to it by name, as
    the scheduler would: deleting the Node is a watch event, and the verdict comes from it."""
    core = k8s.CoreV1Api(real_admin)
    node = f"gone-{lost.namespace}"
    core.create_node({"metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}})
    try:
        obj = _deployment(lost.namespace, "orphan", node)
        obj["spec"]["template"]["spec"]["nodeName"] = node
        apply(real_admin, obj)
        workload = ObjectRef.of(obj)
        pod = wait_for(
            core.list_namespaced_pod,
            lambda pods: len(pods) == 1,
            namespace=lost.namespace,
            label_selector="app=orphan",
            timeout_s=NODE_WAIT_S,
            what="the orphan's pod",
        )[0]
        watching = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                wait_ready,
                real_admin,
                workload,
                timeout_s=60,
                on_event=lambda ref, m: watching.set(),
            )
            assert watching.wait(30)  # synced: the node has been seen
            core.delete_node(node)
            with pytest.raises(WorkloadFailed) as info:
                waiting.result(timeout=60)
    finally:
        if core.list_node(field_selector=f"metadata.name={node}").items:
            core.delete_node(node)
    message = _lost_verdict(info.value, workload, pod, node)
    assert f"Node {node} was deleted" in message
