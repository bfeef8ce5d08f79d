"""Shared by the real-cluster fault tests: the fault proxy, ServiceAccount tokens, product
clients through the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from llm_rollout.kube.client import new_api_client
from sandbox.cluster.api_proxy import ApiFaultProxy, ProxyRecord, running_proxy
from sandbox.cluster.control_plane import Cluster


@pytest.fixture(scope="module")
def proxy(cluster: Cluster) -> Iterator[ApiFaultProxy]:
    with running_proxy(cluster.pki, cluster.api_url) as running:
        yield running


@pytest.fixture
def faults(proxy: ApiFaultProxy) -> Iterator[ApiFaultProxy]:
    """The proxy with an empty plan and no records; emptied again afterwards."""
    proxy.clear()
    yield proxy
    proxy.clear()


def service_account_token(
    admin: k8s.ApiClient, namespace: str, name: str, expiration_s: int = 3600
) -> str:
    """A TokenRequest for ``namespace/name`` (the ServiceAccount must exist)."""
    request = {"spec": {"expirationSeconds": expiration_s}}
    response = k8s.CoreV1Api(admin).create_namespaced_service_account_token(
        name, namespace, request
    )
    return str(response.status.token)


def product_client(kubeconfig: Path) -> k8s.ApiClient:
    """The product's own client loader (its connection-retry policy included)."""
    return new_api_client(kubeconfig)


def admin_via(cluster: Cluster, proxy: ApiFaultProxy) -> k8s.ApiClient:
    path = cluster.kubeconfig_for("admin-via-proxy", cluster.pki.admin, server=proxy.url)
    return product_client(path)


def seen(
    proxy: ApiFaultProxy, *, path_suffix: str, method: str = "GET", watch: bool | None = None
) -> list[ProxyRecord]:
    """What the proxy received for paths ending in ``path_suffix``, in order."""
    return [
        r
        for r in proxy.records()
        if r.path.endswith(path_suffix)
        and r.method == method
        and (watch is None or r.watch == watch)
    ]


def statuses(records: list[ProxyRecord]) -> list[int]:
    return [r.status for r in records]


def config_map(namespace: str, name: str, data: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data or {"k": "v"},
    }
