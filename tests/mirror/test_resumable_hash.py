"""Resumable sha256: equal to hashlib for every split, saved in checkpoints, and a resume that
continues hashing from the checkpoint instead of re-reading uploaded parts from the hub."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import oss2
import pytest

from llm_rollout.mirror import MirrorTransientError, is_mirrored, mirror_model
from llm_rollout.mirror.hashing import (
    RESUMABLE,
    SHA256_IMPLEMENTATION,
    ResumableSha256,
    state_bytes_hashed,
)
from llm_rollout.oss import open_bucket
from tests.mirror.conftest import MirrorCase

PART = 256 * 1024

needs_openssl = pytest.mark.skipif(not RESUMABLE, reason="no usable libcrypto SHA256_CTX")


def test_openssl_state_is_available_here() -> None:
    # This machine has libcrypto.so.3: the resumable path must be the one the mirror uses.
    assert RESUMABLE
    assert SHA256_IMPLEMENTATION == "openssl-SHA256_CTX"


@needs_openssl
@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 4096, 100_003])
def test_equal_to_hashlib_for_every_split_with_a_save_and_restore(size: int) -> None:
    data = random.Random(size).randbytes(size)
    expected = hashlib.sha256(data).hexdigest()
    splits = range(size + 1) if size <= 130 else [0, 1, 63, 64, 65, size // 2, size - 1, size]
    for cut in splits:
        first = ResumableSha256()
        first.update(data[:cut])
        saved = first.state()
        assert saved is not None
        assert state_bytes_hashed(saved) == cut
        # Through JSON text, as in a checkpoint file.
        restored = ResumableSha256.from_state(json.loads(json.dumps(saved)))
        restored.update(bytearray(data[cut:]))
        assert restored.hexdigest() == expected, (size, cut)
        # The original is untouched by the save and by hexdigest.
        first.update(memoryview(data)[cut:])
        assert first.hexdigest() == expected
        assert first.hexdigest() == expected


@needs_openssl
def test_many_random_chunkings_and_buffer_types() -> None:
    rng = random.Random(3)
    for _ in range(40):
        data = os.urandom(rng.randrange(0, 300_000))
        hasher = ResumableSha256()
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 70_000)
            chunk = data[pos : pos + step]
            kind = rng.randrange(4)
            if kind == 0:
                hasher.update(chunk)
            elif kind == 1:
                hasher.update(bytearray(chunk))
            elif kind == 2:
                hasher.update(memoryview(chunk))  # read-only view
            else:
                hasher = ResumableSha256.from_state(hasher.state() or "")
                hasher.update(memoryview(bytearray(chunk))[:])
            pos += step
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


@needs_openssl
@pytest.mark.parametrize("bad", ["", "00" * 111, "zz" * 112, "00" * 112])
def test_a_malformed_state_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        ResumableSha256.from_state(bad)


def _checkpoint_files(case: MirrorCase) -> dict[str, Path]:
    assert case.options.checkpoint_dir is not None
    return {
        json.loads(p.read_text())["key"]: p
        for p in sorted(case.options.checkpoint_dir.glob("*.json"))
    }


def _hub_bytes(case: MirrorCase, path: str) -> int:
    return sum(
        e.bytes_sent
        for e in case.hub.request_log
        if e.query.get("FilePath") == path and case.source.model_id in e.path
    )


def _fail_last_part(case: MirrorCase) -> tuple[str, str, int]:
    """First run: every part of shard 1 but the last reaches OSS; the run gives up."""
    shard = case.shard(1)
    key = case.target.key(shard)
    size = (case.model_dir / shard).stat().st_size
    case.oss.faults.fail_parts([4], times=50, status=503, key=key)
    with pytest.raises(MirrorTransientError):
        mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    case.oss.faults.clear()
    return shard, key, size


@needs_openssl
def test_resume_fetches_only_unfinished_parts_from_the_hub(case: MirrorCase) -> None:
    shard, key, size = _fail_last_part(case)
    saved = json.loads(_checkpoint_files(case)[key].read_text())
    assert saved["hashed_parts"] == 3
    assert state_bytes_hashed(saved["sha256_state"]) == 3 * PART

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    outcome = next(o for o in result.files if o.record.path == shard)
    last_part = size - 3 * PART
    assert outcome.status == "resumed"
    assert outcome.bytes_fetched == last_part
    assert outcome.bytes_sent == last_part
    # The hub's own count over both runs: the whole shard once, then only its last part.
    assert _hub_bytes(case, shard) == size + last_part
    data = open_bucket(case.target, case.credentials).get_object(key).read()
    assert hashlib.sha256(data).hexdigest() == outcome.record.sha256
    assert (
        hashlib.sha256((case.model_dir / shard).read_bytes()).hexdigest() == outcome.record.sha256
    )
    assert is_mirrored(case.target, case.credentials).complete
    assert key not in _checkpoint_files(case)


@needs_openssl
def test_a_corrupted_hash_state_fails_the_file_and_the_next_run_starts_afresh(
    case: MirrorCase,
) -> None:
    shard, key, size = _fail_last_part(case)
    path = _checkpoint_files(case)[key]
    saved = json.loads(path.read_text())
    state = bytearray.fromhex(saved["sha256_state"])
    state[0] ^= 0x01  # h[0]: the byte count still agrees, only the final digest can tell
    saved["sha256_state"] = state.hex()
    path.write_text(json.dumps(saved))

    with pytest.raises(MirrorTransientError) as failure:
        mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert "continued from the checkpoint" in str(failure.value)
    assert not is_mirrored(case.target, case.credentials).complete
    bucket = open_bucket(case.target, case.credentials)
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.head_object(key)
    assert key not in _checkpoint_files(case)

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    outcome = next(o for o in result.files if o.record.path == shard)
    assert outcome.status == "uploaded"
    assert outcome.bytes_fetched == size
    data = bucket.get_object(key).read()
    assert hashlib.sha256(data).hexdigest() == outcome.record.sha256
    assert is_mirrored(case.target, case.credentials).complete


@needs_openssl
def test_a_state_that_disagrees_with_its_part_count_is_not_used(case: MirrorCase) -> None:
    shard, key, size = _fail_last_part(case)
    path = _checkpoint_files(case)[key]
    saved = json.loads(path.read_text())
    saved["hashed_parts"] = 2  # the state covers three parts
    path.write_text(json.dumps(saved))

    # Fallback: parts 1-3 re-read from the hub to hash them (not re-sent), part 4 sent.
    _resumes_hashing_from_byte_zero(case, shard, size)


def _resumes_hashing_from_byte_zero(case: MirrorCase, shard: str, size: int) -> None:
    """Run the mirror again: the saved hash state was not used, so the shard is hashed from
    byte 0 (every byte read again), while the three parts OSS holds are not sent again."""
    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    outcome = next(o for o in result.files if o.record.path == shard)
    assert outcome.status == "resumed"
    assert outcome.bytes_fetched == size
    assert outcome.bytes_sent == size - 3 * PART
    assert is_mirrored(case.target, case.credentials).complete


def _forget_part_three(case: MirrorCase, key: str) -> str:
    """As if kill -9 struck after OSS stored part 3 but before the checkpoint recorded it
    (nor the running hash after it). Returns the upload id."""
    path = _checkpoint_files(case)[key]
    saved = json.loads(path.read_text())
    del saved["parts"]["3"]
    saved.update(hashed_parts=0, sha256_state=None, sha256_format=None, hashed_crc64=None)
    path.write_text(json.dumps(saved))
    return str(saved["upload_id"])


def _part_writes(case: MirrorCase, key: str) -> list[int | None]:
    return sorted(
        e.part_number
        for e in case.oss.request_log
        if e.op == "UploadPart" and e.status == 200 and e.key == key
    )


def test_a_part_oss_holds_but_the_checkpoint_missed_is_adopted_not_resent(
    case: MirrorCase,
) -> None:
    shard, key, size = _fail_last_part(case)
    _forget_part_three(case, key)

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    outcome = next(o for o in result.files if o.record.path == shard)
    assert outcome.status == "resumed"
    # Part 3's bytes are read again (to hash them and match OSS's MD5 ETag), not sent again.
    assert outcome.bytes_sent == size - 3 * PART
    assert _part_writes(case, key) == [1, 2, 3, 4]
    data = open_bucket(case.target, case.credentials).get_object(key).read()
    assert data == (case.model_dir / shard).read_bytes()
    assert is_mirrored(case.target, case.credentials).complete


def test_an_unrecorded_part_with_other_bytes_is_sent_again(case: MirrorCase) -> None:
    shard, key, size = _fail_last_part(case)
    upload_id = _forget_part_three(case, key)
    # OSS now holds different bytes as part 3 (its ETag is their MD5): they must not be kept.
    bucket = open_bucket(case.target, case.credentials)
    bucket.upload_part(key, upload_id, 3, b"\0" * PART)

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    outcome = next(o for o in result.files if o.record.path == shard)
    assert outcome.bytes_sent == size - 2 * PART
    assert _part_writes(case, key) == [1, 2, 3, 3, 3, 4]
    assert bucket.get_object(key).read() == (case.model_dir / shard).read_bytes()
    assert is_mirrored(case.target, case.credentials).complete
