"""The deploy and redeploy flows, whole, with a kubeconfig holding only the worker's token.

`test_worker_flow.py` calls the product functions one by one; here the Prefect flows run end
to end (preflight, lease, mirror, volumes, rollout, readiness, smoke over a port-forward, gate,
retire, record), then day-2 redeploys, then `llm-rollout teardown`, all as the worker
ServiceAccount, as a Prefect worker deployed with `llm-rollout rbac` would. The API server's
request log proves that every request of those runs came from the worker and was allowed;
requests outside the role still get the real server's 403 afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from flows.deploy import deploy
from flows.redeploy import redeploy
from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.objects import apply
from llm_rollout.rbac import worker_user
from llm_rollout.release import service_status
from llm_rollout.render import RELEASE_LABEL
from llm_rollout.spec import load_spec
from sandbox.kube.backends import BackendBehavior
from tests.deploy.conftest import Stores, cli, write_spec
from tests.deploy.conftest import stores as stores
from tests.sandbox_kube_rbac.conftest import NAMESPACE, OTHER_NAMESPACE, forbidden

pytestmark = pytest.mark.usefixtures("prefect_server")
API_KEY = "sk-worker-flow-key"
EXAMPLE = "seed-vllm-single-gpu"  # a Deployment whose server needs an API key


@pytest.fixture
def as_worker(worker_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every client the flows make reads KUBECONFIG: it holds the worker's token only."""
    monkeypatch.setenv("KUBECONFIG", str(worker_kubeconfig))
    yield


def _worker_status(name: str) -> tuple[str | None, bool, int]:
    """(serving release, its workload ready, its pods not terminating), read as the worker."""
    api = load_api_client()
    try:
        status = service_status(api, NAMESPACE, name)
        release = status.state.current_release
        pods = k8s_client.CoreV1Api(api).list_namespaced_pod(
            NAMESPACE, label_selector=f"{RELEASE_LABEL}={release}"
        )
    finally:
        api.close()  # type: ignore[no-untyped-call]
    ready = bool(status.workloads) and all(w.ready for w in status.workloads)
    running = [p for p in pods.items if p.metadata.deletion_timestamp is None]
    return release, ready, len(running)


def test_deploy_and_redeploy_flows_run_with_only_the_worker_token(
    cluster: Any,
    admin: k8s_client.ApiClient,
    stores: Stores,
    as_worker: None,
    tmp_path: Path,
) -> None:
    spec_path, data = write_spec(stores, EXAMPLE, tmp_path, namespace=NAMESPACE)
    name, api_key = data["name"], data["serving"]["api_key"]
    # The operator's part: the API key Secret the spec references, and a server that needs it.
    apply(
        admin,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": api_key["secret_name"], "namespace": NAMESPACE},
            "stringData": {api_key["key"]: API_KEY},
        },
    )
    cluster.scripted.set_behavior(
        lambda pod: pod["metadata"].get("namespace") == NAMESPACE,
        BackendBehavior(api_key=API_KEY),
    )
    cluster.api.request_log.clear()

    first = deploy(load_spec(spec_path))
    assert first.answer and first.namespace == NAMESPACE
    assert _worker_status(name) == (first.release, True, 1)
    # A new release replacing the serving one: promote, then retire the first release.
    newer, _ = write_spec(
        stores, EXAMPLE, tmp_path, namespace=NAMESPACE, serving={"image": "vllm/vllm-openai:v2"}
    )
    second = deploy(load_spec(newer))
    assert second.release != first.release and second.answer
    assert _worker_status(name) == (second.release, True, 1)

    restarted = redeploy(name, NAMESPACE, "restart")
    assert restarted == f"restart of Service {NAMESPACE}/{name} done (release {second.release})"
    scaled = redeploy(name, NAMESPACE, "scale", replicas=2)
    assert scaled.startswith("scale of Service")
    assert _worker_status(name) == (second.release, True, 2)
    # The restart's smoke gate reached the restarted server with the key (port-forward).
    served = [b.auth_seen for b in cluster.scripted.backends if b.namespace == NAMESPACE]
    assert sum(s["valid"] for s in served) >= 3 and not any(s["wrong"] for s in served), served

    removed = cli("teardown", name, "-n", NAMESPACE, "--timeout-s", "20")
    assert removed.exit_code == 0, removed.output
    assert "removed Deployment" in removed.output and "removed PersistentVolume" in removed.output

    user = worker_user(NAMESPACE)
    records = cluster.api.request_log.records()
    assert {r.user for r in records} == {user}  # nothing of the runs used another identity
    denied = [(r.method, r.path, r.status) for r in records if r.status in (401, 403)]
    assert denied == []
    writes = {(r.method, r.path.rsplit("/", 1)[0]) for r in cluster.api.request_log.writes()}
    assert ("DELETE", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments") in writes

    # The same token, one step outside the role: the real server's 403.
    worker = load_api_client()
    try:
        core = k8s_client.CoreV1Api(worker)
        forbidden(lambda: core.list_namespaced_secret(OTHER_NAMESPACE))
        forbidden(lambda: core.patch_node("gpu-node-a", {"spec": {"unschedulable": True}}))
        forbidden(lambda: k8s_client.AppsV1Api(worker).list_namespaced_deployment(OTHER_NAMESPACE))
        body = forbidden(lambda: core.delete_namespace(NAMESPACE))
        assert body["message"] == (
            f'namespaces "{NAMESPACE}" is forbidden: User "{user}" cannot delete resource '
            f'"namespaces" in API group "" in the namespace "{NAMESPACE}"'
        )
    finally:
        worker.close()  # type: ignore[no-untyped-call]
