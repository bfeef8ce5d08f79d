"""The smoke test's direct-URL route and its latency gates, against a server of the test's own.

No cluster is involved on this route: the smoke client talks to the URL it is given. The
server below answers the three calls the smoke test makes (``GET /v1/models``, a chat
completion, a streamed one) the way vLLM's OpenAI server shapes them, requires an API key as
``vllm serve --api-key`` does (401 on ``/v1`` without the right ``Authorization: Bearer``;
vllm/entrypoints/openai/api_server.py ``AuthenticationMiddleware``), and can wait before its
first token, which makes it slow honestly: the measured TTFT cannot be below that wait.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError
from llm_rollout.smoke import SmokeReport, run_smoke, smoke_endpoint, validate_smoke
from llm_rollout.spec import SmokeExpectations

MODEL = "/models/qwen"
KEY = "sk-direct-route-key"
MESSAGES = [{"role": "user", "content": "测试一下"}]
ANSWER = ["你好", "测试", "通过", "。"]


@dataclass
class ServerState:
    first_token_delay_s: float = 0.0
    auth_seen: Counter[str] = field(default_factory=Counter)
    # POSTs ("chat" or "stream") to read and then drop with the connection, unanswered, as a
    # server closing a kept-alive connection under its client does.
    drop_posts: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    # Streams to break after their first chunk (the connection closed mid-answer).
    break_streams: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState

    def log_message(self, format: str, *args: Any) -> None:
        return

    def handle(self) -> None:
        # A client that gave up waiting (the timeout test) leaves this server writing to a
        # closed connection: the end of that exchange, not an error of the server.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle()

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization")
        seen = "missing" if header is None else ("valid" if header == f"Bearer {KEY}" else "wrong")
        self.state.auth_seen[seen] += 1
        if seen != "valid":
            self._send(401, {"error": "Unauthorized"})
        return seen == "valid"

    def do_GET(self) -> None:
        if self._authorised():
            self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        call = "stream" if body.get("stream") else "chat"
        if self.state.drop_posts[call] > 0:
            self.state.drop_posts[call] -= 1
            self.state.dropped[call] += 1
            self.close_connection = True
            return
        if not self._authorised():
            return
        time.sleep(self.state.first_token_delay_s)  # the server's own slowness, not a wait
        usage = {"prompt_tokens": 4, "completion_tokens": len(ANSWER), "total_tokens": 9}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(ANSWER)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            self._send(200, {"object": "chat.completion", "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunks = [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in ANSWER] + [
            {"choices": [], "usage": usage}
        ]
        for index, chunk in enumerate(chunks):
            if index == 1 and self.state.break_streams > 0:
                self.state.break_streams -= 1
                self.close_connection = True
                return
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _direct_smoke(url: str, api_key: str | None, *, stream: bool = True) -> SmokeReport:
    # The route never uses the Kubernetes client; an unconfigured one shows that.
    with smoke_endpoint(
        k8s_client.ApiClient(),
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
            messages=MESSAGES,
            max_tokens=8,
            api_key=api_key,
            timeout_s=30,
            stream=stream,
        )


def test_direct_url_route_carries_the_api_key_to_the_server(
    server: tuple[str, ServerState],
) -> None:
    url, state = server
    report = _direct_smoke(url, KEY)
    assert validate_smoke(report, SmokeExpectations()).passed
    # GET /v1/models, the chat call and the streamed call, each with the key.
    assert state.auth_seen == {"valid": 3}

    refused = _direct_smoke(url, None)
    verdict = validate_smoke(refused, SmokeExpectations())
    assert not verdict.passed
    assert {c.status for c in refused.calls} == {401}
    assert state.auth_seen["missing"] == 3


def test_direct_url_route_needs_a_url() -> None:
    with (
        pytest.raises(PermanentError, match=r"base-url needs smoke\.base_url"),
        smoke_endpoint(
            k8s_client.ApiClient(),
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
    server: tuple[str, ServerState],
) -> None:
    url, state = server
    # The server waits before its first token: the measured TTFT and latency cannot be below
    # it, whatever the machine's load, so a gate under it must fail.
    state.first_token_delay_s = 0.3
    report = _direct_smoke(url, KEY)
    stream = report.call("stream")
    assert stream is not None and stream.ttft_ms is not None and stream.latency_ms is not None
    assert stream.ttft_ms >= state.first_token_delay_s * 1000

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


def test_ttft_gate_fails_when_nothing_was_streamed(server: tuple[str, ServerState]) -> None:
    url, _ = server
    report = _direct_smoke(url, KEY, stream=False)
    assert report.call("stream") is None
    verdict = validate_smoke(report, SmokeExpectations(max_ttft_ms=600_000))
    assert not verdict.passed
    assert any(f.startswith("time to first token measured") for f in verdict.failures)


def test_a_call_whose_connection_was_dropped_unanswered_is_sent_once_more(
    server: tuple[str, ServerState],
) -> None:
    url, state = server
    state.drop_posts.update({"chat": 1, "stream": 1})
    report = _direct_smoke(url, KEY)
    assert validate_smoke(report, SmokeExpectations()).passed
    assert state.dropped == {"chat": 1, "stream": 1}
    # Each call answered by its second attempt: three answered requests in all.
    assert state.auth_seen == {"valid": 3}
    chat, stream = report.call("chat"), report.call("stream")
    assert chat is not None and chat.attempts == 2
    assert stream is not None and stream.attempts == 2
    assert report.call("models") is not None and report.calls[0].attempts == 1


def test_a_second_drop_is_reported_as_no_answer(server: tuple[str, ServerState]) -> None:
    url, state = server
    state.drop_posts.update({"chat": 2, "stream": 2})
    report = _direct_smoke(url, KEY)
    chat, stream = report.call("chat"), report.call("stream")
    assert chat is not None and chat.error == "no answer (RemoteProtocolError)"
    assert stream is not None and stream.error == "stream broken (RemoteProtocolError)"
    assert chat.attempts == stream.attempts == 2
    assert state.dropped == {"chat": 2, "stream": 2}
    assert not validate_smoke(report, SmokeExpectations()).passed


def test_a_stream_broken_mid_answer_is_made_once_more_and_counted(
    server: tuple[str, ServerState],
) -> None:
    url, state = server
    state.break_streams = 1
    report = _direct_smoke(url, KEY)
    assert validate_smoke(report, SmokeExpectations()).passed
    stream = report.call("stream")
    assert stream is not None and stream.attempts == 2 and stream.error is None
    assert stream.content == "".join(ANSWER)
    assert state.break_streams == 0

    state.break_streams = 2
    broken = _direct_smoke(url, KEY).call("stream")
    assert broken is not None and broken.attempts == 2
    assert broken.error == "stream broken (RemoteProtocolError)"


def test_a_call_that_timed_out_is_not_made_again(server: tuple[str, ServerState]) -> None:
    """Only a broken connection is made again: a server slower than the call's timeout is
    the endpoint's own state, which the gate reports after one attempt."""
    url, state = server
    # The server cannot send a byte before this wait; the calls give up far earlier.
    state.first_token_delay_s = 1.0
    with httpx.Client() as client:
        report = run_smoke(
            client, url, model=MODEL, messages=MESSAGES, max_tokens=8, api_key=KEY, timeout_s=0.2
        )
    chat, stream = report.call("chat"), report.call("stream")
    assert chat is not None and chat.error == "no answer (ReadTimeout)" and chat.attempts == 1
    assert stream is not None and stream.error == "stream broken (ReadTimeout)"
    assert stream.attempts == 1
    # GET /v1/models, then one POST per completion call.
    assert state.auth_seen == {"valid": 3}
