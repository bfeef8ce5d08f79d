"""The manifest's verification decisions (`llm_rollout.mirror.manifest`) met one by one, with
objects and the manifest written straight into the sandbox OSS through the real oss2 client:
no hub and no mirror run, so each case costs one or two requests. The full mirror paths
(a mirror, then a change in OSS) are in test_mirror_status.py and test_corruption.py.

What OSS answers (size, `x-oss-hash-crc64ecma` of the stored bytes, NoSuchKey/NoSuchBucket)
is the sandbox's `sandbox.oss`; CRC-64/ECMA as OSS computes it (`llm_rollout.oss.crc64`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import oss2
import pytest

from llm_rollout.hub import HubFile, HubListing
from llm_rollout.mirror.manifest import (
    check_mirror,
    manifest_key,
    read_manifest,
    write_manifest,
)
from llm_rollout.mirror.models import FileRecord, Manifest
from llm_rollout.oss import IntegrityError, OssPermanentError, OssTarget, crc64
from llm_rollout.upstream_names import UnsafeUpstreamData
from sandbox.oss import OssServer
from tests.mirror.direct_oss import direct_bucket, fresh_target, running_oss

BUCKET = "verify"
MODEL = "acme/tiny"
FILES = {f"f{n}.bin": bytes([n]) * (100 + n) for n in range(1, 7)}


@pytest.fixture(scope="module")
def oss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssServer]:
    yield from running_oss(tmp_path_factory.mktemp("oss"), BUCKET)


def _target(oss: OssServer, bucket: str = BUCKET) -> OssTarget:
    return fresh_target(oss, bucket, f"models/{MODEL}")


def _listing(files: dict[str, bytes], model_id: str = MODEL) -> HubListing:
    return HubListing(
        model_id=model_id,
        revision="v1",
        files=tuple(
            HubFile(path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest())
            for p, d in sorted(files.items())
        ),
    )


def _mirrored(
    oss: OssServer, files: dict[str, bytes] = FILES
) -> tuple[OssTarget, oss2.Bucket, Manifest]:
    """Every file stored, then the manifest recording each object's size and CRC64."""
    target = _target(oss)
    bucket = direct_bucket(target)
    records = []
    for path, data in sorted(files.items()):
        bucket.put_object(target.key(path), data)
        records.append(
            FileRecord(
                path=path,
                key=target.key(path),
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                crc64=str(crc64(data)),
                uploaded_at="2026-12-07T00:00:00Z",
            )
        )
    listing = _listing(files)
    manifest = Manifest(
        model_id=MODEL,
        revision="v1",
        content_digest=listing.content_digest,
        bucket=target.bucket,
        prefix=target.prefix,
        created_at="2026-12-07T00:00:01Z",
        total_bytes=listing.total_bytes,
        files=records,
    )
    assert write_manifest(bucket, target, manifest) == f"oss://{BUCKET}/{manifest_key(target)}"
    return target, bucket, manifest


def test_a_complete_mirror_is_complete_with_and_without_a_listing(oss: OssServer) -> None:
    target, bucket, manifest = _mirrored(oss)
    for listing in (None, _listing(FILES)):
        status = check_mirror(bucket, target, listing)
        assert (status.complete, status.reason) == (True, "")
        assert status.manifest_uri == f"oss://{BUCKET}/{target.prefix}/.llm-rollout/manifest.json"
        assert status.manifest == manifest
    assert read_manifest(bucket, target) == manifest


@pytest.mark.parametrize("change", [1, -1])
def test_an_object_of_another_size_is_named_with_both_sizes(oss: OssServer, change: int) -> None:
    target, bucket, _ = _mirrored(oss)
    data = FILES["f2.bin"]
    bucket.put_object(target.key("f2.bin"), data + b"x" if change > 0 else data[:-1])
    status = check_mirror(bucket, target)
    assert not status.complete
    assert status.reason == f"f2.bin: size {len(data) + change} != manifest {len(data)}"


def test_same_size_other_bytes_is_a_crc64_difference(oss: OssServer) -> None:
    target, bucket, manifest = _mirrored(oss)
    data = FILES["f3.bin"]
    bucket.put_object(target.key("f3.bin"), b"\0" + data[1:])
    status = check_mirror(bucket, target, _listing(FILES))
    assert (status.complete, status.reason) == (False, "f3.bin: CRC64 differs from the manifest")
    assert status.manifest == manifest


def test_a_missing_object_is_named(oss: OssServer) -> None:
    target, bucket, _ = _mirrored(oss)
    bucket.delete_object(target.key("f1.bin"))
    status = check_mirror(bucket, target)
    assert (status.complete, status.reason) == (False, "f1.bin: object missing")


@pytest.mark.parametrize(
    ("count", "suffix"), [(1, ""), (3, ""), (4, " (+1 more)"), (6, " (+3 more)")]
)
def test_three_problems_are_named_and_the_rest_counted(
    oss: OssServer, count: int, suffix: str
) -> None:
    target, bucket, _ = _mirrored(oss)
    broken = sorted(FILES)[:count]
    for path in broken:
        bucket.delete_object(target.key(path))
    status = check_mirror(bucket, target)
    named = "; ".join(f"{p}: object missing" for p in broken[:3])
    assert (status.complete, status.reason) == (False, named + suffix)


@pytest.mark.parametrize(
    ("files", "model_id"),
    [
        ({**FILES, "f1.bin": b"other"}, MODEL),  # other content, same model
        (FILES, "acme/other"),  # same files, another model
    ],
)
def test_a_listing_of_other_content_or_another_model_is_not_complete(
    oss: OssServer, files: dict[str, bytes], model_id: str
) -> None:
    target, bucket, manifest = _mirrored(oss)
    status = check_mirror(bucket, target, _listing(files, model_id))
    assert not status.complete
    assert status.reason == "manifest is for different content than the hub lists now"
    assert status.manifest == manifest
    assert status.manifest_uri == f"oss://{BUCKET}/{manifest_key(target)}"


@pytest.mark.parametrize("body", [None, b"{not json", b'{"model_id": "acme/tiny"}'])
def test_no_manifest_or_one_that_is_not_a_manifest_is_no_manifest(
    oss: OssServer, body: bytes | None
) -> None:
    target = _target(oss)
    bucket = direct_bucket(target)
    bucket.put_object(target.key("f1.bin"), FILES["f1.bin"])
    if body is not None:
        bucket.put_object(manifest_key(target), body)
    assert read_manifest(bucket, target) is None
    status = check_mirror(bucket, target)
    assert (status.complete, status.reason, status.manifest) == (False, "no manifest", None)
    assert status.manifest_uri == f"oss://{BUCKET}/{manifest_key(target)}"


def test_a_missing_bucket_or_a_wrong_secret_raises_instead_of_reading_as_no_manifest(
    oss: OssServer,
) -> None:
    missing = _target(oss, bucket="no-such-bucket")
    with pytest.raises(OssPermanentError, match="the bucket does not exist at this endpoint"):
        read_manifest(direct_bucket(missing), missing)
    target, _, _ = _mirrored(oss)
    with pytest.raises(OssPermanentError):
        check_mirror(direct_bucket(target, secret="wrong-secret"), target)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        # Keys elsewhere in the bucket, sorting after and before the expected one.
        ({"key": "models/elsewhere/f1.bin"}, "outside-prefix"),
        ({"key": "models/a/f1.bin"}, "outside-prefix"),
        ({"path": "../f1.bin"}, None),
        ({"sha256": "not-a-digest"}, None),
    ],
)
def test_a_manifest_record_naming_another_key_or_a_bad_path_or_digest_is_refused(
    oss: OssServer, change: dict[str, str], rule: str | None
) -> None:
    target, bucket, manifest = _mirrored(oss)
    first = manifest.files[0].model_copy(update=change)
    forged = manifest.model_copy(update={"files": [first, *manifest.files[1:]]})
    bucket.put_object(manifest_key(target), forged.model_dump_json().encode())
    with pytest.raises(UnsafeUpstreamData) as refused:
        read_manifest(bucket, target)
    if rule is not None:
        assert refused.value.rule == rule
    with pytest.raises(UnsafeUpstreamData):
        check_mirror(bucket, target)


def _flip_sorting(body: bytes, direction: str) -> int:
    """An offset whose byte flipped (the sandbox's damage: `^ 0xFF`) gives `body` a CRC64
    sorting `direction` its own."""
    whole = crc64(body)
    for offset in range(len(body)):
        damaged = bytearray(body)
        damaged[offset] ^= 0xFF
        if (crc64(damaged) > whole) == (direction == "above"):
            return offset
    raise AssertionError(f"no single-byte damage sorts {direction}")


@pytest.mark.parametrize("direction", ["above", "below"])
def test_a_manifest_damaged_on_the_way_fails_its_crc64_check(
    oss: OssServer, direction: str
) -> None:
    target, bucket, manifest = _mirrored(oss)
    # The body write_manifest sends (its own serialization), to aim the damage.
    body = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    offset = _flip_sorting(body, direction)
    oss.faults.damage("PutObject", when="in_transit", key=manifest_key(target), offset=offset)
    try:
        with pytest.raises(IntegrityError, match="CRC64 mismatch after upload"):
            write_manifest(bucket, target, manifest)
        assert oss.faults.fired() == 1
    finally:
        oss.faults.clear()
    # What OSS stored is the damaged body: the stand-in did damage what was sent.
    stored = bucket.get_object(manifest_key(target)).read()
    assert len(stored) == len(body) and stored != body
