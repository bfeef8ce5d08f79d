"""The sandbox OSS's damage faults, seen by the real oss2 client with its own CRC check on.

oss2 compares the `x-oss-hash-crc64ecma` it gets back with the CRC64 of what it sent on
PutObject and UploadPart, and the combined part CRCs with the completed object's
(oss2/api.py `put_object`, `upload_part`, `complete_multipart_upload`; oss2/utils.py
`check_crc`, which raises `InconsistentError`).
"""

from __future__ import annotations

import hashlib
import os

import oss2
import pytest
from oss2.models import PartInfo
from oss2.utils import Crc64

from sandbox.oss import OssServer
from tests.sandbox_storage.conftest import AK, BUCKET, SK

PART = 100 * 1024


def _bucket(oss: OssServer) -> oss2.Bucket:
    return oss2.Bucket(oss2.Auth(AK, SK), oss.endpoint, BUCKET, enable_crc=True)


def _crc(data: bytes) -> int:
    c = Crc64(0)
    c.update(data)
    return c.crc


def _stored(oss: OssServer, key: str) -> bytes:
    return b"".join(oss.open_object(BUCKET, key))


def test_damage_in_transit_is_answered_with_the_damaged_crc(oss: OssServer) -> None:
    data = os.urandom(50_000)
    oss.faults.damage("PutObject", when="in_transit", key="k")
    with pytest.raises(oss2.exceptions.InconsistentError):
        _bucket(oss).put_object("k", data)
    assert oss.faults.fired() == 1
    stored = _stored(oss, "k")
    assert len(stored) == len(data) and stored != data
    assert sum(a != b for a, b in zip(stored, data, strict=True)) == 1
    assert oss.object_meta(BUCKET, "k").crc64 == _crc(stored)  # type: ignore[union-attr]
    # The fault is spent: the next write stores what was sent.
    assert _bucket(oss).put_object("k", data).crc == _crc(data)
    assert _stored(oss, "k") == data


def test_damage_in_transit_is_refused_when_content_md5_is_sent(oss: OssServer) -> None:
    data = os.urandom(20_000)
    oss.faults.damage("PutObject", when="in_transit", key="k")
    md5 = oss2.utils.content_md5(data)
    with pytest.raises(oss2.exceptions.ServerError) as failure:
        _bucket(oss).put_object("k", data, headers={"Content-MD5": md5})
    assert failure.value.status == 400 and failure.value.code == "InvalidDigest"
    assert oss.object_meta(BUCKET, "k") is None


def test_part_damaged_after_ack_passes_the_part_check_and_fails_completion(
    oss: OssServer,
) -> None:
    bucket = _bucket(oss)
    parts = [os.urandom(PART), os.urandom(PART), os.urandom(1000)]
    oss.faults.damage("UploadPart", when="after_ack", key="big", part_numbers=[2])
    upload_id = bucket.init_multipart_upload("big").upload_id
    infos = []
    for n, data in enumerate(parts, start=1):
        # oss2 checks each answer against its own CRC64: the lying answer passes.
        result = bucket.upload_part("big", upload_id, n, data)
        assert result.crc == _crc(data)
        assert result.etag == hashlib.md5(data, usedforsecurity=False).hexdigest().upper()
        infos.append(PartInfo(n, result.etag, size=len(data), part_crc=_crc(data)))
    assert oss.faults.fired() == 1
    listed = {p.part_number: p.etag for p in oss2.PartIterator(bucket, "big", upload_id)}
    assert listed == {i.part_number: i.etag for i in infos}
    (upload,) = oss.uploads()
    recorded = {n: p.crc64 for n, p in upload.parts.items()}
    assert recorded[1] == _crc(parts[0]) and recorded[3] == _crc(parts[2])
    assert recorded[2] != _crc(parts[1])

    with pytest.raises(oss2.exceptions.InconsistentError):
        bucket.complete_multipart_upload("big", upload_id, infos)

    whole = b"".join(parts)
    stored = _stored(oss, "big")
    assert len(stored) == len(whole) and stored != whole
    head = bucket.head_object("big")
    assert int(head.headers["x-oss-hash-crc64ecma"]) == _crc(stored) != _crc(whole)


def test_damage_faults_only_apply_to_writes(oss: OssServer) -> None:
    with pytest.raises(ValueError, match="PutObject or UploadPart"):
        oss.faults.damage("GetObject", when="after_ack")


def test_corrupt_object_at_rest_keeps_size_etag_and_metadata(oss: OssServer) -> None:
    bucket = _bucket(oss)
    data = os.urandom(PART) + os.urandom(PART)
    bucket.put_object("obj", data, headers={"x-oss-meta-sha256": "abc"})
    before = bucket.head_object("obj")

    oss.corrupt_object(BUCKET, "obj", offset=PART + 7)

    after = bucket.head_object("obj")
    stored = _stored(oss, "obj")
    assert stored[: PART + 7] == data[: PART + 7] and stored[PART + 8 :] == data[PART + 8 :]
    assert stored[PART + 7] == data[PART + 7] ^ 0xFF
    assert after.content_length == before.content_length
    assert after.etag == before.etag
    assert after.headers["x-oss-meta-sha256"] == "abc"
    assert int(after.headers["x-oss-hash-crc64ecma"]) == _crc(stored) != _crc(data)
    # A reader with oss2's CRC check on gets the stored bytes with a CRC64 that matches them.
    assert bucket.get_object("obj").read() == stored
    with pytest.raises(ValueError, match="outside"):
        oss.corrupt_object(BUCKET, "obj", offset=len(data))


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_sts_key_needs_its_security_token(oss: OssServer, version: str) -> None:
    oss.add_sts_credentials("STS.temp-key", "temp-secret", "token-abc")
    extra = {"region": "cn-hangzhou"} if version == "v4" else {}
    auth_version = oss2.AUTH_VERSION_4 if version == "v4" else oss2.AUTH_VERSION_1
    sts = oss2.StsAuth("STS.temp-key", "temp-secret", "token-abc", auth_version=auth_version)
    bucket = oss2.Bucket(sts, oss.endpoint, BUCKET, **extra)  # type: ignore[arg-type]
    bucket.put_object("sts", b"data")
    assert _stored(oss, "sts") == b"data"

    plain = oss2.Auth("STS.temp-key", "temp-secret")
    with pytest.raises(oss2.exceptions.ServerError) as missing:
        oss2.Bucket(plain, oss.endpoint, BUCKET).get_object("sts")
    assert missing.value.code == "InvalidAccessKeyId"

    wrong = oss2.StsAuth("STS.temp-key", "temp-secret", "token-xyz")
    with pytest.raises(oss2.exceptions.ServerError) as bad:
        oss2.Bucket(wrong, oss.endpoint, BUCKET).get_object("sts")
    assert bad.value.status == 403

    # A token sent with a permanent key makes it an STS request for a key STS never issued.
    stray = oss2.StsAuth(AK, SK, "token-abc")
    with pytest.raises(oss2.exceptions.ServerError) as unknown:
        oss2.Bucket(stray, oss.endpoint, BUCKET).get_object("sts")
    assert unknown.value.code == "InvalidAccessKeyId"
