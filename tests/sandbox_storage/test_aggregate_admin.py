"""Hub link (aggregate) cap next to the per-connection cap; admin endpoints; the fast CRC64."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import oss2
import pytest
from oss2.utils import Crc64

from sandbox.http import ADMIN_PREFIX, TokenBucket
from sandbox.hub import HubServer
from sandbox.oss import Crc64Ecma, OssServer
from tests.sandbox_storage.conftest import AK, BUCKET, SK

MB = 1_000_000
FILE_BYTES = 3 * 1024 * 1024


def _parallel_gets(hub: HubServer, n: int) -> tuple[list[float], float]:
    """``n`` concurrent GETs of the same file; per-GET rates (bytes/s) and the total time."""
    url = f"{hub.base_url}/api/v1/models/acme/cap/repo"
    rates: list[float] = [0.0] * n
    barrier = threading.Barrier(n + 1)

    def one(i: int) -> None:
        with httpx.Client(trust_env=False, timeout=30) as client:
            barrier.wait()
            start = time.monotonic()
            got = 0
            with client.stream("GET", url, params={"Revision": "v1", "FilePath": "f.bin"}) as r:
                r.raise_for_status()
                for chunk in r.iter_bytes(1 << 20):
                    got += len(chunk)
            assert got == FILE_BYTES
            rates[i] = got / (time.monotonic() - start)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.monotonic()
    for t in threads:
        t.join()
    return rates, time.monotonic() - start


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(FILE_BYTES))
    return path


def test_hub_aggregate_cap_is_shared_by_connections(tmp_path: Path, blob: Path) -> None:
    cap = 20 * MB
    with HubServer(tmp_path / "hub", aggregate_bandwidth_bytes_per_s=cap) as hub:
        hub.add_revision("acme/cap", "v1", {"f.bin": blob})
        rates, seconds = _parallel_gets(hub, 3)
        assert hub.internal_errors == []
    total_rate = 3 * FILE_BYTES / seconds
    # The link never delivers more than its cap (not 3x it), each connection at most its
    # share. Only upper bounds: a busy machine can make a transfer slower, never faster, so
    # these fail only when the shaping is broken; how close to the cap it gets is measured
    # by bench/transfer.py.
    assert total_rate <= 1.06 * cap, total_rate
    assert all(r <= 0.6 * cap for r in rates), rates


def test_hub_per_connection_and_aggregate_caps_together(tmp_path: Path, blob: Path) -> None:
    per_conn, link = 8 * MB, 20 * MB
    measured = []
    for n in (1, 3):
        # A fresh server per phase: the second phase must not ride on the first one's schedule.
        with HubServer(
            tmp_path / f"hub{n}",
            bandwidth_bytes_per_s=per_conn,
            aggregate_bandwidth_bytes_per_s=link,
        ) as hub:
            hub.add_revision("acme/cap", "v1", {"f.bin": blob})
            measured.append(_parallel_gets(hub, n))
    ((alone,), _), (rates, seconds) = measured
    # Upper bounds only (see above). One connection: its own cap binds (the link would
    # allow 20 MB/s). Three would take 24 MB/s at their own caps: the link binds.
    assert alone <= 1.06 * per_conn, alone
    assert 3 * FILE_BYTES / seconds <= 1.06 * link
    assert all(r <= 1.06 * per_conn for r in rates), rates


def test_fresh_bucket_has_no_head_start() -> None:
    bucket = TokenBucket(10 * MB)
    before = time.monotonic()
    start, end = bucket.reserve_slot(MB)
    # The first slot starts now, not in the past (no initial credit), and 1 MB at 10 MB/s
    # lasts 0.1 s; the next slot follows it. A schedule, not a measured duration.
    assert start >= before
    assert end - start == pytest.approx(0.1)
    second_start, second_end = bucket.reserve_slot(MB)
    assert second_start == pytest.approx(end)
    assert second_end == pytest.approx(end + 0.1)


def test_admin_endpoints_are_not_requests(tmp_path: Path, blob: Path) -> None:
    with HubServer(tmp_path / "hub") as hub, httpx.Client(trust_env=False, timeout=10) as c:
        hub.add_revision("acme/cap", "v1", {"f.bin": blob})
        params = {"Revision": "v1", "FilePath": "f.bin"}
        r = c.get(f"{hub.base_url}/api/v1/models/acme/cap/repo", params=params,
                  headers={"Range": "bytes=5-"})  # fmt: skip
        assert r.status_code == 206
        assert c.get(f"{hub.base_url}{ADMIN_PREFIX}health").json()["ok"] is True
        stats = c.get(f"{hub.base_url}{ADMIN_PREFIX}stats").json()
        assert stats["server"] == "HubServer" and stats["idle"] is True
        assert stats["bytes_served"] == FILE_BYTES - 5 == hub.bytes_served
        assert (stats["requests"], stats["file_gets"], stats["range_gets"]) == (1, 1, 1)
        assert stats["requests_by_status"] == {"206": 1}
        (record,) = c.get(f"{hub.base_url}{ADMIN_PREFIX}requests").json()["requests"]
        assert record["range"] == "bytes=5-" and record["bytes_sent"] == FILE_BYTES - 5
        assert c.post(f"{hub.base_url}{ADMIN_PREFIX}reset").json() == {"ok": True}
        assert hub.bytes_served == 0 and len(hub.request_log) == 0
        assert c.get(f"{hub.base_url}{ADMIN_PREFIX}nope").status_code == 404
        # Admin calls never reach the request log.
        assert len(hub.request_log) == 0
        assert hub.internal_errors == []


def test_oss_admin_stats_skip_authentication(oss: OssServer) -> None:
    bucket = oss2.Bucket(oss2.Auth(AK, SK), oss.endpoint, BUCKET)
    bucket.put_object("a", b"x" * 1000)
    with httpx.Client(trust_env=False, timeout=10) as c:
        stats = c.get(f"{oss.endpoint}{ADMIN_PREFIX}stats").json()
    assert stats["bytes_received"] == 1000
    assert stats["requests_by_op"] == {"PutObject": 1}
    assert stats["fast_crc64"] is Crc64Ecma.fast


@pytest.mark.parametrize("size", [0, 1, 4095, 1 << 20, (1 << 20) + 3])
def test_fast_crc64_matches_oss2(size: int) -> None:
    data = os.urandom(size)
    reference = Crc64(0)
    reference.update(data)
    for chunks in ([data], [data[: size // 3], data[size // 3 :]]):
        ours = Crc64Ecma()
        for part in chunks:
            # bytes, a writable view (the receive path) and a read-only view all work.
            ours.update(memoryview(bytearray(part)))
        assert ours.crc == reference.crc
        assert _crc_of(data) == reference.crc
        assert _crc_of(memoryview(data)) == reference.crc


def _crc_of(data: bytes | memoryview) -> int:
    crc = Crc64Ecma()
    crc.update(data)
    return crc.crc


def test_uploads_keep_exact_etag_and_crc(oss: OssServer) -> None:
    """Large chunked and sized bodies through the ring-buffer receive path."""
    bucket = oss2.Bucket(oss2.Auth(AK, SK), oss.endpoint, BUCKET, enable_crc=True)
    data = os.urandom(5 * 1024 * 1024 + 17)
    put = bucket.put_object("sized", data)
    assert put.crc == _crc_of(data)

    def pieces() -> object:
        for i in range(0, len(data), 70_001):
            yield data[i : i + 70_001]

    chunked = bucket.put_object("chunked", pieces())
    assert chunked.etag == put.etag
    assert bucket.get_object("chunked").read() == data
    oss.wait_idle()
    assert [r.bytes_in for r in oss.request_log] == [len(data), len(data), 0]
    assert oss.bytes_received == 2 * len(data)
