"""A minimal node agent: registers GPU Nodes with the real API server and keeps them Ready.

It stands in for kubelets (there is no container runtime here), as a client of the real API
server and nothing else, and does for each node what the kubelet's node-status and
node-lease code does (k8s.io/kubernetes ``pkg/kubelet/kubelet_node_status.go``,
``pkg/kubelet/nodelease`` via k8s.io/component-helpers ``apimachinery/lease/controller.go``):
create the Node, report its capacity (here ``nvidia.com/gpu`` as a device plugin would) and
its conditions, and renew its Lease in ``kube-node-lease``. Each node acts with a client
certificate of its own (``system:node:<name>`` in ``system:nodes``), so the API server's Node
authorizer and NodeRestriction admission judge its writes as they judge a kubelet's.

Running pods (issue 15) plugs in per node: a :class:`NodeHandle` carries the node's own API
client, which the Node authorizer lets read the pods bound to that node and write their status
and nothing else, so a pod runner gets one handle per node and the identities stay right.

Run as its own process (``python -m sandbox.cluster.node_agent CONFIG``), started and stopped by
the harness like the other components, logging to its own file.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from sandbox.cluster.pods.memory import MemoryCgroups
from sandbox.cluster.pods.node import NodePods, PodsConfig
from sandbox.cluster.pods.runner import FIELD_MANAGER
from sandbox.cluster.pods.server import KUBELET_PORT

LEASE_NAMESPACE = "kube-node-lease"
# What the kubelet reports and uses by default (KubeletConfiguration nodeLeaseDurationSeconds).
LEASE_DURATION_S = 40
KUBELET_VERSION = "v1.36.3"

log = logging.getLogger("node-agent")


@dataclass(frozen=True)
class NodeSpec:
    """One node: its name, address and what it offers the scheduler."""

    name: str
    internal_ip: str
    gpus: int = 8
    cpu: str = "64"
    memory: str = "512Gi"
    pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)


def _micro_time(now: datetime.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _conditions(now: str) -> list[dict[str, str]]:
    healthy = [
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "KubeletHasSufficientPID"),
    ]
    conditions = [
        {
            "type": kind,
            "status": "False",
            "reason": reason,
            "message": "node agent reports no pressure",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        for kind, reason in healthy
    ]
    conditions.append(
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "node agent is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
    )
    return conditions


def node_status(spec: NodeSpec, now: datetime.datetime) -> dict[str, object]:
    """The status a kubelet with the node's devices would post."""
    resources = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "pods": str(spec.pods),
        "ephemeral-storage": "1Ti",
        "nvidia.com/gpu": str(spec.gpus),
    }
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "capacity": resources,
        "allocatable": resources,
        "conditions": _conditions(stamp),
        # Where the API server reaches the node's kubelet endpoint (pods/server.py).
        "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
        "addresses": [
            {"type": "InternalIP", "address": spec.internal_ip},
            {"type": "Hostname", "address": spec.name},
        ],
        "nodeInfo": {
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "llm-rollout-node-agent://0",
            "operatingSystem": "linux",
            "architecture": "amd64",
            "osImage": "llm-rollout sandbox",
            "kernelVersion": "",
            "machineID": spec.name,
            "systemUUID": spec.name,
            "bootID": spec.name,
        },
    }


@dataclass
class NodeHandle:
    """One node, acting with its own identity."""

    spec: NodeSpec
    api: k8s.ApiClient

    def register(self) -> None:
        core = k8s.CoreV1Api(self.api)
        labels = {
            "kubernetes.io/hostname": self.spec.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.spec.labels,
        }
        try:
            core.create_node(
                {"metadata": {"name": self.spec.name, "labels": labels}},
                field_manager=FIELD_MANAGER,
            )
        except ApiException as exc:
            # A restarted agent finds its Node, as a restarted kubelet does.
            if exc.status != 409:
                raise
        self.post_status()
        self._create_lease(core.read_node(self.spec.name).metadata.uid)
        log.info("registered node %s", self.spec.name)

    def post_status(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        k8s.CoreV1Api(self.api).patch_node_status(
            self.spec.name, {"status": node_status(self.spec, now)}, field_manager=FIELD_MANAGER
        )

    def _create_lease(self, node_uid: str) -> None:
        now = _micro_time(datetime.datetime.now(datetime.UTC))
        body = {
            "metadata": {
                "name": self.spec.name,
                "namespace": LEASE_NAMESPACE,
                # As the kubelet does, so the Lease goes with its Node.
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.spec.name, "uid": node_uid}
                ],
            },
            "spec": {
                "holderIdentity": self.spec.name,
                "leaseDurationSeconds": LEASE_DURATION_S,
                "renewTime": now,
            },
        }
        try:
            k8s.CoordinationV1Api(self.api).create_namespaced_lease(
                LEASE_NAMESPACE, body, field_manager=FIELD_MANAGER
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.renew_lease()

    def renew_lease(self) -> None:
        now = _micro_time(datetime.datetime.now(datetime.UTC))
        k8s.CoordinationV1Api(self.api).patch_namespaced_lease(
            self.spec.name,
            LEASE_NAMESPACE,
            {"spec": {"renewTime": now, "holderIdentity": self.spec.name}},
            field_manager=FIELD_MANAGER,
        )


@dataclass(frozen=True)
class AgentConfig:
    nodes: list[tuple[NodeSpec, Path]]
    lease_renew_s: float
    status_every_s: float
    # Where a test drops ``heartbeats_stopped_file`` names to cut a node off (issue 14 item 7).
    control_dir: Path
    # Absent: the nodes are registered but run no pods.
    pods: PodsConfig | None = None


def heartbeats_stopped_file(control_dir: Path, node_name: str) -> Path:
    """While this file exists the agent neither renews the node's Lease nor posts its status,
    as when a node loses power: the real node-lifecycle controller then judges the node."""
    return control_dir / f"stop-heartbeats-{node_name}"


def registry_faults_file(control_dir: Path) -> Path:
    """A JSON object mapping an image reference (as the pod spec names it) to the registry's
    error: while an image has an entry, every pull of it on every node fails with that message
    (a rate limit, an i/o timeout), which the kubelet retries with its image back-off; removing
    the entry lets the next pull through, as a registry that recovers. Write it atomically
    (a new file renamed over the old)."""
    return control_dir / "registry-faults.json"


def registry_fault(control_dir: Path, image: str) -> str | None:
    """The registry error a pull of ``image`` gets now, or None (no fault set)."""
    try:
        faults = json.loads(registry_faults_file(control_dir).read_text())
    except FileNotFoundError:
        return None
    message = faults.get(image) if isinstance(faults, dict) else None
    return None if message is None else str(message)


def write_agent_config(
    path: Path,
    nodes: tuple[NodeSpec, ...],
    kubeconfigs: dict[str, Path],
    *,
    lease_renew_s: float = 4.0,
    status_every_s: float = 30.0,
    pods: PodsConfig | None = None,
) -> Path:
    """The agent's configuration file: each node with the kubeconfig of its identity."""
    doc: dict[str, object] = {
        "pods": None if pods is None else pods.to_json(),
        "lease_renew_s": lease_renew_s,
        "status_every_s": status_every_s,
        "nodes": [
            {"spec": asdict(node), "kubeconfig": str(kubeconfigs[node.name])} for node in nodes
        ],
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


def read_agent_config(path: Path) -> AgentConfig:
    doc = json.loads(path.read_text())
    return AgentConfig(
        nodes=[(NodeSpec(**n["spec"]), Path(n["kubeconfig"])) for n in doc["nodes"]],
        lease_renew_s=float(doc["lease_renew_s"]),
        status_every_s=float(doc["status_every_s"]),
        control_dir=path.parent,
        pods=PodsConfig.from_json(doc["pods"]) if doc.get("pods") else None,
    )


def agent_argv(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "sandbox.cluster.node_agent", str(config_path)]


def run(config: AgentConfig, stop: threading.Event) -> None:
    handles = [
        NodeHandle(spec, k8s_config.new_client_from_config(config_file=str(kubeconfig)))
        for spec, kubeconfig in config.nodes
    ]
    for handle in handles:
        handle.register()
    node_pods = []
    # One set of memory cgroups for the agent's containers, whichever node runs them; without
    # a usable memory controller the agent says so once and sets no limits.
    memory = MemoryCgroups.open() if config.pods is not None else MemoryCgroups(None)
    if config.pods is not None:
        for handle in handles:
            # A lost node's pods keep running, unheard: the stop file cuts them off too.
            stopped = heartbeats_stopped_file(config.control_dir, handle.spec.name)
            pods = NodePods(
                handle.spec.name,
                handle.spec.internal_ip,
                handle.api,
                config.pods,
                stopped.exists,
                memory,
                registry_fault=functools.partial(registry_fault, config.control_dir),
            )
            node_pods.append(pods)
            # Each node waits for its podCIDR from the controller-manager on a thread of its
            # own, so that the heartbeats start at once.
            threading.Thread(
                target=pods.start, args=(stop,), name=f"start-{pods.node_name}", daemon=True
            ).start()
    try:
        _heartbeats(config, handles, stop)
    finally:
        # Every pod's processes and sandbox go with the agent, then their memory cgroups.
        for pods in node_pods:
            pods.stop()
        memory.close()


def _heartbeats(config: AgentConfig, handles: list[NodeHandle], stop: threading.Event) -> None:
    ticks_per_status = max(1, round(config.status_every_s / config.lease_renew_s))
    tick = 0
    cut: set[str] = set()
    # The renewal period, not a sleep standing in for a wait: the kubelet renews on a timer too.
    while not stop.wait(config.lease_renew_s):
        tick += 1
        for handle in handles:
            if heartbeats_stopped_file(config.control_dir, handle.spec.name).exists():
                cut.add(handle.spec.name)
                continue
            try:
                handle.renew_lease()
                # A kubelet that reconnects finds its posted Ready differing from the node's
                # (Unknown) and posts at its next status check (kubelet_node_status.go
                # tryUpdateNodeStatus), not at the next periodic report.
                if tick % ticks_per_status == 0 or handle.spec.name in cut:
                    handle.post_status()
                    cut.discard(handle.spec.name)
            except ApiException as exc:
                # A missed renewal is what a flaky kubelet does; the next tick retries, and
                # the node-lifecycle controller judges the gap.
                log.warning(
                    "heartbeat of %s failed: %s %s", handle.spec.name, exc.status, exc.reason
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="register GPU nodes and keep them Ready")
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    run(read_agent_config(args.config), stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
