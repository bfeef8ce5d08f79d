"""The real oss2 client (v1 and v4 signatures) against the sandbox OSS."""

from __future__ import annotations

import os
from pathlib import Path

import oss2
import pytest
from oss2.models import PartInfo
from oss2.utils import Crc64

from sandbox.oss import OssServer
from tests.sandbox_storage.conftest import AK, BUCKET, SK

AUTHS = {
    "v1": lambda ak, sk: (oss2.Auth(ak, sk), {}),
    "v4": lambda ak, sk: (oss2.AuthV4(ak, sk), {"region": "cn-hangzhou"}),
}


def _bucket(oss: OssServer, version: str = "v1", ak: str = AK, sk: str = SK,
            name: str = BUCKET, **kw: object) -> oss2.Bucket:  # fmt: skip
    auth, extra = AUTHS[version](ak, sk)
    return oss2.Bucket(auth, oss.endpoint, name, enable_crc=True, **extra, **kw)


def _crc(data: bytes) -> int:
    c = Crc64(0)
    c.update(data)
    return c.crc


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_object_roundtrip(oss: OssServer, version: str) -> None:
    b = _bucket(oss, version)
    key = "dir/sub dir/a+b=c&d.txt"
    data = os.urandom(200_000)
    put = b.put_object(key, data, headers={"x-oss-meta-revision": "v1"})
    assert put.crc == _crc(data)
    assert put.etag == oss.object_meta(BUCKET, key).etag
    got = b.get_object(key)
    assert got.read() == data and got.server_crc == _crc(data)
    assert b.get_object(key, byte_range=(10, 99)).read() == data[10:100]
    assert b.get_object(key, byte_range=(199_990, None)).read() == data[199_990:]
    head = b.head_object(key)
    assert head.content_length == len(data)
    assert head.headers["x-oss-meta-revision"] == "v1"
    assert head.headers["x-oss-hash-crc64ecma"] == str(_crc(data))
    assert b.object_exists(key) and not b.object_exists("nope")
    b.delete_object(key)
    with pytest.raises(oss2.exceptions.NoSuchKey) as info:
        b.get_object(key)
    assert info.value.request_id and info.value.details["HostId"]


def test_head_error_carries_x_oss_err(oss: OssServer) -> None:
    with pytest.raises(oss2.exceptions.NoSuchKey) as info:
        _bucket(oss).head_object("missing")
    assert info.value.code == "NoSuchKey" and info.value.request_id


def test_range_behaviour(oss: OssServer) -> None:
    b = _bucket(oss)
    b.put_object("k", b"0123456789")
    # Like OSS: an invalid range serves the whole object unless behaviour is "standard".
    assert b.get_object("k", byte_range=(20, 30)).read() == b"0123456789"
    with pytest.raises(oss2.exceptions.ServerError) as info:
        b.get_object("k", byte_range=(20, 30), headers={"x-oss-range-behavior": "standard"})
    assert (info.value.status, info.value.code) == (416, "InvalidRange")


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_wrong_secret_and_unknown_key(oss: OssServer, version: str) -> None:
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch) as info:
        _bucket(oss, version, sk="not-the-secret").put_object("k", b"x")
    assert info.value.status == 403 and SK not in str(info.value)
    with pytest.raises(oss2.exceptions.ServerError) as unknown:
        _bucket(oss, version, ak="LTAI-unknown").get_object("k")
    assert (unknown.value.status, unknown.value.code) == (403, "InvalidAccessKeyId")
    oss.wait_idle()
    assert oss.keys(BUCKET) == []
    puts = [r for r in oss.request_log if r.op == "PutObject"]
    assert [r.status for r in puts] == [403]


def test_v4_wrong_region_rejected(oss: OssServer) -> None:
    b = oss2.Bucket(oss2.AuthV4(AK, SK), oss.endpoint, BUCKET, region="cn-beijing")
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):
        b.put_object("k", b"x")


def test_missing_bucket(oss: OssServer) -> None:
    b = _bucket(oss, name="no-such-bkt")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        b.get_bucket_info()
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        b.put_object("k", b"x")
    assert _bucket(oss).get_bucket_info().name == BUCKET


def test_list_objects_v2_pagination_and_delimiter(oss: OssServer) -> None:
    b = _bucket(oss)
    keys = [f"m/{d}/f{i}" for d in ("a", "b") for i in range(3)] + ["m/top", "other"]
    for k in keys:
        b.put_object(k, k.encode())
    listed = [o.key for o in oss2.ObjectIteratorV2(b, prefix="m/", max_keys=2)]
    assert listed == sorted(k for k in keys if k.startswith("m/"))
    res = b.list_objects_v2(prefix="m/", delimiter="/", max_keys=2)
    assert (res.prefix_list, [o.key for o in res.object_list], res.is_truncated) == (
        ["m/a/", "m/b/"], [], True)  # fmt: skip
    res2 = b.list_objects_v2(prefix="m/", delimiter="/", max_keys=2,
                             continuation_token=res.next_continuation_token)  # fmt: skip
    assert [o.key for o in res2.object_list] == ["m/top"] and not res2.is_truncated
    obj = res2.object_list[0]
    assert obj.size == len(b"m/top") and obj.etag == oss.object_meta(BUCKET, "m/top").etag
    assert [o.key for o in oss2.ObjectIterator(b, prefix="m/b/", max_keys=1)] == [
        "m/b/f0", "m/b/f1", "m/b/f2"]  # fmt: skip


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_multipart_crc_combine_and_etag(oss: OssServer, version: str) -> None:
    b = _bucket(oss, version)
    part = 100 * 1024
    data = os.urandom(part * 2 + 5000)
    up = b.init_multipart_upload("big.bin", headers={"x-oss-meta-src": "hub"}).upload_id
    parts = []
    for n, off in enumerate(range(0, len(data), part), start=1):
        r = b.upload_part("big.bin", up, n, data[off : off + part])
        assert r.crc == _crc(data[off : off + part])
        parts.append(PartInfo(n, r.etag, size=len(data[off : off + part]), part_crc=r.crc))
    assert [p.part_number for p in b.list_parts("big.bin", up).parts] == [1, 2, 3]
    assert [u.upload_id for u in b.list_multipart_uploads().upload_list] == [up]
    # complete_multipart_upload itself checks the combined CRC against the server's.
    done = b.complete_multipart_upload("big.bin", up, parts)
    assert done.crc == _crc(data)
    assert done.etag.endswith("-3")
    head = b.head_object("big.bin")
    assert head.headers["x-oss-object-type"] == "Multipart"
    assert head.headers["x-oss-meta-src"] == "hub"
    assert b.get_object("big.bin").read() == data
    assert oss.uploads() == []


def test_multipart_errors(oss: OssServer) -> None:
    b = _bucket(oss)
    up = b.init_multipart_upload("k").upload_id
    r1 = b.upload_part("k", up, 1, b"a" * 1000)
    r2 = b.upload_part("k", up, 2, b"b" * 1000)
    with pytest.raises(oss2.exceptions.ServerError) as small:
        b.complete_multipart_upload("k", up, [PartInfo(1, r1.etag), PartInfo(2, r2.etag)])
    assert small.value.code == "EntityTooSmall"
    # oss2 sorts the parts it sends, so a repeated part number is how order breaks here.
    with pytest.raises(oss2.exceptions.ServerError) as order:
        b.complete_multipart_upload("k", up, [PartInfo(1, r1.etag), PartInfo(1, r1.etag)])
    assert order.value.code == "InvalidPartOrder"
    with pytest.raises(oss2.exceptions.ServerError) as bad:
        b.complete_multipart_upload("k", up, [PartInfo(1, r2.etag)])
    assert bad.value.code == "InvalidPart"
    b.abort_multipart_upload("k", up)
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        b.upload_part("k", up, 3, b"c")
    assert oss.keys(BUCKET) == []


def test_copy_object_and_upload_part_copy(oss: OssServer) -> None:
    b = _bucket(oss)
    data = os.urandom(300 * 1024)
    b.put_object("src", data, headers={"x-oss-meta-a": "1"})
    b.copy_object(BUCKET, "src", "dst")
    assert b.get_object("dst").read() == data
    assert b.head_object("dst").headers["x-oss-meta-a"] == "1"
    up = b.init_multipart_upload("assembled").upload_id
    r1 = b.upload_part_copy(BUCKET, "src", (0, 102399), "assembled", up, 1)
    r2 = b.upload_part_copy(BUCKET, "src", (102400, len(data) - 1), "assembled", up, 2)
    done = b.complete_multipart_upload(
        "assembled", up, [PartInfo(1, r1.etag), PartInfo(2, r2.etag)]
    )
    assert done.crc == _crc(data)
    assert b.get_object("assembled").read() == data
    b.batch_delete_objects(["dst", "assembled"])
    assert oss.keys(BUCKET) == ["src"]


def test_resumable_upload_resumes_after_503_on_a_part(oss: OssServer, tmp_path: Path) -> None:
    b = _bucket(oss)
    src = tmp_path / "shard.bin"
    data = os.urandom(5 * 1024 * 1024)
    src.write_bytes(data)
    store = oss2.ResumableStore(root=str(tmp_path / "ckpt"))
    oss.faults.fail_parts([3], times=1)
    opts = {"multipart_threshold": 1 << 20, "part_size": 1 << 20, "num_threads": 1}
    with pytest.raises(oss2.exceptions.ServerError) as info:
        oss2.resumable_upload(b, "shard.bin", str(src), store=store, **opts)
    assert info.value.status == 503 and info.value.code == "ServiceUnavailable"
    assert oss.keys(BUCKET) == []
    oss.wait_idle()
    oss.reset_counters()
    oss2.resumable_upload(b, "shard.bin", str(src), store=store, **opts)
    oss.wait_idle()
    sent = sorted(r.part_number for r in oss.request_log if r.op == "UploadPart")
    assert sent == [3, 4, 5]  # parts 1 and 2 were not re-sent
    assert b.head_object("shard.bin").headers["x-oss-hash-crc64ecma"] == str(_crc(data))
    assert b.get_object("shard.bin").read() == data


def test_connection_reset_leaves_no_object(oss: OssServer) -> None:
    b = _bucket(oss)
    oss.faults.reset("PutObject", key="k", after_bytes=64 * 1024)
    with pytest.raises(oss2.exceptions.RequestError):
        b.put_object("k", os.urandom(1024 * 1024))
    oss.wait_idle()
    assert oss.object_meta(BUCKET, "k") is None
    assert list((oss.data_dir / "tmp").iterdir()) == []
    b.put_object("k", b"fine")
    assert b.get_object("k").read() == b"fine"


def test_stall_times_out_client(oss: OssServer) -> None:
    oss.faults.stall("GetObject", 1.0, key="k")
    b = _bucket(oss)
    b.put_object("k", b"v")
    slow = _bucket(oss, connect_timeout=0.3)
    with pytest.raises(oss2.exceptions.RequestError):
        slow.get_object("k")
    assert b.get_object("k").read() == b"v"


def test_seeded_probabilistic_faults(oss: OssServer) -> None:
    oss.faults.seed(7)
    oss.faults.fail("PutObject", times=None, probability=0.5)
    b = _bucket(oss)
    outcomes = []
    for i in range(20):
        try:
            b.put_object(f"k{i}", b"x")
            outcomes.append(True)
        except oss2.exceptions.ServerError as exc:
            assert exc.status == 503
            outcomes.append(False)
    assert 3 <= outcomes.count(False) <= 17
    assert len(oss.keys(BUCKET)) == outcomes.count(True)


def test_chunked_body_and_content_md5(oss: OssServer) -> None:
    b = _bucket(oss)
    chunks = [os.urandom(70_000) for _ in range(5)]
    r = b.put_object("streamed", iter(chunks))
    assert r.crc == _crc(b"".join(chunks))
    assert b.get_object("streamed").read() == b"".join(chunks)
    with pytest.raises(oss2.exceptions.InvalidDigest):
        b.put_object("k", b"abc", headers={"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="})


def test_state_persists_across_restart(tmp_path: Path) -> None:
    data = os.urandom(250 * 1024)
    with OssServer(tmp_path / "d", credentials={AK: SK}, buckets=[BUCKET]) as first:
        b = _bucket(first)
        b.put_object("kept", data)
        up = b.init_multipart_upload("pending").upload_id
        b.upload_part("pending", up, 1, data[: 120 * 1024])
    with OssServer(tmp_path / "d", credentials={AK: SK}) as second:
        b = _bucket(second)
        assert b.get_object("kept").read() == data
        assert [p.part_number for p in b.list_parts("pending", up).parts] == [1]


def test_secrets_never_logged(oss: OssServer, capfd: pytest.CaptureFixture[str]) -> None:
    b = _bucket(oss)
    b.put_object("k", b"v")
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch) as info:
        _bucket(oss, sk="wrong-secret-xyz").get_object("k")
    out, err = capfd.readouterr()
    assert SK not in out + err and "wrong-secret-xyz" not in out + err
    assert SK not in info.value.body.decode() and "wrong-secret-xyz" not in info.value.body.decode()
    oss.wait_idle()
    assert SK not in repr(oss.request_log.snapshot())


def test_complete_multipart_swaps_upload_for_object_in_one_step(
    oss: OssServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client whose complete timed out retries it, gets NoSuchUpload and HEADs the key
    # (llm_rollout/mirror/transfer.py); the object must already be there, so no request may
    # see the upload gone and the object not yet committed.
    b = _bucket(oss)
    up = b.init_multipart_upload("atomic.bin").upload_id
    part = b.upload_part("atomic.bin", up, 1, b"x" * 1024)
    seen: list[tuple[bool, bool]] = []
    commit = OssServer._commit_object

    def observed(self: OssServer, bucket: str, meta: object) -> None:
        # From inside the commit: is the upload already gone, and is the server's lock (an
        # RLock, so other requests wait on it) held by this handler the whole time?
        seen.append((up not in self._uploads, self._lock._is_owned()))  # type: ignore[attr-defined]
        commit(self, bucket, meta)  # type: ignore[arg-type]

    monkeypatch.setattr(OssServer, "_commit_object", observed)
    b.complete_multipart_upload("atomic.bin", up, [PartInfo(1, part.etag)])
    assert seen == [(True, True)]
    assert b.head_object("atomic.bin").content_length == 1024
