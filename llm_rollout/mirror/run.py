"""`mirror_model`: one revision of a ModelScope model into OSS, verified, resumable.

Order of a run (the manifest is the only completeness marker, so it is written last):
1. read the existing manifest -- doubles as the preflight (wrong keys / missing bucket fail
   here, before any byte moves);
2. list the revision on the hub (unknown model fails here);
3. if a manifest exists for other content (a moved branch), delete it before touching objects;
4. skip every file already verified in place; transfer the rest (streamed or staged);
5. validate the mirrored table with great-expectations;
6. write the manifest.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import oss2

from llm_rollout.credentials import OssCredentials
from llm_rollout.errors import PermanentError, RolloutError, is_transient
from llm_rollout.hub import HubClient, HubFile, HubListing, HubSource
from llm_rollout.mirror.buffers import BufferPool
from llm_rollout.mirror.checkpoint import CheckpointStore, default_checkpoint_dir
from llm_rollout.mirror.expectations import (
    SAFETENSORS_INDEX,
    raise_on_failures,
    validate_mirror_table,
)
from llm_rollout.mirror.manifest import (
    delete_manifest,
    manifest_key,
    read_manifest,
    write_manifest,
)
from llm_rollout.mirror.models import (
    FileOutcome,
    FileRecord,
    Manifest,
    MirrorError,
    MirrorOptions,
    MirrorProgress,
    MirrorResult,
    MirrorTransientError,
    NullProgress,
)
from llm_rollout.mirror.transfer import (
    Counters,
    HubRangeSource,
    LocalRangeSource,
    RangeSource,
    TransferContext,
    skipped_outcome,
    transfer_file,
    utc_now,
    verified_in_place,
)
from llm_rollout.oss import OssTarget, open_bucket, oss_call, plain_http_warning

_log = logging.getLogger(__name__)


def _warm_validation_imports() -> None:
    # great_expectations takes seconds to import; doing it while bytes move keeps it off the
    # critical path (the validation step later finds the module loaded).
    importlib.import_module("great_expectations")
    importlib.import_module("pandas")


class _Countdown:
    """True from `tick` exactly once: on the call that reaches zero."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._lock = threading.Lock()

    def tick(self) -> bool:
        with self._lock:
            self._left -= 1
            return self._left == 0


def _read_index(bucket: oss2.Bucket, target: OssTarget, listing: HubListing) -> Any:
    if not any(f.path == SAFETENSORS_INDEX for f in listing.files):
        return None
    key = target.key(SAFETENSORS_INDEX)
    raw = oss_call(f"GET {key}", lambda: bucket.get_object(key).read())
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PermanentError(f"{SAFETENSORS_INDEX} is not valid JSON") from exc


def _summarise(failed: dict[str, BaseException]) -> tuple[str, dict[str, str]]:
    messages = {path: str(exc) for path, exc in sorted(failed.items())}
    head = "; ".join(f"{m}" for m in list(messages.values())[:3])
    more = f" (+{len(messages) - 3} more)" if len(messages) > 3 else ""
    return f"{len(messages)} file(s) not mirrored: {head}{more}", messages


def _staged_source(
    hub: HubClient, listing: HubListing, files: list[HubFile], options: MirrorOptions, root: Path
) -> RangeSource:
    """Download exactly `files` (checked entries of `listing`) into `root`, then check that
    each one is a regular file inside `root` with its listed size."""
    hub.download_files(listing, files, root, options.max_parallel_files)
    source = LocalRangeSource(root)
    for file in files:
        source.check_staged(file)
    return source


def _run_files(
    ctx_factory: Any,
    files: list[HubFile],
    workers: int,
) -> tuple[list[FileOutcome], dict[str, BaseException]]:
    outcomes: list[FileOutcome] = []
    failed: dict[str, BaseException] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mirror-file") as pool:
        futures: dict[Future[FileOutcome], str] = {
            pool.submit(ctx_factory, f): f.path for f in files
        }
        for future, path in futures.items():
            try:
                outcomes.append(future.result())
            except RolloutError as exc:
                failed[path] = exc
    return outcomes, failed


def mirror_model(
    source: HubSource,
    target: OssTarget,
    credentials: OssCredentials,
    options: MirrorOptions | None = None,
    progress: MirrorProgress | None = None,
    hub: HubClient | None = None,
) -> MirrorResult:
    """Mirror `source` to `target.prefix`; return only when complete and verified.

    Raises PermanentError subclasses for what a retry cannot fix (unknown model, wrong keys,
    missing bucket, corrupt hub data, failed expectations) and `MirrorTransientError` when
    only transient failures remain (a re-run resumes without re-sending verified bytes).
    """
    options = options or MirrorOptions()
    progress = progress or NullProgress()
    started = time.monotonic()
    phases: dict[str, float] = {}
    mark = started

    def lap(phase: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[phase] = round(now - mark, 3)
        mark = now

    insecure = plain_http_warning(target.endpoint)
    if insecure is not None:
        _log.warning("%s", insecure)
    pool_size = options.max_parallel_parts + options.max_parallel_files + 4
    # oss2 applies one timeout to connecting and to each read: the option's read timeout.
    # oss2's CRC is off: every write is checked against our own (fast) CRC64 instead.
    bucket = open_bucket(
        target,
        credentials,
        pool_size=pool_size,
        connect_timeout_s=options.request_timeout_s,
        enable_crc=False,
    )
    previous = read_manifest(bucket, target)
    lap("read_manifest")
    hub = hub or HubClient()
    listing = hub.list_files(source)
    same_content = previous is not None and previous.content_digest == listing.content_digest
    if previous is not None and not same_content:
        delete_manifest(bucket, target)
    previous_records = {r.path: r for r in previous.files} if previous else {}
    lap("list_hub")
    progress.on_start(len(listing.files), listing.total_bytes)
    if options.warm_validation_imports:
        warm = threading.Thread(target=_warm_validation_imports, name="gx-import", daemon=True)
        warm.start()

    counters = Counters()
    checkpoint_dir = options.checkpoint_dir or default_checkpoint_dir()
    checkpoints = CheckpointStore(checkpoint_dir, target.endpoint)
    part_pool = ThreadPoolExecutor(options.max_parallel_parts, thread_name_prefix="mirror-part")
    # One buffer per running part plus one per file, so every file can hold a finished part
    # while it waits for the one before it to be hashed. Buffers are allocated on first use
    # and reused: memory is bounded by (parts + files) * part size.
    buffer_size = max(
        (options.part_size_for(f.size) for f in listing.files), default=options.part_size_bytes
    )
    buffers = BufferPool(options.max_parallel_parts + options.max_parallel_files, buffer_size)
    staging: tempfile.TemporaryDirectory[str] | None = None
    hub_source: HubRangeSource | None = None
    try:
        base = TransferContext(
            bucket=bucket,
            target=target,
            source=LocalRangeSource(Path()),
            options=options,
            checkpoints=checkpoints,
            part_pool=part_pool,
            buffers=buffers,
            progress=progress,
            counters=counters,
        )

        def check(file: HubFile) -> FileRecord | None:
            return verified_in_place(base, file, previous_records.get(file.path))

        outcomes: list[FileOutcome] = []
        failed: dict[str, BaseException] = {}
        todo: list[HubFile] = []
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="mirror-head") as pool:
            checked = list(pool.map(check, listing.files))
        lap("check_in_place")
        for file, record in zip(listing.files, checked, strict=True):
            if record is None:
                todo.append(file)
                continue
            outcome = skipped_outcome(record)
            outcomes.append(outcome)
            progress.on_bytes(file.path, file.size)
            progress.on_file_done(outcome)

        if todo:
            if options.mode == "staged":
                root = options.staging_dir
                if root is None:
                    staging = tempfile.TemporaryDirectory(prefix="llm-rollout-staged-")
                    root = Path(staging.name)
                range_source: RangeSource = _staged_source(hub, listing, todo, options, root)
            else:
                files = {
                    f.path: (hub.file_url(source.model_id, listing.revision, f.path), f.size)
                    for f in todo
                }
                hub_source = HubRangeSource(hub.access(), files, options, counters.add_fetched)
                range_source = hub_source
            submitted = _Countdown(len(todo))

            def on_submitted() -> None:
                # Every file has fetched its last part: no buffer will be taken again, so
                # they go back to the allocator as the last parts finish, and the slow
                # validation imports overlap the last uploads, completions and HEADs
                # instead of following them (their memory replaces the buffers' memory).
                if submitted.tick() and not options.warm_validation_imports:
                    buffers.retire()
                    threading.Thread(
                        target=_warm_validation_imports, name="gx-import", daemon=True
                    ).start()

            ctx = dataclasses.replace(base, source=range_source, on_submitted=on_submitted)

            def run_one(file: HubFile) -> FileOutcome:
                outcome = transfer_file(ctx, file)
                progress.on_file_done(outcome)
                return outcome

            done, failed = _run_files(run_one, todo, options.max_parallel_files)
            outcomes.extend(done)
    finally:
        part_pool.shutdown(wait=True, cancel_futures=True)
        # Every buffer is back once the workers are done; give the memory back before the
        # validation (which loads pandas and GX) so the two peaks do not add up.
        buffers.clear()
        if hub_source is not None:
            hub_source.close()
        if staging is not None:
            staging.cleanup()
    lap("transfer")
    phases["finish_files"] = round(counters.finish_s, 3)

    if failed:
        message, messages = _summarise(failed)
        first = next(iter(failed.values()))
        if all(is_transient(exc) for exc in failed.values()):
            raise MirrorTransientError(message, failed=messages) from first
        raise MirrorError(message, failed=messages) from first

    records = sorted((o.record for o in outcomes), key=lambda r: r.path)
    raise_on_failures(validate_mirror_table(listing, records, _read_index(bucket, target, listing)))
    lap("validate")
    manifest = Manifest(
        model_id=listing.model_id,
        revision=listing.revision,
        content_digest=listing.content_digest,
        bucket=target.bucket,
        prefix=target.key(),
        created_at=previous.created_at
        if previous is not None and same_content and not todo
        else utc_now(),
        total_bytes=listing.total_bytes,
        files=records,
    )
    unchanged = previous is not None and previous.model_dump() == manifest.model_dump()
    if not (same_content and not todo and unchanged):
        manifest_uri = write_manifest(bucket, target, manifest)
    else:
        manifest_uri = target.uri(manifest_key(target))
    lap("write_manifest")
    _log.debug("mirror phases (s): %s", phases)
    return MirrorResult(
        manifest_uri=manifest_uri,
        model_uri=target.uri(target.key()) + "/",
        manifest=manifest,
        files=sorted(outcomes, key=lambda o: o.record.path),
        bytes_sent=counters.sent,
        bytes_fetched=counters.fetched,
        seconds=time.monotonic() - started,
        phases=phases,
    )
