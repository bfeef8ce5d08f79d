"""Smoke test through the API server's service proxy to a sandbox pod backend, judged by GX."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError
from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.objects import apply
from llm_rollout.kube.proxy import httpx_client_for, service_proxy_url
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import wait_ready
from llm_rollout.smoke import SmokeReport, run_smoke, smoke_endpoint, validate_smoke
from llm_rollout.spec import SmokeExpectations
from sandbox.kube.backends import BackendBehavior, ScriptedBackend
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


@pytest.fixture
def direct_backend() -> Iterator[tuple[ScriptedBackend, list[BackendBehavior]]]:
    """A scripted OpenAI-compatible server on 127.0.0.1, reached without the cluster; the
    behaviour it answers with is the last one in the list (tests append to change it)."""
    pod = {"metadata": {"name": "direct-0", "namespace": "direct"}}
    container = {"name": "vllm", "command": ["vllm", "serve", MODEL, "--port", "8000"]}
    behaviors = [BackendBehavior(api_key=DIRECT_KEY)]
    backend = ScriptedBackend(pod, container, 8000, lambda: behaviors[-1], load_delay_s=0)
    try:
        yield backend, behaviors
    finally:
        backend.stop()


DIRECT_KEY = "sk-direct-route-key"


def _direct_smoke(
    api: k8s_client.ApiClient, url: str, api_key: str | None, *, stream: bool = True
) -> SmokeReport:
    with smoke_endpoint(
        api,
        namespace="unused",
        service="unused",
        port=8000,
        route="base-url",
        base_url=url + "/",
        timeout_s=30,
    ) as endpoint:
        assert endpoint.route == "direct URL" and endpoint.base_url == url
        return run_smoke(
            endpoint.client,
            endpoint.base_url,
            model=MODEL,
            messages=SEED_MESSAGES,
            max_tokens=8,
            api_key=api_key,
            timeout_s=30,
            stream=stream,
        )


def test_direct_url_route_carries_the_api_key_to_the_server(
    api: k8s_client.ApiClient,
    direct_backend: tuple[ScriptedBackend, list[BackendBehavior]],
) -> None:
    backend, _ = direct_backend
    report = _direct_smoke(api, backend.url, DIRECT_KEY)
    assert validate_smoke(report, SmokeExpectations()).passed
    # GET /v1/models, the chat call and the streamed call, each with the key.
    assert backend.auth_seen == {"valid": 3, "wrong": 0, "missing": 0}

    refused = _direct_smoke(api, backend.url, None)
    verdict = validate_smoke(refused, SmokeExpectations())
    assert not verdict.passed
    assert {c.status for c in refused.calls} == {401}
    assert backend.auth_seen["missing"] == 3


def test_direct_url_route_needs_a_url(api: k8s_client.ApiClient) -> None:
    with (
        pytest.raises(PermanentError, match=r"base-url needs smoke\.base_url"),
        smoke_endpoint(
            api,
            namespace="n",
            service="s",
            port=8000,
            route="base-url",
            base_url=None,
            timeout_s=5,
        ),
    ):
        pass


def test_latency_and_ttft_gates_fail_a_slow_server_and_pass_a_generous_limit(
    api: k8s_client.ApiClient,
    direct_backend: tuple[ScriptedBackend, list[BackendBehavior]],
) -> None:
    backend, behaviors = direct_backend
    # The server waits before its first token: the measured TTFT and latency cannot be below
    # it, whatever the machine's load, so a gate under it must fail.
    delay_s = 0.3
    behaviors.append(BackendBehavior(api_key=DIRECT_KEY, first_token_delay_s=delay_s))
    report = _direct_smoke(api, backend.url, DIRECT_KEY)
    stream = report.call("stream")
    assert stream is not None and stream.ttft_ms is not None and stream.latency_ms is not None
    assert stream.ttft_ms >= delay_s * 1000

    strict = validate_smoke(report, SmokeExpectations(max_ttft_ms=100, max_latency_ms=100))
    assert not strict.passed
    failed = {f.split(" (got")[0] for f in strict.failures}
    assert failed == {"time to first token <= 100 ms", "latency <= 100 ms"}, strict.failures

    only_ttft = validate_smoke(report, SmokeExpectations(max_ttft_ms=100, max_latency_ms=None))
    assert [f.split(" (got")[0] for f in only_ttft.failures] == ["time to first token <= 100 ms"]

    generous = validate_smoke(
        report, SmokeExpectations(max_ttft_ms=600_000, max_latency_ms=600_000)
    )
    assert generous.passed, generous.failures
    assert "time to first token <= 600000 ms" in generous.checked
    assert "latency <= 600000 ms" in generous.checked


def test_ttft_gate_fails_when_nothing_was_streamed(
    api: k8s_client.ApiClient,
    direct_backend: tuple[ScriptedBackend, list[BackendBehavior]],
) -> None:
    backend, _ = direct_backend
    report = _direct_smoke(api, backend.url, DIRECT_KEY, stream=False)
    assert report.call("stream") is None
    verdict = validate_smoke(report, SmokeExpectations(max_ttft_ms=600_000))
    assert not verdict.passed
    assert any(f.startswith("time to first token measured") for f in verdict.failures)
