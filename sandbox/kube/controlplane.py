"""Assemble the control plane: store with admission, built-in types, CRDs, API server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandbox.kube.apiserver import ApiServer
from sandbox.kube.crds import CrdController, install_crds
from sandbox.kube.faults import FaultPlan
from sandbox.kube.network import PodNetwork
from sandbox.kube.store import Store
from sandbox.kube.types import initial_objects, register_builtins
from sandbox.kube.validation import SchemaValidator


@dataclass
class ControlPlane:
    store: Store
    network: PodNetwork
    api: ApiServer
    crds: CrdController

    @property
    def url(self) -> str:
        return self.api.url

    def stop(self) -> None:
        self.api.stop()
        self.crds.unsubscribe()


def build_control_plane(
    crd_dir: Path,
    *,
    lws: str | None = "v0.10.0",
    rbg: str | None = "v0.6.0",
    kuberay: str | None = "v1.7.0",
    history_size: int = 10_000,
    bookmark_interval: float = 1.0,
    faults: FaultPlan | None = None,
    network: PodNetwork | None = None,
    start: bool = True,
) -> ControlPlane:
    """A store with the built-in kinds, default namespaces and the selected CRDs, and an API
    server for it (started unless `start=False`)."""
    store = Store(history_size=history_size, validator=SchemaValidator())
    register_builtins(store)
    store.seed(initial_objects())
    crds = install_crds(store, crd_dir, lws=lws, rbg=rbg, kuberay=kuberay)
    net = network or PodNetwork()
    api = ApiServer(store, net, faults=faults, bookmark_interval=bookmark_interval)
    if start:
        api.start()
    return ControlPlane(store, net, api, crds)
