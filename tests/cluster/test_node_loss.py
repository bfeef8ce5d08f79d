"""A node that stops its heartbeats, judged by the real node-lifecycle and taint-eviction
controllers (issue 14, item 7; the premise of the rollback path that waits for a lost node's
pods).

The node agent stops renewing one node's Lease and posting its status
(``node_agent.heartbeats_stopped_file``). Upstream then acts, with its timings shortened only
by flags (``ClusterConfig.node_monitor_grace_period_s`` -> kube-controller-manager
``--node-monitor-grace-period``, ``not_ready_toleration_s`` -> the API server's
``--default-unreachable-toleration-seconds``):

- k8s.io/kubernetes ``pkg/controller/nodelifecycle/node_lifecycle_controller.go``
  (``tryUpdateNodeHealth``): no Lease renewal and no status for longer than the grace period
  turns every node condition to Unknown ("NodeStatusUnknown", "Kubelet stopped posting node
  status."), and ``doNoExecuteTaintingPass`` puts ``node.kubernetes.io/unreachable`` on the
  node as NoExecute (and NoSchedule through ``doNoScheduleTaintingPass``); ``MarkPodsNotReady``
  turns a pod's Ready condition False (these pods, never run, have none).
- ``pkg/controller/tainteviction/taint_eviction.go``: a pod whose toleration of that taint
  (added by the DefaultTolerationSeconds admission plugin) runs out is deleted, gracefully,
  after setting its ``DisruptionTarget`` condition (``DeletionByTaintManager``), and records a
  ``TaintManagerEviction`` event.
- Nobody then confirms the pod's termination (that is the kubelet's job, and this node's is cut
  off: the agent's pods on it keep running but it neither hears nor writes): the pod stays, with
  a ``deletionTimestamp``, long after its grace period ends. Once the node is back, its agent
  reads the deletion, stops the container and removes the pod, as a kubelet that reconnects.

The session cluster keeps upstream's 300 s toleration, so this runs on a short-lived extra
cluster of its own (``ClusterPorts.shifted``), without the operators.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from sandbox.cluster.control_plane import (
    Cluster,
    ClusterConfig,
    ClusterPorts,
    start_cluster,
    stop_cluster,
)
from sandbox.cluster.node_agent import NodeSpec, heartbeats_stopped_file
from sandbox.cluster.waits import wait_for

LOST = NodeSpec(name="lost-node", internal_ip="10.244.253.1", gpus=8)
KEPT = NodeSpec(name="kept-node", internal_ip="10.244.253.2", gpus=8)
CONFIG = ClusterConfig(
    nodes=(LOST, KEPT),
    node_monitor_period_s=1,
    node_monitor_grace_period_s=8,
    not_ready_toleration_s=2,
    # Its own pod range beside the session cluster's (10.244.0.0/17 from the start): the two
    # node agents' pod routes share the harness namespace.
    cluster_cidr="10.244.224.0/20",
    # The DNS address and kube-proxy's nftables table belong to the namespace, which the
    # session cluster's own already hold.
    with_dns=False,
    with_kube_proxy=False,
    with_kuberay=False,
    with_lws=False,
    ports=ClusterPorts().shifted(100),
)
WAIT_S = 90.0
STARTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def small_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The extra cluster; asks for the session cluster first so the two never start at once."""
    started = time.monotonic()
    extra = start_cluster(CONFIG)
    STARTS["node-loss-cluster-start-s"] = round(time.monotonic() - started, 1)
    print(f"EXTRA_CLUSTER_FIGURES {STARTS} {extra.ready_s}")
    yield extra
    stop_cluster(extra)


def _pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": LOST.name},
            # Short, so that "its grace period is over and it is still there" comes soon.
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "engine",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "exec sleep 3600"],
                }
            ],
        },
    }


def _condition(node: Any, kind: str) -> Any:
    return next(c for c in node.status.conditions or [] if c.type == kind)


@pytest.mark.timeout(240, func_only=True)
def test_a_node_without_heartbeats_is_tainted_and_its_pod_stays_terminating(
    small_cluster: Cluster,
) -> None:
    api = small_cluster.api_client()
    core = k8s.CoreV1Api(api)
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_pod(namespace, _pod("engine"))
    (bound,) = wait_for(
        core.list_namespaced_pod,
        lambda pods: len(pods) == 1 and pods[0].spec.node_name == LOST.name,
        namespace=namespace,
        timeout_s=WAIT_S,
        what=f"the pod bound to {LOST.name}",
    )
    wait_for(
        core.list_namespaced_pod,
        lambda pods: (
            len(pods) == 1
            and any(
                c.type == "Ready" and c.status == "True" for c in pods[0].status.conditions or []
            )
        ),
        namespace=namespace,
        timeout_s=WAIT_S,
        what="the pod running and Ready before its node is lost",
    )
    # DefaultTolerationSeconds admission gave it the shortened toleration of the taint.
    unreachable = [t for t in bound.spec.tolerations if t.key == "node.kubernetes.io/unreachable"]
    assert [(t.effect, t.toleration_seconds) for t in unreachable] == [
        ("NoExecute", CONFIG.not_ready_toleration_s)
    ]

    heartbeats_stopped_file(small_cluster.run_dir, LOST.name).touch()

    def lost(nodes: list[Any]) -> bool:
        node = next(n for n in nodes if n.metadata.name == LOST.name)
        taints = {(t.key, t.effect) for t in node.spec.taints or []}
        return (
            _condition(node, "Ready").status == "Unknown"
            and {
                ("node.kubernetes.io/unreachable", "NoExecute"),
                ("node.kubernetes.io/unreachable", "NoSchedule"),
            }
            <= taints
        )

    nodes = wait_for(core.list_node, lost, timeout_s=WAIT_S, what=f"{LOST.name} Unknown+tainted")
    node = next(n for n in nodes if n.metadata.name == LOST.name)
    ready = _condition(node, "Ready")
    assert (ready.reason, ready.message) == (
        "NodeStatusUnknown",
        "Kubelet stopped posting node status.",
    )
    kept = next(n for n in nodes if n.metadata.name == KEPT.name)
    assert _condition(kept, "Ready").status == "True"
    assert not [t for t in kept.spec.taints or [] if t.key.startswith("node.kubernetes.io/")]

    (marked,) = wait_for(
        core.list_namespaced_pod,
        lambda pods: len(pods) == 1 and pods[0].metadata.deletion_timestamp is not None,
        namespace=namespace,
        timeout_s=WAIT_S,
        what="the lost node's pod marked for deletion",
    )
    assert marked.metadata.deletion_grace_period_seconds == 1
    # MarkPodsNotReady turned the kubelet's Ready False; the taint-eviction controller marked
    # the pod a disruption target before deleting it (taint_eviction.go,
    # addConditionAndDeletePod). The cut-off agent wrote neither back.
    conditions = {c.type: c for c in marked.status.conditions}
    assert conditions["Ready"].status == "False"
    assert conditions["ContainersReady"].status == "True"
    disruption = conditions["DisruptionTarget"]
    assert (disruption.status, disruption.reason) == ("True", "DeletionByTaintManager")
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={marked.metadata.name}"
    ).items
    assert "TaintManagerEviction" in {e.reason for e in events}

    # Proof it stays past its grace period, by the API server's own clock: on each renewal of
    # the kept node's Lease (every few seconds), an object is created and its
    # creationTimestamp compared with the pod's deletionTimestamp; then the pod is read again.
    def server_clock_past_deadline(_leases: list[Any]) -> bool:
        probe = core.create_namespaced_config_map(
            namespace, {"metadata": {"generateName": "clock-"}}
        )
        return bool(probe.metadata.creation_timestamp > marked.metadata.deletion_timestamp)

    wait_for(
        k8s.CoordinationV1Api(api).list_namespaced_lease,
        server_clock_past_deadline,
        namespace="kube-node-lease",
        field_selector=f"metadata.name={KEPT.name}",
        timeout_s=WAIT_S,
        what="the API server's clock past the pod's deletionTimestamp",
    )
    still = core.read_namespaced_pod(marked.metadata.name, namespace)
    assert still.metadata.uid == marked.metadata.uid
    assert still.metadata.deletion_timestamp == marked.metadata.deletion_timestamp
    assert still.spec.node_name == LOST.name

    # Heartbeats back: the controller lifts the taints and the node is Ready again.
    heartbeats_stopped_file(small_cluster.run_dir, LOST.name).unlink()
    wait_for(
        core.list_node,
        lambda items: all(
            _condition(n, "Ready").status == "True"
            and not [t for t in n.spec.taints or [] if t.key == "node.kubernetes.io/unreachable"]
            for n in items
        ),
        timeout_s=WAIT_S,
        what="the node Ready and untainted again",
    )
    # ... and its agent, hearing again, finds the deletion and confirms it (grace 0).
    wait_for(
        core.list_namespaced_pod,
        lambda pods: not pods,
        namespace=namespace,
        timeout_s=WAIT_S,
        what="the lost node's pod removed once its node is back",
    )
    api.close()  # type: ignore[no-untyped-call]
