"""The SGLang stand-in's flags, HTTP API and rendezvous (see the package docstring: a stand-in)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from sandbox.vllm.tiny_model import INFO_FILE, split_answer

SGLANG_VERSION = "0.4.10.post2"
# SGLang's /health (= /health_generate) submits a one-token generation and checks for output
# once per second, so it never answers in under a second (python/sglang/srt/entrypoints/
# http_server.py, health_generate: `await asyncio.sleep(1)` before the first check).
HEALTH_MIN_S = 1.0
# How long a decode server waits for its prefill to take the same bootstrap room.
PD_TRANSFER_TIMEOUT_S = 30.0
PD_POLL_S = 0.05
# How long ranks >= 1 keep trying to reach --dist-init-addr (torch.distributed's default
# rendezvous timeout is far longer; a bounded wait keeps a failed group visible).
RENDEZVOUS_TIMEOUT_S = 600.0
FALLBACK_ANSWER = "stand-in answer"
EXIT_BAD_FLAGS = 2
# A test knob, not SGLang: a chat completion with a message of exactly this content is held
# unanswered (a generation that never ends) until its client closes the connection. Both
# moments are logged (HELD_LOG, HELD_CLOSED_LOG), so a test sees the call reach the server and
# sees the client end it (tests/real/test_lease_interrupts.py: a smoke call cut by a lost
# Lease).
HOLD_PROMPT = "stand-in: hold this request"
HELD_LOG = "[standin] holding a chat completion until its client closes the connection"
HELD_CLOSED_LOG = "[standin] the client of the held chat completion closed its connection"


class StandinParser(argparse.ArgumentParser):
    """SGLang's flag names; anything else is refused with exit code 2 and says why."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(
            EXIT_BAD_FLAGS,
            f"sglang stand-in: {message}\n"
            "It is a stand-in for SGLang's server (sandbox/sglang_standin) and accepts only "
            "the flags listed above; a flag it does not implement is refused rather than "
            "ignored.\n",
        )


def build_parser() -> StandinParser:
    # Names, choices and defaults of SGLang 0.4.10.post2 (python/sglang/srt/server_args.py).
    p = StandinParser(prog="python -m sglang.launch_server (stand-in)", allow_abbrev=False)
    p.add_argument("--model-path", required=True)
    p.add_argument("--served-model-name")
    # SGLang's own parser accepts --tp as an abbreviation of --tp-size, the only --tp* option
    # (argparse allow_abbrev); the templates render --tp.
    p.add_argument("--tensor-parallel-size", "--tp-size", "--tp", dest="tp_size", type=int)
    p.add_argument("--pipeline-parallel-size", "--pp-size", dest="pp_size", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--enable-metrics", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--api-key")
    p.add_argument("--dist-init-addr")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--disaggregation-mode", choices=["null", "prefill", "decode"], default="null")
    p.add_argument("--disaggregation-bootstrap-port", type=int, default=8998)
    p.add_argument(
        "--disaggregation-transfer-backend",
        choices=["mooncake", "nixl", "ascend"],
        default="mooncake",
    )
    p.add_argument("--disaggregation-ib-device")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.tp_size is None:
        args.tp_size = 1
    if args.pp_size is None:
        args.pp_size = 1
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        parser.error(f"--node-rank {args.node_rank} is outside --nnodes {args.nnodes}")
    if args.nnodes > 1 and not args.dist_init_addr:
        parser.error("--nnodes > 1 needs --dist-init-addr")
    if args.served_model_name is None:
        args.served_model_name = args.model_path
    return args


def answer_pieces(model_dir: Path) -> list[str]:
    """The tokens of the one answer: the tiny model's when the directory holds one."""
    info = model_dir / INFO_FILE
    if info.is_file():
        return split_answer(str(json.loads(info.read_text())["answer"]))
    return split_answer(FALLBACK_ANSWER)


@dataclass
class Counters:
    requests: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0


@dataclass
class Standin:
    args: argparse.Namespace
    pieces: list[str]
    ready: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    peer_failed: threading.Event = field(default_factory=threading.Event)
    rooms: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counters: Counters = field(default_factory=Counters)
    started: float = field(default_factory=time.time)

    @property
    def mode(self) -> str:
        return str(self.args.disaggregation_mode)

    def generate(self, prompt_tokens: int, max_tokens: int) -> tuple[list[str], str]:
        out = self.pieces[: max(max_tokens, 0)]
        finish = "stop" if len(out) == len(self.pieces) else "length"
        with self.lock:
            self.counters.requests += 1
            self.counters.prompt_tokens += prompt_tokens
            self.counters.generation_tokens += len(out)
        return out, finish

    def take_room(self, room: int) -> None:
        with self.lock:
            self.rooms.add(room)

    def has_room(self, room: int) -> bool:
        with self.lock:
            return room in self.rooms

    def server_info(self) -> dict[str, Any]:
        info = {k.replace("-", "_"): v for k, v in vars(self.args).items() if k != "api_key"}
        return {**info, "version": SGLANG_VERSION, "standin": True}


# --- generation requests ------------------------------------------------------------------------


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
    else:
        text = str(body.get("prompt", body.get("text", "")))
    return max(1, math.ceil(len(text) / 4))


def _max_tokens(body: dict[str, Any]) -> int:
    sampling = body.get("sampling_params")
    if isinstance(sampling, dict) and "max_new_tokens" in sampling:
        return int(sampling["max_new_tokens"])
    for key in ("max_completion_tokens", "max_tokens"):
        if body.get(key) is not None:
            return int(body[key])
    return 128


def asks_hold(body: dict[str, Any]) -> bool:
    """Whether a chat request carries `HOLD_PROMPT` (the stand-in's test knob)."""
    messages = body.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("content") == HOLD_PROMPT for m in messages
    )


def pd_gate(standin: Standin, body: dict[str, Any]) -> None:
    """PD mode: the router's bootstrap fields must be there; a decode server waits for the
    prefill they name to have taken the same room (the stand-in's KV transfer)."""
    if standin.mode == "null":
        return
    room, host, port = (
        body.get("bootstrap_room"),
        body.get("bootstrap_host"),
        body.get("bootstrap_port"),
    )
    if room is None or host is None:
        raise RequestError(
            400,
            f"{standin.mode} server in PD mode needs bootstrap_host and bootstrap_room "
            "(the PD router adds them)",
        )
    if standin.mode == "prefill":
        standin.take_room(int(room))
        return
    # SGLang's decode addresses the prefill's bootstrap server as f"{host}:{port}"
    # (disaggregation/decode.py); a missing port fails the transfer there too.
    if port is None:
        raise RequestError(500, f"KV transfer failed: bootstrap address {host}:None")
    url = f"http://{host}:{int(port)}/route?bootstrap_room={int(room)}"
    deadline = time.monotonic() + PD_TRANSFER_TIMEOUT_S
    while not standin.stopping.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise RequestError(500, f"KV transfer failed: {url} answered {exc.code}") from exc
        except OSError as exc:
            raise RequestError(500, f"KV transfer failed: {url} unreachable ({exc})") from exc
        if time.monotonic() > deadline:
            raise RequestError(500, f"KV transfer from {host}:{port} timed out")
        standin.stopping.wait(PD_POLL_S)
    raise RequestError(503, "server is shutting down")


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_response(standin: Standin, body: dict[str, Any], kind: str) -> dict[str, Any]:
    prompt = _prompt_tokens(body)
    pieces, finish = standin.generate(prompt, _max_tokens(body))
    text = "".join(pieces)
    created = int(time.time())
    if kind == "generate":
        return {
            "text": text,
            "meta_info": {
                "prompt_tokens": prompt,
                "completion_tokens": len(pieces),
                "finish_reason": {"type": finish},
            },
        }
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": f"standin-{created}-{standin.counters.requests}",
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": standin.args.served_model_name,
        "choices": [choice],
        "usage": _usage(prompt, len(pieces)),
    }


def chat_stream(standin: Standin, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    prompt = _prompt_tokens(body)
    pieces, finish = standin.generate(prompt, _max_tokens(body))
    created = int(time.time())
    base = {
        "id": f"standin-{created}-{standin.counters.requests}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": standin.args.served_model_name,
    }
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        delta = {"index": 0, "delta": {"content": piece}, "finish_reason": finish if last else None}
        yield {**base, "choices": [delta]}
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        yield {**base, "choices": [], "usage": _usage(prompt, len(pieces))}


def metrics_text(standin: Standin) -> str:
    # A few of SGLang's own metric names (python/sglang/srt/metrics/collector.py).
    label = f'{{model_name="{standin.args.served_model_name}"}}'
    c = standin.counters
    return "".join(
        [
            "# TYPE sglang:prompt_tokens_total counter\n",
            f"sglang:prompt_tokens_total{label} {c.prompt_tokens}\n",
            "# TYPE sglang:generation_tokens_total counter\n",
            f"sglang:generation_tokens_total{label} {c.generation_tokens}\n",
            "# TYPE sglang:num_requests_total counter\n",
            f"sglang:num_requests_total{label} {c.requests}\n",
        ]
    )


# --- HTTP ---------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"sglang-standin/{SGLANG_VERSION}"
    standin: Standin  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"[standin] {self.address_string()} {format % args}\n")

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode())

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"message": message, "code": status}})

    def _authorised(self, path: str) -> bool:
        # SGLang's API-key middleware lets /health* and /metrics through (srt/utils.py
        # add_api_key_middleware).
        key = self.standin.args.api_key
        if key is None or path.startswith(("/health", "/metrics")):
            return True
        if self.headers.get("Authorization") == f"Bearer {key}":
            return True
        # The refused request's body is read all the same, or it would be parsed as the next
        # request on this keep-alive connection (uvicorn reads it too).
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._json(401, {"error": "Unauthorized"})
        return False

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if not self._authorised(path):
            return
        standin = self.standin
        if path in ("/health", "/health_generate"):
            self._health()
        elif path == "/v1/models":
            name = standin.args.served_model_name
            model = {
                "id": name,
                "object": "model",
                "created": int(standin.started),
                "owned_by": "sglang",
                "root": name,
            }
            self._json(200, {"object": "list", "data": [model]})
        elif path == "/get_model_info":
            self._json(
                200,
                {
                    "model_path": standin.args.model_path,
                    "tokenizer_path": standin.args.model_path,
                    "is_generation": True,
                    "preferred_sampling_params": None,
                },
            )
        elif path == "/get_server_info":
            self._json(200, standin.server_info())
        elif path == "/metrics" and standin.args.enable_metrics:
            self._send(200, metrics_text(standin).encode(), "text/plain; version=0.0.4")
        else:
            self._error(404, f"{path} is not served by the SGLang stand-in")

    def _health(self) -> None:
        # One handler for both paths, as in SGLang 0.4.10.post2: 503 until the server is up
        # (here: every rank joined) or once it is stopping, else a one-token generation.
        started = time.monotonic()
        standin = self.standin
        if standin.stopping.is_set() or not standin.ready.is_set():
            self._send(503, b"")
            return
        standin.generate(1, 1)
        standin.stopping.wait(max(0.0, HEALTH_MIN_S - (time.monotonic() - started)))
        self._send(200, b"")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if not self._authorised(path):
            return
        standin = self.standin
        if path == "/flush_cache":
            self._send(200, b"Cache flushed.\n", "text/plain")
            return
        kinds = {
            "/v1/chat/completions": "chat",
            "/v1/completions": "completion",
            "/generate": "generate",
        }
        if path in ("/health", "/health_generate"):
            # GET-only routes in SGLang's FastAPI app; mini_lb POSTs to them and ignores this.
            self._error(405, "Method Not Allowed")
            return
        if path not in kinds:
            self._error(404, f"{path} is not served by the SGLang stand-in")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._error(400, "request body is not JSON")
            return
        if not isinstance(body, dict):
            self._error(400, "request body is not a JSON object")
            return
        if not standin.ready.is_set():
            self._error(503, "server is not ready")
            return
        if kinds[path] == "chat" and asks_hold(body):
            self._hold()
            return
        try:
            pd_gate(standin, body)
        except RequestError as exc:
            self._error(exc.status, str(exc))
            return
        if kinds[path] == "chat" and body.get("stream"):
            self._stream(chat_stream(standin, body))
        else:
            self._json(200, chat_response(standin, body, kinds[path]))

    def _hold(self) -> None:
        """The test knob (`HOLD_PROMPT`): no answer; block until the client closes the
        connection (or resets it), and log both moments."""
        sys.stderr.write(HELD_LOG + "\n")
        sys.stderr.flush()
        with contextlib.suppress(OSError):
            while self.connection.recv(65536):
                pass
        sys.stderr.write(HELD_CLOSED_LOG + "\n")
        sys.stderr.flush()
        self.close_connection = True

    def _stream(self, events: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class _StatusHandler(BaseHTTPRequestHandler):
    """A server that answers GETs with a status code and no body."""

    protocol_version = "HTTP/1.1"
    standin: Standin

    def log_message(self, format: str, *args: Any) -> None:
        return

    def status(self, path: str, query: dict[str, list[str]]) -> int:
        raise NotImplementedError

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.send_response(self.status(parts.path, parse_qs(parts.query)))
        self.send_header("Content-Length", "0")
        self.end_headers()


class _BootstrapHandler(_StatusHandler):
    """The prefill's bootstrap port: ``/health`` and the stand-in's room check on ``/route``."""

    def status(self, path: str, query: dict[str, list[str]]) -> int:
        if path == "/health":
            return 200
        room = query.get("bootstrap_room", [""])[0]
        if path == "/route" and room.isdigit():
            return 200 if self.standin.has_room(int(room)) else 404
        return 404


class _DummyHealth(_StatusHandler):
    """Ranks >= 1: SGLang's launch_dummy_health_check_server (/health, /health_generate)."""

    def status(self, path: str, query: dict[str, list[str]]) -> int:
        return 200 if path in ("/health", "/health_generate") else 404


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(
    standin: Standin, handler: type[BaseHTTPRequestHandler], host: str, port: int
) -> _Server:
    bound = type(f"{handler.__name__}Bound", (handler,), {"standin": standin})
    server = _Server((host, port), bound)
    threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True).start()
    return server


# --- multi-node rendezvous ------------------------------------------------------------------------


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"sglang stand-in: --dist-init-addr {addr!r} is not host:port")
    return host, int(port)


def _lead(standin: Standin, addr: str) -> None:
    """Rank 0: accept every other rank on --dist-init-addr's port, then serve; exit when one
    of them drops (its group is broken)."""
    _, port = _split_addr(addr)
    listener = socket.create_server(("0.0.0.0", port), reuse_port=False)
    peers: list[socket.socket] = []
    while len(peers) < standin.args.nnodes - 1:
        conn, _ = listener.accept()
        conn.recv(64)
        peers.append(conn)
    listener.close()
    standin.ready.set()
    for peer in peers:
        threading.Thread(target=_watch_peer, args=(standin, peer), daemon=True).start()


def _join(standin: Standin, addr: str) -> None:
    """Rank >= 1: connect to rank 0 (retrying while it is not up yet), then stay connected."""
    host, port = _split_addr(addr)
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=5)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"sglang stand-in: rank 0 at {addr} unreachable: {exc}") from exc
            if standin.stopping.wait(1.0):
                return
    conn.sendall(f"rank {standin.args.node_rank}\n".encode())
    standin.ready.set()
    threading.Thread(target=_watch_peer, args=(standin, conn), daemon=True).start()


def _watch_peer(standin: Standin, conn: socket.socket) -> None:
    conn.settimeout(None)
    with contextlib.suppress(OSError):
        conn.recv(1)
    if not standin.stopping.is_set():
        sys.stderr.write("sglang stand-in: a peer rank dropped; the group is broken\n")
        sys.stderr.flush()
        standin.peer_failed.set()
        standin.stopping.set()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    model_dir = Path(args.model_path)
    if not (model_dir / "config.json").is_file():
        sys.stderr.write(f"sglang stand-in: no model at {model_dir} (config.json missing)\n")
        return 1
    standin = Standin(args=args, pieces=answer_pieces(model_dir))
    signal.signal(signal.SIGTERM, lambda *_: standin.stopping.set())
    servers = []
    if args.node_rank == 0:
        servers.append(_serve(standin, _Handler, args.host, args.port))
        if args.disaggregation_mode == "prefill":
            port = args.disaggregation_bootstrap_port
            servers.append(_serve(standin, _BootstrapHandler, args.host, port))
    else:
        servers.append(_serve(standin, _DummyHealth, args.host, args.port))
    sys.stderr.write(
        f"sglang stand-in (not SGLang) rank {args.node_rank}/{args.nnodes} "
        f"mode={args.disaggregation_mode} serving {args.served_model_name!r} "
        f"on {args.host}:{args.port}\n"
    )
    sys.stderr.flush()
    if args.nnodes == 1:
        standin.ready.set()
    elif args.node_rank == 0:
        threading.Thread(target=_lead, args=(standin, args.dist_init_addr), daemon=True).start()
    else:
        _join(standin, args.dist_init_addr)
    standin.stopping.wait()
    for server in servers:
        server.shutdown()
    # A dropped peer is a failure; SIGTERM is an orderly stop.
    return 1 if standin.peer_failed.is_set() else 0
