"""The smoke test's routes to pods of the real cluster: port-forward (the API key crosses the
tunnel) and the API server's service proxy (no API key is ever sent through it).

The servers are the SGLang stand-in (``sandbox/sglang_standin``, run for the SGLang image by
``sandbox/cluster/images.py``): its ``--api-key`` answers 401 on ``/v1`` without the right
``Authorization: Bearer`` and lets ``/health`` and ``/metrics`` through, as SGLang's
``add_api_key_middleware`` (python/sglang/srt/utils.py). Port-forward goes through the real
kube-apiserver to the node agent's kubelet endpoint (``sandbox/cluster/pods/server.py``). One
deploy of two servers is shared by the module: the keyed ``qwen`` (two pods) and the open
``open`` (one pod, for the service proxy, which refuses an API key).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s

from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.kube.client import new_api_client
from llm_rollout.kube.errors import UnauthorizedError
from llm_rollout.kube.objects import apply
from llm_rollout.kube.portforward import ForwardTarget, PortForwarder, pick_pod
from llm_rollout.kube.proxy import httpx_client_for, service_proxy_url
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import wait_ready
from llm_rollout.smoke import (
    SmokeEndpoint,
    SmokeReport,
    SmokeRoute,
    run_smoke,
    smoke_endpoint,
    validate_smoke,
)
from llm_rollout.spec import SmokeExpectations
from sandbox.cluster.api_proxy import ApiFaultProxy, running_proxy
from sandbox.cluster.control_plane import Cluster
from sandbox.sglang_standin.workload import standin_deployment
from tests.cluster.faults_support import admin_via, service_account_token

MODEL = "qwen-standin"
KEY = "sk-portforward-test-key"
MESSAGES = [{"role": "user", "content": "测试一下"}]
AUTH = {"Authorization": f"Bearer {KEY}"}


def _server(namespace: str, name: str, *, replicas: int, api_key: str | None) -> dict[str, Any]:
    return standin_deployment(namespace, name, model=MODEL, replicas=replicas, api_key=api_key)


def _service(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": "http"}]},
    }


@pytest.fixture(scope="module")
def served(real_admin: k8s.ApiClient) -> Iterator[str]:
    """A namespace with ``qwen`` (two pods requiring KEY) and ``open`` (one pod, no key), each
    behind a Service of its name, port 80 -> "http" (8000)."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    core = k8s.CoreV1Api(real_admin)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "model"}, "data": {"config.json": "{}"}}
    )
    workloads = [
        _server(namespace, "qwen", replicas=2, api_key=KEY),
        _server(namespace, "open", replicas=1, api_key=None),
    ]
    for obj in workloads:
        apply(real_admin, obj)
        apply(real_admin, _service(namespace, obj["metadata"]["name"]))
    for obj in workloads:
        wait_ready(real_admin, ObjectRef.of(obj), timeout_s=90)
    yield namespace
    core.delete_namespace(namespace)


@pytest.fixture(scope="module")
def proxy(real_cluster: Cluster) -> Iterator[ApiFaultProxy]:
    """The fault proxy with no faults: here only a record of what reached the API server."""
    with running_proxy(real_cluster.pki, real_cluster.api_url) as running:
        yield running


def _endpoint(
    api: k8s.ApiClient, namespace: str, route: SmokeRoute, service: str = "qwen"
) -> AbstractContextManager[SmokeEndpoint]:
    return smoke_endpoint(
        api, namespace=namespace, service=service, port=80, route=route, base_url=None, timeout_s=30
    )


def _smoke(client: httpx.Client, base_url: str, key: str | None, model: str = MODEL) -> SmokeReport:
    return run_smoke(
        client, base_url, model=model, messages=MESSAGES, max_tokens=30, api_key=key, timeout_s=30
    )


def _requests_counted(metrics_text: str) -> float:
    line = next(
        line for line in metrics_text.splitlines() if line.startswith("sglang:num_requests_total")
    )
    return float(line.rsplit(" ", 1)[1])


# --- port-forward -------------------------------------------------------------------------------


def test_smoke_through_port_forward_carries_the_api_key(
    real_admin: k8s.ApiClient, served: str, caplog: pytest.LogCaptureFixture
) -> None:
    namespace = served
    target = pick_pod(real_admin, namespace, "qwen", 80)
    assert target.port == 8000  # the named targetPort, resolved on the chosen pod
    caplog.set_level(logging.INFO, logger="llm_rollout")
    with _endpoint(real_admin, namespace, "port-forward") as endpoint:
        assert endpoint.base_url.startswith("http://127.0.0.1:")
        assert endpoint.route == f"port-forward to Pod {namespace}/{target.pod} port 8000"
        before = endpoint.client.get(f"{endpoint.base_url}/metrics")
        report = _smoke(endpoint.client, endpoint.base_url, KEY)
        wrong = _smoke(endpoint.client, endpoint.base_url, "sk-not-the-key")
        missing = endpoint.client.get(f"{endpoint.base_url}/v1/models")
        after = endpoint.client.get(f"{endpoint.base_url}/metrics")
    assert [c.status for c in report.calls] == [200, 200, 200], report.calls
    verdict = validate_smoke(report, SmokeExpectations())
    assert verdict.passed, verdict.failures
    # The server refused the wrong key and the missing one: the 200s above carried KEY.
    assert [c.status for c in wrong.calls] == [401, 401, 401]
    assert missing.status_code == 401
    failed = validate_smoke(wrong, SmokeExpectations())
    assert not failed.passed
    assert any("HTTP 200" in f for f in failed.failures)
    # /metrics came from the same pod along the same tunnel: it counted the two generations
    # of the accepted smoke calls (the readiness probe's /health adds one per probe).
    assert before.status_code == after.status_code == 200
    assert _requests_counted(after.text) - _requests_counted(before.text) >= 2
    text = caplog.text + repr(report) + repr(wrong) + repr(failed)
    assert KEY not in text and "sk-not-the-key" not in text
    assert f"Pod {namespace}/{target.pod}" in caplog.text


def test_many_connections_stream_through_one_forwarder(
    real_admin: k8s.ApiClient, served: str
) -> None:
    with PortForwarder(real_admin, pick_pod(real_admin, served, "qwen", "80")) as forwarder:
        clients = [httpx.Client(trust_env=False, timeout=30) for _ in range(3)]
        try:
            for client in clients:
                with client.stream(
                    "POST",
                    f"{forwarder.base_url}/v1/chat/completions",
                    json={"model": MODEL, "messages": MESSAGES, "stream": True},
                    headers=AUTH,
                ) as response:
                    assert response.status_code == 200
                    lines = [line for line in response.iter_lines() if line]
                assert lines[-1] == "data: [DONE]"
                # Keep-alive: a second request reuses the same tunnelled connection.
                assert client.get(f"{forwarder.base_url}/v1/models", headers=AUTH).json()
        finally:
            for client in clients:
                client.close()
        assert forwarder.connections == 3
    # Closed: the listener is gone.
    with httpx.Client(trust_env=False) as late, pytest.raises(httpx.ConnectError):
        late.get(f"{forwarder.base_url}/health")


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_client_leaving_mid_stream_ends_only_its_connection(
    real_admin: k8s.ApiClient, served: str
) -> None:
    with PortForwarder(real_admin, pick_pod(real_admin, served, "qwen", "80")) as forwarder:
        # The race (the pod's next bytes vs the hang-up) is lost in some rounds, not all.
        for _ in range(6):
            with (
                httpx.Client(trust_env=False, timeout=30) as leaver,
                leaver.stream(
                    "POST",
                    f"{forwarder.base_url}/v1/chat/completions",
                    json={"model": MODEL, "messages": MESSAGES, "stream": True},
                    headers=AUTH,
                ) as response,
            ):
                assert response.status_code == 200
                # One chunk, then the client hangs up while the pod is still streaming.
                assert next(response.iter_raw())
        with httpx.Client(trust_env=False, timeout=30) as after:
            assert after.get(f"{forwarder.base_url}/v1/models", headers=AUTH).json()
        assert forwarder.connections == 7


def test_pick_pod_errors_are_classified(real_admin: k8s.ApiClient, served: str) -> None:
    namespace = served
    with pytest.raises(PermanentError, match=f"Service {namespace}/absent does not exist"):
        pick_pod(real_admin, namespace, "absent", 80)
    apply(
        real_admin,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nobody", "namespace": namespace},
            "spec": {"selector": {"app": "nobody"}, "ports": [{"port": 80}]},
        },
    )
    with pytest.raises(TransientError, match="selects no Ready pod"):
        pick_pod(real_admin, namespace, "nobody", 80)
    with pytest.raises(PermanentError, match="has no port 81"):
        pick_pod(real_admin, namespace, "nobody", 81)


def _service_account(admin: k8s.ApiClient, namespace: str, name: str, rules: list[Any]) -> str:
    """A ServiceAccount bound to a Role of ``rules``; returns a token for it."""
    core, rbac = k8s.CoreV1Api(admin), k8s.RbacAuthorizationV1Api(admin)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    return service_account_token(admin, namespace, name)


def test_a_refused_upgrade_fails_the_forwarder_at_start(
    real_cluster: Cluster, real_admin: k8s.ApiClient, served: str
) -> None:
    namespace = served
    target = pick_pod(real_admin, namespace, "qwen", 80)
    with pytest.raises(
        PermanentError, match=f"port-forward to Pod {namespace}/gone port 8000: HTTP 404"
    ):
        PortForwarder(real_admin, ForwardTarget(namespace, "gone", 8000)).start()
    # Allowed `get` on pods/portforward but not the `create` the upgrade also needs since
    # Kubernetes 1.35 (k8s.io/kubernetes pkg/registry/core/pod/rest/subresources.go and the
    # authorizer's websocket verb check, KEP-4006).
    token = _service_account(
        real_admin,
        namespace,
        "reader",
        [{"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get"]}],
    )
    reader = new_api_client(real_cluster.token_kubeconfig(f"reader-{namespace}", token))
    try:
        with pytest.raises(UnauthorizedError, match="HTTP 403") as refused:
            PortForwarder(reader, target).start()
        # The real v1.36 API server's Status for this synthetic check names the pod but no
        # RBAC reason (seen here: 'pods "<pod>" is forbidden: ').
        assert f'pods "{target.pod}" is forbidden' in str(refused.value)
        assert f"Pod {namespace}/{target.pod} port 8000" in str(refused.value)
    finally:
        reader.close()  # type: ignore[no-untyped-call]


# --- the service proxy --------------------------------------------------------------------------


def test_the_service_proxy_route_refuses_an_api_key_before_sending_it(
    real_cluster: Cluster, proxy: ApiFaultProxy, served: str
) -> None:
    """What reached the API server is read from the (fault-free) proxy in front of it."""
    namespace = served
    api = admin_via(real_cluster, proxy)
    proxy.clear()
    try:
        with (
            _endpoint(api, namespace, "proxy") as endpoint,
            pytest.raises(PermanentError, match="port-forward") as refused,
        ):
            _smoke(endpoint.client, endpoint.base_url, KEY)
        assert KEY not in str(refused.value)
        # A plain client pointed at a proxy URL is refused too.
        with httpx.Client() as plain, pytest.raises(PermanentError, match="port-forward"):
            _smoke(plain, endpoint.base_url, KEY)
    finally:
        api.close()  # type: ignore[no-untyped-call]
    assert not [r for r in proxy.records() if "/proxy" in r.path]


def _proxy_smoke(api: k8s.ApiClient, namespace: str, model: str = MODEL) -> SmokeReport:
    base_url = service_proxy_url(api, namespace, "open", 80)
    with httpx_client_for(api, timeout_s=30) as client:
        return _smoke(client, base_url, None, model)


def test_smoke_through_service_proxy_passes_and_measures_ttft(
    real_admin: k8s.ApiClient, served: str
) -> None:
    report = _proxy_smoke(real_admin, served)
    assert MODEL in report.served_models
    chat, stream = report.call("chat"), report.call("stream")
    assert chat is not None and stream is not None
    assert chat.status == 200 and chat.content and chat.completion_tokens
    assert stream.status == 200 and stream.ttft_ms is not None
    assert stream.latency_ms is not None and stream.ttft_ms <= stream.latency_ms
    assert stream.content == chat.content
    verdict = validate_smoke(report, SmokeExpectations(contains=[chat.content[:5]]))
    assert verdict.passed, verdict.failures

    # The same answer judged against a wrong expectation fails, naming what it got.
    wrong = validate_smoke(report, SmokeExpectations(equals="hello world", max_ttft_ms=None))
    assert not wrong.passed
    assert any(f.startswith("answer equals 'hello world'") for f in wrong.failures)
    assert report.answer[:20] in " ".join(wrong.failures)


def test_the_service_proxy_client_speaks_http2_to_the_api_server(
    real_admin: k8s.ApiClient, served: str
) -> None:
    """Over HTTP/1.1 the API server's service proxy cuts a proxied answer to a request with a
    body now and then (Go's transport reads the inbound body after the HTTP/1 server closed
    it; see llm_rollout/kube/proxy.py httpx_client_for): measured 8 streams cut in 600. The
    real API server offers h2, so the client's calls, streamed ones included, must use it."""
    base_url = service_proxy_url(real_admin, served, "open", 80)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    with (
        httpx_client_for(real_admin, timeout_s=30) as client,
        client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response,
    ):
        lines = [line for line in response.iter_lines() if line]
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200 and lines[-1] == "data: [DONE]"


def test_unknown_model_fails_listing_and_completion(real_admin: k8s.ApiClient, served: str) -> None:
    report = _proxy_smoke(real_admin, served, model="not-served")
    verdict = validate_smoke(report, SmokeExpectations())
    assert not verdict.passed
    assert any("'not-served' listed" in f for f in verdict.failures)


def test_bearer_token_client_reaches_proxy_but_refuses_a_second_api_key(
    real_cluster: Cluster, real_admin: k8s.ApiClient, served: str
) -> None:
    namespace = served
    token = _service_account(
        real_admin,
        namespace,
        "smoker",
        [
            {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get", "create"]},
        ],
    )
    api = new_api_client(real_cluster.token_kubeconfig(f"smoker-{namespace}", token))
    try:
        base_url = service_proxy_url(api, namespace, "open", 80)
        with httpx_client_for(api, timeout_s=30) as client:
            assert client.headers["authorization"] == f"Bearer {token}"
            report = _smoke(client, base_url, None)
            assert validate_smoke(report, SmokeExpectations()).passed
            with pytest.raises(PermanentError, match="direct base URL") as info:
                _smoke(client, base_url, "sk-secret-value")
            assert "sk-secret-value" not in str(info.value)
    finally:
        api.close()  # type: ignore[no-untyped-call]
