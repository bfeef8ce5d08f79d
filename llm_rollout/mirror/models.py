"""Parameter and result objects of the mirror (independent of the service spec)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.upstream_names import RESERVED_TOP

MANIFEST_NAME = f"{RESERVED_TOP}/manifest.json"
MANIFEST_FORMAT = 1
# x-oss-meta-* header carrying the hub's sha256; set only on objects whose bytes were verified.
SHA256_META = "x-oss-meta-sha256"
OSS_MIN_PART_BYTES = 100 * 1024
OSS_MAX_PARTS = 10_000


class MirrorOptions(BaseModel):
    """How to move bytes: part size, parallelism, retries, mode."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["streamed", "staged"] = Field(
        default="streamed",
        description="streamed: hub ranges feed OSS multipart parts with no local copy; "
        "staged: the library's download_repo (what snapshot_download runs), given the checked "
        "file list, to a local dir first, then upload.",
    )
    part_size_mb: float = Field(
        default=4.0,
        ge=0.1,
        le=5 * 1024,
        description="Multipart part size in MiB (raised automatically to stay within "
        "10,000 parts); files up to one part go up with a single PutObject.",
    )
    max_parallel_files: int = Field(
        default=4, ge=1, le=64, description="Files transferred at the same time."
    )
    max_parallel_parts: int = Field(
        default=8, ge=1, le=128, description="Parts (hub range + OSS upload) in flight at once."
    )
    retry_attempts: int = Field(
        default=5, ge=1, le=50, description="Attempts per request on transient errors."
    )
    retry_base_delay_s: float = Field(
        default=0.5, ge=0, le=60, description="First backoff delay in seconds (doubles)."
    )
    request_timeout_s: float = Field(
        default=60.0, gt=0, description="Read timeout of one hub or OSS request in seconds."
    )
    warm_validation_imports: bool = Field(
        default=True,
        description="Import great-expectations and pandas in a background thread while bytes "
        "move (saves their import time, about 2 s, at the end; costs ~180 MB RSS while the "
        "part buffers are also held). Off: they are imported once every part has been "
        "fetched, as the buffers are released, for hosts short of memory.",
    )
    checkpoint_dir: Path | None = Field(
        default=None,
        description="Directory for multipart checkpoints; default ~/.cache/llm-rollout/mirror. "
        "Put it on a persistent volume when workers are ephemeral.",
    )
    staging_dir: Path | None = Field(
        default=None,
        description="staged mode only: where snapshot_download writes; default a temp dir.",
    )

    @property
    def part_size_bytes(self) -> int:
        """Configured part size in bytes (before the 10,000-part adjustment)."""
        return max(OSS_MIN_PART_BYTES, int(self.part_size_mb * 1024 * 1024))

    def part_size_for(self, file_size: int) -> int:
        """Part size for a file: the configured size, grown so the file fits in 10,000 parts."""
        needed = -(-file_size // OSS_MAX_PARTS)
        return max(self.part_size_bytes, needed)


class FileRecord(BaseModel):
    """One verified object of a mirror."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="Path inside the model repository.")
    key: str = Field(description="OSS object key.")
    size: int = Field(description="Size in bytes.", ge=0)
    sha256: str = Field(description="Hex sha256, equal to the hub's.")
    crc64: str = Field(description="CRC-64/ECMA as OSS reports it (decimal string).")
    uploaded_at: str = Field(description="UTC ISO-8601 time the object was verified.")


class Manifest(BaseModel):
    """The completion marker of one mirrored revision, written last."""

    format: int = Field(default=MANIFEST_FORMAT, description="Manifest format version.")
    model_id: str = Field(description="ModelScope model id.")
    revision: str = Field(description="Hub revision mirrored.")
    content_digest: str = Field(
        description="sha256 over (path, size, sha256) of the files; see HubListing."
    )
    bucket: str = Field(description="Bucket holding the objects.")
    prefix: str = Field(description="Key prefix of the revision (no trailing '/').")
    created_at: str = Field(description="UTC ISO-8601 time the manifest was written.")
    total_bytes: int = Field(description="Sum of file sizes in bytes.")
    files: list[FileRecord] = Field(description="Every mirrored file, sorted by path.")


FileStatus = Literal["skipped", "uploaded", "resumed"]


class FileOutcome(BaseModel):
    """What happened to one file in one run."""

    model_config = ConfigDict(frozen=True)

    record: FileRecord = Field(description="The verified object.")
    status: FileStatus = Field(description="skipped (already verified), uploaded, or resumed.")
    bytes_sent: int = Field(description="Bytes sent to OSS for this file in this run.")
    bytes_fetched: int = Field(description="Bytes read from the hub for this file in this run.")
    seconds: float = Field(description="Wall time spent on the file, in seconds.")


class MirrorResult(BaseModel):
    """Outcome of a complete, verified mirror."""

    manifest_uri: str = Field(description="oss:// URI of the manifest object.")
    model_uri: str = Field(description="oss:// URI of the revision prefix (ends with '/').")
    manifest: Manifest = Field(description="The manifest written (or found verified).")
    files: list[FileOutcome] = Field(description="Per-file outcome of this run.")
    bytes_sent: int = Field(description="Bytes sent to OSS in this run.")
    bytes_fetched: int = Field(description="Bytes read from the hub in this run.")
    seconds: float = Field(description="Wall time of the run in seconds.")
    phases: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds per phase of the run: read_manifest, list_hub, check_in_place, "
        "transfer (files moving, wall), finish_files (CompleteMultipartUpload + HEAD, summed "
        "over files: it overlaps other files' transfers), validate, write_manifest.",
    )


class MirrorStatus(BaseModel):
    """Answer of `is_mirrored`: complete or not, and why not."""

    complete: bool = Field(description="True when the manifest and every object verify.")
    reason: str = Field(description="Why the mirror is incomplete ('' when complete).")
    manifest_uri: str = Field(description="oss:// URI where the manifest is expected.")
    manifest: Manifest | None = Field(default=None, description="The manifest, when readable.")


class MirrorError(PermanentError):
    """One or more files could not be mirrored for a reason retrying cannot fix."""

    def __init__(self, message: str, *, failed: dict[str, str]) -> None:
        super().__init__(message)
        self.failed = dict(failed)


class MirrorTransientError(TransientError):
    """Files failed for transient reasons only; a re-run resumes where this one stopped."""

    def __init__(self, message: str, *, failed: dict[str, str]) -> None:
        super().__init__(message)
        self.failed = dict(failed)


class MirrorProgress(Protocol):
    """Progress callbacks; called from worker threads, so implementations must be thread-safe."""

    def on_start(self, total_files: int, total_bytes: int) -> None:
        """The plan is known: `total_bytes` is the size of every file to mirror."""

    def on_bytes(self, path: str, nbytes: int) -> None:
        """`nbytes` more of `path` are accounted for (sent, or verified in place)."""

    def on_file_done(self, outcome: FileOutcome) -> None:
        """`outcome.record` is verified in OSS."""


class NullProgress:
    """Progress sink that ignores everything."""

    def on_start(self, total_files: int, total_bytes: int) -> None:
        """Ignore."""

    def on_bytes(self, path: str, nbytes: int) -> None:
        """Ignore."""

    def on_file_done(self, outcome: FileOutcome) -> None:
        """Ignore."""
