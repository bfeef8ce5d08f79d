"""A sandbox cluster with the worker's RBAC applied by the admin, and the worker's client."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.objects import apply, apply_all
from llm_rollout.rbac import DEFAULT_SERVICE_ACCOUNT, render_worker_rbac

NAMESPACE = "llm-serving"
OTHER_NAMESPACE = "other-team"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, shared_crds: Path) -> Iterator[Any]:
    from sandbox.kube.cluster import ClusterConfig, SandboxCluster

    sandbox = SandboxCluster(ClusterConfig(), tmp_path_factory.mktemp("kube")).start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture(scope="module")
def admin(cluster: Any) -> Iterator[k8s_client.ApiClient]:
    api = load_api_client(Path(cluster.kubeconfig))
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def rbac_objects(admin: k8s_client.ApiClient) -> list[dict[str, Any]]:
    """What a cluster admin does once: the namespaces, then the worker's RBAC objects."""
    for ns in (NAMESPACE, OTHER_NAMESPACE):
        apply(admin, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    objects = render_worker_rbac(NAMESPACE)
    apply_all(admin, objects, dry_run=True)
    apply_all(admin, objects)
    return objects


@pytest.fixture(scope="module")
def worker_kubeconfig(
    cluster: Any, rbac_objects: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("worker") / "kubeconfig"
    return Path(cluster.api.service_account_kubeconfig(path, NAMESPACE, DEFAULT_SERVICE_ACCOUNT))


@pytest.fixture(scope="module")
def worker(worker_kubeconfig: Path) -> Iterator[k8s_client.ApiClient]:
    api = load_api_client(worker_kubeconfig)
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


def forbidden(call: Callable[[], Any]) -> dict[str, Any]:
    """The Status body of the real server's 403 that `call` must get."""
    with pytest.raises(ApiException) as err:
        call()
    assert err.value.status == 403
    body: dict[str, Any] = json.loads(err.value.body)
    assert body["kind"] == "Status" and body["reason"] == "Forbidden" and body["code"] == 403
    return body
