"""Durable multipart checkpoints: upload id plus every part OSS acknowledged.

One small JSON file per object being uploaded, replaced atomically (write + fsync + rename)
after each acknowledged part, so a kill -9 at any moment leaves either the old or the new
state. On resume the checkpoint is reconciled with ListParts: a part counts as uploaded only
when OSS lists it with the same ETag and size the checkpoint recorded; OSS's CRC64 of each part
comes from the checkpoint because ListParts does not report it.

The checkpoint also carries the file's running sha256 state and CRC64 after the last part
hashed in order (`hashed_parts`), so a resume continues hashing there instead of re-reading
those parts from the hub. The state is used only when every part it covers is still listed
by OSS as checkpointed; a wrong state cannot pass unnoticed: the final sha256 (vs the hub's)
and the object's CRC64 (vs OSS's HEAD) both cover it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from llm_rollout.settings import settings

CHECKPOINT_FORMAT = 1


class PartState(BaseModel):
    """One part OSS acknowledged."""

    number: int = Field(description="Part number (1-based).", ge=1)
    size: int = Field(description="Part size in bytes.", ge=0)
    crc64: int = Field(description="CRC-64/ECMA OSS reported for the part.")
    etag: str = Field(description="ETag OSS returned for the part.")


class UploadState(BaseModel):
    """Checkpoint of one multipart upload."""

    format: int = Field(default=CHECKPOINT_FORMAT, description="Checkpoint format version.")
    bucket: str = Field(description="Bucket name.")
    key: str = Field(description="Object key.")
    upload_id: str = Field(description="OSS multipart upload id.")
    size: int = Field(description="Total object size in bytes.")
    sha256: str = Field(description="Expected sha256 of the whole object (from the hub).")
    part_size: int = Field(description="Part size in bytes.")
    parts: dict[int, PartState] = Field(default_factory=dict, description="Acknowledged parts.")
    hashed_parts: int = Field(
        default=0, ge=0, description="Parts 1..N covered by sha256_state and hashed_crc64."
    )
    sha256_format: str | None = Field(
        default=None, description="Layout of sha256_state (see mirror.hashing.STATE_FORMAT)."
    )
    sha256_state: str | None = Field(
        default=None, description="Hex running sha256 state after part `hashed_parts`."
    )
    hashed_crc64: int | None = Field(
        default=None, description="CRC-64/ECMA of parts 1..`hashed_parts` in order."
    )


def default_checkpoint_dir() -> Path:
    """~/.cache/llm-rollout/mirror (XDG_CACHE_HOME honoured)."""
    return settings().cache_dir / "mirror"


class CheckpointStore:
    """Checkpoint files under one directory, keyed by endpoint + bucket + key."""

    def __init__(self, directory: Path, endpoint: str) -> None:
        self._dir = directory
        self._endpoint = endpoint
        self._locks: dict[Path, threading.Lock] = {}
        self._guard = threading.Lock()

    def _path(self, bucket: str, key: str) -> Path:
        digest = hashlib.sha256(f"{self._endpoint}\0{bucket}\0{key}".encode()).hexdigest()
        return self._dir / f"{digest[:32]}.json"

    def _lock(self, path: Path) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(path, threading.Lock())

    def load(self, bucket: str, key: str) -> UploadState | None:
        """The checkpoint of `key`, or None when absent or unreadable (then start afresh)."""
        path = self._path(bucket, key)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            state = UploadState.model_validate_json(raw)
        except ValidationError:
            return None
        if state.format != CHECKPOINT_FORMAT or state.key != key or state.bucket != bucket:
            return None
        return state

    def save(self, state: UploadState) -> None:
        """Atomically replace the checkpoint of `state.key`."""
        path = self._path(state.bucket, state.key)
        with self._lock(path):
            self._write(path, state)

    def record_part(self, state: UploadState, part: PartState) -> None:
        """Add an acknowledged part to `state` and persist it (thread-safe per object)."""
        path = self._path(state.bucket, state.key)
        with self._lock(path):
            state.parts[part.number] = part
            self._write(path, state)

    def record_hash(
        self, state: UploadState, parts: int, sha256_state: str, sha256_format: str, crc: int
    ) -> None:
        """Persist the running hash after part `parts` (called in part order, one thread)."""
        path = self._path(state.bucket, state.key)
        with self._lock(path):
            state.hashed_parts = parts
            state.sha256_state = sha256_state
            state.sha256_format = sha256_format
            state.hashed_crc64 = crc
            self._write(path, state)

    def delete(self, bucket: str, key: str) -> None:
        """Forget the checkpoint of `key` (after completion or abort)."""
        path = self._path(bucket, key)
        with self._lock(path):
            path.unlink(missing_ok=True)

    def _write(self, path: Path, state: UploadState) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        payload = json.dumps(state.model_dump(mode="json"), separators=(",", ":"))
        # O_NOFOLLOW: a symlink planted at the temporary name must not redirect the write
        # outside the checkpoint directory (the final rename replaces a link, not its target).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
