"""The server side of a WebSocket (RFC 6455) as far as the kubelet's exec stream needs it:
the opening handshake, unmasked binary frames out, a close frame at the end, and the client's
masked frames in (port-forward's data)."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import BinaryIO

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8


def accept_key(client_key: str) -> str:
    """Sec-WebSocket-Accept for the client's Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    digest = hashlib.sha1((client_key + _GUID).encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (a server never masks)."""
    head = bytes([0x80 | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([length])
    elif length < 1 << 16:
        head += bytes([126]) + struct.pack("!H", length)
    else:
        head += bytes([127]) + struct.pack("!Q", length)
    return head + payload


def send(out: BinaryIO, opcode: int, payload: bytes) -> None:
    out.write(frame(opcode, payload))
    out.flush()


def read_frame(stream: BinaryIO) -> tuple[int, bytes] | None:
    """One frame from the client (masked, as RFC 6455 requires of clients): ``(opcode,
    payload)``, or None at the end of the stream. Fragmented messages are not supported
    (the Kubernetes clients send each message as one frame)."""
    head = stream.read(2)
    if len(head) < 2:
        return None
    opcode = head[0] & 0x0F
    masked = head[1] & 0x80
    length = head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", stream.read(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", stream.read(8))
    mask = stream.read(4) if masked else b"\0\0\0\0"
    payload = stream.read(length)
    if len(payload) < length:
        return None
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
