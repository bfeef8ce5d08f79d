"""The product's Kubernetes helpers against the session's real cluster (tests/real_cluster.py):
``api`` is its admin client, ``namespace`` a fresh namespace per test, deleted afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client


@pytest.fixture
def api(real_admin: k8s_client.ApiClient) -> k8s_client.ApiClient:
    return real_admin


@pytest.fixture
def namespace(real_namespace: str) -> Iterator[str]:
    yield real_namespace


def deployment(
    namespace: str,
    name: str,
    *,
    replicas: int = 1,
    gpus: int = 0,
    image: str = "docker.io/library/busybox:1.36",
) -> dict[str, Any]:
    labels = {"app": name}
    container: dict[str, Any] = {
        "name": "vllm",
        "image": image,
        "command": ["sh", "-c", "exec sleep 3600"],
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
