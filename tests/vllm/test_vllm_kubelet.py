"""The sandbox kubelet serving a workload's pods with one real vLLM process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s_client

from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.objects import apply
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import WorkloadFailed, wait_ready
from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.vllm.backend import VllmBackendFactory, workload_key
from sandbox.vllm.tiny_model import TinyModelInfo
from tests.vllm.conftest import require_engine

POLL = 0.25


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, shared_crds: Path) -> Iterator[Any]:
    """A sandbox cluster for the module, reached through the real kubernetes client."""
    with SandboxCluster(ClusterConfig(), tmp_path_factory.mktemp("kube")) as sandbox:
        api = load_api_client(Path(sandbox.kubeconfig))
        try:
            yield sandbox, k8s_client.CoreV1Api(api)
        finally:
            api.close()  # type: ignore[no-untyped-call]


def serving_deployment(name: str, replicas: int, served_name: str) -> dict[str, Any]:
    labels = {"app": name}
    container = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.10.1",
        "command": ["vllm", "serve", "/models/Qwen3-32B"],
        "args": ["--served-model-name", served_name, "--port", "8000", "--max-model-len", "32768"],
        "ports": [{"containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, died: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if died():
            raise AssertionError(f"engine exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL)


def pods_of(core: k8s_client.CoreV1Api, app: str) -> list[k8s_client.V1Pod]:
    return list(core.list_namespaced_pod("default", label_selector=f"app={app}").items)


def pod_name(pod: k8s_client.V1Pod) -> str:
    assert pod.metadata is not None and pod.metadata.name
    return str(pod.metadata.name)


def is_ready(pod: k8s_client.V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def test_workload_key_groups_replicas_and_lws_groups() -> None:
    def pod(labels: dict[str, str], owner: tuple[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": "p", "namespace": "ns", "labels": labels}
        if owner:
            meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1]}]
        return {"metadata": meta}

    leader = pod({"leaderworkerset.sigs.k8s.io/name": "qwen", "role": "leader"})
    worker = pod({"leaderworkerset.sigs.k8s.io/name": "qwen", "role": "worker"})
    assert workload_key(leader) == workload_key(worker)
    a = pod({"pod-template-hash": "5d8f"}, ("ReplicaSet", "qwen-5d8f"))
    b = pod({"pod-template-hash": "77aa"}, ("ReplicaSet", "qwen-77aa"))
    # Old and new ReplicaSets of one Deployment are one workload.
    assert workload_key(a) == workload_key(b) == "ns/ReplicaSet=qwen"
    assert workload_key(pod({"app": "x"})) != workload_key(pod({"app": "y"}))


@pytest.mark.vllm
@pytest.mark.timeout(400)
def test_replicas_share_one_real_engine(
    kube: tuple[Any, k8s_client.CoreV1Api], tiny_model: Path, tiny_info: TinyModelInfo
) -> None:
    require_engine()
    cluster, core = kube
    factory = VllmBackendFactory(tiny_model, log_sink=cluster.store.append_log)
    cluster.backends.route({"app": "tiny"}, factory)
    api = core.api_client
    try:
        apply(api, serving_deployment("tiny", 2, tiny_info.served_name))

        def engine_died() -> bool:
            return any(e.exit_code is not None for e in factory.running().values())

        wait_for(
            "two ready pods",
            lambda: sum(is_ready(p) for p in pods_of(core, "tiny")) == 2,
            300,
            engine_died,
        )
        assert factory.engines_started == 1
        (engine,) = factory.running().values()
        pods = [pod_name(p) for p in pods_of(core, "tiny")]
        urls = {cluster.network.resolve("default", name, 8000) for name in pods}
        assert urls == {engine.url}

        body = {
            "model": tiny_info.served_name,
            "messages": [{"role": "user", "content": "測試一下"}],
            "max_tokens": 30,
        }
        resp = httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=60)
        assert resp.json()["choices"][0]["message"]["content"] == tiny_info.answer

        for name in pods:
            log = core.read_namespaced_pod_log(name, "default", container="vllm")
            # Lines only a real vLLM API server prints.
            assert "(APIServer pid=" in log
            assert str(tiny_model) in log

        k8s_client.AppsV1Api(api).delete_namespaced_deployment("tiny", "default")
        wait_for("the engine to stop", lambda: engine.exit_code is not None, 120, lambda: False)
        assert factory.running() == {}
    finally:
        factory.close()


@pytest.mark.vllm
@pytest.mark.timeout(400)
def test_engine_failure_is_reported_by_readiness_with_the_engines_lines(
    kube: tuple[Any, k8s_client.CoreV1Api], tmp_path: Path, tiny_info: TinyModelInfo
) -> None:
    """A bad model path: the engine dies, the container terminates with its exit code, restarts
    into CrashLoopBackOff, and readiness fails with vLLM's own error line from the log.

    (Too little KV memory fails inside vLLM's EngineCore process; the API server then prints
    its own traceback, so the root cause is more than readiness's last 20 lines away: see
    test_vllm_engine_failures for that engine error.)"""
    require_engine()
    cluster, core = kube
    missing = tmp_path / "not-mirrored"
    factory = VllmBackendFactory(missing, log_sink=cluster.store.append_log)
    app = "broken"
    cluster.backends.route({"app": app}, factory)
    api = core.api_client
    try:
        apply(api, serving_deployment(app, 1, tiny_info.served_name))
        with pytest.raises(WorkloadFailed) as caught:
            wait_ready(api, ObjectRef("apps/v1", "Deployment", "default", app), timeout_s=300)
        failure = caught.value
        assert failure.reason == "CrashLoopBackOff"
        # vLLM's own exception line, from the container's previous (crashed) log.
        assert any("Error" in line and str(missing) in line for line in failure.log_lines), (
            failure.log_lines
        )
        assert not any("Uvicorn running on http://0.0.0.0" in ln for ln in failure.log_lines)
        assert factory.engines_started >= 2  # started, died, restarted (and died again)
        (pod,) = pods_of(core, app)
        assert pod.status is not None and pod.status.container_statuses
        (status,) = pod.status.container_statuses
        assert status.restart_count >= 1
        assert status.last_state.terminated is not None
        assert status.last_state.terminated.reason == "Error"
        assert status.last_state.terminated.exit_code not in (None, 0)
        previous = core.read_namespaced_pod_log(
            pod_name(pod), "default", container="vllm", previous=True
        )
        assert "(APIServer pid=" in previous  # the real engine's lines, nothing made up
        assert "vLLM API server version 0.10.1" not in previous
        k8s_client.AppsV1Api(api).delete_namespaced_deployment(app, "default")
        wait_for("the engines to stop", lambda: factory.running() == {}, 120, lambda: False)
    finally:
        factory.close()
