"""The mirror's fast paths: liblzma CRC-64 vs oss2's, the part buffer pool, wire CRC checks
against real oss2 responses, and the warm-import mode end to end."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import oss2
import oss2.utils
import pytest

from llm_rollout.mirror import is_mirrored, mirror_model
from llm_rollout.mirror.buffers import BufferPool
from llm_rollout.mirror.transfer import LocalRangeSource, _check_wire_crc
from llm_rollout.oss import (
    CRC64_IMPLEMENTATION,
    IntegrityError,
    OssRequestError,
    crc64,
    crc64_combine,
    crc64_crcmod,
    open_bucket,
)
from tests.mirror.conftest import MirrorCase

SIZES = [0, 1, 7, 8, 15, 16, 63, 64, 1000, 4096 + 3, 1 << 20, (3 << 20) + 11]


def _oss2_crc(data: bytes, start: int = 0) -> int:
    crc = oss2.utils.Crc64(start)
    crc.update(data)
    return int(crc.crc)


def test_fast_crc64_is_liblzma_here() -> None:
    # The fallback is correct but ~20x slower; the benchmark figures assume liblzma.
    assert CRC64_IMPLEMENTATION == "liblzma"


@pytest.mark.parametrize("size", SIZES)
def test_crc64_equals_oss2_crc64_for_every_buffer_type(size: int) -> None:
    data = random.Random(size).randbytes(size)
    expected = _oss2_crc(data)
    assert crc64(data) == expected
    assert crc64(bytearray(data)) == expected
    assert crc64(memoryview(bytearray(data))) == expected
    assert crc64(memoryview(data)) == expected  # read-only view
    assert crc64_crcmod(data) == expected


def test_crc64_continues_like_oss2_and_matches_combine() -> None:
    rng = random.Random(5)
    a, b = rng.randbytes(100_003), rng.randbytes(77_777)
    crc_a = crc64(a)
    continued = crc64(b, crc_a)
    assert continued == _oss2_crc(a + b)
    assert continued == crc64_combine(crc_a, crc64(b), len(b))
    # A slice of a larger buffer is hashed in place, not from the start of the buffer.
    whole = bytearray(a + b)
    assert crc64(memoryview(whole)[len(a) :], crc_a) == continued


def test_crc64_of_known_vector() -> None:
    # CRC-64/XZ check value of "123456789" (the catalogue's reference).
    assert crc64(b"123456789") == 0x995DC9BBDF1939FA


def test_buffer_pool_bounds_and_recycles() -> None:
    pool = BufferPool(2, 1024)
    first = pool.acquire()
    second = pool.acquire()
    assert first is not None and second is not None
    assert len(first) == len(second) == 1024
    assert pool.acquire(blocking=False) is None
    assert pool.allocated == 2
    pool.release(first)
    again = pool.acquire(blocking=False)
    assert again is first  # reused, not reallocated
    assert pool.allocated == 2
    pool.release(again)
    pool.release(second)
    pool.clear()
    assert pool.allocated == 0
    with pytest.raises(ValueError, match="count >= 1"):
        BufferPool(0, 10)


def test_retired_buffer_pool_keeps_no_buffer() -> None:
    pool = BufferPool(3, 64)
    held = [pool.acquire() for _ in range(3)]
    assert all(b is not None for b in held)
    pool.release(held[0])  # type: ignore[arg-type]
    pool.retire()
    assert pool.allocated == 2  # the free one went back to the allocator at once
    pool.release(held[1])  # type: ignore[arg-type]
    pool.release(held[2])  # type: ignore[arg-type]
    assert pool.allocated == 0


def test_result_times_every_phase(case: MirrorCase) -> None:
    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    expected = {"read_manifest", "list_hub", "check_in_place", "transfer", "finish_files"}
    expected |= {"validate", "write_manifest"}
    assert set(result.phases) == expected
    assert all(v >= 0 for v in result.phases.values())
    # Consecutive phases (finish_files overlaps the transfer) add up to the run's wall time.
    serial = sum(v for k, v in result.phases.items() if k != "finish_files")
    assert serial == pytest.approx(result.seconds, abs=0.05)
    assert result.phases["finish_files"] > 0  # three multipart shards were completed


def test_buffer_pool_blocks_until_a_release() -> None:
    pool = BufferPool(1, 8)
    held = pool.acquire()
    assert held is not None
    got: list[bytearray | None] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive() and not got  # still blocked: the only buffer is held
    pool.release(held)
    waiter.join(timeout=10)
    assert got == [held]


def test_local_range_source_fills_view_and_refuses_short_files(tmp_path: Path) -> None:
    root = tmp_path
    payload = random.Random(1).randbytes(5000)
    (root / "f.bin").write_bytes(payload)
    source = LocalRangeSource(root)
    buf = bytearray(3000)
    source.read_into("f.bin", 1000, memoryview(buf))
    assert bytes(buf) == payload[1000:4000]
    with pytest.raises(IntegrityError, match="shorter"):
        source.read_into("f.bin", 4000, memoryview(bytearray(2000)))


def test_wire_crc_check_against_real_oss_responses(case: MirrorCase) -> None:
    bucket = open_bucket(case.target, case.credentials, enable_crc=False)
    key = case.target.key("wire-crc.bin")
    data = bytearray(random.Random(2).randbytes(300_000))
    # A memoryview slice goes out as-is (no bytes copy) once oss2's CRC adapter is off.
    view = memoryview(data)[1000:]
    upload_id = bucket.init_multipart_upload(key).upload_id
    result = bucket.upload_part(key, upload_id, 1, view)
    assert int(result.crc) == crc64(view) == _oss2_crc(bytes(data[1000:]))
    _check_wire_crc("UploadPart", crc64(view), result)  # equal: no error
    with pytest.raises(OssRequestError, match="CRC64 mismatch"):
        _check_wire_crc("UploadPart", crc64(view) ^ 1, result)
    bucket.abort_multipart_upload(key, upload_id)
    put = bucket.put_object(key, view)
    assert int(put.crc) == crc64(view)
    assert bucket.get_object(key).read() == bytes(data[1000:])


def test_warm_import_mode_mirrors_and_verifies(case: MirrorCase) -> None:
    options = case.options.model_copy(update={"warm_validation_imports": True})
    result = mirror_model(case.source, case.target, case.credentials, options, hub=case.client)
    assert result.bytes_sent == result.manifest.total_bytes
    assert is_mirrored(case.target, case.credentials).complete
    bucket = open_bucket(case.target, case.credentials)
    for path in sorted(case.model_dir.iterdir()):
        stored = bucket.get_object(case.target.key(path.name)).read()
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    record = {r.path: r for r in result.manifest.files}[case.shard(1)]
    assert int(record.crc64) == crc64(case.model_dir.joinpath(case.shard(1)).read_bytes())
