"""Expose one TCP port of the harness's private network namespace on the root one's 127.0.0.1.

The demo runs everything (cluster, hub, OSS, Prefect server) inside the namespace
``scripts/in-netns`` makes, which has no uplink and must stay unreachable by routing (issue 14,
item 4: no route to a private range in the root namespace). A person's browser still has to
reach the Prefect UI. Two relays joined by a Unix socket on the filesystem do it: a
filesystem-path Unix socket belongs to no network namespace (only abstract ones do), so no
interface, address or route is added anywhere:

- inside the namespace, ``UnixToTcp`` listens on the socket path and connects each client to
  ``127.0.0.1:port`` there (the Prefect server);
- in the root namespace, ``TcpToUnix`` listens on ``127.0.0.1:port`` only and connects each
  client to the socket path.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path

LOOPBACK = "127.0.0.1"
_CHUNK_BYTES = 64 * 1024


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until ``source`` ends, then half-close ``sink``."""
    try:
        while data := source.recv(_CHUNK_BYTES):
            sink.sendall(data)
    except OSError:
        # The other direction failed or the peer reset: nothing left to relay this way.
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def relay(client: socket.socket, upstream: socket.socket) -> None:
    """Relay both directions between two connected sockets until both have ended."""
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    upstream.close()


def _handler(connect: Callable[[], socket.socket]) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                upstream = connect()
            except OSError:
                # Nothing listens on the other side (yet, or any more): the client sees its
                # connection closed, as with a refused connection.
                return
            relay(self.request, upstream)

    return Handler


class _ThreadingTcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingUnix(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class _Running:
    def __init__(self, server: socketserver.BaseServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class TcpToUnix(_Running):
    """Listens on ``127.0.0.1:port`` (never another address) and relays to ``socket_path``."""

    def __init__(self, port: int, socket_path: Path) -> None:
        def connect() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(socket_path))
            except OSError:
                sock.close()
                raise
            return sock

        server = _ThreadingTcp((LOOPBACK, port), _handler(connect))
        self.address = (str(server.server_address[0]), int(server.server_address[1]))
        super().__init__(server)


class UnixToTcp(_Running):
    """Listens on ``socket_path`` and relays to ``127.0.0.1:port`` of this namespace."""

    def __init__(self, socket_path: Path, port: int) -> None:
        def connect() -> socket.socket:
            return socket.create_connection((LOOPBACK, port), timeout=10)

        socket_path.unlink(missing_ok=True)
        self.socket_path = socket_path
        super().__init__(_ThreadingUnix(str(socket_path), _handler(connect)))

    def stop(self) -> None:
        super().stop()
        self.socket_path.unlink(missing_ok=True)


def loopback_port(preferred: int) -> int:
    """``preferred`` when it is free on the root namespace's 127.0.0.1, else a free port."""
    with socket.socket() as probe:
        try:
            probe.bind((LOOPBACK, preferred))
        except OSError:
            probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])
