"""A rollout Lease lost while the smoke test waits for its endpoint cuts the call in progress
(llm_rollout/interruptible_http.py): the smoke test ends with `LeaseLostError`, makes no
further call and never makes the cut one again, and the server sees its connection end.

The server below holds one call unanswered (a generation that never ends; a stream after its
first chunk) until its client closes the connection, and says when it holds it; the hold is
then lost from another thread, as the lease keeper does (`locking.ServiceLock.mark_lost`).
The calls' own timeout is far longer than the test's bound, so only the cut can end them in
time; without it, the held call would end at that timeout and the smoke test return a report.
No cluster is involved: the route is the direct URL, in plain HTTP/1.1, over TLS, and in
HTTP/2 over TLS (what the smoke client speaks to the API server on the proxy route).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from kubernetes import client as k8s_client

from llm_rollout.locking import LeaseLostError, ServiceLock
from llm_rollout.smoke import SmokeReport, SmokeTarget, run_smoke, smoke_release
from llm_rollout.spec import SmokeSpec
from sandbox.cluster.pki import make_pki

MODEL = "/models/qwen"
MESSAGES = [{"role": "user", "content": "测试一下"}]
ANSWER = "你好"
USAGE = {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}
# Far beyond the tests' own bound (pytest timeout below): only the cut ends a held call in time.
CALL_TIMEOUT_S = 90.0
# How long the test waits for the server's side of a step before failing instead of hanging.
STEP_WAIT_S = 30.0
OTHER_HOLDER = "run b"
pytestmark = pytest.mark.timeout(60)


@dataclass
class Server:
    """`hold`: the call to hold unanswered ("models", "chat", "stream" after its first chunk,
    "metrics", or "" for none); `requests`: every request received, in order."""

    url: str = ""
    hold: str = ""
    requests: list[str] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _hold(self) -> None:
        """Answer nothing more until the client closes the connection, then note it."""
        self.server_state.held.set()
        with contextlib.suppress(OSError):
            while self.connection.recv(65536):
                pass
        self.server_state.closed.set()
        self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self.server_state.requests.append("GET /metrics")
            if self.server_state.hold == "metrics":
                self._hold()
                return
            self._send(b"vllm:num_requests_running 0\n", "text/plain; version=0.0.4")
            return
        self.server_state.requests.append("GET /v1/models")
        if self.server_state.hold == "models":
            self._hold()
            return
        self._send(json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        call = "stream" if body.get("stream") else "chat"
        self.server_state.requests.append(f"POST {call}")
        held = self.server_state.hold == call
        if call == "chat":
            if held:
                self._hold()
                return
            message = {"role": "assistant", "content": ANSWER}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            answer = {"object": "chat.completion", "choices": [choice], "usage": USAGE}
            self._send(json.dumps(answer).encode())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk({"choices": [{"index": 0, "delta": {"content": ANSWER}}]})
        if held:
            self._hold()
            return
        self._chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self._chunk({"choices": [], "usage": USAGE})
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _chunk(self, event: dict[str, Any]) -> None:
        self._write_chunk(f"data: {json.dumps(event)}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


@contextlib.contextmanager
def _serving(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    state = Server()
    handler = type("Handler", (_Handler,), {"server_state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    state.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    # A short poll interval: shutdown() waits for the serving loop's next look.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    with _serving() as state:
        yield state


def _lock() -> ServiceLock:
    return ServiceLock("llm", "svc", "run a", "a", False, datetime.now(UTC))


class _Keeper(threading.Thread):
    """The lease keeper finding the hold lost once the server holds a call."""

    def __init__(self, lock: ServiceLock, server: Server) -> None:
        super().__init__(name="keeper", daemon=True)
        self.lock, self.server = lock, server

    def run(self) -> None:
        if self.server.held.wait(STEP_WAIT_S):
            self.lock.mark_lost(OTHER_HOLDER, "another run holds it now")


def _smoke(client: httpx.Client, server: Server, lock: ServiceLock) -> SmokeReport:
    return run_smoke(
        client,
        server.url,
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
        api_key=None,
        timeout_s=CALL_TIMEOUT_S,
        interrupt=lock,
    )


def _cut(lost: pytest.ExceptionInfo[LeaseLostError], server: Server, lock: ServiceLock) -> None:
    """The smoke test ended with the lease's error, raised from the cut call's transport
    error, and the server saw the connection of the held call end."""
    assert f"it is held by {OTHER_HOLDER!r} now" in str(lost.value)
    assert isinstance(lost.value.__cause__, httpx.TransportError)
    assert server.closed.wait(STEP_WAIT_S), "the server never saw the held call's connection end"
    assert lock._wakers == []  # the smoke test unsubscribed on its way out


@pytest.mark.parametrize("held", ["models", "chat", "stream"])
def test_a_lost_lease_cuts_the_call_in_progress_and_makes_no_further_call(
    server: Server, held: str
) -> None:
    server.hold = held
    lock = _lock()
    keeper = _Keeper(lock, server)
    keeper.start()
    with httpx.Client() as client, pytest.raises(LeaseLostError) as lost:
        _smoke(client, server, lock)
    keeper.join()
    _cut(lost, server, lock)
    # The cut call was not made again (a broken connection otherwise is), nor taken for an
    # unreachable endpoint (GET /v1/models), and no call followed it.
    calls = {"models": "GET /v1/models", "chat": "POST chat", "stream": "POST stream"}
    made = list(calls.values())
    assert server.requests == made[: made.index(calls[held]) + 1]


def test_a_lease_lost_before_the_smoke_test_makes_no_call(server: Server) -> None:
    lock = _lock()
    lock.mark_lost(OTHER_HOLDER, "another run holds it now")
    with httpx.Client() as client, pytest.raises(LeaseLostError, match="held by 'run b'"):
        _smoke(client, server, lock)
    assert server.requests == []
    assert lock._wakers == []


def test_a_smoke_test_under_a_lease_kept_is_unchanged(server: Server) -> None:
    lock = _lock()
    with httpx.Client() as client:
        report = _smoke(client, server, lock)
    assert [(c.call, c.status, c.attempts) for c in report.calls] == [
        ("models", 200, 1),
        ("chat", 200, 1),
        ("stream", 200, 1),
    ]
    assert report.answer == ANSWER
    assert lock._wakers == []


def test_a_lost_lease_cuts_the_metrics_read_of_a_release_smoke_test(server: Server) -> None:
    # smoke_release passes the interrupt to the calls and to the /metrics read after them.
    server.hold = "metrics"
    lock = _lock()
    keeper = _Keeper(lock, server)
    keeper.start()
    target = SmokeTarget(
        kind="Deployment",
        namespace="llm",
        name="svc",
        service="svc",
        port=8000,
        model=MODEL,
        smoke=SmokeSpec.model_validate({"base_url": server.url, "max_tokens": 8}),
        timeout_s=CALL_TIMEOUT_S,
    )
    routes: list[str] = []
    # The direct URL route never uses the Kubernetes client; an unconfigured one shows that.
    with pytest.raises(LeaseLostError) as lost:
        smoke_release(k8s_client.ApiClient(), target, on_route=routes.append, interrupt=lock)
    keeper.join()
    _cut(lost, server, lock)
    assert routes == ["direct URL"]
    assert server.requests == ["GET /v1/models", "POST chat", "POST stream", "GET /metrics"]


def test_a_lost_lease_cuts_a_call_over_tls(tmp_path: Path) -> None:
    # Over TLS the socket is an ssl.SSLSocket: the cut shuts its connection under the SSL
    # layer the calling thread is reading through.
    pki = make_pki(tmp_path, advertise_ip="10.244.255.254", service_ip="10.96.0.1")
    pair = pki.serving("smoke-server", "smoke-server", server_ips=("127.0.0.1",))
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(str(pair.cert), str(pair.key))
    trusting = ssl.create_default_context(cafile=str(pki.ca.cert))
    with _serving(serving) as server, httpx.Client(verify=trusting) as client:
        server.hold = "chat"
        lock = _lock()
        keeper = _Keeper(lock, server)
        keeper.start()
        with pytest.raises(LeaseLostError) as lost:
            _smoke(client, server, lock)
        keeper.join()
        _cut(lost, server, lock)
        assert server.requests == ["GET /v1/models", "POST chat"]


def _hold_h2(listener: socket.socket, tls: ssl.SSLContext, server: Server) -> None:
    """An HTTP/2 server (the API server's protocol on the proxy route, llm_rollout/kube/
    proxy.py `httpx_client_for`) that answers no request: it notes the first one complete,
    then reads until the client closes the connection."""
    raw, _ = listener.accept()
    with tls.wrap_socket(raw, server_side=True) as conn:
        assert conn.selected_alpn_protocol() == "h2"
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2conn.initiate_connection()
        conn.sendall(h2conn.data_to_send())
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                for event in h2conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = dict(event.headers)
                        server.requests.append(
                            f"{headers[b':method'].decode()} h2 {headers[b':path'].decode()}"
                        )
                    if isinstance(event, h2.events.StreamEnded):
                        server.held.set()
                conn.sendall(h2conn.data_to_send())
    server.closed.set()


def test_a_lost_lease_cuts_a_call_over_http2(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, advertise_ip="10.244.255.254", service_ip="10.96.0.1")
    pair = pki.serving("smoke-h2", "smoke-h2", server_ips=("127.0.0.1",))
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(str(pair.cert), str(pair.key))
    serving.set_alpn_protocols(["h2"])
    trusting = ssl.create_default_context(cafile=str(pki.ca.cert))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = Server(url=f"https://127.0.0.1:{listener.getsockname()[1]}")
        h2_server = threading.Thread(target=_hold_h2, args=(listener, serving, server))
        h2_server.start()
        lock = _lock()
        keeper = _Keeper(lock, server)
        keeper.start()
        with (
            httpx.Client(verify=trusting, http2=True) as client,
            pytest.raises(LeaseLostError) as lost,
        ):
            _smoke(client, server, lock)
        keeper.join()
        _cut(lost, server, lock)
        h2_server.join(STEP_WAIT_S)
        assert server.requests == ["GET h2 /v1/models"]
