"""The deploy flow, unchanged, end to end on the sandbox with REAL vLLM serving the tiny model.

The hub publishes the tiny Qwen3 model under the examples' model ids; the flow mirrors it into
the sandbox OSS, mounts it through the static OSS PV, and the kubelet starts one real vLLM
process per serving workload from the mirrored files (``OssVolumeMount``: what the OSS CSI
driver would mount). Probes run in real time against vLLM's ``/health`` and ``/v1/models``; the
smoke test's answer, streamed TTFT and the ``/metrics`` summary in the run's artifacts all come
from the engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client
from modelscope_hub.config import set_default_config
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from typer.testing import CliRunner

from flows.deploy import DeployResult, deploy
from llm_rollout.artifacts import SMOKE_CALLS, SMOKE_METRICS, SMOKE_VERDICT, ServiceId, artifact_key
from llm_rollout.cli import app
from llm_rollout.kube.client import load_api_client
from llm_rollout.spec import load_spec
from sandbox.engine_choice import OssVolumeMount, attach_real_vllm, real_vllm_spec
from sandbox.hub import HubServer
from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.kube.kubelet import Timings
from sandbox.oss import OssServer
from sandbox.vllm.backend import VllmBackendFactory
from sandbox.vllm.tiny_model import TinyModelInfo, generate_tiny_model
from tests.vllm.conftest import require_engine

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("prefect_server")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEY_ID = "LTAIe2eVllmKeyId"
KEY_SECRET = "e2eVllmSecretValue012345"
BUCKET = "llm-models-example"
SHAPES = ("seed-vllm-single-gpu", "seed-vllm-lws")


@dataclass
class RealSandbox:
    cluster: SandboxCluster
    oss: OssServer
    factory: VllmBackendFactory
    tiny: TinyModelInfo
    root: Path


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealSandbox]:
    require_engine()
    root = tmp_path_factory.mktemp("e2e-vllm")
    model = generate_tiny_model(root / "tiny-qwen3")
    with ExitStack() as stack:
        # modelscope reads MODELSCOPE_ENDPOINT once per default config: start from a fresh one
        # here, and again after the environment is restored (callbacks run last-in first-out).
        stack.callback(set_default_config, None)
        hub = stack.enter_context(HubServer(root / "hub"))
        oss = stack.enter_context(
            OssServer(root / "oss", credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET])
        )
        # Probes in real time (a real engine takes real seconds to load), back-offs scaled.
        config = ClusterConfig(timings=Timings(probe_time_scale=1.0), progress_deadline_scale=1.0)
        cluster = stack.enter_context(SandboxCluster(config, root / "kube"))
        for example in SHAPES:
            model_id = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())["model"][
                "modelscope"
            ]["model_id"]
            hub.add_revision_from_dir(model_id, "v1", model)
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setenv("MODELSCOPE_ENDPOINT", hub.base_url)
        mp.setenv("KUBECONFIG", str(cluster.kubeconfig))
        mp.setenv("OSS_ACCESS_KEY_ID", KEY_ID)
        mp.setenv("OSS_ACCESS_KEY_SECRET", KEY_SECRET)
        set_default_config(None)
        factory = attach_real_vllm(cluster, OssVolumeMount(cluster, root / "mounts"))
        assert factory is not None
        stack.callback(factory.close)
        yield RealSandbox(cluster, oss, factory, TinyModelInfo.load(model), root)
        assert cluster.controller_errors() == []


def write_spec(real: RealSandbox, example: str, namespace: str) -> tuple[Path, dict[str, Any]]:
    """The example pointing at the sandbox OSS, adapted to the tiny model (as the demo does)."""
    data = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    data["namespace"] = namespace
    data["storage"]["endpoint"] = real.oss.endpoint
    data["rollout"] = {"promote_grace_s": 0, "smoke_timeout_s": 120}
    data = real_vllm_spec(data, real.tiny)
    assert "api_key" not in data["serving"]
    path = real.root / f"{example}-{namespace}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path, data


def artifacts_of(flow_run_id: str) -> dict[str, Any]:
    """Artifact key -> its data, for every artifact the flow run (and its tasks) created."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {str(a.key): a.data for a in found if a.key}


def serving_log(namespace: str, container: str) -> str:
    """The container log of the pod that runs `container` in `namespace`."""
    api = load_api_client()
    try:
        core = k8s_client.CoreV1Api(api)
        for pod in core.list_namespaced_pod(namespace).items:
            names = [c.name for c in pod.spec.containers]
            if container in names:
                return str(
                    core.read_namespaced_pod_log(pod.metadata.name, namespace, container=container)
                )
    finally:
        api.close()  # type: ignore[no-untyped-call]
    raise AssertionError(f"no pod in {namespace} runs container {container}")


def wait_engines_stopped(factory: VllmBackendFactory, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while factory.running():
        assert time.monotonic() < deadline, f"engines still running: {factory.running()}"
        time.sleep(0.5)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(
    ("example", "workload_kind", "container"),
    [
        ("seed-vllm-single-gpu", "Deployment", "vllm"),
        ("seed-vllm-lws", "LeaderWorkerSet", "vllm-leader"),
    ],
)
def test_deploy_flow_with_real_vllm(
    real: RealSandbox, example: str, workload_kind: str, container: str
) -> None:
    namespace = f"rv-{example.removeprefix('seed-vllm-')}"
    path, data = write_spec(real, example, namespace)
    started_before = real.factory.engines_started
    t0 = time.monotonic()
    result = deploy(load_spec(path))
    took = time.monotonic() - t0
    assert isinstance(result, DeployResult)
    assert real.factory.engines_started == started_before + 1  # one engine for the workload

    # The smoke test's answer and streamed TTFT came from the real engine.
    assert result.answer == real.tiny.answer
    assert result.ttft_s is not None and result.ttft_s > 0  # measured; speed is bench's

    artifacts = artifacts_of(result.flow_run_id)
    service = ServiceId(workload_kind, namespace, data["name"])
    calls = {row["call"]: row for row in json.loads(artifacts[artifact_key(SMOKE_CALLS, service)])}
    assert calls["chat"]["content"] == real.tiny.answer
    assert calls["chat"]["finish_reason"] == calls["stream"]["finish_reason"] == "stop"
    assert calls["models"]["status"] == 200
    metrics = {
        row["metric"]: row["value"]
        for row in json.loads(artifacts[artifact_key(SMOKE_METRICS, service)])
    }
    completion = calls["chat"]["completion_tokens"] + calls["stream"]["completion_tokens"]
    prompt = calls["chat"]["prompt_tokens"] + calls["stream"]["prompt_tokens"]
    # A fresh engine: exactly the smoke test's two completions.
    assert metrics["requests finished"] == 2
    # Each answer is the tiny model's tokens plus the end-of-sequence token that stopped it.
    answer_tokens = len(real.tiny.answer_token_ids) + 1
    assert metrics["generation tokens"] == completion == 2 * answer_tokens
    assert metrics["prompt tokens"] == prompt
    assert metrics["TTFT count"] == 2
    assert metrics["TTFT avg (s)"] > 0
    assert metrics["TTFT p50 (s)"] is not None
    verdict = str(artifacts[artifact_key(SMOKE_VERDICT, service)])
    assert "passed" in verdict and "Engine metrics" in verdict

    # Probes and smoke calls reached vLLM itself: its access log is the container log.
    log = serving_log(namespace, container)
    assert "(APIServer pid=" in log
    assert '"GET /health HTTP/1.1" 200' in log
    assert '"GET /v1/models HTTP/1.1" 200' in log
    assert log.count('"POST /v1/chat/completions HTTP/1.1" 200') == 2
    assert '"GET /metrics HTTP/1.1" 200' in log
    assert "vLLM API server version 0.10.1" not in log  # no made-up start lines

    teardown = CliRunner().invoke(app, ["teardown", data["name"], "-n", namespace])
    assert teardown.exit_code == 0, teardown.output
    assert f"removed {workload_kind}" in teardown.output
    wait_engines_stopped(real.factory, 120)
    print(f"{example}: deploy with real vLLM took {took:.1f} s")
