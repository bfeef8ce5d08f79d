"""A running SandboxCluster and real `kubernetes` clients for the controller tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config

from sandbox.kube.cluster import ClusterConfig, SandboxCluster

T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``fn`` (short, bounded) until it returns something truthy; fail with ``what``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class Kube:
    """The real client's APIs, bound to one cluster."""

    def __init__(self, cluster: SandboxCluster) -> None:
        self.cluster = cluster
        self.client = config.new_client_from_config(str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.client)
        self.apps = client.AppsV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)

    def new_namespace(self) -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def pods(self, ns: str, selector: str = "") -> list[Any]:
        return list(self.core.list_namespaced_pod(ns, label_selector=selector).items)

    def available(self, ns: str, deployment: str) -> int:
        """availableReplicas of a Deployment (0 before the controller first wrote status)."""
        status = self.apps.read_namespaced_deployment(deployment, ns).status
        return int((status.available_replicas if status else 0) or 0)

    def events(self, ns: str, reason: str | None = None) -> list[Any]:
        items = self.core.list_namespaced_event(ns).items
        return [e for e in items if reason is None or e.reason == reason]


@pytest.fixture(scope="session")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, shared_crds: Path
) -> Iterator[SandboxCluster]:
    with SandboxCluster(ClusterConfig(crd_dir=shared_crds), tmp_path_factory.mktemp("kube")) as c:
        yield c
        assert c.controller_errors() == []


@pytest.fixture(scope="session")
def kube(cluster: SandboxCluster) -> Kube:
    return Kube(cluster)


@pytest.fixture
def ns(kube: Kube) -> Iterator[str]:
    name = kube.new_namespace()
    yield name
    kube.cluster.kubelet.clear()
    kube.core.delete_namespace(name)


def container(
    name: str = "engine",
    image: str = "vllm/vllm-openai:v0.10.1",
    *,
    port: int | None = 8000,
    probe: bool = True,
    args: list[str] | None = None,
    gpus: int = 0,
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": image}
    if args is not None:
        c["args"] = args
    if port is not None:
        c["ports"] = [{"containerPort": port, "name": "http"}]
        if probe:
            c["readinessProbe"] = {
                "httpGet": {"path": "/health", "port": port},
                "periodSeconds": 5,
                "failureThreshold": 3,
            }
    if gpus:
        c["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return c


def deployment(name: str, replicas: int = 1, **container_opts: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container(**container_opts)]},
            },
        },
    }
