"""Moving one file into OSS with end-to-end verification, from the hub or a local copy.

Per file:
- already there and verified (size + OSS CRC64 + sha256 recorded in the previous manifest or
  in `x-oss-meta-sha256`, which is only ever set on verified objects) -> skipped, zero bytes;
- up to one part -> one ranged GET, sha256 checked, one PutObject (CRC64 checked);
- larger -> multipart: parts are fetched with ranged GETs and uploaded in parallel; the
  file's sha256 and CRC64 are computed in part order (completed parts wait in a bounded window
  until their turn); every part's CRC64 is compared with the one OSS returns for it, the file's
  with the final object's `x-oss-hash-crc64ecma` (HEAD) -- oss2 skips that comparison after a
  resumed upload. oss2's own CRC is off: it would compute the same values with crcmod, holding
  the GIL, in the sending thread.

Resume: a checkpoint (upload id + acknowledged parts + the running sha256/CRC64 state after
the last part hashed in order) is reconciled with ListParts. Parts OSS already holds are not
sent again -- including parts it stored that the checkpoint never recorded (a kill between
the two): their bytes are read from the source again and adopted when their MD5 equals the
part's listed ETag. Parts the saved hash state covers are not read again either: hashing continues
from the state (OpenSSL's SHA256_CTX, see `mirror.hashing`). Parts uploaded beyond that prefix
(out of order, at most a window of them) are read again from the *source* to continue the
hash -- OSS does not serve the parts of an unfinished upload -- and checked against their
recorded CRC64, which ties the hashed bytes to the bytes OSS holds. Where no resumable hash is
available (no libcrypto), every uploaded part is re-read that way.

Memory is bounded by the buffer pool (`max_parallel_parts + max_parallel_files` buffers of one
part each, reused): parts are fetched into a pool buffer, CRC-checked and sent from it, and
hashed from it in order. Nothing is written to local disk in streamed mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import httpx
import oss2
import oss2.exceptions
import oss2.models

from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.hub import (
    HubAccess,
    HubAccessError,
    HubFile,
    HubNotFoundError,
    HubUnavailableError,
)
from llm_rollout.mirror.buffers import BufferPool
from llm_rollout.mirror.checkpoint import CheckpointStore, PartState, UploadState
from llm_rollout.mirror.hashing import STATE_FORMAT, ResumableSha256
from llm_rollout.mirror.models import (
    SHA256_META,
    FileOutcome,
    FileRecord,
    FileStatus,
    MirrorOptions,
    MirrorProgress,
)
from llm_rollout.oss import (
    IntegrityError,
    OssRequestError,
    OssTarget,
    crc64,
    head_crc64,
    oss_call,
    retry_transient,
    translate_oss_error,
)
from llm_rollout.upstream_names import (
    UnsafeUpstreamData,
    check_part_number,
    check_size,
    local_path_inside,
    parse_content_range,
)

_T = TypeVar("_T")


def utc_now() -> str:
    """Current UTC time, ISO-8601 with seconds."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class RangeSource(Protocol):
    """Bytes of the files to mirror, readable by range into a caller's buffer."""

    def read_into(self, path: str, offset: int, view: memoryview) -> None:
        """Fill `view` with the `len(view)` bytes of `path` starting at `offset`."""
        ...


class HubRangeSource:
    """Ranged GETs against the hub's file URLs (httpx streaming, resumed with Range)."""

    def __init__(
        self,
        access: HubAccess,
        files: Mapping[str, tuple[str, int]],
        options: MirrorOptions,
        on_fetched: Callable[[int], None],
    ) -> None:
        """`files`: path -> (download URL, listed size in bytes)."""
        self._files = dict(files)
        self._headers = {**access.headers, "Accept-Encoding": "identity"}
        self._options = options
        self._on_fetched = on_fetched
        connections = options.max_parallel_parts + options.max_parallel_files + 2
        self._client = httpx.Client(
            cookies=access.cookies,
            follow_redirects=True,
            timeout=httpx.Timeout(options.request_timeout_s, connect=30.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def read_into(self, path: str, offset: int, view: memoryview) -> None:
        """Fill `view` from a range, resuming after drops from the first byte not received."""
        url, size = self._files[path]
        fill = _Fill(view)
        length = len(view)
        failures = 0
        while fill.filled < length:
            before = fill.filled
            error: Exception | None = None
            try:
                self._read_once(url, path, offset, fill, size)
            except (httpx.TransportError, HubUnavailableError) as exc:
                error = exc
            if fill.filled >= length:
                break
            # Only consecutive attempts without progress count against the limit.
            failures = 0 if fill.filled > before else failures + 1
            if failures >= self._options.retry_attempts:
                cause = type(error).__name__ if error else "no data"
                raise HubUnavailableError(
                    f"hub: reading {path} failed after {failures} attempts ({cause})"
                ) from error
            if failures:
                delay = min(20.0, self._options.retry_base_delay_s * 2 ** (failures - 1))
                time.sleep(delay)  # backoff between attempts

    def _read_once(self, url: str, path: str, offset: int, fill: _Fill, size: int) -> None:
        """One GET of the bytes `fill` still lacks; may end early on a drop.

        What the answer says about itself is checked before its body is used: a 206 must
        carry exactly the range asked for and the listed size as its total, a 200 the listed
        size as its length.
        """
        start = offset + fill.filled
        stop = offset + len(fill.view)
        headers = {**self._headers, "Range": f"bytes={start}-{stop - 1}"}
        with self._client.stream("GET", url, headers=headers) as resp:
            status = resp.status_code
            if status == 206:
                parse_content_range(
                    resp.headers.get("Content-Range"),
                    where=f"hub: {path}",
                    start=start,
                    stop=stop,
                    total=size,
                )
            elif status == 200 and start == 0:
                # A server ignoring Range sends the whole file; we stop at `stop`.
                _check_whole_length(resp.headers.get("Content-Length"), path, size)
            elif status == 404:
                raise HubNotFoundError(f"hub: {path} not found")
            elif status in (401, 403):
                raise HubAccessError(f"hub: access to {path} denied (HTTP {status})")
            elif status == 416:
                raise IntegrityError(f"hub: {path} is shorter than its listed size")
            elif status == 429 or status >= 500:
                raise HubUnavailableError(f"hub: {path}: HTTP {status}")
            else:
                raise PermanentError(f"hub: {path}: unexpected HTTP {status}")
            # No chunk_size: httpx would buffer up to it and lose the buffer on a drop.
            for chunk in resp.iter_bytes():
                take = fill.put(chunk)
                self._on_fetched(take)
                if fill.filled >= len(fill.view):
                    break
            # Ending early is a dropped transfer: the caller resumes from `fill.filled`.


def _check_whole_length(header: str | None, path: str, size: int) -> None:
    if header is None:
        return  # chunked: the sha256 over the bytes decides
    if not header.isdigit() or int(header) != size:
        raise UnsafeUpstreamData(
            f"hub: {path}", header, "size", f"Content-Length differs from the listed size {size}"
        )


class _Fill:
    """A caller's range buffer and how much of it has arrived."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.filled = 0

    def put(self, chunk: bytes) -> int:
        """Copy as much of `chunk` as still fits; the number of bytes taken."""
        take = min(len(chunk), len(self.view) - self.filled)
        self.view[self.filled : self.filled + take] = memoryview(chunk)[:take]
        self.filled += take
        return take


class LocalRangeSource:
    """Ranges of files in a local directory (staged mode, after snapshot_download)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def check_staged(self, file: HubFile) -> None:
        """The staged copy of `file` is a regular file inside the root with the listed size."""
        where = f"staged copy in {self._root}"
        local_path_inside(self._root, file.path, where=where)
        try:
            info = (self._root / file.path).lstat()
        except OSError as exc:
            raise PermanentError(f"staged copy of {file.path} missing: {exc.strerror}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeUpstreamData(where, file.path, "not-a-file", "not a regular file")
        if info.st_size != file.size:
            raise UnsafeUpstreamData(
                where, file.path, "size", f"{info.st_size} bytes on disk, {file.size} listed"
            )

    def read_into(self, path: str, offset: int, view: memoryview) -> None:
        """Fill `view` with bytes of `root/path` from `offset`."""
        file_path = local_path_inside(self._root, path, where=f"staged copy in {self._root}")
        filled = 0
        try:
            with file_path.open("rb", buffering=0) as fh:
                fh.seek(offset)
                while filled < len(view):
                    n = fh.readinto(view[filled:])
                    if not n:
                        break
                    filled += n
        except OSError as exc:
            raise PermanentError(f"staged copy of {path} unreadable: {exc.strerror}") from exc
        if filled != len(view):
            raise IntegrityError(f"staged copy of {path} is shorter than its listed size")


@dataclass
class Counters:
    """Byte counters shared by the workers of one run."""

    sent: int = 0
    fetched: int = 0
    finish_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_finish(self, seconds: float) -> None:
        """Count time spent completing and verifying a finished upload."""
        with self._lock:
            self.finish_s += seconds

    def add_sent(self, n: int) -> None:
        """Count bytes sent to OSS."""
        with self._lock:
            self.sent += n

    def add_fetched(self, n: int) -> None:
        """Count bytes read from the source."""
        with self._lock:
            self.fetched += n


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD tells about an object."""

    size: int
    crc64: int | None
    sha256_meta: str | None


@dataclass
class TransferContext:
    """Everything the per-file workers share during one run."""

    bucket: oss2.Bucket
    target: OssTarget
    source: RangeSource
    options: MirrorOptions
    checkpoints: CheckpointStore
    part_pool: ThreadPoolExecutor
    buffers: BufferPool
    progress: MirrorProgress
    counters: Counters
    # Called once per file when its last part has been handed to the part pool.
    on_submitted: Callable[[], None] = lambda: None

    def retry(self, fn: Callable[[], _T]) -> _T:
        """Retry an OSS call on transient errors with the run's backoff settings."""
        return retry_transient(
            fn, attempts=self.options.retry_attempts, base_delay_s=self.options.retry_base_delay_s
        )


def head_object(bucket: oss2.Bucket, key: str) -> ObjectInfo | None:
    """HEAD `key`; None when the object does not exist. Other errors are translated."""
    try:
        result = bucket.head_object(key)
    except oss2.exceptions.NoSuchKey:
        return None
    except oss2.exceptions.NotFound as exc:
        if getattr(exc, "code", "") in ("", "NoSuchKey"):
            return None
        raise translate_oss_error(exc, f"HEAD {key}") from exc
    except oss2.exceptions.OssError as exc:
        raise translate_oss_error(exc, f"HEAD {key}") from exc
    meta = result.headers.get(SHA256_META)
    return ObjectInfo(
        size=int(result.content_length or 0),
        crc64=head_crc64(result.headers),
        sha256_meta=meta.lower() if meta else None,
    )


def verified_in_place(
    ctx: TransferContext, file: HubFile, previous: FileRecord | None
) -> FileRecord | None:
    """The record of `file` if OSS already holds it verified, else None."""
    key = ctx.target.file_key(file.path)
    info = ctx.retry(lambda: head_object(ctx.bucket, key))
    if info is None or info.crc64 is None or info.size != file.size:
        return None
    same_file = previous is not None and (previous.sha256, previous.size) == (
        file.sha256,
        file.size,
    )
    recorded_by_manifest = same_file and previous is not None and previous.crc64 == str(info.crc64)
    if same_file and not recorded_by_manifest:
        # The manifest verified these bytes with another CRC64: the object changed since,
        # and its x-oss-meta-sha256 (kept by an overwrite or copy) no longer vouches for it.
        return None
    if not (recorded_by_manifest or info.sha256_meta == file.sha256):
        return None
    return FileRecord(
        path=file.path,
        key=key,
        size=file.size,
        sha256=file.sha256,
        crc64=str(info.crc64),
        uploaded_at=previous.uploaded_at if recorded_by_manifest and previous else utc_now(),
    )


def _check_wire_crc(action: str, local_crc: int, result: object) -> None:
    """Compare the CRC64 OSS computed over what it received with ours over what we sent.

    The bucket runs with oss2's own CRC off (it is crcmod in the sending thread, holding the
    GIL); this is the same check with the fast CRC. A mismatch means bytes were damaged on
    the wire: transient, the request is sent again. A missing header is left to the caller.
    """
    server_crc = getattr(result, "crc", None)
    if server_crc is not None and int(server_crc) != local_crc:
        raise OssRequestError(f"OSS {action}: CRC64 mismatch between client and server")


def _sha_mismatch(file: HubFile, got: str) -> IntegrityError:
    return IntegrityError(
        f"{file.path}: sha256 mismatch: the hub lists {file.sha256[:16]}..., the bytes served "
        f"hash to {got[:16]}...; the file was not stored as complete"
    )


def _verify_head(ctx: TransferContext, file: HubFile, key: str, crc: int) -> None:
    info = ctx.retry(lambda: head_object(ctx.bucket, key))
    problem = None
    if info is None:
        problem = "object missing after upload"
    elif info.size != file.size:
        problem = f"size {info.size} != {file.size}"
    elif info.crc64 is None:
        problem = "OSS reports no x-oss-hash-crc64ecma"
    elif info.crc64 != crc:
        problem = f"OSS CRC64 {info.crc64} != combined part CRC64 {crc}"
    if problem is not None:
        # The object cannot be trusted; remove it so nothing looks complete.
        oss_call(f"DELETE {key}", lambda: ctx.bucket.delete_object(key))
        raise IntegrityError(f"{file.path}: {problem}")


def _put_single(ctx: TransferContext, file: HubFile, key: str, mine: Counters) -> FileRecord:
    buf = ctx.buffers.acquire()
    assert buf is not None  # a blocking acquire always returns a buffer
    try:
        with memoryview(buf)[: file.size] as data:
            return _put_single_from(ctx, file, key, mine, data)
    finally:
        ctx.buffers.release(buf)


def _put_single_from(
    ctx: TransferContext, file: HubFile, key: str, mine: Counters, data: memoryview
) -> FileRecord:
    ctx.source.read_into(file.path, 0, data)
    mine.add_fetched(len(data))
    ctx.on_submitted()
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.sha256:
        raise _sha_mismatch(file, digest)
    local_crc = crc64(data)
    headers = {SHA256_META: file.sha256}

    def put() -> oss2.models.PutObjectResult:
        result = oss_call(f"PUT {key}", lambda: ctx.bucket.put_object(key, data, headers=headers))
        _check_wire_crc(f"PUT {key}", local_crc, result)
        return result

    result = ctx.retry(put)
    ctx.counters.add_sent(len(data))
    mine.add_sent(len(data))
    server_crc = getattr(result, "crc", None)
    if server_crc is None or int(server_crc) != local_crc:
        _verify_head(ctx, file, key, local_crc)
    ctx.progress.on_bytes(file.path, file.size)
    return FileRecord(
        path=file.path,
        key=key,
        size=file.size,
        sha256=file.sha256,
        crc64=str(local_crc),
        uploaded_at=utc_now(),
    )


def _list_parts(
    ctx: TransferContext, key: str, upload_id: str, part_count: int
) -> dict[int, tuple[str, int]] | None:
    """Parts OSS holds for an upload as {number: (etag, size)}; None if the upload is gone.

    Part numbers and sizes are checked: a number outside 1..`part_count` or a negative size
    is refused (it would otherwise be adopted into the completed object).
    """
    where = f"OSS ListParts {key}"

    def listing() -> dict[int, tuple[str, int]]:
        parts: dict[int, tuple[str, int]] = {}
        try:
            for part in oss2.PartIterator(ctx.bucket, key, upload_id):
                number = check_part_number(part.part_number, where=where, parts=part_count)
                size = check_size(part.size, where=where, entry=f"part {number}")
                parts[number] = (str(part.etag), size)
        except oss2.exceptions.NoSuchUpload:
            raise
        except oss2.exceptions.OssError as exc:
            raise translate_oss_error(exc, f"ListParts {key}") from exc
        return parts

    try:
        return ctx.retry(listing)
    except oss2.exceptions.NoSuchUpload:
        return None


def _abort_quietly(ctx: TransferContext, key: str, upload_id: str) -> None:
    # An upload we cannot abort expires through the bucket's lifecycle rules.
    with contextlib.suppress(oss2.exceptions.OssError):
        ctx.bucket.abort_multipart_upload(key, upload_id)


@dataclass
class _PartJob:
    number: int
    offset: int
    length: int
    known: PartState | None
    # ETag OSS lists for this part when the checkpoint never recorded it (a kill -9 between
    # OSS storing the part and the checkpoint write): adopted if the bytes' MD5 matches.
    listed_etag: str | None = None


def _run_part(
    ctx: TransferContext,
    file: HubFile,
    key: str,
    state: UploadState,
    job: _PartJob,
    mine: Counters,
    data: memoryview,
) -> PartState:
    """Fetch one part into `data`; upload it unless OSS already holds it (CRC64 match)."""
    ctx.source.read_into(file.path, job.offset, data)
    mine.add_fetched(len(data))
    local_crc = crc64(data)
    if job.known is not None and local_crc == job.known.crc64:
        return job.known
    if job.listed_etag is not None and _md5_etag(data) == job.listed_etag.upper():
        # OSS's part ETag is the MD5 of the part's bytes: these bytes are what it holds.
        adopted = PartState(
            number=job.number, size=len(data), crc64=local_crc, etag=job.listed_etag
        )
        ctx.checkpoints.record_part(state, adopted)
        return adopted
    action = f"UploadPart {key} #{job.number}"

    def upload() -> oss2.models.PutObjectResult:
        result = oss_call(
            action, lambda: ctx.bucket.upload_part(key, state.upload_id, job.number, data)
        )
        if getattr(result, "crc", None) is None:
            raise IntegrityError(f"{file.path}: OSS returned no CRC64 for part {job.number}")
        _check_wire_crc(action, local_crc, result)
        return result

    result = ctx.retry(upload)
    ctx.counters.add_sent(len(data))
    mine.add_sent(len(data))
    part = PartState(number=job.number, size=len(data), crc64=local_crc, etag=str(result.etag))
    ctx.checkpoints.record_part(state, part)
    return part


def _md5_etag(data: memoryview) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest().upper()


@dataclass
class _Resumed:
    state: UploadState
    # Parts the checkpoint recorded and OSS still lists with the same ETag and size.
    reusable: dict[int, PartState] = field(default_factory=dict)
    # Parts OSS lists that the checkpoint does not know: {number: ETag}.
    unrecorded: dict[int, str] = field(default_factory=dict)


def _open_upload(ctx: TransferContext, file: HubFile, key: str, part_size: int) -> _Resumed:
    """Resume the checkpointed upload of `key` when OSS still has it, else start one."""
    bucket_name = ctx.target.bucket
    state = ctx.checkpoints.load(bucket_name, key)
    if state is not None:
        same = (state.size, state.sha256, state.part_size) == (file.size, file.sha256, part_size)
        part_count = -(-file.size // part_size)
        listed = _list_parts(ctx, key, state.upload_id, part_count) if same else None
        if listed is not None:
            reusable = {n: p for n, p in state.parts.items() if listed.get(n) == (p.etag, p.size)}
            unrecorded = {n: etag for n, (etag, _size) in listed.items() if n not in reusable}
            return _Resumed(state, reusable, unrecorded)
        if not same:
            _abort_quietly(ctx, key, state.upload_id)
        ctx.checkpoints.delete(bucket_name, key)

    def init() -> oss2.models.InitMultipartUploadResult:
        return oss_call(
            f"InitiateMultipartUpload {key}",
            lambda: ctx.bucket.init_multipart_upload(key, headers={SHA256_META: file.sha256}),
        )

    result = ctx.retry(init)
    state = UploadState(
        bucket=bucket_name,
        key=key,
        upload_id=str(getattr(result, "upload_id", "")),
        size=file.size,
        sha256=file.sha256,
        part_size=part_size,
    )
    ctx.checkpoints.save(state)
    return _Resumed(state)


class ResumedHashMismatch(TransientError):
    """The sha256 continued from a checkpointed state did not match the hub's.

    Either the saved state or the hub's bytes are wrong; the checkpoint and the upload are
    discarded, so the next attempt hashes the file from its first byte and tells which.
    """


def _resume_hash(
    ctx: TransferContext,
    state: UploadState,
    reusable: dict[int, PartState],
    part_size: int,
    file_size: int,
) -> tuple[ResumableSha256, int, int]:
    """(hasher, CRC64, parts covered) continued from the checkpoint, or a fresh start.

    The saved state is trusted only for a prefix of parts that OSS still lists with the
    checkpointed ETag and size, and only if its own byte count equals that prefix's length.
    """
    count = state.hashed_parts
    saved = state.sha256_state
    usable = (
        count > 0
        and saved is not None
        and state.hashed_crc64 is not None
        and state.sha256_format == STATE_FORMAT
        and all(n in reusable for n in range(1, count + 1))
    )
    if usable and saved is not None and state.hashed_crc64 is not None:
        covered = sum(reusable[n].size for n in range(1, count + 1))
        try:
            hasher = ResumableSha256.from_state(saved)
        except ValueError:
            hasher = None
        if (
            hasher is not None
            and covered == min(count * part_size, file_size)
            and hasher.bytes_hashed == covered
        ):
            return hasher, state.hashed_crc64, count
    if count or saved is not None:
        # Stale or unusable: forget it so it is never mistaken for this run's state.
        state.hashed_parts, state.sha256_state, state.hashed_crc64 = 0, None, None
        state.sha256_format = None
        ctx.checkpoints.save(state)
    return ResumableSha256(), 0, 0


def _put_multipart(
    ctx: TransferContext, file: HubFile, key: str, mine: Counters
) -> tuple[FileRecord, bool]:
    part_size = ctx.options.part_size_for(file.size)
    resumed = _open_upload(ctx, file, key, part_size)
    state, reusable = resumed.state, resumed.reusable
    sha, combined, hashed_through = _resume_hash(ctx, state, reusable, part_size, file.size)
    resumed_hash = hashed_through > 0
    last_number = -(-file.size // part_size)
    # Parts the saved hash covers are neither fetched nor sent: OSS holds them.
    done: list[PartState] = [reusable[n] for n in range(1, hashed_through + 1)]
    if done:
        ctx.progress.on_bytes(file.path, sum(p.size for p in done))
    jobs = [
        _PartJob(
            n, off, min(part_size, file.size - off), reusable.get(n), resumed.unrecorded.get(n)
        )
        for n, off in enumerate(range(0, file.size, part_size), start=1)
        if n > hashed_through
    ]
    pending: deque[tuple[bytearray, memoryview, Future[PartState]]] = deque()
    window = ctx.options.max_parallel_parts

    def absorb(part: PartState, view: memoryview) -> None:
        nonlocal combined, hashed_through
        # In part order: the file's sha256, and its CRC64 continued over the same bytes
        # (liblzma and OpenSSL, GIL released; cheaper than combining part CRCs in Python).
        sha.update(view)
        combined = crc64(view, combined)
        hashed_through = part.number
        done.append(part)
        ctx.progress.on_bytes(file.path, part.size)
        saved = sha.state()
        if saved is not None and part.number < last_number:
            ctx.checkpoints.record_hash(state, part.number, saved, STATE_FORMAT, combined)

    def consume() -> None:
        buf, view, future = pending.popleft()
        try:
            absorb(future.result(), view)
        finally:
            view.release()
            ctx.buffers.release(buf)

    def acquire() -> bytearray:
        # Never block on a buffer while holding finished parts, or files could starve each
        # other: hash the oldest part (freeing its buffer) instead.
        while True:
            buf = ctx.buffers.acquire(blocking=not pending)
            if buf is not None:
                return buf
            consume()

    try:
        for job in jobs:
            while pending and (pending[0][2].done() or len(pending) >= window):
                consume()
            buf = acquire()
            view = memoryview(buf)[: job.length]
            try:
                future = ctx.part_pool.submit(_run_part, ctx, file, key, state, job, mine, view)
            except RuntimeError:
                view.release()
                ctx.buffers.release(buf)
                raise
            pending.append((buf, view, future))
        ctx.on_submitted()
        while pending:
            consume()
    finally:
        for buf, view, future in pending:
            # A running part still writes into its buffer: wait for it before recycling.
            if not future.cancel():
                future.exception()
            # On the way out after a failure, parts that did finish right after the hashed
            # prefix are still hashed and checkpointed: the re-run need not fetch them again.
            if not future.cancelled() and future.exception() is None:
                part = future.result()
                if part.number == hashed_through + 1:
                    with contextlib.suppress(OSError):
                        absorb(part, view)
            view.release()
            ctx.buffers.release(buf)

    digest = sha.hexdigest()
    if digest != file.sha256:
        _abort_quietly(ctx, key, state.upload_id)
        ctx.checkpoints.delete(ctx.target.bucket, key)
        if resumed_hash:
            raise ResumedHashMismatch(
                f"{file.path}: sha256 continued from the checkpoint of part {len(done)} != hub "
                "sha256; checkpoint and upload discarded, the next attempt starts afresh"
            )
        raise _sha_mismatch(file, digest)

    infos = [oss2.models.PartInfo(p.number, p.etag, size=p.size, part_crc=p.crc64) for p in done]

    def complete() -> None:
        try:
            ctx.bucket.complete_multipart_upload(key, state.upload_id, infos)
        except oss2.exceptions.NoSuchUpload:
            # A retry after a lost response: the upload already completed; HEAD decides.
            return
        except oss2.exceptions.OssError as exc:
            raise translate_oss_error(exc, f"CompleteMultipartUpload {key}") from exc

    finishing = time.monotonic()
    ctx.retry(complete)
    _verify_head(ctx, file, key, combined)
    ctx.checkpoints.delete(ctx.target.bucket, key)
    ctx.counters.add_finish(time.monotonic() - finishing)
    record = FileRecord(
        path=file.path,
        key=key,
        size=file.size,
        sha256=file.sha256,
        crc64=str(combined),
        uploaded_at=utc_now(),
    )
    return record, bool(reusable) or resumed_hash


def transfer_file(ctx: TransferContext, file: HubFile) -> FileOutcome:
    """Send `file` to OSS and verify it (the caller has checked it is not there already)."""
    started = time.monotonic()
    key = ctx.target.file_key(file.path)
    mine = Counters()
    status: FileStatus = "uploaded"
    if file.size <= ctx.options.part_size_for(file.size):
        record = _put_single(ctx, file, key, mine)
    else:
        record, resumed = _put_multipart(ctx, file, key, mine)
        status = "resumed" if resumed else "uploaded"
    return FileOutcome(
        record=record,
        status=status,
        bytes_sent=mine.sent,
        bytes_fetched=mine.fetched,
        seconds=time.monotonic() - started,
    )


def skipped_outcome(record: FileRecord) -> FileOutcome:
    """Outcome of a file found verified in place."""
    return FileOutcome(record=record, status="skipped", bytes_sent=0, bytes_fetched=0, seconds=0)


__all__ = [
    "Counters",
    "HubRangeSource",
    "LocalRangeSource",
    "RangeSource",
    "ResumedHashMismatch",
    "TransferContext",
    "head_object",
    "skipped_outcome",
    "transfer_file",
    "verified_in_place",
]
