"""Smoke test through the API server's service proxy to a sandbox pod backend, judged by GX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError
from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.objects import apply
from llm_rollout.kube.proxy import httpx_client_for, service_proxy_url
from llm_rollout.kube.readiness import wait_ready
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.smoke import SmokeReport, run_smoke, validate_smoke
from llm_rollout.spec import SmokeExpectations
from tests.kube_edge.conftest import deployment

MODEL = "/models/qwen"
SEED_MESSAGES = [{"role": "user", "content": "测试一下"}]


@pytest.fixture
def served(api: k8s_client.ApiClient, namespace: str) -> str:
    """A ready single-pod server behind Service `qwen`; returns its proxy base URL."""
    obj = deployment(namespace, "qwen")
    apply(api, obj)
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "qwen", "namespace": namespace},
        "spec": {"selector": {"app": "qwen"}, "ports": [{"port": 8000, "targetPort": 8000}]},
    }
    apply(api, service)
    wait_ready(api, ObjectRef.of(obj), timeout_s=60)
    return service_proxy_url(api, namespace, "qwen", 8000)


def _smoke(api: k8s_client.ApiClient, base_url: str, model: str = MODEL) -> SmokeReport:
    with httpx_client_for(api, timeout_s=30) as client:
        return run_smoke(
            client,
            base_url,
            model=model,
            messages=SEED_MESSAGES,
            max_tokens=30,
            api_key=None,
            timeout_s=30,
        )


def test_smoke_through_service_proxy_passes_and_measures_ttft(
    api: k8s_client.ApiClient, served: str
) -> None:
    report = _smoke(api, served)
    assert MODEL in report.served_models
    chat, stream = report.call("chat"), report.call("stream")
    assert chat is not None and stream is not None
    assert chat.status == 200 and chat.content and chat.completion_tokens
    assert stream.status == 200 and stream.ttft_ms is not None
    assert stream.latency_ms is not None and stream.ttft_ms <= stream.latency_ms
    assert stream.content == chat.content
    verdict = validate_smoke(report, SmokeExpectations(contains=[chat.content[:5]]))
    assert verdict.passed, verdict.failures


def test_wrong_answer_fails_the_verdict_with_each_failed_expectation(
    api: k8s_client.ApiClient, served: str
) -> None:
    report = _smoke(api, served)
    expect = SmokeExpectations(equals="hello world", max_ttft_ms=None)
    verdict = validate_smoke(report, expect)
    assert not verdict.passed
    assert any(f.startswith("answer equals 'hello world'") for f in verdict.failures)
    assert report.answer[:20] in " ".join(verdict.failures)


def test_unknown_model_fails_listing_and_completion(api: k8s_client.ApiClient, served: str) -> None:
    report = _smoke(api, served, model="not-served")
    verdict = validate_smoke(report, SmokeExpectations())
    assert not verdict.passed
    assert any("'not-served' listed" in f for f in verdict.failures)


def test_bearer_token_client_reaches_proxy_but_refuses_a_second_api_key(
    cluster: Any, served: str, tmp_path: Path
) -> None:
    kubeconfig = cluster.api.write_kubeconfig(tmp_path / "kubeconfig", token="t0ken-for-test")
    api = load_api_client(kubeconfig)
    try:
        with httpx_client_for(api, timeout_s=30) as client:
            assert client.headers["authorization"] == "Bearer t0ken-for-test"
            report = run_smoke(
                client,
                served,
                model=MODEL,
                messages=SEED_MESSAGES,
                max_tokens=8,
                api_key=None,
                timeout_s=30,
            )
            assert MODEL in report.served_models
            with pytest.raises(PermanentError, match="direct base URL") as info:
                run_smoke(
                    client,
                    served,
                    model=MODEL,
                    messages=SEED_MESSAGES,
                    max_tokens=8,
                    api_key="sk-secret-value",
                    timeout_s=30,
                )
            assert "sk-secret-value" not in str(info.value)
    finally:
        api.close()  # type: ignore[no-untyped-call]
