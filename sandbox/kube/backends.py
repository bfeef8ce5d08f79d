"""What answers on a pod's container port: by default a scriptable OpenAI-compatible server.

The kubelet asks a ``BackendFactory`` for one ``Backend`` per (pod, container, port) when the
container starts, binds its URL in the PodNetwork, probes it, and stops it when the container
dies. The default ``ScriptedBackendFactory`` runs one small HTTP server per port that speaks the
vLLM / SGLang HTTP surface the project touches (health, models, chat and text completions with
SSE streaming, Prometheus metrics, SGLang's /generate and /health_generate) with deterministic
answers, configurable latency and failure modes. ``RoutingBackendFactory`` picks a factory per
pod (by label selector or predicate) so one serving workload can be mapped to a real server.

Model loading is simulated the way a real server behaves: the port is bound (so it can be
registered) but not listening until the load delay has passed, so probes see
"connection refused" while the weights "load".
"""

from __future__ import annotations

import hmac
import json
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

Obj = dict[str, Any]

DEFAULT_ANSWER = "Hello! I am a sandbox stand-in for the served model."


class Backend(Protocol):
    """A running stand-in for one container port."""

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


class BackendFactory(Protocol):
    def start(self, pod: Obj, container: Obj, port: int) -> Backend: ...


@dataclass(frozen=True)
class BackendBehavior:
    """How a scripted backend answers. Read on every request, so changes apply to running pods."""

    answer: str = DEFAULT_ANSWER
    latency_s: float = 0.0  # before the response headers
    first_token_delay_s: float = 0.0  # streamed: before the first content chunk
    token_delay_s: float = 0.0  # streamed: between content chunks
    load_delay_s: float | None = None  # None: the factory's default model-load delay
    # None | "http500" (every request 500s) | "wrong_answer" | "unhealthy" (/health 503)
    failure: str | None = None
    wrong_answer: str = "I cannot help with that."
    max_model_len: int = 32768
    # Like `vllm serve --api-key`: every /v1 route answers 401 unless the request carries
    # `Authorization: Bearer <api_key>`; /health, /metrics and /version stay open.
    api_key: str | None = None


def parse_served_model(container: Mapping[str, Any]) -> tuple[str, str]:
    """(served model name, model path) from a container's command line, as vLLM/SGLang read it."""
    env = {
        e.get("name"): str(e.get("value", "")) for e in container.get("env") or [] if "value" in e
    }
    tokens: list[str] = []
    for part in list(container.get("command") or []) + list(container.get("args") or []):
        text = str(part)
        for name, value in env.items():
            text = text.replace(f"$({name})", value).replace(f"${{{name}}}", value)
        try:
            tokens.extend(shlex.split(text) if any(c.isspace() for c in text) else [text])
        except ValueError:
            tokens.extend(text.split())
    flags: dict[str, str] = {}
    positional_model = ""
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            name, eq, value = tok.partition("=")
            if not eq and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value = tokens[i + 1]
            flags.setdefault(name, value)
        elif tok == "serve" and i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
            positional_model = tokens[i + 1]
    path = flags.get("--model") or flags.get("--model-path") or positional_model or "sandbox-model"
    served = flags.get("--served-model-name") or path
    return served, path


def _command_tokens(container: Mapping[str, Any]) -> list[str]:
    parts = list(container.get("command") or []) + list(container.get("args") or [])
    return [str(part) for part in parts]


def parse_router_workers(container: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """(namespace, pod) of each worker an `sglang_router.launch_router` or SGLang `mini_lb`
    container names, in order (prefill first, as given), or None when the container is not an
    SGLang router.

    Worker URLs are in-cluster pod DNS names (`<pod>.<headless svc>.<namespace>.svc:<port>`);
    sglang_router takes one URL per `--prefill`/`--decode`, mini_lb a list after each.
    """
    tokens = _command_tokens(container)
    if not any("sglang_router" in tok or tok.endswith(".mini_lb") for tok in tokens):
        return None
    workers: list[tuple[str, str]] = []
    for tok in tokens:
        if not tok.startswith(("http://", "https://")):
            continue
        host = urlsplit(tok).hostname or ""
        labels = host.split(".")
        if len(labels) >= 3 and labels[-1] == "svc":
            workers.append((labels[2], labels[0]))
    return workers


def _words(text: str) -> list[str]:
    """Answer split into streamable pieces that re-join to the exact text."""
    pieces: list[str] = []
    for i, word in enumerate(text.split(" ")):
        pieces.append(word if i == 0 else " " + word)
    return [p for p in pieces if p]


def _prompt_tokens(body: Mapping[str, Any]) -> int:
    text = ""
    for msg in body.get("messages") or []:
        content = msg.get("content") if isinstance(msg, dict) else ""
        if isinstance(content, list):
            content = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
        text += f" {content}"
    prompt = body.get("prompt") or body.get("text") or ""
    text += " " + (" ".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt))
    # Chat templates add a handful of special tokens per message.
    return len(text.split()) + 4 * len(body.get("messages") or [])


@dataclass
class _Metrics:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests_ok: int = 0
    requests_failed: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    running: int = 0
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)


_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    backend: ScriptedBackend


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "uvicorn"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Without NODELAY small responses stall ~40 ms on delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- plumbing ---------------------------------------------------------------------------
    def _send_json(self, code: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_text(self, code: int, text: str, ctype: str = "text/plain; charset=utf-8") -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, message: str, type_: str) -> None:
        self._send_json(
            code,
            {"object": "error", "message": message, "type": type_, "param": None, "code": code},
        )

    def _refused(self, path: str, beh: BackendBehavior) -> bool:
        """Answer 401 as vLLM's authentication middleware does, when the key is missing/wrong."""
        if beh.api_key is None or not path.startswith("/v1"):
            return False
        if self.server.backend.count_auth(self.headers.get("Authorization"), beh.api_key):
            return False
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._send_json(401, {"error": "Unauthorized"})
        return True

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"{}")

    # -- routes -------------------------------------------------------------------------------
    def do_GET(self) -> None:
        b = self.server.backend
        beh = b.behavior()
        path = self.path.split("?", 1)[0]
        b.count(path)
        if self._refused(path, beh):
            return
        if path in ("/health", "/healthz", "/ping"):
            if beh.failure == "unhealthy":
                self._send_text(503, "")
            else:
                self._send_text(200, "")
        elif path == "/health_generate":
            if beh.failure in ("unhealthy", "http500"):
                self._send_text(503, "")
            else:
                b.wait(beh.latency_s)
                self._send_text(200, "")
        elif path == "/v1/models":
            if not b.has_workers():
                self._error(503, "No available workers", "ServiceUnavailable")
            else:
                self._send_json(200, b.models_payload(beh))
        elif path == "/metrics":
            self._send_text(200, b.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/version":
            self._send_json(200, {"version": b.engine_version})
        elif path == "/get_model_info":
            self._send_json(
                200,
                {"model_path": b.model_path, "tokenizer_path": b.model_path, "is_generation": True},
            )
        else:
            self._send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        b = self.server.backend
        beh = b.behavior()
        path = self.path.split("?", 1)[0]
        b.count(path)
        if self._refused(path, beh):
            return
        try:
            body = self._read_json()
        except json.JSONDecodeError as exc:
            self._error(400, f"JSON decode error: {exc}", "BadRequestError")
            return
        if not isinstance(body, dict):
            self._error(400, "request body must be a JSON object", "BadRequestError")
            return
        if path not in ("/v1/chat/completions", "/v1/completions", "/generate"):
            self._send_json(404, {"detail": "Not Found"})
            return
        b.wait(beh.latency_s)
        if beh.failure == "http500":
            b.record_failure()
            self._error(500, "Internal Server Error", "InternalServerError")
            return
        if not b.has_workers():
            b.record_failure()
            self._error(503, "No available workers", "ServiceUnavailable")
            return
        if path != "/generate" and body.get("model") not in (None, b.served_name, b.model_path):
            b.record_failure()
            self._error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
            return
        answer = beh.wrong_answer if beh.failure == "wrong_answer" else beh.answer
        pieces = _words(answer)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if path == "/generate":
            max_tokens = (body.get("sampling_params") or {}).get("max_new_tokens")
        finish = "stop"
        if isinstance(max_tokens, int) and 0 < max_tokens < len(pieces):
            pieces = pieces[:max_tokens]
            finish = "length"
        if path == "/generate":
            self._sglang_generate(body, pieces, finish, beh)
        elif body.get("stream"):
            self._stream(path, body, pieces, finish, beh)
        else:
            self._complete(path, body, pieces, finish, beh)

    def _usage(self, body: Mapping[str, Any], pieces: list[str]) -> dict[str, int]:
        prompt = _prompt_tokens(body)
        return {
            "prompt_tokens": prompt,
            "total_tokens": prompt + len(pieces),
            "completion_tokens": len(pieces),
        }

    def _complete(
        self,
        path: str,
        body: Mapping[str, Any],
        pieces: list[str],
        finish: str,
        beh: BackendBehavior,
    ) -> None:
        b = self.server.backend
        started = time.monotonic()
        b.wait(beh.first_token_delay_s)
        text = "".join(pieces)
        usage = self._usage(body, pieces)
        created = int(time.time())
        if path == "/v1/chat/completions":
            payload: Obj = {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": created,
                "model": b.served_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "reasoning_content": None,
                            "tool_calls": [],
                        },
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                    }
                ],
                "usage": {**usage, "prompt_tokens_details": None},
                "prompt_logprobs": None,
            }
        else:
            payload = {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": created,
                "model": b.served_name,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                    }
                ],
                "usage": usage,
            }
        ttft = time.monotonic() - started
        b.record_success(usage, ttft, ttft)
        self._send_json(200, payload)

    def _sglang_generate(
        self, body: Mapping[str, Any], pieces: list[str], finish: str, beh: BackendBehavior
    ) -> None:
        b = self.server.backend
        started = time.monotonic()
        b.wait(beh.first_token_delay_s)
        usage = self._usage(body, pieces)
        ttft = time.monotonic() - started
        b.record_success(usage, ttft, ttft)
        self._send_json(
            200,
            {
                "text": "".join(pieces),
                "meta_info": {
                    "id": uuid.uuid4().hex,
                    "prompt_tokens": usage["prompt_tokens"],
                    "completion_tokens": usage["completion_tokens"],
                    "finish_reason": {"type": finish},
                    "e2e_latency": ttft,
                },
            },
        )

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._chunk(f"data: {text}\n\n".encode())

    def _stream(
        self,
        path: str,
        body: Mapping[str, Any],
        pieces: list[str],
        finish: str,
        beh: BackendBehavior,
    ) -> None:
        b = self.server.backend
        chat = path == "/v1/chat/completions"
        rid = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        usage = self._usage(body, pieces)

        def frame(choice: Obj | None, with_usage: bool = False) -> Obj:
            out: Obj = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": b.served_name,
                "choices": [choice] if choice is not None else [],
            }
            if with_usage:
                out["usage"] = usage
            return out

        def choice(delta_text: str | None, finish_reason: str | None, role: bool = False) -> Obj:
            if chat:
                delta: Obj = {}
                if role:
                    delta["role"] = "assistant"
                if delta_text is not None:
                    delta["content"] = delta_text
                return {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                    **({"stop_reason": None} if finish_reason else {}),
                }
            return {
                "index": 0,
                "text": delta_text or "",
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }

        started = time.monotonic()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            if chat:
                self._event(frame(choice("", None, role=True)))
            ttft = 0.0
            for i, piece in enumerate(pieces):
                b.wait(beh.first_token_delay_s if i == 0 else beh.token_delay_s)
                if i == 0:
                    ttft = time.monotonic() - started
                self._event(frame(choice(piece, None)))
            self._event(frame(choice("" if not chat else None, finish)))
            if include_usage:
                self._event(frame(None, with_usage=True))
            self._event("[DONE]")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            b.record_failure()
            return
        b.record_success(usage, ttft, time.monotonic() - started)


class ScriptedBackend:
    """One scripted server for one container port."""

    engine_version = "0.10.1"

    def __init__(
        self,
        pod: Obj,
        container: Obj,
        port: int,
        behavior: Callable[[], BackendBehavior],
        load_delay_s: float,
        find_workers: Callable[[list[tuple[str, str]]], list[ScriptedBackend]] | None = None,
    ) -> None:
        self.namespace = pod["metadata"].get("namespace", "default")
        self.pod_name = pod["metadata"]["name"]
        self.container_name = container.get("name", "")
        self.port = port
        self._served_name, self._model_path = parse_served_model(container)
        # An SGLang router has no model of its own: like the real one it reports (and accepts)
        # what its workers serve, so it answers only while one of them is up.
        self.router_workers = parse_router_workers(container)
        self._find_workers = find_workers
        self.behavior = behavior
        self.requests: dict[str, int] = {}
        # Requests to a key-protected route: how many carried the right key, a wrong one, none.
        self.auth_seen = {"valid": 0, "wrong": 0, "missing": 0}
        self._metrics = _Metrics()
        self._stopped = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        self._server.backend = self
        self._server.server_bind()
        host, bound_port = self._server.server_address[:2]
        self._url = f"http://{host}:{bound_port}"
        self._load_delay = load_delay_s
        self._listening = threading.Event()
        if load_delay_s <= 0:
            # Nothing to load: listen before the kubelet's first probe can knock.
            self._server.server_activate()
            self._listening.set()
        self._thread = threading.Thread(
            target=self._serve, name=f"backend-{self.pod_name}-{port}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return self._url

    def _first_worker(self) -> ScriptedBackend | None:
        if self.router_workers is None or self._find_workers is None:
            return None
        workers = self._find_workers(self.router_workers)
        return workers[0] if workers else None

    @property
    def is_router(self) -> bool:
        return self.router_workers is not None

    @property
    def served_name(self) -> str:
        worker = self._first_worker()
        return worker.served_name if worker is not None else self._served_name

    @property
    def model_path(self) -> str:
        worker = self._first_worker()
        return worker.model_path if worker is not None else self._model_path

    def has_workers(self) -> bool:
        return not self.is_router or self._first_worker() is not None

    @property
    def loaded(self) -> bool:
        return self._listening.is_set()

    def _serve(self) -> None:
        # The load delay is the simulated weight-loading time; stop() cuts it short.
        if not self._listening.is_set():
            if self._stopped.wait(self._load_delay):
                self._server.server_close()
                return
            self._server.server_activate()
            self._listening.set()
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._stopped.set()
        if self._listening.is_set():
            self._server.shutdown()
            self._server.server_close()
        self._thread.join(timeout=5)

    # -- helpers used by the handler -------------------------------------------------------------
    def wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopped.wait(seconds)

    def count(self, path: str) -> None:
        with self._metrics.lock:
            self.requests[path] = self.requests.get(path, 0) + 1

    def count_auth(self, header: str | None, api_key: str) -> bool:
        """Count one request to a key-protected route; True when it carried the key."""
        if header is None:
            outcome = "missing"
        elif hmac.compare_digest(header.encode(), f"Bearer {api_key}".encode()):
            outcome = "valid"
        else:
            outcome = "wrong"
        with self._metrics.lock:
            self.auth_seen[outcome] += 1
        return outcome == "valid"

    def record_success(self, usage: Mapping[str, int], ttft: float, e2e: float) -> None:
        with self._metrics.lock:
            m = self._metrics
            m.requests_ok += 1
            m.prompt_tokens += usage["prompt_tokens"]
            m.generation_tokens += usage["completion_tokens"]
            m.ttft.append(ttft)
            m.e2e.append(e2e)

    def record_failure(self) -> None:
        with self._metrics.lock:
            self._metrics.requests_failed += 1

    def models_payload(self, beh: BackendBehavior) -> Obj:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.served_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": self.model_path,
                    "parent": None,
                    "max_model_len": beh.max_model_len,
                    "permission": [],
                }
            ],
        }

    def metrics_text(self) -> str:
        with self._metrics.lock:
            m = self._metrics
            lbl = f'engine="0",model_name="{self.served_name}"'
            lines = [
                "# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{{{lbl}}} {float(m.running)}",
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
                "# TYPE vllm:num_requests_waiting gauge",
                f"vllm:num_requests_waiting{{{lbl}}} 0.0",
                "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
                "# TYPE vllm:kv_cache_usage_perc gauge",
                f"vllm:kv_cache_usage_perc{{{lbl}}} 0.0",
                "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
                "# TYPE vllm:prompt_tokens_total counter",
                f"vllm:prompt_tokens_total{{{lbl}}} {float(m.prompt_tokens)}",
                "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
                "# TYPE vllm:generation_tokens_total counter",
                f"vllm:generation_tokens_total{{{lbl}}} {float(m.generation_tokens)}",
                "# HELP vllm:request_success_total Count of successfully processed requests.",
                "# TYPE vllm:request_success_total counter",
                f'vllm:request_success_total{{{lbl},finished_reason="stop"}} '
                f"{float(m.requests_ok)}",
            ]
            for name, values, help_ in (
                (
                    "vllm:time_to_first_token_seconds",
                    m.ttft,
                    "Histogram of time to first token in seconds.",
                ),
                (
                    "vllm:e2e_request_latency_seconds",
                    m.e2e,
                    "Histogram of e2e request latency in seconds.",
                ),
            ):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
                for bound in _BUCKETS:
                    n = sum(1 for v in values if v <= bound)
                    lines.append(f'{name}_bucket{{{lbl},le="{bound}"}} {float(n)}')
                lines.append(f'{name}_bucket{{{lbl},le="+Inf"}} {float(len(values))}')
                lines.append(f"{name}_count{{{lbl}}} {float(len(values))}")
                lines.append(f"{name}_sum{{{lbl}}} {sum(values)}")
            return "\n".join(lines) + "\n"


def _selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


PodPredicate = Callable[[Obj], bool]


class ScriptedBackendFactory:
    """The default factory: one ScriptedBackend per port, behaviour scriptable per label selector.

    ``set_behavior({"app": "qwen"}, BackendBehavior(failure="wrong_answer"))`` changes what the
    matching pods answer from their next request on; later rules win over earlier ones.
    """

    def __init__(self, load_delay_s: float = 0.0, default: BackendBehavior | None = None) -> None:
        self.load_delay_s = load_delay_s
        self.default = default or BackendBehavior()
        self._rules: list[tuple[PodPredicate, BackendBehavior]] = []
        self._lock = threading.Lock()
        self.backends: list[ScriptedBackend] = []

    def set_behavior(
        self, selector: Mapping[str, str] | PodPredicate, behavior: BackendBehavior
    ) -> None:
        pred = selector if callable(selector) else _label_predicate(dict(selector))
        with self._lock:
            self._rules.append((pred, behavior))

    def clear_behaviors(self) -> None:
        with self._lock:
            self._rules.clear()

    def behavior_for(self, pod: Obj) -> BackendBehavior:
        with self._lock:
            rules = list(self._rules)
        chosen = self.default
        for pred, beh in rules:
            if pred(pod):
                chosen = beh
        return chosen

    def start(self, pod: Obj, container: Obj, port: int) -> ScriptedBackend:
        snapshot = {"metadata": dict(pod.get("metadata") or {})}
        initial = self.behavior_for(snapshot)
        load = initial.load_delay_s if initial.load_delay_s is not None else self.load_delay_s
        backend = ScriptedBackend(
            pod, container, port, lambda: self.behavior_for(snapshot), load, self._live_workers
        )
        with self._lock:
            self.backends = [b for b in self.backends if not b._stopped.is_set()]
            self.backends.append(backend)
        return backend

    def _live_workers(self, pods: list[tuple[str, str]]) -> list[ScriptedBackend]:
        """Running, loaded backends of the named pods (in that order): a router's workers."""
        found: list[ScriptedBackend] = []
        for namespace, pod in pods:
            found += [b for b in self.find(namespace, pod) if b.loaded and not b.is_router]
        return found

    def find(self, namespace: str, pod: str) -> list[ScriptedBackend]:
        with self._lock:
            return [
                b
                for b in self.backends
                if b.namespace == namespace and b.pod_name == pod and not b._stopped.is_set()
            ]


def _label_predicate(selector: dict[str, str]) -> PodPredicate:
    return lambda pod: _selector_matches(selector, (pod.get("metadata") or {}).get("labels") or {})


class RoutingBackendFactory:
    """Chooses a factory per pod: the first matching route wins, else the fallback."""

    def __init__(self, fallback: BackendFactory) -> None:
        self.fallback = fallback
        self._routes: list[tuple[PodPredicate, BackendFactory]] = []
        self._lock = threading.Lock()

    def route(self, selector: Mapping[str, str] | PodPredicate, factory: BackendFactory) -> None:
        pred = selector if callable(selector) else _label_predicate(dict(selector))
        with self._lock:
            self._routes.append((pred, factory))

    def clear_routes(self) -> None:
        with self._lock:
            self._routes.clear()

    def start(self, pod: Obj, container: Obj, port: int) -> Backend:
        with self._lock:
            routes = list(self._routes)
        for pred, factory in routes:
            if pred(pod):
                return factory.start(pod, container, port)
        return self.fallback.start(pod, container, port)


@dataclass
class ExternalBackend:
    """A port served by a process someone else runs (e.g. one real vLLM); stop() leaves it up."""

    url: str

    def stop(self) -> None:
        return


class FixedUrlFactory:
    """Maps every pod it is routed to onto one already-running server URL."""

    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")

    def start(self, pod: Obj, container: Obj, port: int) -> ExternalBackend:
        return ExternalBackend(self._url)
