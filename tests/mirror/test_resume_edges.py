"""Resume decisions when the checkpoint no longer describes what OSS or the hub hold.

Written for survivors of the mutation run over `_resume_hash` and `_open_upload`
(bench/mutation.py): a hashed prefix whose last part OSS now holds with other bytes, and a
checkpoint left by an older, smaller version of the file.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from llm_rollout.mirror import is_mirrored, mirror_model
from llm_rollout.mirror.hashing import ResumableSha256
from llm_rollout.oss import open_bucket
from tests.mirror.conftest import MirrorCase
from tests.mirror.test_resumable_hash import (
    PART,
    _checkpoint_files,
    _fail_last_part,
    _resumes_hashing_from_byte_zero,
    needs_openssl,
)


@needs_openssl
@pytest.mark.parametrize("sorts", ["above", "below"])
def test_a_hashed_prefix_whose_last_part_changed_in_oss_is_hashed_afresh(
    case: MirrorCase, sorts: str
) -> None:
    shard, key, size = _fail_last_part(case)
    saved = json.loads(_checkpoint_files(case)[key].read_text())
    assert saved["hashed_parts"] == 3
    # OSS now holds other bytes as part 3, the last part the saved hash covers; their ETag
    # (MD5) sorts above, then below, the recorded one: ETags are compared for equality.
    recorded = saved["parts"]["3"]["etag"]
    for fill in range(256):
        other = bytes([fill]) * PART
        if (hashlib.md5(other, usedforsecurity=False).hexdigest().upper() > recorded) == (
            sorts == "above"
        ):
            break
    else:
        pytest.fail(f"no fill byte gives an ETag sorting {sorts}")
    bucket = open_bucket(case.target, case.credentials)
    bucket.upload_part(key, saved["upload_id"], 3, other)

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    outcome = next(o for o in result.files if o.record.path == shard)
    # Hashing restarts from byte 0 (the whole shard is read again), parts 1-2 are kept, part
    # 3 and the last are sent.
    assert outcome.status == "resumed"
    assert outcome.bytes_fetched == size
    assert outcome.bytes_sent == PART + (size - 3 * PART)
    assert bucket.get_object(key).read() == (case.model_dir / shard).read_bytes()
    assert is_mirrored(case.target, case.credentials).complete


@needs_openssl
@pytest.mark.parametrize("change", [11, -11])
def test_a_checkpoint_of_an_older_version_of_the_file_is_discarded(
    case: MirrorCase, change: int
) -> None:
    shard, key, size = _fail_last_part(case)
    old_upload = json.loads(_checkpoint_files(case)[key].read_text())["upload_id"]
    # The hub's content moved: the shard's first byte changed and it grew or shrank by 11
    # bytes (same part count), so the checkpoint's size sorts below or above the new one.
    v2 = case.model_dir.parent / "v2"
    shutil.copytree(case.model_dir, v2)
    data = bytearray((v2 / shard).read_bytes())
    data[0] ^= 0xFF
    data = data + b"eleven more" if change > 0 else data[:change]
    (v2 / shard).write_bytes(bytes(data))
    case.hub.add_revision_from_dir(case.source.model_id, "v2", v2)
    source = case.source.model_copy(update={"revision": "v2"})

    result = mirror_model(source, case.target, case.credentials, case.options, hub=case.client)

    outcome = next(o for o in result.files if o.record.path == shard)
    assert outcome.status == "uploaded"
    assert outcome.bytes_sent == size + change
    assert old_upload not in {u.upload_id for u in case.oss.uploads()}
    stored = open_bucket(case.target, case.credentials).get_object(key).read()
    assert stored == (v2 / shard).read_bytes()


@needs_openssl
@pytest.mark.parametrize(
    "change",
    [
        {"sha256_format": ""},  # another implementation's state (sorts before ours)
        {"sha256_format": "zz-other"},  # (sorts after ours)
        {"sha256_state": "not hex at all"},  # unreadable
    ],
)
def test_a_saved_hash_state_that_is_not_ours_is_not_used(
    case: MirrorCase, change: dict[str, str]
) -> None:
    shard, key, size = _fail_last_part(case)
    path = _checkpoint_files(case)[key]
    saved = json.loads(path.read_text())
    saved.update(change)
    path.write_text(json.dumps(saved))

    _resumes_hashing_from_byte_zero(case, shard, size)


@needs_openssl
def test_a_saved_state_covering_fewer_parts_than_recorded_is_not_used(case: MirrorCase) -> None:
    shard, key, size = _fail_last_part(case)
    path = _checkpoint_files(case)[key]
    saved = json.loads(path.read_text())
    # A valid state of the first two parts, recorded as covering three.
    short = ResumableSha256()
    short.update((case.model_dir / shard).read_bytes()[: 2 * PART])
    saved["sha256_state"] = short.state()
    path.write_text(json.dumps(saved))

    _resumes_hashing_from_byte_zero(case, shard, size)
