"""What the node agent starts per node to run its pods: the pod runner and the kubelet
endpoint, on the node's InternalIP (added to the harness namespace's loopback as a /32, so the
API server can dial it, and removed again on stop)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from sandbox.cluster.pods.containers import BACKOFF_BASE_S, BACKOFF_MAX_S, BackoffPolicy
from sandbox.cluster.pods.memory import MemoryCgroups
from sandbox.cluster.pods.runner import NodeContext, PodRunner, no_registry_fault
from sandbox.cluster.pods.sandbox import PodIpAllocator
from sandbox.cluster.pods.server import KUBELET_PORT, KubeletServer
from sandbox.cluster.waits import wait_for


@dataclass(frozen=True)
class PodsConfig:
    """The pod runner's part of the agent's configuration file."""

    pods_dir: str
    client_ca: str
    # node name -> [serving certificate, key] for that node's InternalIP.
    serving: dict[str, list[str]]
    nameserver: str
    # Tests shorten the restart back-off here, and only here; the kubelet's is 10 s to 5 min.
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_max_s: float = BACKOFF_MAX_S
    kubelet_port: int = KUBELET_PORT
    pod_cidr_timeout_s: float = 120.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(doc: dict[str, Any]) -> PodsConfig:
        return PodsConfig(**doc)


def _lo_address(action: str, ip: str) -> None:
    done = subprocess.run(
        ["ip", "addr", action, f"{ip}/32", "dev", "lo"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # "File exists" on add: a restarted agent finds its address; on del, already gone.
    if done.returncode != 0 and "exists" not in done.stderr and action == "add":
        raise OSError(f"ip addr add {ip}/32 dev lo: {done.stderr.strip()}")


class NodePods:
    """One node's pod runner and kubelet endpoint."""

    def __init__(
        self,
        node_name: str,
        internal_ip: str,
        api: k8s.ApiClient,
        config: PodsConfig,
        cut_off: Callable[[], bool],
        memory: MemoryCgroups,
        registry_fault: Callable[[str], str | None] = no_registry_fault,
    ) -> None:
        self.cut_off = cut_off
        self.memory = memory
        self.registry_fault = registry_fault
        self.node_name = node_name
        self.internal_ip = internal_ip
        self.api = api
        self.config = config
        self.runner: PodRunner | None = None
        self.server: KubeletServer | None = None
        # Start and stop exclude each other: a stop during the start waits for it to finish.
        self._lock = threading.Lock()

    def _pod_cidr(self) -> str:
        nodes = wait_for(
            k8s.CoreV1Api(self.api).list_node,
            lambda items: any(n.spec.pod_cidr for n in items),
            field_selector=f"metadata.name={self.node_name}",
            timeout_s=self.config.pod_cidr_timeout_s,
            what=f"spec.podCIDR of {self.node_name} (kube-controller-manager's nodeipam)",
        )
        return str(nodes[0].spec.pod_cidr)

    def start(self, stop: threading.Event) -> None:
        pod_cidr = self._pod_cidr()
        with self._lock:
            if stop.is_set():
                # The agent stopped while this node waited for its range: nothing to start.
                return
            self._start(stop, pod_cidr)

    def _start(self, stop: threading.Event, pod_cidr: str) -> None:
        _lo_address("add", self.internal_ip)
        ctx = NodeContext(
            node_name=self.node_name,
            host_ip=self.internal_ip,
            api=self.api,
            allocator=PodIpAllocator(pod_cidr),
            pods_dir=Path(self.config.pods_dir) / self.node_name,
            backoff=BackoffPolicy(self.config.backoff_base_s, self.config.backoff_max_s),
            nameserver=self.config.nameserver,
            cut_off=self.cut_off,
            memory=self.memory,
            registry_fault=self.registry_fault,
        )
        self.runner = PodRunner(ctx)
        runner = self.runner

        def lookup(namespace: str, pod: str, container: str, previous: bool) -> Path | str | None:
            worker = runner.find(namespace, pod)
            if worker is None or not worker.has_container(container):
                return None
            path = worker.log_path(container, previous)
            if path is None:
                which = "previous terminated" if previous else "current"
                return f'{which} container "{container}" in pod "{pod}" not found'
            return path

        def follow(namespace: str, pod: str, container: str, path: Path) -> threading.Event | None:
            worker = runner.find(namespace, pod)
            return None if worker is None else worker.log_writer_exited(container, path)

        def exec_target(
            namespace: str, pod: str, container: str
        ) -> tuple[list[str], dict[str, str]] | None:
            worker = runner.find(namespace, pod)
            return None if worker is None else worker.exec_target(container)

        def sandbox_of(namespace: str, pod: str) -> int | None:
            worker = runner.find(namespace, pod)
            return None if worker is None else worker.sandbox_pid()

        cert, key = self.config.serving[self.node_name]
        self.server = KubeletServer(
            self.internal_ip,
            self.config.kubelet_port,
            Path(cert),
            Path(key),
            Path(self.config.client_ca),
            lookup,
            exec_target,
            sandbox_of,
            follow,
        )
        self.server.start()
        runner.start(stop)

    def stop(self) -> None:
        with self._lock:
            if self.runner is not None:
                self.runner.stop()
            if self.server is not None:
                self.server.stop()
            _lo_address("del", self.internal_ip)
