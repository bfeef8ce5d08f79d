"""`pods/{name}/portforward` over WebSocket, the way the kubelet serves it behind the API server.

The client (kubernetes.stream.portforward, kubectl with WebSockets) sends a GET upgrade offering
`v5.channel.k8s.io,v4.channel.k8s.io`; port-forward speaks only v4 (binary frames whose first
byte is the channel). Port i of the `ports` query owns data channel 2*i and error channel
2*i+1; the server opens both with a frame carrying the port as two little-endian bytes, dials
the pod's port, then copies bytes between the data channel and that TCP connection. A failed
dial is reported as text on the error channel. The session ends when every backend connection
ended (the server sends a close frame) or when the client closes.

Only the server half of RFC 6455 needed here is implemented: masked client frames, control
frames (close, ping), fragmented data messages.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PORT_FORWARD_PROTOCOL = "v4.channel.k8s.io"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
# Larger client frames are refused: nothing the project sends comes close.
MAX_FRAME_BYTES = 64 << 20
_READ_CHUNK = 64 << 10


class ProtocolError(Exception):
    """The client broke the WebSocket or channel protocol."""


def accept_key(key: str) -> str:
    """`Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`."""
    digest = hashlib.sha1((key.strip() + WEBSOCKET_GUID).encode(), usedforsecurity=False)
    return base64.b64encode(digest.digest()).decode()


def offered_protocols(header: str) -> list[str]:
    return [p.strip() for p in header.split(",") if p.strip()]


def parse_ports(values: Sequence[str]) -> list[int]:
    """Ports of the `ports` query parameters (repeated and/or comma-separated), in order.

    Raises ValueError with the real server's wording for a bad one.
    """
    ports: list[int] = []
    for value in values:
        for item in value.split(","):
            text = item.strip()
            if not text:
                continue
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise ValueError(f'invalid port "{text}": must be between 1 and 65535')
            if int(text) not in ports:
                ports.append(int(text))
    return ports


def _frame(opcode: int, payload: bytes) -> bytes:
    head = bytes([0x80 | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([size])
    elif size < 1 << 16:
        head += bytes([126]) + struct.pack("!H", size)
    else:
        head += bytes([127]) + struct.pack("!Q", size)
    return head + payload


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size) if size else b""
    if data is None or len(data) < size:
        return None
    return data


def read_message(stream: BinaryIO) -> tuple[int, bytes] | None:
    """Next (opcode, payload) from the client, fragments joined; None when the stream ended.

    Control frames are returned as they come, also between the fragments of a message.
    """
    opcode: int | None = None
    parts: list[bytes] = []
    while True:
        head = _read_exact(stream, 2)
        if head is None:
            return None
        fin, op = head[0] & 0x80, head[0] & 0x0F
        if not head[1] & 0x80:
            raise ProtocolError("client frames must be masked")
        size = head[1] & 0x7F
        if size == 126:
            raw = _read_exact(stream, 2)
            size = struct.unpack("!H", raw)[0] if raw else -1
        elif size == 127:
            raw = _read_exact(stream, 8)
            size = struct.unpack("!Q", raw)[0] if raw else -1
        if size < 0:
            return None
        if size > MAX_FRAME_BYTES:
            raise ProtocolError(f"frame of {size} bytes is too large")
        mask = _read_exact(stream, 4)
        payload = _read_exact(stream, size)
        if mask is None or payload is None:
            return None
        key = (mask * (size // 4 + 1))[:size]
        data = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
        if op >= OP_CLOSE:
            return op, data
        if op == OP_CONTINUATION:
            if opcode is None:
                raise ProtocolError("continuation frame without a message")
        elif opcode is not None:
            raise ProtocolError("new message before the previous one ended")
        else:
            opcode = op
        parts.append(data)
        if fin:
            return opcode, b"".join(parts)


@dataclass
class _Port:
    index: int
    number: int
    backend: socket.socket | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def data_channel(self) -> int:
        return 2 * self.index

    @property
    def error_channel(self) -> int:
        return 2 * self.index + 1


class PortForwardSession:
    """One upgraded connection: `run()` serves it until either side ends it.

    `dial(port)` returns a connected socket to the pod's port, or raises OSError whose text
    becomes the error channel's message.
    """

    def __init__(
        self,
        client: socket.socket,
        reader: BinaryIO,
        ports: Sequence[int],
        dial: Callable[[int], socket.socket],
        describe: Callable[[int, OSError], str],
    ) -> None:
        self._client = client
        self._reader = reader
        self._ports = [_Port(i, p) for i, p in enumerate(ports)]
        self._dial = dial
        self._describe = describe
        self._send_lock = threading.Lock()
        self._closed = threading.Event()

    # ---------------------------------------------------------------------------- sending
    def _send(self, opcode: int, payload: bytes) -> None:
        with self._send_lock:
            if self._closed.is_set() and opcode != OP_CLOSE:
                return
            try:
                self._client.sendall(_frame(opcode, payload))
            except OSError:
                self._closed.set()

    def _send_channel(self, channel: int, data: bytes) -> None:
        self._send(OP_BINARY, bytes([channel]) + data)

    def _close(self, code: int = CLOSE_NORMAL) -> None:
        if self._closed.is_set():
            return
        self._send(OP_CLOSE, struct.pack("!H", code))
        self._closed.set()

    # ----------------------------------------------------------------------------- serving
    def run(self) -> None:
        for port in self._ports:
            prefix = struct.pack("<H", port.number)
            self._send_channel(port.data_channel, prefix)
            self._send_channel(port.error_channel, prefix)
        pumps: list[threading.Thread] = []
        for port in self._ports:
            try:
                port.backend = self._dial(port.number)
            except OSError as exc:
                self._send_channel(port.error_channel, self._describe(port.number, exc).encode())
                port.done.set()
                continue
            pump = threading.Thread(
                target=self._pump_backend, args=(port,), name=f"portforward-{port.number}"
            )
            pump.daemon = True
            pump.start()
            pumps.append(pump)
        watcher = threading.Thread(target=self._close_when_backends_done, daemon=True)
        watcher.start()
        try:
            self._read_client()
        finally:
            self._closed.set()
            for port in self._ports:
                _shutdown(port.backend)
            for pump in pumps:
                pump.join(timeout=5)
            for port in self._ports:
                port.done.set()
                if port.backend is not None:
                    port.backend.close()
            watcher.join(timeout=5)

    def _close_when_backends_done(self) -> None:
        for port in self._ports:
            port.done.wait()
        # Every pod connection ended: like the kubelet, end the session with a close frame;
        # the client's close reply (or its disconnect) ends the reader.
        self._close()

    def _pump_backend(self, port: _Port) -> None:
        assert port.backend is not None
        try:
            while True:
                try:
                    data = port.backend.recv(_READ_CHUNK)
                except OSError:
                    break
                if not data:
                    break
                self._send_channel(port.data_channel, data)
                if self._closed.is_set():
                    break
        finally:
            port.done.set()

    def _read_client(self) -> None:
        by_channel = {p.data_channel: p for p in self._ports}
        while True:
            try:
                message = read_message(self._reader)
            except ProtocolError:
                self._close(CLOSE_PROTOCOL_ERROR)
                return
            except OSError:
                return
            if message is None:
                return
            opcode, payload = message
            if opcode == OP_CLOSE:
                self._close()
                return
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode != OP_BINARY or not payload:
                # v4 port-forward is binary-only (the base64 text protocol is not offered).
                self._close(CLOSE_PROTOCOL_ERROR)
                return
            port = by_channel.get(payload[0])
            if port is None:
                self._close(CLOSE_PROTOCOL_ERROR)
                return
            if port.backend is None or port.done.is_set():
                continue  # the pod side is gone: what the client still sends is dropped
            try:
                port.backend.sendall(payload[1:])
            except OSError:
                port.done.set()


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return
