"""Threaded HTTP/1.1 server base shared by the sandbox stand-ins.

What every sandbox server needs and ``http.server`` does not give out of the box:

- ``SandboxServer``: binds a free port on 127.0.0.1, serves from a daemon thread, and on
  ``stop()`` also closes idle keep-alive connections (otherwise handler threads linger
  blocked on ``readline`` and clients keep talking to a server that is gone).
- ``SandboxHandler``: HTTP/1.1 keep-alive, ``TCP_NODELAY`` (without it every request stalls
  ~40 ms on delayed ACK), quiet logging, and body I/O that honours a bandwidth cap:
  ``send_file_range`` (``socket.sendfile``, zero-copy), ``send_body`` and
  ``read_body_into`` (large chunks, straight to a file object).
- ``TokenBucket``: monotonic-clock pacing. Each chunk reserves its slot on the link and the
  sender waits for the end of that slot, so the delivered rate never exceeds the cap and a
  long transfer sits within a chunk of it. One bucket per connection gives the per-connection
  cap; a bucket shared by all connections gives an aggregate (link) cap.
- ``RequestLog``: a thread-safe list of per-request records plus byte counters.
- ``drop_connection`` / ``reset_connection``: the two ways a real peer vanishes (FIN vs RST).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Generic, Self, TypeVar

CHUNK_BYTES = 256 * 1024


class TokenBucket:
    """Paces bytes to ``rate`` bytes/s; thread-safe so one bucket can be shared."""

    def __init__(self, rate_bytes_per_s: int) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate_bytes_per_s)
        self._lock = threading.Lock()
        self._next_free = 0.0
        self._burst_s = min(4 * CHUNK_BYTES / self.rate, 0.02)

    def reserve(self, nbytes: int) -> float:
        """Reserve link time for ``nbytes``; returns the monotonic time the slot ends."""
        with self._lock:
            now = time.monotonic()
            # A sender that fell slightly behind (scheduling, client stalls) may catch up
            # by one short burst, so the long-run rate is the cap rather than a bit under it.
            start = max(self._next_free, now - self._burst_s)
            self._next_free = start + nbytes / self.rate
            return self._next_free

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
        deadline = 0.0
        for bucket in self._buckets:
            deadline = max(deadline, bucket.reserve(nbytes))
        return deadline


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
        if not self._counted:
            self._counted = True
            self.server.owner._request_started()
        return super().parse_request()

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

    # -- body output ----------------------------------------------------------------------
    def send_body(self, data: bytes, *, limit: int | None = None) -> int:
        """Write ``data`` paced; stop after ``limit`` bytes. Returns bytes written."""
        total = len(data) if limit is None else min(limit, len(data))
        sent = 0
        view = memoryview(data)
        while sent < total:
            n = min(CHUNK_BYTES, total - sent)
            deadline = self.pacer.reserve(n) if self.pacer else 0.0
            self.connection.sendall(view[sent : sent + n])
            sent += n
            if deadline:
                TokenBucket.wait_until(deadline)
        return sent

    def send_file_range(
        self, fh: IO[bytes], offset: int, length: int, *, limit: int | None = None
    ) -> int:
        """Zero-copy send of ``length`` bytes at ``offset``; stop after ``limit`` bytes."""
        total = length if limit is None else min(limit, length)
        sent = 0
        while sent < total:
            n = min(CHUNK_BYTES if self.pacer else 8 * CHUNK_BYTES, total - sent)
            deadline = self.pacer.reserve(n) if self.pacer else 0.0
            done = self.connection.sendfile(fh, offset + sent, n)
            if done <= 0:
                raise ConnectionResetError("sendfile wrote nothing")
            sent += done
            if deadline:
                TokenBucket.wait_until(deadline)
        return sent

    # -- body input -----------------------------------------------------------------------
    def read_body_into(self, sink: IO[bytes] | None, length: int) -> Iterator[bytes]:
        """Read exactly ``length`` body bytes in large chunks, paced; yields each chunk.

        The caller hashes/CRCs the chunks as they pass; ``sink`` (if given) gets them written.
        Raises ``ConnectionResetError`` when the client sends fewer bytes than it announced.
        """
        remaining = length
        while remaining > 0:
            n = min(CHUNK_BYTES * 4, remaining)
            deadline = self.pacer.reserve(n) if self.pacer else 0.0
            chunk = self.rfile.read(n)
            if not chunk:
                raise ConnectionResetError(f"client body ended {remaining} bytes short")
            remaining -= len(chunk)
            if sink is not None:
                sink.write(chunk)
            yield chunk
            if deadline:
                TokenBucket.wait_until(deadline)

    def is_chunked(self) -> bool:
        return "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()

    def iter_body(self) -> Iterator[bytes]:
        """The request body, ``Content-Length`` or ``Transfer-Encoding: chunked``, paced.

        Clients streaming from a generator (``requests`` with an iterator body) send chunked.
        """
        if not self.is_chunked():
            yield from self.read_body_into(None, int(self.headers.get("Content-Length") or 0))
            return
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionResetError("client closed inside a chunked body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # Trailer section ends with an empty line.
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return
            yield from self.read_body_into(None, size)
            if self.rfile.readline(1024) not in (b"\r\n", b"\n"):
                raise ConnectionResetError("malformed chunked body")

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
