"""The demo's UI forwarder: TCP on 127.0.0.1 -> a Unix socket on disk -> TCP on 127.0.0.1.

Both relays run here in one namespace; the demo puts ``UnixToTcp`` inside the private one and
``TcpToUnix`` in the host's. What is checked is what that split relies on: bytes relayed both
ways (an HTTP exchange of the size a UI asset has), the listener bound to 127.0.0.1 only, and a
client closed at once, not hung, while nothing listens behind the socket.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from sandbox.ui_forward import TcpToUnix, UnixToTcp, loopback_port

BODY = bytes(range(256)) * 4096  # 1 MiB: many relay chunks


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data) + len(BODY)))
        self.end_headers()
        self.wfile.write(data + BODY)


@pytest.fixture
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_http_goes_both_ways_through_the_socket_on_disk(upstream: int, tmp_path: Path) -> None:
    socket_path = tmp_path / "ui.sock"
    inner = UnixToTcp(socket_path, upstream)
    outer = TcpToUnix(0, socket_path)
    try:
        assert outer.address[0] == "127.0.0.1"
        url = f"http://127.0.0.1:{outer.address[1]}/api/echo"
        with httpx.Client(timeout=10, trust_env=False) as client:
            for _ in range(3):  # one connection each: the relays serve them in turn
                response = client.post(url, content=b"ping", headers={"Connection": "close"})
                assert response.status_code == 200
                assert response.content == b"ping" + BODY
    finally:
        outer.stop()
        inner.stop()
    assert not socket_path.exists()


def test_a_client_is_closed_while_nothing_listens_behind_the_socket(tmp_path: Path) -> None:
    outer = TcpToUnix(0, tmp_path / "absent.sock")
    try:
        with socket.create_connection(outer.address, timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(1024) == b""
    finally:
        outer.stop()


def test_loopback_port_prefers_the_given_port_and_falls_back_when_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = int(taken.getsockname()[1])
        other = loopback_port(busy)
        assert other != busy
    assert loopback_port(other) == other
