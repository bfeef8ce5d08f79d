"""The transfer's part-level resume decisions (`llm_rollout.mirror.transfer`) met one by one:
which checkpointed upload is resumed and which of its parts are reused (`_open_upload`,
`_list_parts`), and when a part is reused, adopted or sent (`_run_part`). Uploads and parts
are made straight in the sandbox OSS through the real oss2 client: no hub and no mirror run.
Whole-run resumes (kills, outages) are in test_resume_edges.py and test_mirror.py.

OSS semantics as the sandbox's `sandbox.oss` answers them: ListParts gives each part's number,
ETag (the MD5 of its bytes, upper-case hex) and size; a finished or aborted upload answers
NoSuchUpload."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_rollout.hub import HubFile
from llm_rollout.mirror.checkpoint import PartState, UploadState
from llm_rollout.mirror.hashing import STATE_FORMAT, ResumableSha256
from llm_rollout.mirror.models import SHA256_META
from llm_rollout.mirror.transfer import (
    Counters,
    TransferContext,
    _open_upload,
    _PartJob,
    _resume_hash,
    _run_part,
)
from llm_rollout.oss import crc64
from llm_rollout.upstream_names import UnsafeUpstreamData
from sandbox.oss import OssServer
from tests.mirror.direct_oss import fresh_target, running_oss, transfer_context

BUCKET = "resume"
PART = 100 * 1024  # OSS's smallest part is 100 KiB (all but the last)
DATA = bytes(range(256)) * (2 * PART // 256) + b"tail" * 25  # two full parts and a short one
SHA = hashlib.sha256(DATA).hexdigest()
FILE = HubFile(path="w.bin", size=len(DATA), sha256=SHA)


@pytest.fixture(scope="module")
def oss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssServer]:
    yield from running_oss(tmp_path_factory.mktemp("oss"), BUCKET)


@pytest.fixture
def ctx(oss: OssServer, tmp_path: Path) -> Iterator[TransferContext]:
    with transfer_context(oss, fresh_target(oss, BUCKET, "m"), tmp_path, PART) as made:
        (tmp_path / "src" / FILE.path).write_bytes(DATA)
        yield made


def _key(ctx: TransferContext) -> str:
    return ctx.target.key(FILE.path)


def _chunk(n: int) -> bytes:
    return DATA[(n - 1) * PART : n * PART]


def _upload(ctx: TransferContext, parts: tuple[int, ...]) -> tuple[str, dict[int, PartState]]:
    """A multipart upload in OSS holding `parts`; the states OSS acknowledged for them."""
    key = _key(ctx)
    upload_id = ctx.bucket.init_multipart_upload(key).upload_id
    states = {}
    for n in parts:
        result = ctx.bucket.upload_part(key, upload_id, n, _chunk(n))
        states[n] = PartState(
            number=n, size=len(_chunk(n)), crc64=crc64(_chunk(n)), etag=result.etag
        )
    return upload_id, states


def _checkpoint(
    ctx: TransferContext, upload_id: str, parts: dict[int, PartState], **change: object
) -> None:
    state = UploadState(
        bucket=BUCKET,
        key=_key(ctx),
        upload_id=upload_id,
        size=FILE.size,
        sha256=SHA,
        part_size=PART,
        parts=parts,
    )
    ctx.checkpoints.save(state.model_copy(update=change))


def _open_ids(oss: OssServer, ctx: TransferContext) -> set[str]:
    return {u.upload_id for u in oss.uploads() if u.key == _key(ctx)}


def test_without_a_checkpoint_a_new_upload_is_started_and_checkpointed(
    ctx: TransferContext, oss: OssServer
) -> None:
    resumed = _open_upload(ctx, FILE, _key(ctx), PART)
    assert (resumed.reusable, resumed.unrecorded) == ({}, {})
    state = resumed.state
    assert (state.bucket, state.key, state.size, state.sha256, state.part_size, state.parts) == (
        BUCKET,
        _key(ctx),
        FILE.size,
        SHA,
        PART,
        {},
    )
    assert _open_ids(oss, ctx) == {state.upload_id}
    (upload,) = [u for u in oss.uploads() if u.upload_id == state.upload_id]
    assert upload.user_meta == {SHA256_META.removeprefix("x-oss-meta-"): SHA}
    assert ctx.checkpoints.load(BUCKET, _key(ctx)) == state


def test_parts_oss_lists_as_checkpointed_are_reused_the_others_told_apart(
    ctx: TransferContext, oss: OssServer
) -> None:
    upload_id, acked = _upload(ctx, (1, 2, 3))
    # Part 2 checkpointed with another ETag (OSS holds other bytes), part 3 never checkpointed
    # (a kill -9 between OSS storing it and the checkpoint write).
    recorded = {1: acked[1], 2: acked[2].model_copy(update={"etag": '"0000"'})}
    _checkpoint(ctx, upload_id, recorded)

    resumed = _open_upload(ctx, FILE, _key(ctx), PART)

    assert resumed.state.upload_id == upload_id
    assert resumed.reusable == {1: acked[1]}
    assert resumed.unrecorded == {2: acked[2].etag, 3: acked[3].etag}
    assert _open_ids(oss, ctx) == {upload_id}


def test_a_part_listed_with_another_size_is_not_reused(ctx: TransferContext) -> None:
    upload_id, acked = _upload(ctx, (1,))
    _checkpoint(ctx, upload_id, {1: acked[1].model_copy(update={"size": PART - 1})})
    resumed = _open_upload(ctx, FILE, _key(ctx), PART)
    assert (resumed.reusable, resumed.unrecorded) == ({}, {1: acked[1].etag})


@pytest.mark.parametrize(
    "change", [{"size": FILE.size + 1}, {"sha256": "0" * 64}, {"part_size": 2 * PART}]
)
def test_a_checkpoint_of_another_file_or_part_size_is_aborted_and_started_afresh(
    ctx: TransferContext, oss: OssServer, change: dict[str, object]
) -> None:
    upload_id, acked = _upload(ctx, (1,))
    _checkpoint(ctx, upload_id, acked, **change)

    resumed = _open_upload(ctx, FILE, _key(ctx), PART)

    assert resumed.state.upload_id != upload_id
    assert (resumed.reusable, resumed.unrecorded) == ({}, {})
    assert _open_ids(oss, ctx) == {resumed.state.upload_id}  # the old one was aborted
    assert ctx.checkpoints.load(BUCKET, _key(ctx)) == resumed.state


def test_a_checkpointed_upload_oss_no_longer_has_is_started_afresh(
    ctx: TransferContext, oss: OssServer
) -> None:
    upload_id, acked = _upload(ctx, (1,))
    ctx.bucket.abort_multipart_upload(_key(ctx), upload_id)
    _checkpoint(ctx, upload_id, acked)

    resumed = _open_upload(ctx, FILE, _key(ctx), PART)

    assert resumed.state.upload_id != upload_id
    assert (resumed.reusable, resumed.unrecorded, resumed.state.parts) == ({}, {}, {})
    assert ctx.checkpoints.load(BUCKET, _key(ctx)) == resumed.state


@pytest.mark.parametrize(("size", "beyond"), [(FILE.size, 4), (2 * PART, 3)])
def test_a_listed_part_number_beyond_the_files_parts_is_refused(
    ctx: TransferContext, size: int, beyond: int
) -> None:
    """A file of two parts and a bit has three parts; one of exactly two parts has two."""
    file = FILE.model_copy(update={"size": size})
    upload_id, acked = _upload(ctx, (1,))
    ctx.bucket.upload_part(_key(ctx), upload_id, beyond, b"x")
    _checkpoint(ctx, upload_id, acked, size=size)
    with pytest.raises(UnsafeUpstreamData) as refused:
        _open_upload(ctx, file, _key(ctx), PART)
    assert refused.value.rule == "part-number"
    # The last part number itself is accepted.
    ctx.bucket.abort_multipart_upload(_key(ctx), upload_id)
    upload_id, acked = _upload(ctx, (1,))
    ctx.bucket.upload_part(_key(ctx), upload_id, beyond - 1, b"x")
    _checkpoint(ctx, upload_id, acked, size=size)
    assert _open_upload(ctx, file, _key(ctx), PART).unrecorded.keys() == {beyond - 1}


def _state(ctx: TransferContext, upload_id: str) -> UploadState:
    state = ctx.checkpoints.load(BUCKET, _key(ctx))
    assert state is not None and state.upload_id == upload_id
    return state


def _part_puts(oss: OssServer, ctx: TransferContext) -> list[int | None]:
    oss.wait_idle()
    return [r.part_number for r in oss.request_log if r.op == "UploadPart" and r.key == _key(ctx)]


def test_a_known_part_whose_bytes_still_hash_the_same_is_not_sent(
    ctx: TransferContext, oss: OssServer
) -> None:
    upload_id, acked = _upload(ctx, (2,))
    _checkpoint(ctx, upload_id, acked)
    state = _state(ctx, upload_id)
    before = len(_part_puts(oss, ctx))
    job = _PartJob(number=2, offset=PART, length=PART, known=acked[2])
    got = _run_part(ctx, FILE, _key(ctx), state, job, Counters(), memoryview(bytearray(PART)))
    assert got == acked[2]
    assert len(_part_puts(oss, ctx)) == before


def test_an_unrecorded_part_with_the_same_md5_is_adopted_without_sending(
    ctx: TransferContext, oss: OssServer
) -> None:
    upload_id, acked = _upload(ctx, (2,))
    _checkpoint(ctx, upload_id, {})
    state = _state(ctx, upload_id)
    before = len(_part_puts(oss, ctx))
    job = _PartJob(
        number=2, offset=PART, length=PART, known=None, listed_etag=acked[2].etag.lower()
    )
    got = _run_part(ctx, FILE, _key(ctx), state, job, Counters(), memoryview(bytearray(PART)))
    assert got == PartState(number=2, size=PART, crc64=crc64(_chunk(2)), etag=acked[2].etag.lower())
    assert len(_part_puts(oss, ctx)) == before
    assert _state(ctx, upload_id).parts == {2: got}


# A checkpointed part whose CRC64 sorts above or below that of the bytes read now, or an
# unrecorded part OSS lists with another ETag.
@pytest.mark.parametrize(("stale", "crc_change"), [("known", 1), ("known", -1), ("listed", 0)])
def test_a_part_whose_bytes_differ_from_what_oss_holds_is_sent_and_checkpointed(
    ctx: TransferContext, oss: OssServer, stale: str, crc_change: int
) -> None:
    upload_id, acked = _upload(ctx, (2,))
    _checkpoint(ctx, upload_id, {})
    state = _state(ctx, upload_id)
    other = acked[2].model_copy(update={"crc64": acked[2].crc64 + crc_change, "etag": '"0BAD"'})
    job = _PartJob(
        number=2,
        offset=PART,
        length=PART,
        known=other if stale == "known" else None,
        listed_etag='"0BAD"' if stale == "listed" else None,
    )
    mine = Counters()
    got = _run_part(ctx, FILE, _key(ctx), state, job, mine, memoryview(bytearray(PART)))
    assert (got.number, got.size, got.crc64) == (2, PART, crc64(_chunk(2)))
    assert got.etag == acked[2].etag  # OSS's ETag of the same bytes
    assert _part_puts(oss, ctx)[-1] == 2
    assert (mine.sent, mine.fetched, ctx.counters.sent) == (PART, PART, PART)
    assert _state(ctx, upload_id).parts == {2: got}


def _hashed(ctx: TransferContext, parts: dict[int, PartState], hashed: bytes) -> UploadState:
    """A checkpoint whose saved sha256 state covers `hashed` as parts 1..len(parts)."""
    hasher = ResumableSha256()
    hasher.update(hashed)
    state = UploadState(
        bucket=BUCKET,
        key=_key(ctx),
        upload_id="u1",
        size=FILE.size,
        sha256=SHA,
        part_size=PART,
        parts=parts,
        hashed_parts=len(parts),
        sha256_format=STATE_FORMAT,
        sha256_state=hasher.state(),
        hashed_crc64=crc64(hashed),
    )
    ctx.checkpoints.save(state)
    return state


def test_a_saved_hash_over_whole_listed_parts_is_continued(ctx: TransferContext) -> None:
    parts = {
        n: PartState(number=n, size=PART, crc64=crc64(_chunk(n)), etag=f'"E{n}"') for n in (1, 2)
    }
    state = _hashed(ctx, parts, DATA[: 2 * PART])
    hasher, crc, count = _resume_hash(ctx, state, parts, PART, FILE.size)
    assert (hasher.bytes_hashed, crc, count) == (2 * PART, crc64(DATA[: 2 * PART]), 2)
    hasher.update(DATA[2 * PART :])
    assert hasher.hexdigest() == SHA


@pytest.mark.parametrize("odd", [-7, 7])
def test_a_saved_hash_over_a_part_of_another_size_is_not_continued_and_is_forgotten(
    ctx: TransferContext, odd: int
) -> None:
    """A part before the last one shorter or longer than the part size (part 2 would not
    start where its bytes end): the state is not trusted though its byte count matches."""
    size = PART + odd
    short = PartState(number=1, size=size, crc64=crc64(DATA[:size]), etag='"E1"')
    state = _hashed(ctx, {1: short}, DATA[:size])
    hasher, crc, count = _resume_hash(ctx, state, {1: short}, PART, FILE.size)
    assert (hasher.bytes_hashed, crc, count) == (0, 0, 0)
    saved = ctx.checkpoints.load(BUCKET, _key(ctx))
    assert saved is not None
    assert (saved.hashed_parts, saved.sha256_state, saved.hashed_crc64, saved.sha256_format) == (
        0,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "change",
    [
        # Parts counted but no state saved (a state that failed to export, say).
        {"sha256_state": None, "hashed_crc64": None},
        # A state saved over no part, with a CRC64 that is not the empty one.
        {"hashed_parts": 0, "sha256_state": ResumableSha256().state(), "hashed_crc64": 123},
    ],
)
def test_an_unusable_saved_hash_starts_afresh_and_is_forgotten(
    ctx: TransferContext, change: dict[str, object]
) -> None:
    parts = {1: PartState(number=1, size=PART, crc64=crc64(_chunk(1)), etag='"E1"')}
    state = _hashed(ctx, parts, DATA[:PART]).model_copy(update=change)
    ctx.checkpoints.save(state)
    hasher, crc, count = _resume_hash(ctx, state, parts, PART, FILE.size)
    assert (hasher.bytes_hashed, crc, count) == (0, 0, 0)
    saved = ctx.checkpoints.load(BUCKET, _key(ctx))
    assert saved is not None
    assert (saved.hashed_parts, saved.sha256_state, saved.hashed_crc64) == (0, None, None)
    assert saved.parts == parts  # the uploaded parts themselves stay reusable
