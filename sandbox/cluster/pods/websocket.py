"""The server side of a WebSocket (RFC 6455) as far as the kubelet's exec stream needs it:
the opening handshake and unmasked binary frames out, a close frame at the end. Frames from the
client are not read (exec without stdin)."""

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
