"""A sandbox cluster per test module; each test gets its own namespace."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.objects import apply

_SEQ = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, shared_crds: Path) -> Iterator[Any]:
    from sandbox.kube.cluster import ClusterConfig, SandboxCluster

    sandbox = SandboxCluster(ClusterConfig(), tmp_path_factory.mktemp("kube")).start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def api(cluster: Any) -> Iterator[k8s_client.ApiClient]:
    client = load_api_client(Path(cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def namespace(api: k8s_client.ApiClient, request: pytest.FixtureRequest) -> str:
    name = f"t{next(_SEQ)}-{request.node.name.replace('_', '-')}"[:50].rstrip("-").lower()
    apply(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def deployment(
    namespace: str, name: str, *, replicas: int = 1, gpus: int = 0, image: str = "vllm:latest"
) -> dict[str, Any]:
    labels = {"app": name}
    container: dict[str, Any] = {
        "name": "vllm",
        "image": image,
        "command": ["vllm", "serve", "/models/qwen", "--port", "8000"],
        "ports": [{"containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 1},
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def configmap(namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }
