"""Pod logs, the service/pod proxy (plain and streamed), the fault layer, dynamic discovery."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from sandbox.kube.controlplane import ControlPlane, build_control_plane

TOKEN = "sandbox-admin-token"


class _Backend(BaseHTTPRequestHandler):
    """A pod's engine: /v1/models plain, chat completions streamed as SSE on demand."""

    protocol_version = "HTTP/1.1"
    release_second_chunk: threading.Event
    seen_headers: list[dict[str, str]]

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        self.seen_headers.append(dict(self.headers.items()))
        body = json.dumps({"object": "list", "data": [{"id": "tiny", "path": self.path}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(text: str) -> None:
            data = text.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        chunk(f'data: {{"model": "{request["model"]}", "delta": "hello"}}\n\n')
        # The second chunk only leaves once the client proved it got the first one.
        if not self.release_second_chunk.wait(10):
            chunk("data: timeout\n\n")
        chunk('data: {"delta": " world"}\n\n')
        chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture
def backend() -> Iterator[tuple[str, type[_Backend]]]:
    handler = type(
        "Backend", (_Backend,), {"release_second_chunk": threading.Event(), "seen_headers": []}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    handler.release_second_chunk.set()
    server.shutdown()
    server.server_close()
    thread.join()


def _serving_pod(
    core: client.CoreV1Api, plane: ControlPlane, ns: str, name: str, ready: bool
) -> None:
    core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": name, "labels": {"app": "engine"}},
            "spec": {
                "containers": [
                    {
                        "name": "engine",
                        "image": "vllm:1",
                        "ports": [{"name": "http", "containerPort": 8000}],
                    }
                ]
            },
        },
    )
    pod = plane.store.get(plane.store.resource_type("v1", "Pod"), ns, name)
    pod["status"] = {
        "phase": "Running",
        "podIP": "10.244.0.7",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    plane.store.update_status(pod)


def _service(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "engine"},
            "spec": {
                "selector": {"app": "engine"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
    )


def test_pod_logs_tail_container_previous(
    core: client.CoreV1Api, plane: ControlPlane, ns: str
) -> None:
    core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": "two"},
            "spec": {
                "containers": [
                    {"name": "engine", "image": "a:1"},
                    {"name": "proxy", "image": "b:1"},
                ]
            },
        },
    )
    for i in range(5):
        plane.store.append_log(ns, "two", "engine", f"line {i}")
    with pytest.raises(ApiException) as which:
        core.read_namespaced_pod_log("two", ns)
    assert which.value.status == 400
    assert (
        "a container name must be specified for pod two" in json.loads(which.value.body)["message"]
    )

    text = core.read_namespaced_pod_log("two", ns, container="engine", tail_lines=2)
    assert text == "line 3\nline 4\n"
    with pytest.raises(ApiException) as previous:
        core.read_namespaced_pod_log("two", ns, container="engine", previous=True)
    assert previous.value.status == 400
    message = json.loads(previous.value.body)["message"]
    assert message == 'previous terminated container "engine" in pod "two" not found'

    plane.store.rotate_logs(ns, "two", "engine")  # the container restarted
    plane.store.append_log(ns, "two", "engine", "after restart")
    assert core.read_namespaced_pod_log("two", ns, container="engine") == "after restart\n"
    assert core.read_namespaced_pod_log("two", ns, container="engine", previous=True).endswith(
        "line 4\n"
    )
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod_log("two", ns, container="nope")
    assert missing.value.status == 400


def test_service_proxy_plain_and_no_endpoints(
    core: client.CoreV1Api,
    plane: ControlPlane,
    ns: str,
    backend: tuple[str, type[_Backend]],
) -> None:
    url, handler = backend
    _service(core, ns)
    with pytest.raises(ApiException) as none:
        core.connect_get_namespaced_service_proxy_with_path("engine", ns, "v1/models")
    assert none.value.status == 503
    assert json.loads(none.value.body)["message"] == 'no endpoints available for service "engine"'

    _serving_pod(core, plane, ns, "engine-0", ready=False)
    plane.network.bind(ns, "engine-0", 8000, url)
    with pytest.raises(ApiException) as unready:
        core.connect_get_namespaced_service_proxy_with_path("engine", ns, "v1/models")
    assert unready.value.status == 503  # bound, but not Ready: not an endpoint

    pod = plane.store.get(plane.store.resource_type("v1", "Pod"), ns, "engine-0")
    pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    plane.store.update_status(pod)
    # The client's "str" deserialisation mangles JSON: read the raw body, as callers do.
    answer = core.connect_get_namespaced_service_proxy_with_path(
        "engine", ns, "v1/models", _preload_content=False
    )
    assert answer.status == 200
    assert json.loads(answer.data)["data"][0] == {"id": "tiny", "path": "/v1/models"}
    # The named-port form and the pod proxy reach the same backend.
    via_port = core.connect_get_namespaced_service_proxy_with_path(
        "engine:http", ns, "v1/models", _preload_content=False
    )
    assert json.loads(via_port.data)["data"][0]["id"] == "tiny"
    via_pod = core.connect_get_namespaced_pod_proxy_with_path(
        "engine-0:8000", ns, "v1/models", _preload_content=False
    )
    assert json.loads(via_pod.data)["data"][0]["id"] == "tiny"
    # The bearer token for the API server is not leaked to the pod.
    assert all("Authorization" not in h for h in handler.seen_headers)


def test_service_proxy_streams_sse_incrementally(
    core: client.CoreV1Api,
    plane: ControlPlane,
    ns: str,
    backend: tuple[str, type[_Backend]],
) -> None:
    url, handler = backend
    _service(core, ns)
    _serving_pod(core, plane, ns, "engine-0", ready=True)
    plane.network.bind(ns, "engine-0", 8000, url)
    proxy = f"{plane.url}/api/v1/namespaces/{ns}/services/http:engine:80/proxy/v1/chat/completions"
    with (
        httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as http,
        http.stream("POST", proxy, json={"model": "tiny", "stream": True}) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        lines = resp.iter_lines()
        first = next(line for line in lines if line)
        # Got the first event while the backend is still holding the rest back.
        assert first == 'data: {"model": "tiny", "delta": "hello"}'
        assert not handler.release_second_chunk.is_set()
        handler.release_second_chunk.set()
        rest = [line for line in lines if line]
    assert rest == ['data: {"delta": " world"}', "data: [DONE]"]


def test_throttle_surfaces_429_with_retry_after(
    core: client.CoreV1Api, plane: ControlPlane, ns: str
) -> None:
    rule = plane.api.faults.throttle("POST", rf"/namespaces/{ns}/configmaps$", retry_after=7)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "t"}})
    assert err.value.status == 429
    assert err.value.headers["Retry-After"] == "7"
    assert json.loads(err.value.body)["reason"] == "TooManyRequests"
    assert rule.hits == 1
    assert core.list_namespaced_config_map(ns).items == []


def test_throttled_get_is_retried_by_urllib3_after_retry_after(
    core: client.CoreV1Api, plane: ControlPlane, ns: str
) -> None:
    # urllib3 (under the client) honours Retry-After on idempotent requests by itself.
    plane.api.faults.throttle("GET", rf"/namespaces/{ns}/configmaps$", retry_after=1)
    started = time.monotonic()
    assert core.list_namespaced_config_map(ns).items == []
    assert time.monotonic() - started >= 0.9
    statuses = [
        r.status for r in plane.api.request_log.records() if r.path.endswith(f"{ns}/configmaps")
    ]
    assert statuses[-2:] == [429, 200]


def test_internal_error_persists_nothing(
    core: client.CoreV1Api, plane: ControlPlane, ns: str
) -> None:
    plane.api.faults.error("POST", rf"/namespaces/{ns}/configmaps$")
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "x"}})
    assert err.value.status == 500 and json.loads(err.value.body)["reason"] == "InternalError"
    assert core.list_namespaced_config_map(ns).items == []


def test_connection_reset(core: client.CoreV1Api, plane: ControlPlane, ns: str) -> None:
    path = rf"/namespaces/{ns}/configmaps$"
    rule = plane.api.faults.reset("GET", path, times=None)
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.list_namespaced_config_map(ns)
    resets = [r for r in plane.api.request_log.records() if r.status == 0 and ns in r.path]
    assert len(resets) == rule.hits >= 1
    plane.api.faults.clear()
    # A single reset is absorbed by urllib3's retry of an idempotent GET.
    plane.api.faults.reset("GET", path, times=1)
    assert core.list_namespaced_config_map(ns).items == []


def test_cut_watch_stream(core: client.CoreV1Api, plane: ControlPlane, ns: str) -> None:
    for i in range(4):
        core.create_namespaced_config_map(ns, {"metadata": {"name": f"c{i}"}})
    plane.api.faults.cut_watch(rf"/namespaces/{ns}/configmaps$", after_events=2)
    seen: list[str] = []
    with pytest.raises(urllib3.exceptions.HTTPError):
        for event in watch.Watch().stream(core.list_namespaced_config_map, ns, timeout_seconds=5):
            seen.append(event["object"].metadata.name)
    assert seen == ["c0", "c1"]


def test_request_log_and_authentication(
    kubeconfig: Path, plane: ControlPlane, core: client.CoreV1Api
) -> None:
    core.list_namespace()
    last = [r for r in plane.api.request_log.records() if r.path == "/api/v1/namespaces"][-1]
    assert (last.method, last.verb, last.status, last.user) == ("GET", "list", 200, "admin")
    wrong = httpx.get(
        f"{plane.url}/api/v1/namespaces", headers={"Authorization": "Bearer wrong"}, timeout=5
    )
    assert wrong.status_code == 401 and wrong.json()["reason"] == "Unauthorized"


def test_dynamic_client_discovers_and_gets_lws(dyn: DynamicClient, ns: str) -> None:
    lws_api = dyn.resources.get(api_version="leaderworkerset.x-k8s.io/v1", kind="LeaderWorkerSet")
    assert (
        lws_api.namespaced and "status" in lws_api.subresources and "scale" in lws_api.subresources
    )
    lws_api.create(
        namespace=ns,
        body={
            "apiVersion": "leaderworkerset.x-k8s.io/v1",
            "kind": "LeaderWorkerSet",
            "metadata": {"name": "mn"},
            "spec": {
                "replicas": 1,
                "leaderWorkerTemplate": {
                    "size": 2,
                    "workerTemplate": {"spec": {"containers": [{"name": "w", "image": "v:1"}]}},
                },
            },
        },
    )
    got = lws_api.get(name="mn", namespace=ns)
    assert got.spec.leaderWorkerTemplate.size == 2
    scale = lws_api.subresources["scale"].get(name="mn", namespace=ns)
    assert scale.kind == "Scale" and scale.spec.replicas == 1
    pods = dyn.resources.get(api_version="v1", kind="Pod")
    assert "log" in pods.subresources and "status" in pods.subresources
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    assert "scale" in deployments.subresources


def test_crd_selection_rbg_v07_and_missing_kuberay(shared_crds: Path, tmp_path: Path) -> None:
    plane = build_control_plane(shared_crds, lws="v0.6.0", rbg="v0.7.0", kuberay=None)
    try:
        cfg = client.Configuration()
        from kubernetes import config

        config.load_kube_config(
            config_file=str(plane.api.write_kubeconfig(tmp_path / "kc")), client_configuration=cfg
        )
        with client.ApiClient(cfg) as api:
            dyn = DynamicClient(api, cache_file=str(tmp_path / "cache.json"))
            v2 = dyn.resources.get(api_version="workloads.x-k8s.io/v1alpha2", kind="RoleBasedGroup")
            v1 = dyn.resources.get(api_version="workloads.x-k8s.io/v1alpha1", kind="RoleBasedGroup")
            assert v2.name == v1.name == "rolebasedgroups"
            with pytest.raises(ResourceNotFoundError):
                dyn.resources.get(api_version="ray.io/v1", kind="RayCluster")
            groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
            assert groups["workloads.x-k8s.io"].preferred_version.version == "v1alpha2"
            assert "ray.io" not in groups
    finally:
        plane.stop()


def test_cut_watch_after_seconds(core: client.CoreV1Api, plane: ControlPlane, ns: str) -> None:
    rule = plane.api.faults.cut_watch(rf"/namespaces/{ns}/configmaps$", after_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):
        list(watch.Watch().stream(core.list_namespaced_config_map, ns, timeout_seconds=5))
    # The cut ended the stream (an error, not the server's 5 s timeout's clean end), and not
    # before its 0.5 s.
    assert rule.hits == 1
    assert time.monotonic() - started >= 0.4


def test_seeded_probability_is_reproducible() -> None:
    from sandbox.kube.faults import FaultPlan

    def pattern(seed: int) -> list[bool]:
        plan = FaultPlan(seed=seed)
        plan.error("GET", "/x", times=None, probability=0.5)
        return [plan.take("GET", "/x", watch=False) is not None for _ in range(40)]

    first = pattern(7)
    assert first == pattern(7)
    assert 5 < sum(first) < 35  # it really is random, neither always nor never
