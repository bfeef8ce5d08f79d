"""Server-side copy of unchanged files from one revision prefix to another inside OSS.

A refresh of a moved branch mirrors into a new revision prefix; files whose sha256 did not
change are copied by OSS itself (no byte passes through this process), so the mirror that runs
next transfers only the changed files. What the mirror's skip check reads must hold on the
copy (see `llm_rollout.mirror.transfer.verified_in_place`): the size, the CRC-64 OSS reports
(`x-oss-hash-crc64ecma`, a function of the bytes, so equal on an exact copy) and
`x-oss-meta-sha256`, which is set explicitly on every copy.

- up to `multipart_threshold_bytes`: one CopyObject with the metadata directive REPLACE, so
  the sha256 meta is right even when the source object only had it in its manifest;
- larger: InitiateMultipartUpload (carrying the meta) + UploadPartCopy ranges +
  CompleteMultipartUpload; OSS caps CopyObject at 1 GB.

Every copy is verified with a HEAD (size and CRC-64 equal to the source record's); a copy that
does not verify is deleted, so nothing unverified ever carries the sha256 meta. Copies already
in place and verified are skipped, so a re-run after a failure only copies what is missing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import oss2
import oss2.models

from llm_rollout.errors import RolloutError
from llm_rollout.mirror.models import SHA256_META
from llm_rollout.mirror.transfer import head_object
from llm_rollout.oss import IntegrityError, oss_call, retry_transient

GIB = 1024**3
# OSS refuses CopyObject above 1 GB; shards are usually a few GB, so they take UploadPartCopy.
DEFAULT_MULTIPART_THRESHOLD_BYTES = GIB
DEFAULT_COPY_PART_BYTES = 256 * 1024**2
MIN_COPY_PART_BYTES = 100 * 1024
MAX_PARTS = 10_000


@dataclass(frozen=True)
class CopyItem:
    """One verified source object to reproduce at `target_key`."""

    path: str
    source_key: str
    target_key: str
    size: int
    sha256: str
    crc64: str


@dataclass(frozen=True)
class CopyOutcome:
    path: str
    method: str  # "copy-object", "upload-part-copy" or "already-present"
    size: int
    requests: int


@dataclass(frozen=True)
class CopyResult:
    """What a batch of server-side copies did."""

    outcomes: tuple[CopyOutcome, ...]
    seconds: float

    @property
    def bytes_copied(self) -> int:
        """Bytes OSS copied server-side (none of them crossed this machine)."""
        return sum(o.size for o in self.outcomes if o.method != "already-present")

    @property
    def copied(self) -> list[str]:
        return [o.path for o in self.outcomes if o.method != "already-present"]


def _verified_copy(bucket: oss2.Bucket, item: CopyItem) -> bool:
    info = head_object(bucket, item.target_key)
    return (
        info is not None
        and info.size == item.size
        and info.crc64 is not None
        and str(info.crc64) == item.crc64
        and info.sha256_meta == item.sha256
    )


def _verify_or_delete(bucket: oss2.Bucket, item: CopyItem) -> None:
    info = head_object(bucket, item.target_key)
    problem = None
    if info is None:
        problem = "object missing after copy"
    elif info.size != item.size:
        problem = f"size {info.size} != source {item.size}"
    elif info.crc64 is None or str(info.crc64) != item.crc64:
        problem = f"CRC64 {info.crc64} != source {item.crc64}"
    if problem is not None:
        key = item.target_key
        oss_call(f"DELETE {key}", lambda: bucket.delete_object(key))
        raise IntegrityError(f"{item.path}: server-side copy did not verify: {problem}")


def _copy_object(bucket: oss2.Bucket, item: CopyItem) -> int:
    headers = {"x-oss-metadata-directive": "REPLACE", SHA256_META: item.sha256}
    oss_call(
        f"COPY {item.source_key} -> {item.target_key}",
        lambda: bucket.copy_object(
            bucket.bucket_name, item.source_key, item.target_key, headers=headers
        ),
    )
    return 1


def part_ranges(size: int, part_bytes: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) byte ranges covering `size` bytes in at most 10,000 parts."""
    part = max(MIN_COPY_PART_BYTES, part_bytes, -(-size // MAX_PARTS))
    return [(start, min(size, start + part) - 1) for start in range(0, size, part)]


def _part_copy(
    bucket: oss2.Bucket, item: CopyItem, byte_range: tuple[int, int], upload_id: str, number: int
) -> oss2.models.PutObjectResult:
    return oss_call(
        f"UPLOAD-PART-COPY {item.target_key} #{number}",
        lambda: bucket.upload_part_copy(
            bucket.bucket_name, item.source_key, byte_range, item.target_key, upload_id, number
        ),
    )


def _upload_part_copy(bucket: oss2.Bucket, item: CopyItem, part_bytes: int) -> int:
    key = item.target_key
    init = oss_call(
        f"INIT {key}", lambda: bucket.init_multipart_upload(key, headers={SHA256_META: item.sha256})
    )
    upload_id = str(init.upload_id)
    parts: list[oss2.models.PartInfo] = []
    try:
        for number, byte_range in enumerate(part_ranges(item.size, part_bytes), start=1):
            result = _part_copy(bucket, item, byte_range, upload_id, number)
            parts.append(oss2.models.PartInfo(number, result.etag))
        oss_call(f"COMPLETE {key}", lambda: bucket.complete_multipart_upload(key, upload_id, parts))
    except RolloutError:
        # An unfinished upload holds storage until aborted; a re-run starts a new one.
        with contextlib.suppress(RolloutError):
            oss_call(f"ABORT {key}", lambda: bucket.abort_multipart_upload(key, upload_id))
        raise
    return len(parts) + 2


def copy_one(
    bucket: oss2.Bucket,
    item: CopyItem,
    *,
    multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
    part_bytes: int = DEFAULT_COPY_PART_BYTES,
    attempts: int = 5,
) -> CopyOutcome:
    """Copy one object server-side (skipped when already there and verified)."""
    if item.source_key == item.target_key:
        raise ValueError(f"{item.path}: source and target are the same key")
    if retry_transient(lambda: _verified_copy(bucket, item), attempts=attempts):
        return CopyOutcome(item.path, "already-present", item.size, 1)
    if item.size <= multipart_threshold_bytes:
        requests = retry_transient(lambda: _copy_object(bucket, item), attempts=attempts)
        method = "copy-object"
    else:
        requests = retry_transient(
            lambda: _upload_part_copy(bucket, item, part_bytes), attempts=attempts
        )
        method = "upload-part-copy"
    retry_transient(lambda: _verify_or_delete(bucket, item), attempts=attempts)
    return CopyOutcome(item.path, method, item.size, requests + 2)


def copy_unchanged(
    bucket: oss2.Bucket,
    items: Sequence[CopyItem],
    *,
    multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
    part_bytes: int = DEFAULT_COPY_PART_BYTES,
    max_parallel: int = 8,
    attempts: int = 5,
) -> CopyResult:
    """Copy every item server-side, `max_parallel` at a time; all verified or an error."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="oss-copy") as pool:
        outcomes = list(
            pool.map(
                lambda item: copy_one(
                    bucket,
                    item,
                    multipart_threshold_bytes=multipart_threshold_bytes,
                    part_bytes=part_bytes,
                    attempts=attempts,
                ),
                items,
            )
        )
    return CopyResult(tuple(outcomes), time.monotonic() - started)
