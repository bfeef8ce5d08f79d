"""The deploy flow, unchanged, on the REAL cluster: the single-GPU vLLM Deployment example.

The product mirrors the tiny model from the sandbox hub into the sandbox OSS, applies its Secret,
PV and PVC and the Deployment to the real kube-apiserver; the real controllers make the pod, the
real scheduler binds it, the PV controller binds the claim; the node agent mounts the claim
through its OSS CSI stand-in (sandbox/cluster/pods/volumes.py), starts the rendered command line
through the image table (sandbox/cluster/images.py: the vLLM image runs the project's vLLM venv
with the CPU adaptations) and runs the rendered probes. The product's readiness watches the
Deployment, and its smoke test reaches vLLM through the API server's service proxy (the real
kube-apiserver dials the Service's ready endpoint, the pod's IP, from the harness namespace).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import kubernetes.config
import pytest
from kubernetes import client as k8s
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.deploy import DeployResult, deploy
from llm_rollout.artifacts import (
    RUN_SUMMARY,
    SMOKE_CALLS,
    SMOKE_METRICS,
    SMOKE_VERDICT,
    ServiceId,
    artifact_key,
)
from llm_rollout.kube.session import process_session, reset_process_session
from llm_rollout.spec import load_spec
from tests.real_deploy import RealServiceFactory

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("prefect_server")]

EXAMPLE = "seed-vllm-single-gpu"


def _artifacts_of(flow_run_id: str) -> dict[str, Any]:
    """Artifact key -> its data, for every artifact the flow run (and its tasks) created."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {str(a.key): a.data for a in found if a.key}


def _events(admin: k8s.ApiClient, namespace: str) -> list[str]:
    items = k8s.CoreV1Api(admin).list_namespaced_event(namespace).items
    return [f"{e.involved_object.name} {e.reason}: {e.message}" for e in items]


@pytest.mark.timeout(900, func_only=True)
def test_single_gpu_deployment_serves_the_tiny_model_on_the_real_cluster(
    real_service: RealServiceFactory,
    real_admin: k8s.ApiClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = "real-single-gpu"
    served = real_service(EXAMPLE, namespace=namespace, rollout={"smoke_timeout_s": 120})
    tiny, path, data = served.stores.tiny, served.path, served.data
    # Every ApiClient built and every kubeconfig read while the flow runs, from a process that
    # holds no session yet, as a fresh worker.
    reset_process_session()
    clients: list[k8s.ApiClient] = []
    kubeconfig_reads: list[str] = []
    build_client = k8s.ApiClient.__init__
    read_kubeconfig = kubernetes.config.load_kube_config

    def counted_client(self: k8s.ApiClient, configuration: Any = None, *args: Any) -> None:
        # kubernetes/watch/watch.py builds a client without configuration per watch stream, to
        # decode its events; it never connects. Every client that can reach a cluster is kept.
        if configuration is not None:
            clients.append(self)
        build_client(self, configuration, *args)

    def counted_read(*args: Any, **kwargs: Any) -> None:
        kubeconfig_reads.append(str(kwargs.get("config_file")))
        read_kubeconfig(*args, **kwargs)

    monkeypatch.setattr(k8s.ApiClient, "__init__", counted_client)
    monkeypatch.setattr(kubernetes.config, "load_kube_config", counted_read)

    t0 = time.monotonic()
    try:
        result = deploy(load_spec(path))
    finally:
        print("events:\n" + "\n".join(_events(real_admin, namespace)))
    took_s = time.monotonic() - t0
    monkeypatch.undo()
    assert isinstance(result, DeployResult)
    # One Kubernetes session per process (issue 17): every task of the run (preflight, lease,
    # volumes, rollout, readiness, smoke, promote) used the one client read from KUBECONFIG
    # once; a port-forward, when the smoke route is one, opens its streams on a client of its
    # own over that same configuration (llm_rollout/kube/portforward.py says why).
    assert kubeconfig_reads == [os.environ["KUBECONFIG"]]
    assert clients and clients[0] is process_session().api
    assert {id(c.configuration) for c in clients} == {id(clients[0].configuration)}
    print(f"REAL_DEPLOY_FIGURES API clients built by the run: {len(clients)}")
    assert result.answer == tiny.answer
    assert result.ttft_s is not None and result.ttft_s > 0  # measured; speed is bench's

    # The smoke test's calls and the engine's /metrics, in this service's own artifact history.
    service = ServiceId("Deployment", namespace, data["name"])
    assert result.summary_markdown_key == artifact_key(RUN_SUMMARY, service)
    artifacts = _artifacts_of(result.flow_run_id)
    assert "SERVING" in str(artifacts[artifact_key(RUN_SUMMARY, service)])
    calls = {row["call"]: row for row in json.loads(artifacts[artifact_key(SMOKE_CALLS, service)])}
    assert calls["chat"]["content"] == tiny.answer
    assert calls["chat"]["finish_reason"] == calls["stream"]["finish_reason"] == "stop"
    assert calls["models"]["status"] == 200
    metrics = {
        row["metric"]: row["value"]
        for row in json.loads(artifacts[artifact_key(SMOKE_METRICS, service)])
    }
    # A fresh engine: exactly the smoke test's two completions, each the tiny model's tokens
    # plus the end-of-sequence token that stopped it.
    assert metrics["requests finished"] == 2
    answer_tokens = len(tiny.answer_token_ids) + 1
    completion = calls["chat"]["completion_tokens"] + calls["stream"]["completion_tokens"]
    assert metrics["generation tokens"] == completion == 2 * answer_tokens
    assert metrics["TTFT count"] == 2
    verdict = str(artifacts[artifact_key(SMOKE_VERDICT, service)])
    assert "passed" in verdict and "Engine metrics" in verdict
    core = k8s.CoreV1Api(real_admin)
    (pod,) = core.list_namespaced_pod(namespace).items
    log = core.read_namespaced_pod_log(pod.metadata.name, namespace, container="vllm")
    (status,) = pod.status.container_statuses
    if status.restart_count:
        previous = core.read_namespaced_pod_log(
            pod.metadata.name, namespace, container="vllm", previous=True
        )
        errors = [line for line in previous.splitlines() if "ERROR" in line or "Error" in line]
        print(f"PREVIOUS RUN ({status.last_state}):\n" + "\n".join(errors[:40]))
    # Known open defect: on the loaded 2-core machine vLLM's first start in the pod has failed
    # in 2 of about 6 runs (WorkerProc initialization, exit 1, cause not yet found); the node
    # agent restarts it as a kubelet would and the second start serves. The deploy above must
    # still have served; a second failed start fails here.
    assert status.restart_count <= 1
    assert '"GET /v1/models HTTP/1.1" 200' in log
    assert log.count('"POST /v1/chat/completions HTTP/1.1" 200') == 2
    ready = next(c for c in pod.status.conditions if c.type == "Ready")
    to_ready_s = (ready.last_transition_time - pod.metadata.creation_timestamp).total_seconds()
    print(
        f"REAL_DEPLOY_FIGURES pod created -> Ready: {to_ready_s:.0f} s; "
        f"deploy flow start -> smoke passed: {took_s:.1f} s"
    )
