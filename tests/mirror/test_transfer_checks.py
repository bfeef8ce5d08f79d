"""The transfer's verification decisions (`llm_rollout.mirror.transfer`) met one by one:
whether an object already in OSS is the hub's file (`verified_in_place`), the HEAD check after
an upload (`_verify_head`), the wire CRC64 comparison (`_check_wire_crc`) and what a HEAD
reads (`head_object`). Objects are written straight into the sandbox OSS through the real
oss2 client: no hub and no mirror run. Whole-mirror paths are in test_corruption.py.

OSS reports the stored bytes' CRC-64/ECMA in `x-oss-hash-crc64ecma` and keeps user metadata
(`x-oss-meta-sha256`) as written; both as the sandbox's `sandbox.oss` answers them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import oss2
import pytest

from llm_rollout.hub import HubFile
from llm_rollout.mirror.models import SHA256_META, FileRecord
from llm_rollout.mirror.transfer import (
    ObjectInfo,
    TransferContext,
    _check_wire_crc,
    _verify_head,
    head_object,
    verified_in_place,
)
from llm_rollout.oss import (
    IntegrityError,
    OssPermanentError,
    OssRequestError,
    crc64,
)
from sandbox.oss import OssServer
from tests.mirror.direct_oss import direct_bucket, fresh_target, running_oss, transfer_context

BUCKET = "verify"
DATA = b"weights " * 40
SHA = hashlib.sha256(DATA).hexdigest()
FILE = HubFile(path="w.bin", size=len(DATA), sha256=SHA)
EARLIER = "2026-12-01T00:00:00Z"


@pytest.fixture(scope="module")
def oss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssServer]:
    yield from running_oss(tmp_path_factory.mktemp("oss"), BUCKET)


@pytest.fixture
def ctx(oss: OssServer, tmp_path: Path) -> Iterator[TransferContext]:
    with transfer_context(oss, fresh_target(oss, BUCKET, "m"), tmp_path, 1024) as made:
        yield made


def _put(
    ctx: TransferContext, data: bytes = DATA, sha256: str | None = SHA
) -> oss2.models.PutObjectResult:
    headers = {SHA256_META: sha256} if sha256 is not None else {}
    return ctx.bucket.put_object(ctx.target.key(FILE.path), data, headers=headers)


def _previous(ctx: TransferContext, **change: object) -> FileRecord:
    record = FileRecord(
        path=FILE.path,
        key=ctx.target.key(FILE.path),
        size=FILE.size,
        sha256=SHA,
        crc64=str(crc64(DATA)),
        uploaded_at=EARLIER,
    )
    return record.model_copy(update=change)


def test_head_reads_size_crc64_and_the_sha256_metadata(ctx: TransferContext) -> None:
    key = ctx.target.key(FILE.path)
    assert head_object(ctx.bucket, key) is None
    _put(ctx, sha256=SHA.upper())
    assert head_object(ctx.bucket, key) == ObjectInfo(len(DATA), crc64(DATA), SHA)
    _put(ctx, sha256=None)
    assert head_object(ctx.bucket, key) == ObjectInfo(len(DATA), crc64(DATA), None)


def test_head_errors_other_than_a_missing_object_raise(
    ctx: TransferContext, oss: OssServer
) -> None:
    missing = ctx.target.model_copy(update={"bucket": "no-such-bucket"})
    with pytest.raises(OssPermanentError, match="the bucket does not exist"):
        head_object(direct_bucket(missing), "k")
    with pytest.raises(OssPermanentError):
        head_object(direct_bucket(ctx.target, secret="wrong"), ctx.target.key(FILE.path))


def test_an_object_whose_sha256_metadata_is_the_hubs_is_verified_in_place(
    ctx: TransferContext,
) -> None:
    _put(ctx)
    record = verified_in_place(ctx, FILE, None)
    assert record is not None
    assert (record.path, record.key, record.size, record.sha256, record.crc64) == (
        FILE.path,
        ctx.target.key(FILE.path),
        len(DATA),
        SHA,
        str(crc64(DATA)),
    )
    assert record.uploaded_at != EARLIER


@pytest.mark.parametrize(
    ("data", "sha256"),
    [
        (None, SHA),  # no object
        (DATA + b"!", SHA),  # another size
        (DATA[:-1], SHA),
        (DATA, "0" * 64),  # metadata of other content
        (DATA, None),  # no metadata
    ],
)
def test_an_object_that_does_not_vouch_for_the_file_is_not_verified(
    ctx: TransferContext, data: bytes | None, sha256: str | None
) -> None:
    if data is not None:
        _put(ctx, data, sha256)
    assert verified_in_place(ctx, FILE, None) is None


def test_the_manifest_record_vouches_for_an_object_with_its_crc64(ctx: TransferContext) -> None:
    _put(ctx, sha256=None)  # no metadata: the manifest's CRC64 is what vouches
    record = verified_in_place(ctx, FILE, _previous(ctx))
    assert record is not None
    assert (record.crc64, record.uploaded_at) == (str(crc64(DATA)), EARLIER)


def test_an_object_whose_crc64_is_not_the_manifests_is_not_verified_despite_its_metadata(
    ctx: TransferContext,
) -> None:
    same_size = b"W" + DATA[1:]
    _put(ctx, same_size, SHA)  # an overwrite that kept the old metadata
    assert verified_in_place(ctx, FILE, _previous(ctx)) is None


@pytest.mark.parametrize("change", [{"sha256": "1" * 64}, {"size": len(DATA) + 1}])
def test_a_record_of_another_file_does_not_vouch_but_the_metadata_still_may(
    ctx: TransferContext, change: dict[str, object]
) -> None:
    previous = _previous(ctx, **change, crc64="12345")
    _put(ctx, sha256=None)
    assert verified_in_place(ctx, FILE, previous) is None
    _put(ctx)
    record = verified_in_place(ctx, FILE, previous)
    assert record is not None
    assert (record.crc64, record.uploaded_at != EARLIER) == (str(crc64(DATA)), True)


def test_a_transient_head_error_is_retried(ctx: TransferContext, oss: OssServer) -> None:
    _put(ctx)
    oss.faults.fail("HeadObject", status=503, key=ctx.target.key(FILE.path), times=1)
    assert verified_in_place(ctx, FILE, None) is not None
    assert oss.faults.fired() == 1


def test_the_head_after_an_upload_passes_the_object_that_was_sent(ctx: TransferContext) -> None:
    _put(ctx)
    key = ctx.target.key(FILE.path)
    _verify_head(ctx, FILE, key, crc64(DATA))
    assert head_object(ctx.bucket, key) is not None


@pytest.mark.parametrize(
    ("data", "crc", "problem"),
    [
        (None, crc64(DATA), "object missing after upload"),
        (DATA + b"!", crc64(DATA), f"size {len(DATA) + 1} != {len(DATA)}"),
        (DATA[:-1], crc64(DATA), f"size {len(DATA) - 1} != {len(DATA)}"),
        (
            DATA,
            crc64(DATA) ^ 1,
            f"OSS CRC64 {crc64(DATA)} != combined part CRC64 {crc64(DATA) ^ 1}",
        ),
    ],
)
def test_the_head_after_an_upload_deletes_an_object_it_cannot_trust(
    ctx: TransferContext, data: bytes | None, crc: int, problem: str
) -> None:
    if data is not None:
        _put(ctx, data)
    key = ctx.target.key(FILE.path)
    with pytest.raises(IntegrityError) as failure:
        _verify_head(ctx, FILE, key, crc)
    assert str(failure.value) == f"{FILE.path}: {problem}"
    assert head_object(ctx.bucket, key) is None


def test_the_wire_crc64_is_compared_when_oss_answers_one(ctx: TransferContext) -> None:
    result = _put(ctx)
    assert int(result.crc) == crc64(DATA)
    _check_wire_crc("PutObject w", crc64(DATA), result)
    with pytest.raises(OssRequestError) as failure:
        _check_wire_crc("PutObject w", crc64(DATA) + 1, result)
    assert str(failure.value) == "OSS PutObject w: CRC64 mismatch between client and server"
    # No answered CRC64: left to the caller (the upload refuses a part without one).
    _check_wire_crc("PutObject w", crc64(DATA) + 1, object())
