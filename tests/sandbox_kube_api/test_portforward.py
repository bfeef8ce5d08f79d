"""`pods/{name}/portforward` with the REAL client: kubernetes.stream.portforward over WebSocket.

The pod's port is served by a local process bound in the PodNetwork: a raw TCP echo server
(bytes both ways, half-close), and a small HTTP server (a whole request/response through the
tunnel). Errors: unknown pod 404, pod not running 400, nothing listening on the port (error
channel), and RBAC (`get` for the upgrade GET, plus the synthetic `create`).
"""

from __future__ import annotations

import http.client
import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client import ApiException
from kubernetes.stream import portforward

from sandbox.kube.controlplane import ControlPlane

PORT = 9000


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        payload = json.dumps(
            {"path": self.path, "auth": self.headers.get("Authorization"), "echo": body.decode()}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _serve(server: socketserver.BaseServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def echo_url() -> Iterator[str]:
    yield from _serve(_EchoServer(("127.0.0.1", 0), _Echo))


@pytest.fixture
def http_url() -> Iterator[str]:
    yield from _serve(ThreadingHTTPServer(("127.0.0.1", 0), _Http))


def _pod(plane: ControlPlane, core: client.CoreV1Api, ns: str, name: str, phase: str) -> None:
    core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": name},
            "spec": {
                "nodeName": "gpu-node-a",
                "containers": [
                    {"name": "engine", "image": "vllm:1", "ports": [{"containerPort": PORT}]}
                ],
            },
        },
    )
    pod = plane.store.get(plane.store.resource_type("v1", "Pod"), ns, name)
    pod["status"] = {"phase": phase, "podIP": "10.244.0.9"}
    plane.store.update_status(pod)


def _recv_exactly(sock: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _recv_all(sock: Any) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_bytes_travel_both_ways_through_the_tunnel(
    plane: ControlPlane, core: client.CoreV1Api, ns: str, echo_url: str
) -> None:
    _pod(plane, core, ns, "engine-0", "Running")
    plane.network.bind(ns, "engine-0", PORT, echo_url)
    plane.api.request_log.clear()
    forward = portforward(
        core.connect_get_namespaced_pod_portforward, "engine-0", ns, ports=str(PORT)
    )
    sock = forward.socket(PORT)
    # The client checked each channel's opening frame carries port 9000 (little-endian).
    payload = bytes(range(256)) * 4096  # 1 MiB, several WebSocket frames each way
    sender = threading.Thread(target=sock.sendall, args=(payload,))
    sender.start()
    echoed = _recv_exactly(sock, len(payload))
    sender.join()
    assert echoed == payload
    sock.sendall(b"ping")
    assert _recv_exactly(sock, 4) == b"ping"
    sock.close()
    assert forward.error(PORT) is None
    records = [r for r in plane.api.request_log.records() if r.path.endswith("/portforward")]
    assert [(r.method, r.status, r.query) for r in records] == [("GET", 101, f"ports={PORT}")]


def test_an_http_exchange_through_the_tunnel_and_close_by_the_pod(
    plane: ControlPlane, core: client.CoreV1Api, ns: str, http_url: str
) -> None:
    _pod(plane, core, ns, "engine-0", "Running")
    plane.network.bind(ns, "engine-0", PORT, http_url)
    forward = portforward(
        core.connect_get_namespaced_pod_portforward, "engine-0", ns, ports=str(PORT)
    )
    sock = forward.socket(PORT)
    body = b'{"model": "tiny"}'
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: pod\r\nAuthorization: Bearer sk-pf\r\n"
        b"Connection: close\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    # The server closes after answering: the session ends and the socket reaches EOF.
    raw = _recv_all(sock)
    head, _, answer = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(answer) == {
        "path": "/v1/chat/completions",
        "auth": "Bearer sk-pf",  # headers reach the pod untouched, unlike the service proxy
        "echo": body.decode(),
    }
    assert forward.error(PORT) is None


def test_nothing_listening_is_reported_on_the_error_channel(
    plane: ControlPlane, core: client.CoreV1Api, ns: str
) -> None:
    _pod(plane, core, ns, "engine-0", "Running")
    forward = portforward(
        core.connect_get_namespaced_pod_portforward, "engine-0", ns, ports=str(PORT)
    )
    assert _recv_all(forward.socket(PORT)) == b""
    error = forward.error(PORT)
    assert error is not None
    assert f"error forwarding port {PORT}" in error and "connection refused" in error


@pytest.mark.parametrize(
    ("pod", "phase", "status", "message"),
    [
        ("missing", None, 404, 'pods \\"missing\\" not found'),
        ("pending", "Pending", 400, "pod is not running. Current status=Pending"),
    ],
)
def test_unknown_or_not_running_pod_is_refused(
    plane: ControlPlane,
    core: client.CoreV1Api,
    ns: str,
    pod: str,
    phase: str | None,
    status: int,
    message: str,
) -> None:
    if phase is not None:
        _pod(plane, core, ns, pod, phase)
    with pytest.raises(ApiException) as refused:
        portforward(core.connect_get_namespaced_pod_portforward, pod, ns, ports=str(PORT))
    # The client folds the handshake answer into the reason text (status 0).
    assert f"Handshake status {status}" in str(refused.value.reason)
    assert message in str(refused.value.reason)


def _service_account_core(
    plane: ControlPlane, core: client.CoreV1Api, ns: str, verbs: list[str], kubeconfig: Path
) -> client.CoreV1Api:
    core.create_namespaced_service_account(ns, {"metadata": {"name": "forwarder"}})
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    rbac.create_namespaced_role(
        ns,
        {
            "metadata": {"name": "forwarder"},
            "rules": [{"apiGroups": [""], "resources": ["pods/portforward"], "verbs": verbs}],
        },
    )
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "forwarder"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "forwarder",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "forwarder", "namespace": ns}],
        },
    )
    plane.api.service_account_kubeconfig(kubeconfig, ns, "forwarder")
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.CoreV1Api(client.ApiClient(configuration))


@pytest.mark.parametrize(
    ("verbs", "missing"), [(["get"], "create"), (["create"], "get"), (["get", "create"], None)]
)
def test_the_upgrade_needs_get_and_create_on_pods_portforward(
    plane: ControlPlane,
    core: client.CoreV1Api,
    ns: str,
    echo_url: str,
    tmp_path: Path,
    verbs: list[str],
    missing: str | None,
) -> None:
    _pod(plane, core, ns, "engine-0", "Running")
    plane.network.bind(ns, "engine-0", PORT, echo_url)
    worker = _service_account_core(plane, core, ns, verbs, tmp_path / "kubeconfig")
    try:
        if missing is not None:
            with pytest.raises(ApiException) as refused:
                portforward(
                    worker.connect_get_namespaced_pod_portforward, "engine-0", ns, ports=str(PORT)
                )
            reason = str(refused.value.reason)
            assert "Handshake status 403" in reason
            assert (
                f'cannot {missing} resource \\"pods/portforward\\" in API group \\"\\" in the '
                f'namespace \\"{ns}\\"'
            ) in reason
            return
        forward = portforward(
            worker.connect_get_namespaced_pod_portforward, "engine-0", ns, ports=str(PORT)
        )
        sock = forward.socket(PORT)
        sock.sendall(b"as the worker")
        assert _recv_exactly(sock, 13) == b"as the worker"
        sock.close()
    finally:
        worker.api_client.close()


def test_discovery_lists_pods_portforward(core: client.CoreV1Api) -> None:
    resources = {r.name: r for r in core.get_api_resources().resources}
    assert sorted(resources["pods/portforward"].verbs) == ["create", "get"]


def test_the_tunnel_ends_when_the_server_stops(
    shared_crds: Path, tmp_path: Path, echo_url: str
) -> None:
    from sandbox.kube.controlplane import build_control_plane

    own = build_control_plane(shared_crds)
    stopped = False
    try:
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(own.api.write_kubeconfig(tmp_path / "kc")),
            client_configuration=configuration,
        )
        with client.ApiClient(configuration) as api:
            core = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": "pf"}})
            _pod(own, core, "pf", "engine-0", "Running")
            own.network.bind("pf", "engine-0", PORT, echo_url)
            forward = portforward(
                core.connect_get_namespaced_pod_portforward, "engine-0", "pf", ports=str(PORT)
            )
            sock = forward.socket(PORT)
            sock.sendall(b"x")
            assert _recv_exactly(sock, 1) == b"x"
            own.stop()
            stopped = True
            assert _recv_all(sock) == b""
    finally:
        if not stopped:
            own.stop()


def test_raw_handshake_without_the_v4_protocol_is_refused(
    plane: ControlPlane, core: client.CoreV1Api, ns: str
) -> None:
    _pod(plane, core, ns, "engine-0", "Running")
    host, port = plane.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(
            "GET",
            f"/api/v1/namespaces/{ns}/pods/engine-0/portforward?ports={PORT}",
            headers={
                "Authorization": "Bearer sandbox-admin-token",
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Protocol": "v5.channel.k8s.io",
            },
        )
        answer = conn.getresponse()
        body = json.loads(answer.read())
    finally:
        conn.close()
    # v5 is for exec/attach; port-forward speaks v4 only.
    assert answer.status == 400
    assert "no supported subprotocol" in body["message"]
