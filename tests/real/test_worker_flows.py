"""The deploy, redeploy and teardown flows on the REAL cluster with nothing but the worker
ServiceAccount's token (issue 14 item 6; ported from the imitation's tests/sandbox_kube_rbac).

The admin applies what ``llm-rollout rbac`` renders for this module's namespace
(``llm_rollout/rbac.py``) and creates the API key Secret the spec names; a TokenRequest gives
the worker's token, and ``KUBECONFIG`` holds only that token while the Prefect flows run end to
end, as a Prefect worker deployed with ``llm-rollout rbac`` would: preflight, the rollout Lease
(waited for while another run holds it), mirror, volumes, rollout, readiness, the smoke test
(through a port-forward for the key-protected Deployment, through the API server's service
proxy for the LeaderWorkerSet), promote, retire, a day-2 restart, ``llm-rollout
teardown``. Every request of the worker goes through the fault proxy (no fault set) only so
that it is recorded with its answer: none may be refused, and every grant of the rendered
Role/ClusterRole must have been needed by one of them.

tests/cluster/test_rbac_worker.py covers, pod-free, the plan-level work for every example
(RayCluster included), the exact 403 messages outside the role and an unknown token's 401.
Both workloads here serve the SGLang stand-in: the engine does not change what the worker's
token may do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from typer.testing import CliRunner

from flows.deploy import deploy
from flows.redeploy import redeploy
from llm_rollout.cli import app
from llm_rollout.kube.objects import apply
from llm_rollout.kube.resources import read_pod_log
from llm_rollout.locking import acquire
from llm_rollout.rbac import DEFAULT_SERVICE_ACCOUNT
from llm_rollout.readiness import read_autoscaler_status
from llm_rollout.retention import revisions_in_use
from llm_rollout.spec import load_spec
from llm_rollout.vocabulary import RELEASE_LABEL
from sandbox.cluster.api_proxy import ApiFaultProxy
from sandbox.cluster.control_plane import Cluster
from tests.cluster.faults_support import product_client, proxy, service_account_token
from tests.cluster.test_rbac_worker import NEEDS_RBG, unused_grants, worker_rbac
from tests.real_deploy import RealStores, write_real_spec

__all__ = ["proxy"]
pytestmark = pytest.mark.usefixtures("prefect_server")

NAMESPACE = "worker-flows"
EXAMPLE = "seed-sglang-lws"
API_KEY = {"secret_name": "sglang-api-key", "key": "api-key"}
API_KEY_VALUE = "sk-worker-flows-key"
FAST_PROBES = {"probes": {"period_s": 1, "timeout_s": 1}}  # SGLang: raised to 25 s
DEPLOYMENT = {
    "serving": {"shape": "single-gpu", "tp": 1, "nodes": 1, "api_key": API_KEY, **FAST_PROBES},
    "model": {"size_bytes": 1 << 30},  # the tiny model; 32B would not fit one GPU (spec rule)
}
LWS = {"serving": FAST_PROBES}
# No RayCluster or RoleBasedGroup is deployed here (every deploy lists the service's workloads
# of every kind, RayClusters included): the other RayCluster grants are used, pod-free, in
# tests/cluster/test_rbac_worker.py, except `get rayclusters`, which only readiness of a
# running RayCluster sends; no RoleBasedGroup is deployed, so of its grants only `list` (every
# deploy lists the service's groups) is used, nor those on the RBG v0.7 objects readiness
# watches below a v1alpha2 group.
RBG_V07_CHAIN = ("roleinstancesets", "roleinstances")
NOT_HERE = (
    NEEDS_RBG
    | {f"Role: {verb} rayclusters" for verb in ("get", "watch", "create", "patch", "delete")}
    | {f"Role: {verb} {r}" for verb in ("list", "watch") for r in RBG_V07_CHAIN}
)


@pytest.fixture(scope="module")
def cluster(real_cluster: Cluster) -> Cluster:
    """The name tests.cluster.faults_support's proxy fixture asks for."""
    return real_cluster


@pytest.fixture(scope="module")
def rbac_objects(real_admin: k8s.ApiClient) -> Iterator[list[dict[str, Any]]]:
    with worker_rbac(real_admin, NAMESPACE) as objects:
        yield objects


@pytest.fixture
def worker_kubeconfig(
    real_cluster: Cluster,
    real_admin: k8s.ApiClient,
    proxy: ApiFaultProxy,
    rbac_objects: list[dict[str, Any]],
) -> Path:
    token = service_account_token(real_admin, NAMESPACE, DEFAULT_SERVICE_ACCOUNT)
    return real_cluster.token_kubeconfig("llm-rollout-worker-flows", token, server=proxy.url)


def _teardown(name: str) -> str:
    removed = CliRunner().invoke(app, ["teardown", name, "-n", NAMESPACE, "--timeout-s", "120"])
    assert removed.exit_code == 0, removed.output
    return removed.output


def _serving_pods(admin: k8s.ApiClient, release: str) -> list[k8s.V1Pod]:
    pods = k8s.CoreV1Api(admin).list_namespaced_pod(
        NAMESPACE, label_selector=f"{RELEASE_LABEL}={release}"
    )
    return [p for p in pods.items if p.metadata and not p.metadata.deletion_timestamp]


@pytest.mark.timeout(900, func_only=True)
def test_deploy_redeploy_and_teardown_flows_with_only_the_worker_token(
    real_deploy_env: RealStores,
    real_admin: k8s.ApiClient,
    proxy: ApiFaultProxy,
    rbac_objects: list[dict[str, Any]],
    worker_kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    stores, admin = real_deploy_env, real_admin
    # The operator's part: the API key Secret the spec names (the flow never writes it).
    apply(
        admin,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": API_KEY["secret_name"], "namespace": NAMESPACE},
            "stringData": {API_KEY["key"]: API_KEY_VALUE},
        },
    )
    path, data = write_real_spec(stores, EXAMPLE, tmp_path, namespace=NAMESPACE, **DEPLOYMENT)
    spec = load_spec(path)
    # Another run holds the service's Lease for a few seconds: the worker's deploy waits for
    # it (watching the Lease) instead of failing.
    acquire(admin, NAMESPACE, spec.name, holder="other-run", owner="other", wait_s=0, duration_s=5)
    monkeypatch.setenv("KUBECONFIG", str(worker_kubeconfig))
    proxy.clear()

    first = deploy(spec)
    assert first.answer == stores.tiny.answer and first.namespace == NAMESPACE
    uids = {p.metadata.uid for p in _serving_pods(admin, first.release) if p.metadata}
    restarted = redeploy(spec.name, NAMESPACE, "restart", ready_timeout_s=120)
    assert restarted == f"restart of Service {NAMESPACE}/{spec.name} done (release {first.release})"
    # Every pod replaced (kubernetes pkg/controller/deployment: a changed template is a new
    # ReplicaSet), which the flow itself proved before its smoke gate.
    after = {p.metadata.uid for p in _serving_pods(admin, first.release) if p.metadata}
    assert uids and after and not uids & after
    # Readiness reads a pod's log and cluster-autoscaler's status only to explain a pod that
    # fails or stays Unschedulable, which none does here: the same calls, made as the worker.
    worker = product_client(worker_kubeconfig)
    try:
        pod = _serving_pods(admin, first.release)[0]
        assert pod.metadata is not None and pod.metadata.name
        assert (
            read_pod_log(
                worker, NAMESPACE, pod.metadata.name, container=None, previous=False, tail_lines=5
            )
            is not None
        )
        read_autoscaler_status(worker)
        # The refresh flow's revision cleanup (tasks/refresh.py clean_revisions) first scans
        # every stable Service in the cluster for the revisions they serve.
        source = spec.model.modelscope
        assert source is not None
        assert spec.model_revision in revisions_in_use(worker, source.model_id)
    finally:
        worker.close()  # type: ignore[no-untyped-call]
    removed = _teardown(spec.name)
    assert "removed Deployment" in removed and "removed PersistentVolume" in removed

    # Another service, so its deploy creates its own Lease.
    lws_path, lws_data = write_real_spec(
        stores, EXAMPLE, tmp_path, namespace=NAMESPACE, name=f"{data['name']}-lws", **LWS
    )
    lws = deploy(load_spec(lws_path))
    assert lws.answer == stores.tiny.answer
    assert "removed LeaderWorkerSet" in _teardown(lws_data["name"])

    records = proxy.records()
    assert records and {r.identity for r in records} == {"token"}  # only the worker's token
    refused = [(r.method, r.path, r.status) for r in records if r.status in (401, 403)]
    assert refused == []
    upgraded = [r for r in records if r.status == 101]
    assert upgraded and all(r.path.endswith("/portforward") for r in upgraded)
    unused = unused_grants(rbac_objects, records)
    if unused != NOT_HERE:
        pytest.fail(
            f"grants unused but expected used: {sorted(unused - NOT_HERE)}; "
            f"expected unused but used: {sorted(NOT_HERE - unused)}"
        )
