"""Corruption the mirror must notice, made by the sandbox OSS and met by the real oss2 client.

What each fault stands for (see `sandbox.oss`): a stored object whose bytes changed after the
mirror verified it (`corrupt_object`); a part damaged on the way, which OSS hashes and stores
damaged (`damage(when="in_transit")`); a part OSS acknowledges with the ETag and CRC64 of the
bytes it received but stores damaged (`damage(when="after_ack")`). oss2 itself compares only
the `x-oss-hash-crc64ecma` of put/part/complete answers, and only with `enable_crc`
(oss2/api.py `put_object`, `upload_part`, `complete_multipart_upload`; oss2/utils.py
`check_crc`); the mirror runs with it off and does those comparisons itself
(`llm_rollout.mirror.transfer`).
"""

from __future__ import annotations

import hashlib
import shutil

import pytest

from llm_rollout.errors import PermanentError
from llm_rollout.mirror import MirrorError, is_mirrored, manifest_key, mirror_model
from llm_rollout.mirror.models import SHA256_META
from llm_rollout.oss import crc64, open_bucket
from tests.mirror.conftest import BUCKET, PART_SIZE_MB, MirrorCase

PART_BYTES = int(PART_SIZE_MB * 1024 * 1024)


def _requests(case: MirrorCase, op: str, key: str, part: int | None = None) -> list[int]:
    """Statuses of the `op` requests on `key` (and part number) the sandbox answered."""
    return [
        e.status
        for e in case.oss.request_log
        if e.op == op and e.key == key and (part is None or e.part_number == part)
    ]


def _stored_sha256(case: MirrorCase, key: str) -> str:
    digest = hashlib.sha256()
    for block in case.oss.open_object(BUCKET, key):
        digest.update(block)
    return digest.hexdigest()


def _file_sha256(case: MirrorCase, path: str) -> str:
    return hashlib.sha256((case.model_dir / path).read_bytes()).hexdigest()


@pytest.mark.parametrize("path", ["config.json", "model-00002-of-00003.safetensors"])
def test_an_object_changed_at_rest_is_not_mirrored_and_is_sent_again(
    case: MirrorCase, path: str
) -> None:
    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    key = case.target.key(path)
    size = case.oss.object_meta(BUCKET, key).size  # type: ignore[union-attr]
    case.oss.corrupt_object(BUCKET, key)
    # Same size, same x-oss-meta-sha256: only the CRC64 differs from the manifest's.
    assert case.oss.object_meta(BUCKET, key).size == size  # type: ignore[union-attr]
    assert _stored_sha256(case, key) != _file_sha256(case, path)

    for listing in (None, case.client.list_files(case.source)):
        status = is_mirrored(case.target, case.credentials, listing)
        assert not status.complete
        assert status.reason == f"{path}: CRC64 differs from the manifest"

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert [o.record.path for o in result.files if o.status != "skipped"] == [path]
    assert _stored_sha256(case, key) == _file_sha256(case, path)
    assert is_mirrored(case.target, case.credentials).complete


def test_a_part_damaged_in_transit_is_sent_again(case: MirrorCase) -> None:
    key = case.target.key(case.shard(1))
    case.oss.faults.damage("UploadPart", when="in_transit", key=key, part_numbers=[2])

    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert case.oss.faults.fired() == 1
    # OSS answered the damaged part's CRC64; the mirror saw it differ and sent the part again.
    assert _requests(case, "UploadPart", key, part=2) == [200, 200]
    assert _requests(case, "UploadPart", key, part=1) == [200]
    assert _stored_sha256(case, key) == _file_sha256(case, case.shard(1))
    assert is_mirrored(case.target, case.credentials).complete


def test_a_small_object_damaged_in_transit_is_sent_again(case: MirrorCase) -> None:
    key = case.target.key("config.json")
    case.oss.faults.damage("PutObject", when="in_transit", key=key)

    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert case.oss.faults.fired() == 1
    assert _requests(case, "PutObject", key) == [200, 200]
    assert _stored_sha256(case, key) == _file_sha256(case, "config.json")
    assert is_mirrored(case.target, case.credentials).complete


def _damaged_part_sorting(case: MirrorCase, direction: str) -> tuple[str, int, int]:
    """(shard, part, offset in the part) whose damage by `damage(when="after_ack")` gives
    the object a CRC64 sorting `direction` the undamaged one."""
    for n in (1, 2, 3):
        data = bytearray((case.model_dir / case.shard(n)).read_bytes())
        whole = crc64(data)
        for part in range(1, -(-len(data) // PART_BYTES) + 1):
            start = (part - 1) * PART_BYTES
            for offset in range(16):
                data[start + offset] ^= 0xFF
                damaged = crc64(data)
                data[start + offset] ^= 0xFF
                if (damaged > whole) == (direction == "above"):
                    return case.shard(n), part, offset
    raise AssertionError(f"no single-byte damage sorts {direction}")


@pytest.mark.parametrize("direction", ["above", "below"])
def test_a_part_damaged_after_its_ack_fails_the_final_crc_check(
    case: MirrorCase, direction: str
) -> None:
    # The final check compares for equality: damage making the CRC64 larger or smaller.
    shard, part, offset = _damaged_part_sorting(case, direction)
    key = case.target.key(shard)
    case.oss.faults.damage(
        "UploadPart", when="after_ack", key=key, part_numbers=[part], offset=offset
    )

    with pytest.raises(MirrorError) as failure:
        mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert case.oss.faults.fired() == 1
    assert isinstance(failure.value, PermanentError)
    assert list(failure.value.failed) == [shard]
    assert "!= combined part CRC64" in failure.value.failed[shard]
    # Every part was acknowledged with the CRC64 the mirror computed: the answers looked right.
    assert _requests(case, "UploadPart", key) == [200, 200, 200, 200]
    assert _requests(case, "CompleteMultipartUpload", key) == [200]
    # The object that cannot be trusted was removed and nothing is marked complete.
    assert _requests(case, "DeleteObject", key) == [204]
    bucket = open_bucket(case.target, case.credentials)
    assert not bucket.object_exists(key)
    assert not bucket.object_exists(manifest_key(case.target))
    assert not is_mirrored(case.target, case.credentials).complete

    case.oss.faults.clear()
    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert [o.record.path for o in result.files if o.status != "skipped"] == [shard]
    assert _stored_sha256(case, key) == _file_sha256(case, shard)
    assert is_mirrored(case.target, case.credentials).complete


@pytest.mark.parametrize("direction", ["above", "below"])
def test_a_changed_crc64_is_caught_whichever_way_it_compares(
    case: MirrorCase, direction: str
) -> None:
    """The manifest's CRC64 and the object's are compared for equality, not order: corrupt
    config.json until its CRC64 (as text, as the manifest keeps it) sorts `direction` the
    recorded one, then check the re-run sends it again."""
    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    key = case.target.key("config.json")
    recorded = str(case.oss.object_meta(BUCKET, key).crc64)  # type: ignore[union-attr]
    for offset in range(64):
        case.oss.corrupt_object(BUCKET, key, offset=offset)
        now = str(case.oss.object_meta(BUCKET, key).crc64)  # type: ignore[union-attr]
        if (now > recorded) == (direction == "above"):
            break
        case.oss.corrupt_object(BUCKET, key, offset=offset)  # flip it back
    else:
        pytest.fail(f"no single-byte change of the first 64 sorts {direction}")
    status = is_mirrored(case.target, case.credentials)
    assert status.reason == "config.json: CRC64 differs from the manifest"

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert [o.record.path for o in result.files if o.status != "skipped"] == ["config.json"]
    assert _stored_sha256(case, key) == _file_sha256(case, "config.json")


def test_objects_whose_sha256_metadata_is_not_the_hubs_are_sent_again(case: MirrorCase) -> None:
    """No manifest (a first run, or one that stopped before writing it): an object is taken
    as verified only when its x-oss-meta-sha256 equals the hub's sha256 and its size the
    listed size. Objects claiming another sha256 (sorting before and after the right one),
    or the right one at a larger or smaller size, are sent again."""
    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    bucket = open_bucket(case.target, case.credentials)
    bucket.delete_object(manifest_key(case.target))
    listing = {f.path: f for f in case.client.list_files(case.source).files}
    stale = {
        case.shard(1): ("0" * 64, listing[case.shard(1)].size),
        case.shard(2): ("f" * 64, listing[case.shard(2)].size),
        "config.json": (listing["config.json"].sha256, listing["config.json"].size + 1),
        case.shard(3): (listing[case.shard(3)].sha256, listing[case.shard(3)].size - 1),
    }
    for path, (sha, size) in stale.items():
        bucket.put_object(case.target.key(path), b"x" * size, headers={SHA256_META: sha})

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert sorted(o.record.path for o in result.files if o.status != "skipped") == sorted(stale)
    for path in stale:
        assert _stored_sha256(case, case.target.key(path)) == _file_sha256(case, path)
    assert is_mirrored(case.target, case.credentials).complete


def test_a_transient_head_error_while_checking_in_place_is_retried(case: MirrorCase) -> None:
    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    key = case.target.key("config.json")
    case.oss.faults.fail("HeadObject", status=503, key=key, times=1)

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert case.oss.faults.fired() == 1
    assert _requests(case, "HeadObject", key)[-2:] == [503, 200]
    assert {o.status for o in result.files} == {"skipped"}


def test_files_changed_in_place_are_sent_again_whichever_way_their_sha256_sorts(
    case: MirrorCase,
) -> None:
    """The hub's content moved under the same target (a branch refreshed in place): the
    previous manifest records the old sha256 of two shards, whose objects hold the old bytes
    (same size, matching CRC64). Each must be sent again, whether the new sha256 sorts above
    or below the recorded one."""
    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    v2 = case.model_dir.parent / "v2"
    shutil.copytree(case.model_dir, v2)
    for n, direction in ((1, "above"), (2, "below")):
        path = v2 / case.shard(n)
        old = hashlib.sha256(path.read_bytes()).hexdigest()
        data = bytearray(path.read_bytes())
        for offset in range(64):
            data[offset] ^= 0xFF
            if (hashlib.sha256(data).hexdigest() > old) == (direction == "above"):
                break
            data[offset] ^= 0xFF
        else:
            pytest.fail(f"no single-byte change of the first 64 sorts {direction}")
        path.write_bytes(bytes(data))
    case.hub.add_revision_from_dir(case.source.model_id, "v2", v2)
    source = case.source.model_copy(update={"revision": "v2"})

    result = mirror_model(source, case.target, case.credentials, case.options, hub=case.client)

    moved = sorted(o.record.path for o in result.files if o.status != "skipped")
    assert moved == [case.shard(1), case.shard(2)]
    for n in (1, 2):
        stored = _stored_sha256(case, case.target.key(case.shard(n)))
        assert stored == hashlib.sha256((v2 / case.shard(n)).read_bytes()).hexdigest()
