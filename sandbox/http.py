"""Threaded HTTP/1.1 server base shared by the sandbox stand-ins.

What every sandbox server needs and ``http.server`` does not give out of the box:

- ``SandboxServer``: binds a free port on 127.0.0.1, serves from a daemon thread, and on
  ``stop()`` also closes idle keep-alive connections (otherwise handler threads linger
  blocked on ``readline`` and clients keep talking to a server that is gone).
- ``SandboxHandler``: HTTP/1.1 keep-alive, ``TCP_NODELAY`` (without it every request stalls
  ~40 ms on delayed ACK), quiet logging, and body I/O that honours a bandwidth cap:
  ``send_file_range`` (``socket.sendfile``, zero-copy), ``send_body`` and
  ``read_body_into`` (large chunks, straight to a file object).
- ``TokenBucket``: monotonic-clock pacing. Each chunk reserves its slot on the link. A sender
  waits for the start of its slot before writing (so connections sharing one bucket take
  turns on its schedule instead of all writing at once); a receiver reserves before reading
  and waits for the end of the slot before going on, so a request completes no earlier than
  the link could have carried its body. One bucket per connection gives the per-connection
  cap; a bucket shared by all connections gives an aggregate (link) cap. A fresh bucket has
  no credit; a sender that fell behind may catch up by at most ``BURST_SECONDS``.
- ``RequestLog``: a thread-safe list of per-request records plus byte counters.
- ``drop_connection`` / ``reset_connection``: the two ways a real peer vanishes (FIN vs RST).
- ``BodyReader``: fills caller-owned buffers with the request body (``Content-Length`` or
  chunked) through ``readinto``, paced, so a receiver can hash and write a reusable buffer
  instead of allocating a fresh ``bytes`` per chunk.
- Admin endpoints under ``/__sandbox/`` (``ADMIN_PREFIX``), for a server running in another
  process (``sandbox.storage_proc``): ``GET health``, ``GET stats`` (the server's ``stats()``,
  after waiting up to ``?idle_timeout=`` seconds, default 5, for in-flight requests),
  ``GET requests`` (the request log as JSON), ``POST reset`` (``reset_counters()``). They are
  not authenticated, not paced, not counted as requests in flight, not logged and not in the
  byte counters. Real OSS bucket names and ModelScope owners cannot start with ``_``, so the
  prefix never shadows a protocol path.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Generic, Self, TypeVar
from urllib.parse import parse_qsl, urlsplit

CHUNK_BYTES = 256 * 1024
# Body reads are paced and handed on in slices of at most this size.
READ_BYTES = 4 * CHUNK_BYTES
ADMIN_PREFIX = "/__sandbox/"
BURST_SECONDS = 0.05


class TokenBucket:
    """Paces bytes to ``rate`` bytes/s; thread-safe so one bucket can be shared."""

    def __init__(self, rate_bytes_per_s: int) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate_bytes_per_s)
        self._lock = threading.Lock()
        self._next_free: float | None = None
        # Bucket depth: how much lost time a sender may catch up. On a loaded 2-core machine
        # server threads lose tens of milliseconds at a time; 50 ms absorbs that and bounds
        # any burst to 50 ms worth of bytes (0.25 % of a 20 s transfer).
        self._burst_s = BURST_SECONDS

    def reserve(self, nbytes: int) -> float:
        """Reserve link time for ``nbytes``; returns the monotonic time the slot ends."""
        return self.reserve_slot(nbytes)[1]

    def reserve_slot(self, nbytes: int) -> tuple[float, float]:
        """Reserve link time for ``nbytes``; returns the slot's (start, end), monotonic."""
        with self._lock:
            now = time.monotonic()
            last = self._next_free
            # A sender that fell behind (descheduled, a client stall) catches up by at most
            # the bucket's depth, so the long-run rate is the cap rather than a bit under it
            # on a loaded machine; after an idle spell the same depth is the only credit.
            # A fresh bucket has none: its first chunks never run ahead of the cap.
            start = now if last is None else max(last, now - self._burst_s)
            self._next_free = start + nbytes / self.rate
            return start, self._next_free

    @staticmethod
    def wait_until(deadline: float) -> None:
        # Pacing is the feature here: the delay is the simulated wire time of the chunk.
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)


class Pacer:
    """The set of buckets one connection's bytes must pass through (per-connection, shared)."""

    def __init__(self, buckets: list[TokenBucket]) -> None:
        self._buckets = buckets

    def __bool__(self) -> bool:
        return bool(self._buckets)

    def reserve(self, nbytes: int) -> float:
        return self.reserve_slot(nbytes)[1]

    def reserve_slot(self, nbytes: int) -> tuple[float, float]:
        """The latest start and end over all buckets: the tightest one binds."""
        start = end = 0.0
        for bucket in self._buckets:
            s, e = bucket.reserve_slot(nbytes)
            start, end = max(start, s), max(end, e)
        return start, end

    @property
    def send_chunk_bytes(self) -> int:
        """Chunk size for paced sends: about 5 ms of the tightest cap, 16-256 KiB.

        The client has a chunk as soon as its slot starts, so a transfer of N chunks looks
        N/(N-1) times faster than the cap; small chunks at low caps keep that error small.
        """
        if not self._buckets:
            return 8 * CHUNK_BYTES
        rate = min(b.rate for b in self._buckets)
        return max(16 * 1024, min(CHUNK_BYTES, int(rate * 0.005)))


R = TypeVar("R")


class RequestLog(Generic[R]):
    """Thread-safe append-only record list; iterate over a snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[R] = []

    def append(self, record: R) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[R]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __iter__(self) -> Iterator[R]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __getitem__(self, index: int) -> R:
        with self._lock:
            return self._records[index]


class ByteCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._value += n

    @property
    def value(self) -> int:
        with self._lock:
            return self._value

    def reset(self) -> None:
        with self._lock:
            self._value = 0


class BodyReader:
    """Reads one request body into caller-owned buffers; ``readinto`` returns 0 at its end.

    Handles ``Content-Length`` and ``Transfer-Encoding: chunked`` (small client chunks are
    gathered into one buffer fill). Each underlying read reserves its slot on the handler's
    pacer first; the reader waits for the last slot before returning, so a fill of
    ``READ_BYTES`` costs one wait. Raises ``ConnectionResetError`` when the client closes
    early or sends a malformed chunked body.
    """

    def __init__(self, handler: SandboxHandler) -> None:
        self._rfile = handler.rfile
        self._pacer = handler.pacer
        self.chunked = handler.is_chunked()
        self._left = 0 if self.chunked else int(handler.headers.get("Content-Length") or 0)
        self._in_chunk = False
        self.done = not self.chunked and self._left == 0
        self.total = 0

    def readinto(self, view: memoryview) -> int:
        filled, want = 0, len(view)
        deadline = 0.0
        while filled < want and not self.done:
            if self._left == 0:
                self._next_chunk()
                continue
            n = min(self._left, want - filled)
            if self._pacer:
                deadline = self._pacer.reserve(n)
            self._read_exact(view[filled : filled + n])
            filled += n
            self._left -= n
            if not self.chunked and self._left == 0:
                self.done = True
        if deadline:
            TokenBucket.wait_until(deadline)
        self.total += filled
        return filled

    def _read_exact(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            # BufferedReader.readinto fills the whole view unless the peer closes.
            n = self._rfile.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                raise ConnectionResetError(f"client body ended {len(view) - got} bytes short")
            got += n

    def _next_chunk(self) -> None:
        if self._in_chunk and self._rfile.readline(1024) not in (b"\r\n", b"\n"):
            raise ConnectionResetError("malformed chunked body")
        line = self._rfile.readline(1024)
        if not line:
            raise ConnectionResetError("client closed inside a chunked body")
        try:
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        except ValueError as exc:
            raise ConnectionResetError("malformed chunk size") from exc
        if size == 0:
            # Trailer section ends with an empty line.
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            self.done = True
            return
        self._left, self._in_chunk = size, True


class ConnectionDropped(Exception):
    """Raised inside a handler after it deliberately cut the connection (a scripted fault)."""


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, owner: SandboxServer, handler: type[SandboxHandler]) -> None:
        self.owner = owner
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-body are routine in fault tests: keep those quiet. Anything
        # else is a sandbox bug; keep its traceback where tests can assert on it.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        self.owner.internal_errors.append(traceback.format_exc())


class SandboxServer:
    """Base for a server on a free 127.0.0.1 port. Subclasses set ``handler_class``."""

    handler_class: type[SandboxHandler]

    def __init__(
        self,
        *,
        bandwidth_bytes_per_s: int | None = None,
        aggregate_bandwidth_bytes_per_s: int | None = None,
    ) -> None:
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self.aggregate_bandwidth_bytes_per_s = aggregate_bandwidth_bytes_per_s
        self._aggregate_bucket = (
            TokenBucket(aggregate_bandwidth_bytes_per_s)
            if aggregate_bandwidth_bytes_per_s
            else None
        )
        self._server: _ThreadingServer | None = None
        # Tracebacks of unexpected handler exceptions (sandbox bugs); tests assert it is empty.
        self.internal_errors: list[str] = []
        self._idle = threading.Condition()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def new_pacer(self) -> Pacer:
        buckets: list[TokenBucket] = []
        if self.bandwidth_bytes_per_s:
            buckets.append(TokenBucket(self.bandwidth_bytes_per_s))
        if self._aggregate_bucket is not None:
            buckets.append(self._aggregate_bucket)
        return Pacer(buckets)

    def _request_started(self) -> None:
        with self._idle:
            self._in_flight += 1

    def _request_finished(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until no request is being handled, so logs and counters are final.

        A client call returns as soon as the last response byte arrives, a moment before the
        server thread has written its log record; tests call this before asserting on logs.
        """
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise TimeoutError(f"{self._in_flight} request(s) still in flight")

    def settle(self, timeout: float = 5.0) -> bool:
        """``wait_idle`` that gives up quietly; True when no request was left in flight.

        Used before clearing counters, so a record of a request the client already saw
        answered cannot land after the reset and be counted against the next step.
        """
        try:
            self.wait_idle(timeout)
        except TimeoutError:
            return False
        return True

    # -- observation (also served on the admin endpoints) --------------------------------
    def stats(self) -> dict[str, object]:
        """Counters for the admin ``stats`` endpoint; subclasses add their own."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with self._idle:
            in_flight = self._in_flight
        return {
            "server": type(self).__name__,
            "pid": os.getpid(),
            "in_flight": in_flight,
            "internal_errors": list(self.internal_errors),
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "aggregate_bandwidth_bytes_per_s": self.aggregate_bandwidth_bytes_per_s,
            # Whole process: in a storage child that is both servers together.
            "process_cpu_seconds": usage.ru_utime + usage.ru_stime,
            "process_max_rss_bytes": usage.ru_maxrss * 1024,
        }

    def request_records(self) -> list[dict[str, object]]:
        """The request log as JSON-ready dicts; subclasses with a log override this."""
        return []

    def reset_counters(self) -> None:
        """Zero byte counters and clear the request log; subclasses override this."""
        return

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    def start(self) -> str:
        if self._server is not None:
            return self.base_url
        self._server = _ThreadingServer(self, self.handler_class)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with server.connections_lock:
            conns = list(server.open_connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SandboxHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ThreadingServer
    # A stuck client must not pin a handler thread forever.
    timeout = 120

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pacer = self.server.owner.new_pacer()

    def parse_request(self) -> bool:
        # Counted from here, not from handle_one_request: an idle keep-alive connection
        # waiting for its next request line is not a request in flight.
        if not super().parse_request():
            return False
        if self.path.startswith(ADMIN_PREFIX):
            # Answered here; returning False makes handle_one_request skip the do_* method.
            self._serve_admin()
            return False
        self._counted = True
        self.server.owner._request_started()
        return True

    def handle_one_request(self) -> None:
        self._counted = False
        try:
            super().handle_one_request()
        finally:
            if self._counted:
                self.server.owner._request_finished()

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines can carry signed query strings; the structured request log is enough.
        return

    # -- admin endpoints ------------------------------------------------------------------
    def _serve_admin(self) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        name = split.path[len(ADMIN_PREFIX) :].strip("/")
        query = dict(parse_qsl(split.query))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status = 200
        payload: object
        if self.command == "GET" and name == "health":
            payload = {"ok": True, "server": type(owner).__name__, "pid": os.getpid()}
        elif self.command == "GET" and name in ("stats", "requests"):
            try:
                idle_timeout = float(query.get("idle_timeout", "5"))
            except ValueError:
                idle_timeout = 5.0
            idle = True
            try:
                owner.wait_idle(idle_timeout)
            except TimeoutError:
                idle = False
            if name == "stats":
                payload = {**owner.stats(), "idle": idle}
            else:
                payload = {"idle": idle, "requests": owner.request_records()}
        elif self.command == "POST" and name == "reset":
            owner.reset_counters()
            payload = {"ok": True}
        else:
            status = 404
            payload = {"error": f"no admin endpoint {self.command} {split.path}"}
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- body output ----------------------------------------------------------------------
    def send_body(self, data: bytes, *, limit: int | None = None) -> int:
        """Write ``data`` paced; stop after ``limit`` bytes. Returns bytes written."""
        total = len(data) if limit is None else min(limit, len(data))
        sent = 0
        view = memoryview(data)
        chunk = self.pacer.send_chunk_bytes
        while sent < total:
            n = min(chunk, total - sent)
            if self.pacer:
                TokenBucket.wait_until(self.pacer.reserve_slot(n)[0])
            self.connection.sendall(view[sent : sent + n])
            sent += n
        return sent

    def send_file_range(
        self, fh: IO[bytes], offset: int, length: int, *, limit: int | None = None
    ) -> int:
        """Zero-copy send of ``length`` bytes at ``offset``; stop after ``limit`` bytes."""
        total = length if limit is None else min(limit, length)
        sent = 0
        chunk = self.pacer.send_chunk_bytes
        while sent < total:
            n = min(chunk, total - sent)
            if self.pacer:
                TokenBucket.wait_until(self.pacer.reserve_slot(n)[0])
            done = self.connection.sendfile(fh, offset + sent, n)
            if done <= 0:
                raise ConnectionResetError("sendfile wrote nothing")
            sent += done
        return sent

    # -- body input -----------------------------------------------------------------------
    def is_chunked(self) -> bool:
        return "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()

    def body_reader(self) -> BodyReader:
        """A reader over this request's body (``Content-Length`` or chunked), paced."""
        return BodyReader(self)

    def iter_body(self) -> Iterator[bytes]:
        """The request body as fresh ``bytes`` chunks of up to ``READ_BYTES``, paced.

        Clients streaming from a generator (``requests`` with an iterator body) send chunked.
        Bulk receivers should use ``body_reader().readinto`` with their own buffers instead.
        """
        reader = self.body_reader()
        buf = bytearray(READ_BYTES)
        view = memoryview(buf)
        while n := reader.readinto(view):
            yield bytes(view[:n])

    def discard_body(self) -> int:
        total = 0
        for chunk in self.iter_body():
            total += len(chunk)
        return total

    # -- faults ---------------------------------------------------------------------------
    def drop_connection(self) -> None:
        """Orderly FIN mid-response: the client sees a short body."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def reset_connection(self) -> None:
        """Abortive close (RST): the client sees ECONNRESET."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
