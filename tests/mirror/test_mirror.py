"""The mirror against the sandbox hub and OSS, with the real modelscope, httpx and oss2."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

import oss2
import pytest
from pydantic import SecretStr

from llm_rollout.credentials import OssCredentials
from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.hub import HubNotFoundError, HubSource
from llm_rollout.mirror import (
    MirrorError,
    MirrorTransientError,
    MirrorValidationError,
    is_mirrored,
    manifest_key,
    mirror_model,
)
from llm_rollout.oss import OssPermanentError, crc64, open_bucket
from tests.mirror.conftest import ACCESS_KEY_ID, ACCESS_KEY_SECRET, MirrorCase


def _bucket(case: MirrorCase) -> oss2.Bucket:
    return open_bucket(case.target, case.credentials)


def _writes(case: MirrorCase) -> Counter[tuple[str, int | None]]:
    """Successful PutObject/UploadPart requests per (key, part number) in the OSS log.

    The sandbox logs a request after answering it, so counts are taken over the whole log once
    the runs are over rather than split at a mark taken between runs.
    """
    return Counter(
        (e.key, e.part_number)
        for e in case.oss.request_log
        if e.op in ("UploadPart", "PutObject")
        and e.status == 200
        and e.key.startswith(case.target.key() + "/")
    )


def test_full_mirror_is_verified_and_complete(case: MirrorCase) -> None:
    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    bucket = _bucket(case)
    on_disk = sorted(p for p in case.model_dir.iterdir() if p.is_file())
    assert sorted(r.path for r in result.manifest.files) == [p.name for p in on_disk]
    for path in on_disk:
        data = bucket.get_object(case.target.key(path.name)).read()
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
        record = next(r for r in result.manifest.files if r.path == path.name)
        assert record.crc64 == str(crc64(data))
        head = bucket.head_object(case.target.key(path.name))
        assert head.headers["x-oss-hash-crc64ecma"] == record.crc64
    assert result.manifest_uri == f"oss://models/{manifest_key(case.target)}"
    stored = json.loads(bucket.get_object(manifest_key(case.target)).read())
    assert stored["content_digest"] == result.manifest.content_digest
    assert {o.status for o in result.files} == {"uploaded"}
    total = sum(p.stat().st_size for p in on_disk)
    assert result.bytes_sent == total
    status = is_mirrored(case.target, case.credentials, case.client.list_files(case.source))
    assert status.complete, status.reason
    # Shards went up as multipart uploads: four parts each (3 x 256 KiB and a short one).
    parts = _writes(case)
    assert sorted(n for key, n in parts if key.endswith(case.shard(1))) == [1, 2, 3, 4]


def test_rerun_moves_zero_bytes(case: MirrorCase) -> None:
    first = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert result.bytes_sent == 0
    assert result.bytes_fetched == 0
    assert {o.status for o in result.files} == {"skipped"}
    # Across both runs every object (and the manifest) was written exactly once ...
    writes = _writes(case)
    assert writes and set(writes.values()) == {1}
    assert writes[(manifest_key(case.target), None)] == 1
    # ... and every file was downloaded from the hub by the first run only.
    downloaded = sum(
        e.bytes_sent
        for e in case.hub.request_log
        if "FilePath" in e.query and case.source.model_id in e.path
    )
    assert downloaded == first.bytes_fetched


def test_dropped_hub_connection_resumes_with_range(case: MirrorCase) -> None:
    shard = case.shard(2)
    case.hub.faults.drop_after_bytes(shard, 100_000, times=2)

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert _bytes_of(result, shard) == (case.model_dir / shard).stat().st_size
    ranges = [
        e.range
        for e in case.hub.request_log
        if e.query.get("FilePath") == shard
        and e.range is not None
        and case.source.model_id in e.path
    ]
    # After a drop the reader asked for the rest of the range, not the range again.
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in ranges)
    assert any(start % (256 * 1024) != 0 for start in starts), ranges
    assert is_mirrored(case.target, case.credentials).complete


def _bytes_of(result: object, path: str) -> int:
    files = result.manifest.files  # type: ignore[attr-defined]
    return next(r.size for r in files if r.path == path)


def test_hub_outage_on_one_file_resumes_without_resending_others(case: MirrorCase) -> None:
    shard = case.shard(3)
    case.hub.faults.server_error(f"FilePath={shard}", times=50, status=503)
    with pytest.raises(MirrorTransientError) as failure:
        mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    assert shard in str(failure.value)
    assert not is_mirrored(case.target, case.credentials).complete
    case.hub.faults.clear()

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    moved = {o.record.path for o in result.files if o.status != "skipped"}
    assert moved == {shard}
    assert set(_writes(case).values()) == {1}, "an object or part was sent twice"
    assert is_mirrored(case.target, case.credentials).complete


def test_oss_503_mid_multipart_resumes_without_resending_parts(case: MirrorCase) -> None:
    # Part 3 of every multipart upload keeps failing: more than the retry budget.
    case.oss.faults.fail_parts([3], times=10, status=503)
    with pytest.raises(MirrorTransientError):
        mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    assert not is_mirrored(case.target, case.credentials).complete
    case.oss.faults.clear()

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    writes = _writes(case)
    resent = [k for k, n in writes.items() if n > 1]
    assert resent == [], f"parts sent twice: {resent}"
    shards = [o for o in result.files if o.record.path.startswith("model-0")]
    # How far each shard got before the first run gave up depends on thread timing (a shard
    # may not have started at all); what may not vary: a shard that had parts uploaded is
    # resumed, and its re-run sends less than the whole file.
    resumed = [o for o in shards if o.status == "resumed"]
    assert resumed, [o.status for o in shards]
    assert {o.status for o in shards} <= {"resumed", "uploaded"}
    assert all(o.bytes_sent < o.record.size for o in resumed), [o.bytes_sent for o in resumed]
    for n in (1, 2, 3):
        key = case.target.key(case.shard(n))
        assert sorted(p for k, p in writes if k == key) == [1, 2, 3, 4]
    assert is_mirrored(case.target, case.credentials).complete


def test_wrong_secret_fails_fast_without_leaking(case: MirrorCase) -> None:
    wrong = OssCredentials(
        access_key_id=SecretStr(ACCESS_KEY_ID), access_key_secret=SecretStr("not-the-secret-xyz")
    )
    served = case.hub.bytes_served
    with pytest.raises(OssPermanentError) as failure:
        mirror_model(case.source, case.target, wrong, case.options, hub=case.client)
    assert failure.value.code == "SignatureDoesNotMatch"
    assert case.hub.bytes_served == served
    text = str(failure.value) + repr(failure.value) + repr(wrong)
    assert "not-the-secret-xyz" not in text
    assert ACCESS_KEY_SECRET not in text


def test_unknown_access_key_fails_fast(case: MirrorCase) -> None:
    wrong = OssCredentials(
        access_key_id=SecretStr("LTAI-nobody"), access_key_secret=SecretStr(ACCESS_KEY_SECRET)
    )
    with pytest.raises(OssPermanentError) as failure:
        mirror_model(case.source, case.target, wrong, case.options, hub=case.client)
    assert failure.value.code == "InvalidAccessKeyId"
    assert ACCESS_KEY_SECRET not in str(failure.value)


def test_missing_bucket_fails_fast(case: MirrorCase) -> None:
    # A bucket name of this test's own: the sandbox's request log is shared by the session.
    missing = "missing-" + case.source.model_id.split("/")[-1]
    target = case.target.model_copy(update={"bucket": missing})
    served = case.hub.bytes_served
    with pytest.raises(OssPermanentError) as failure:
        mirror_model(case.source, target, case.credentials, case.options, hub=case.client)
    assert failure.value.code == "NoSuchBucket"
    assert "does not exist" in str(failure.value)
    # Found by the first read (the manifest GET), before any byte came from the hub.
    assert case.hub.bytes_served == served
    # (The sandbox logs a request just after answering it: wait, bounded, for the first.)
    deadline = time.monotonic() + 5
    while not _requests_to(case, missing) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _requests_to(case, missing) == ["GetObject"]


def _requests_to(case: MirrorCase, bucket: str) -> list[str]:
    return [e.op for e in case.oss.request_log if e.bucket == bucket]


def test_unknown_model_fails_fast(case: MirrorCase) -> None:
    source = HubSource(model_id="acme/does-not-exist", revision="v1")
    with pytest.raises(HubNotFoundError, match="acme/does-not-exist"):
        mirror_model(source, case.target, case.credentials, case.options, hub=case.client)


def test_corrupt_hub_data_marks_nothing_complete(case: MirrorCase) -> None:
    shard = case.shard(2)
    case.hub.faults.wrong_sha256(shard, model_id=case.source.model_id)
    with pytest.raises(MirrorError) as failure:
        mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    assert isinstance(failure.value, PermanentError)
    assert shard in str(failure.value)
    assert "sha256 mismatch" in str(failure.value)
    bucket = _bucket(case)
    assert not bucket.object_exists(case.target.key(shard))
    assert not bucket.object_exists(manifest_key(case.target))
    assert not is_mirrored(case.target, case.credentials).complete
    # No multipart upload of the corrupt file was left behind either.
    assert not [u for u in case.oss.uploads() if u.key == case.target.key(shard)]


def test_expectations_catch_a_missing_shard(case: MirrorCase) -> None:
    source = case.source.model_copy(update={"ignore_patterns": (case.shard(2),)})
    with pytest.raises(MirrorValidationError) as failure:
        mirror_model(source, case.target, case.credentials, case.options, hub=case.client)
    assert case.shard(2) in str(failure.value)
    assert "missing required files" in str(failure.value)
    assert not _bucket(case).object_exists(manifest_key(case.target))


def test_staged_mode_mirrors_and_verifies(case: MirrorCase) -> None:
    options = case.options.model_copy(update={"mode": "staged"})
    result = mirror_model(case.source, case.target, case.credentials, options, hub=case.client)
    assert {o.status for o in result.files} == {"uploaded"}
    status = is_mirrored(case.target, case.credentials, case.client.list_files(case.source))
    assert status.complete, status.reason
    # A streamed re-run finds everything verified in place.
    again = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    assert again.bytes_sent == 0


def test_is_mirrored_detects_a_changed_object(case: MirrorCase) -> None:
    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    _bucket(case).put_object(case.target.key("config.json"), b"{}")
    status = is_mirrored(case.target, case.credentials)
    assert not status.complete
    assert "config.json" in status.reason
    # And the next mirror run repairs exactly that file.
    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    assert [o.record.path for o in result.files if o.status != "skipped"] == ["config.json"]
    assert is_mirrored(case.target, case.credentials).complete


def test_a_transient_oss_error_is_retried_and_a_permanent_one_is_not(case: MirrorCase) -> None:
    key = case.target.key("config.json")
    case.oss.faults.fail("PutObject", status=503, key=key, times=1)
    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    assert case.oss.faults.fired() == 1
    puts = [e.status for e in case.oss.request_log if e.op == "PutObject" and e.key == key]
    assert puts == [503, 200]  # sent again after the 503, once
    assert is_mirrored(case.target, case.credentials).complete
    assert issubclass(MirrorTransientError, TransientError)

    # A 403 is permanent: the request is sent once, never again, and the error says so.
    other = case.target.model_copy(update={"prefix": case.target.prefix + "-denied"})
    denied = other.key("config.json")
    case.oss.faults.fail("PutObject", status=403, code="AccessDenied", key=denied, times=None)
    with pytest.raises(MirrorError) as failure:
        mirror_model(case.source, other, case.credentials, case.options, hub=case.client)
    assert isinstance(failure.value, PermanentError)
    assert list(failure.value.failed) == ["config.json"]
    attempts = [e.status for e in case.oss.request_log if e.op == "PutObject" and e.key == denied]
    assert attempts == [403]
