"""A whole sandbox Kubernetes cluster in one process: API server, controllers, scheduler, kubelet.

    with SandboxCluster(ClusterConfig(), tmp_path) as cluster:
        kubernetes.config.load_kube_config(str(cluster.kubeconfig))
        ...

The real ``kubernetes`` client talks to ``cluster.url``; everything else runs on threads
inside this process and works on ``cluster.store`` directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from sandbox.kube.apiserver import ApiServer
from sandbox.kube.backends import BackendFactory, RoutingBackendFactory, ScriptedBackendFactory
from sandbox.kube.controllers import ControllerManager
from sandbox.kube.controlplane import ControlPlane, build_control_plane
from sandbox.kube.kubelet import Kubelet, Timings
from sandbox.kube.network import PodNetwork
from sandbox.kube.nodes import NodeSpec, node_object
from sandbox.kube.scheduler import Scheduler
from sandbox.kube.store import Store

SHARED_CRDS = Path(__file__).resolve().parents[3] / "shared" / "crds"

RBG_RELEASES = {"v0.6": "v0.6.0", "v0.7": "v0.7.0"}


def default_nodes() -> list[NodeSpec]:
    return [NodeSpec("gpu-node-a"), NodeSpec("gpu-node-b", zone="cn-hangzhou-j")]


@dataclass
class ClusterConfig:
    nodes: list[NodeSpec] = field(default_factory=default_nodes)
    rbg_version: str | None = "v0.6"  # "v0.6" | "v0.7" | None (CRD not installed)
    lws_version: str | None = "v0.10.0"  # None: LWS CRD not installed
    kuberay_version: str | None = "v1.7.0"  # None: KubeRay CRD not installed
    timings: Timings = field(default_factory=Timings)
    # None: a ScriptedBackendFactory with timings.model_load_s. Whatever is given is wrapped in
    # a RoutingBackendFactory, so routes can still be added on `cluster.backends`.
    backend_factory: BackendFactory | None = None
    progress_deadline_scale: float = 0.01  # Deployment progressDeadlineSeconds -> wall seconds
    crd_dir: Path = SHARED_CRDS
    namespaces: tuple[str, ...] = ()  # created at start besides the default ones


class SandboxCluster:
    def __init__(self, config: ClusterConfig | None = None, workdir: Path | None = None) -> None:
        self.config = config or ClusterConfig()
        self.workdir = Path(workdir) if workdir is not None else Path.cwd() / ".sandbox-kube"
        self.scripted = (
            self.config.backend_factory
            if isinstance(self.config.backend_factory, ScriptedBackendFactory)
            else ScriptedBackendFactory(load_delay_s=self.config.timings.model_load_s)
        )
        self.backends = RoutingBackendFactory(self.config.backend_factory or self.scripted)
        self._plane: ControlPlane | None = None
        self._manager: ControllerManager | None = None
        self._scheduler: Scheduler | None = None
        self._kubelet: Kubelet | None = None
        self.kubeconfig: Path = self.workdir / "kubeconfig"
        self.start_seconds: float = 0.0

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        began = time.perf_counter()
        cfg = self.config
        rbg = None
        if cfg.rbg_version is not None:
            if cfg.rbg_version not in RBG_RELEASES:
                raise ValueError(f"rbg_version must be one of {sorted(RBG_RELEASES)} or None")
            rbg = RBG_RELEASES[cfg.rbg_version]
        plane = build_control_plane(
            cfg.crd_dir, lws=cfg.lws_version, rbg=rbg, kuberay=cfg.kuberay_version, start=False
        )
        self._plane = plane
        store = plane.store
        for ns in cfg.namespaces:
            store.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
        for i, spec in enumerate(cfg.nodes):
            _register_node(store, spec, i)
        self._manager = ControllerManager(
            store, rbg_version=cfg.rbg_version or "v0.6", deadline_scale=cfg.progress_deadline_scale
        )
        self._scheduler = Scheduler(store)
        self._kubelet = Kubelet(store, plane.network, self.backends, cfg.timings)
        self._manager.add(self._scheduler)
        self._manager.add(self._kubelet)
        self._manager.start()
        plane.api.start()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = plane.api.write_kubeconfig(self.workdir / "kubeconfig")
        self.start_seconds = time.perf_counter() - began
        return self

    def stop(self) -> None:
        if self._manager is not None:
            self._manager.stop()
            self._manager = None
        if self._plane is not None:
            self._plane.stop()
            self._plane = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def add_node(self, spec: NodeSpec) -> None:
        """A node joins the running cluster (a node pool scaling up): it registers, posts a
        Ready status, and the scheduler may place pods on it from then on."""
        store = self.store
        count = len(store.list(store.resource_type("v1", "Node"))[0])
        _register_node(store, spec, count)

    # ------------------------------------------------------------------------ accessors
    def _require(self) -> ControlPlane:
        if self._plane is None:
            raise RuntimeError("the sandbox cluster is not running")
        return self._plane

    @property
    def url(self) -> str:
        return self._require().url

    @property
    def store(self) -> Store:
        return self._require().store

    @property
    def api(self) -> ApiServer:
        return self._require().api

    @property
    def network(self) -> PodNetwork:
        return self._require().network

    @property
    def kubelet(self) -> Kubelet:
        if self._kubelet is None:
            raise RuntimeError("the sandbox cluster is not running")
        return self._kubelet

    def controller_errors(self) -> list[str]:
        """Objects the controllers tried to write and the store rejected (should stay empty)."""
        return self._manager.errors() if self._manager is not None else []


def _register_node(store: Store, spec: NodeSpec, index: int) -> None:
    # Status is dropped on create (status subresource): the kubelet posts it after.
    node = node_object(spec, index)
    created = store.create(node)
    created["status"] = node["status"]
    store.update_status(created)
