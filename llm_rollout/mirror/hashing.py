"""SHA-256 whose running state can be saved and restored (a checkpoint of a partial hash).

hashlib cannot export its state, so a resumed multipart upload used to re-read every part
already uploaded from the hub just to rebuild the file's sha256. OpenSSL's low-level
`SHA256_Init/SHA256_Update/SHA256_Final` work on a caller-owned `SHA256_CTX`, plain memory
(h[8], Nl, Nh, data[16], num, md_len: 28 32-bit words), so the state is 112 bytes we can copy
out and back. The functions are deprecated in OpenSSL 3 but exported; they run the same
assembly as hashlib's EVP path, and ctypes drops the GIL for each call.

The library is checked once at import against hashlib (including a save/restore round trip
mid-block); when it is missing or disagrees, `ResumableSha256.state()` returns None and
callers fall back to re-reading, with hashlib doing the hashing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct

_CTX_BYTES = 112
# Tag stored next to a saved state: a state is only restored by the same layout.
STATE_FORMAT = "openssl-sha256-ctx-112"


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
    except (OSError, AttributeError):
        return None
    init.argtypes = [ctypes.c_void_p]
    init.restype = ctypes.c_int
    update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    update.restype = ctypes.c_int
    final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    final.restype = ctypes.c_int
    return lib


_lib = _load()


def _address(data: bytes | bytearray | memoryview) -> tuple[int, int, object]:
    """(address, length, keep-alive) of `data`'s bytes without copying writable buffers."""
    if isinstance(data, bytes):
        keep = ctypes.c_char_p(data)
        return ctypes.cast(keep, ctypes.c_void_p).value or 0, len(data), keep
    view = memoryview(data).cast("B")
    if view.readonly:
        return _address(view.tobytes())
    if view.nbytes == 0:
        return 0, 0, view
    array = (ctypes.c_char * view.nbytes).from_buffer(view)
    return ctypes.addressof(array), view.nbytes, array


class ResumableSha256:
    """sha256 with `state()` / `from_state()`; hashlib when OpenSSL's SHA256_CTX is unusable."""

    def __init__(self) -> None:
        self._ctx: ctypes.Array[ctypes.c_char] | None = None
        self._fallback: hashlib._Hash | None = None
        if _usable:
            self._ctx = ctypes.create_string_buffer(_CTX_BYTES)
            assert _lib is not None
            _lib.SHA256_Init(self._ctx)
        else:
            self._fallback = hashlib.sha256()

    @property
    def resumable(self) -> bool:
        """True when `state()` can export the running state."""
        return self._ctx is not None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash `data` after what was hashed so far."""
        if self._ctx is None:
            assert self._fallback is not None
            self._fallback.update(data)
            return
        address, length, keep = _address(data)
        if length:
            assert _lib is not None
            _lib.SHA256_Update(self._ctx, address, length)
        del keep

    def hexdigest(self) -> str:
        """Hex digest of everything hashed; the running state is left untouched."""
        if self._ctx is None:
            assert self._fallback is not None
            return self._fallback.hexdigest()
        assert _lib is not None
        ctx = ctypes.create_string_buffer(self._ctx.raw, _CTX_BYTES)
        out = ctypes.create_string_buffer(32)
        _lib.SHA256_Final(out, ctx)
        return out.raw.hex()

    def state(self) -> str | None:
        """The running state as hex, or None when the fallback (hashlib) is in use."""
        return self._ctx.raw.hex() if self._ctx is not None else None

    @property
    def bytes_hashed(self) -> int:
        """How many bytes the state covers (from the context's bit counters)."""
        if self._ctx is None:
            raise RuntimeError("the hashlib fallback does not expose its byte count")
        return state_bytes_hashed(self._ctx.raw.hex())

    @classmethod
    def from_state(cls, hex_state: str) -> ResumableSha256:
        """A hasher continuing from `state()`; ValueError when `hex_state` is not one."""
        if not _usable:
            raise ValueError("no resumable sha256 implementation on this machine")
        raw = bytes.fromhex(hex_state)
        if len(raw) != _CTX_BYTES:
            raise ValueError(f"a sha256 state is {_CTX_BYTES} bytes, got {len(raw)}")
        num, md_len = struct.unpack_from("<II", raw, 104)
        if md_len != 32 or num >= 64:
            raise ValueError("not a SHA256_CTX state")
        hasher = cls()
        assert hasher._ctx is not None
        ctypes.memmove(hasher._ctx, raw, _CTX_BYTES)
        return hasher


def state_bytes_hashed(hex_state: str) -> int:
    """Bytes covered by a saved state: SHA256_CTX keeps the bit count as Nl (low), Nh (high)."""
    raw = bytes.fromhex(hex_state)
    low, high = struct.unpack_from("<II", raw, 32)
    return (int(high) << 32 | int(low)) // 8


def _self_test() -> bool:
    if _lib is None or struct.calcsize("<I") != 4:
        return False
    global _usable
    _usable = True
    try:
        data = bytes(range(256)) * 41  # 10,496 bytes: several blocks and a partial one
        first = ResumableSha256()
        first.update(data[:100])
        resumed = ResumableSha256.from_state(first.state() or "")
        resumed.update(data[100:])
        whole = ResumableSha256()
        whole.update(data)
        expected = hashlib.sha256(data).hexdigest()
        ok = (
            resumed.hexdigest() == expected
            and whole.hexdigest() == expected
            and state_bytes_hashed(first.state() or "") == 100
        )
    except ValueError:
        ok = False
    _usable = ok
    return ok


_usable = False
RESUMABLE = _self_test()
SHA256_IMPLEMENTATION = "openssl-SHA256_CTX" if RESUMABLE else "hashlib"

__all__ = [
    "RESUMABLE",
    "SHA256_IMPLEMENTATION",
    "STATE_FORMAT",
    "ResumableSha256",
    "state_bytes_hashed",
]
