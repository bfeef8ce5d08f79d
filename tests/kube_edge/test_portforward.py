"""The smoke test's port-forward route to a server that requires an API key (sandbox cluster).

The scripted backend enforces the key like `vllm serve --api-key` (401 on /v1 without the right
`Authorization: Bearer`), so a pass proves the key crossed the tunnel; the same calls through
the API server's service proxy are refused before anything is sent.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.errors import UnauthorizedError
from llm_rollout.kube.objects import apply
from llm_rollout.kube.portforward import ForwardTarget, PortForwarder, pick_pod
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.metrics import fetch_metrics
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
from sandbox.kube.backends import BackendBehavior, ScriptedBackend
from tests.kube_edge.conftest import deployment

MODEL = "/models/qwen"
KEY = "sk-portforward-test-key"
MESSAGES = [{"role": "user", "content": "测试一下"}]


def _serve(cluster: Any, api: k8s_client.ApiClient, namespace: str, *, replicas: int = 1) -> None:
    """Deployment `qwen` whose pods require KEY, behind Service `qwen` (port 80 -> "http")."""
    cluster.scripted.set_behavior(
        lambda pod: (pod.get("metadata") or {}).get("namespace") == namespace,
        BackendBehavior(api_key=KEY),
    )
    obj = deployment(namespace, "qwen", replicas=replicas)
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["ports"] = [{"name": "http", "containerPort": 8000}]
    apply(api, obj)
    apply(
        api,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "qwen", "namespace": namespace},
            "spec": {"selector": {"app": "qwen"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    )
    wait_ready(api, ObjectRef.of(obj), timeout_s=60)


def _endpoint(
    api: k8s_client.ApiClient, namespace: str, route: SmokeRoute
) -> AbstractContextManager[SmokeEndpoint]:
    return smoke_endpoint(
        api,
        namespace=namespace,
        service="qwen",
        port=80,
        route=route,
        base_url=None,
        timeout_s=30,
    )


def _smoke(client: httpx.Client, base_url: str, key: str) -> SmokeReport:
    return run_smoke(
        client, base_url, model=MODEL, messages=MESSAGES, max_tokens=30, api_key=key, timeout_s=30
    )


def _backend(cluster: Any, namespace: str, pod: str) -> ScriptedBackend:
    found = cluster.scripted.find(namespace, pod)
    assert len(found) == 1
    backend: ScriptedBackend = found[0]
    return backend


def test_smoke_through_port_forward_carries_the_api_key(
    cluster: Any, api: k8s_client.ApiClient, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    _serve(cluster, api, namespace, replicas=2)
    target = pick_pod(api, namespace, "qwen", 80)
    assert target.port == 8000  # the named targetPort, resolved on the chosen pod
    backend = _backend(cluster, namespace, target.pod)
    caplog.set_level(logging.INFO, logger="llm_rollout")
    with _endpoint(api, namespace, "port-forward") as endpoint:
        assert endpoint.base_url.startswith("http://127.0.0.1:")
        assert endpoint.route == f"port-forward to Pod {namespace}/{target.pod} port 8000"
        report = _smoke(endpoint.client, endpoint.base_url, KEY)
        metrics = fetch_metrics(endpoint.client, endpoint.base_url, timeout_s=30)
        wrong = _smoke(endpoint.client, endpoint.base_url, "sk-not-the-key")
    assert [c.status for c in report.calls] == [200, 200, 200], report.calls
    verdict = validate_smoke(report, SmokeExpectations())
    assert verdict.passed, verdict.failures
    # /metrics came from the same pod, along the same tunnel: it counted the smoke calls.
    assert metrics.summary is not None and metrics.summary.requests == 2
    assert [c.status for c in wrong.calls] == [401, 401, 401]
    failed = validate_smoke(wrong, SmokeExpectations())
    assert not failed.passed
    assert any("HTTP 200" in f for f in failed.failures)
    assert backend.auth_seen == {"valid": 3, "wrong": 3, "missing": 0}
    assert backend.requests.get("/metrics") == 1
    text = caplog.text + repr(report) + repr(wrong) + repr(failed)
    assert KEY not in text and "sk-not-the-key" not in text
    assert f"Pod {namespace}/{target.pod}" in caplog.text


def test_the_service_proxy_route_refuses_an_api_key_before_sending_it(
    cluster: Any, api: k8s_client.ApiClient, namespace: str
) -> None:
    # The default sandbox kubeconfig carries no token: the client has no Authorization header,
    # which the guard once relied on. The key must still never go to the API server.
    _serve(cluster, api, namespace)
    cluster.api.request_log.clear()
    with (
        _endpoint(api, namespace, "proxy") as endpoint,
        pytest.raises(PermanentError, match="port-forward") as refused,
    ):
        assert "authorization" not in endpoint.client.headers
        _smoke(endpoint.client, endpoint.base_url, KEY)
    assert KEY not in str(refused.value)
    assert not [r for r in cluster.api.request_log.records() if "/proxy" in r.path]
    # A plain client pointed at a proxy URL is refused too.
    with httpx.Client() as plain, pytest.raises(PermanentError, match="port-forward"):
        _smoke(plain, endpoint.base_url, KEY)


AUTH = {"Authorization": f"Bearer {KEY}"}


def _served_target(cluster: Any, api: k8s_client.ApiClient, namespace: str) -> ForwardTarget:
    _serve(cluster, api, namespace)
    return pick_pod(api, namespace, "qwen", "80")


def test_many_connections_stream_through_one_forwarder(
    cluster: Any, api: k8s_client.ApiClient, namespace: str
) -> None:
    with PortForwarder(api, _served_target(cluster, api, namespace)) as forwarder:
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


def test_pick_pod_errors_are_classified(
    cluster: Any, api: k8s_client.ApiClient, namespace: str
) -> None:
    with pytest.raises(PermanentError, match=f"Service {namespace}/absent does not exist"):
        pick_pod(api, namespace, "absent", 80)
    apply(
        api,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nobody", "namespace": namespace},
            "spec": {"selector": {"app": "nobody"}, "ports": [{"port": 80}]},
        },
    )
    with pytest.raises(TransientError, match="selects no Ready pod"):
        pick_pod(api, namespace, "nobody", 80)
    with pytest.raises(PermanentError, match="has no port 81"):
        pick_pod(api, namespace, "nobody", 81)


def test_a_refused_upgrade_fails_the_forwarder_at_start(
    cluster: Any, api: k8s_client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    _serve(cluster, api, namespace)
    target = pick_pod(api, namespace, "qwen", 80)
    with pytest.raises(
        PermanentError, match=f"port-forward to Pod {namespace}/gone port 8000: HTTP 404"
    ):
        PortForwarder(api, ForwardTarget(namespace, "gone", 8000)).start()
    # A ServiceAccount allowed `get` on pods/portforward but not the `create` the upgrade also
    # needs (Kubernetes 1.35+).
    apply(
        api,
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "reader", "namespace": namespace},
        },
    )
    apply(
        api,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "reader", "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get"]}],
        },
    )
    apply(
        api,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    kubeconfig = cluster.api.service_account_kubeconfig(tmp_path / "kc", namespace, "reader")
    reader = load_api_client(kubeconfig)
    try:
        with pytest.raises(UnauthorizedError, match="HTTP 403") as refused:
            PortForwarder(reader, target).start()
        assert 'cannot create resource "pods/portforward"' in str(refused.value)
        assert f"Pod {namespace}/{target.pod} port 8000" in str(refused.value)
    finally:
        reader.close()  # type: ignore[no-untyped-call]


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_client_leaving_mid_stream_ends_only_its_connection(
    cluster: Any, api: k8s_client.ApiClient, namespace: str
) -> None:
    with PortForwarder(api, _served_target(cluster, api, namespace)) as forwarder:
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
