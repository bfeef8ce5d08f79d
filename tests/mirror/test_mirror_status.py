"""What `is_mirrored` answers, and why, for each way a mirror stops being complete."""

from __future__ import annotations

import json

import pytest

from llm_rollout.mirror import is_mirrored, manifest_key, mirror_model
from llm_rollout.mirror.transfer import head_object
from llm_rollout.oss import OssPermanentError, open_bucket
from sandbox.synthetic import derive_changed_revision
from tests.mirror.conftest import BUCKET, MirrorCase


@pytest.fixture
def mirrored(case: MirrorCase) -> MirrorCase:
    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    status = is_mirrored(case.target, case.credentials, case.client.list_files(case.source))
    assert status.complete and status.reason == ""
    return case


@pytest.mark.parametrize("change", [1, -1])
def test_a_resized_object_is_named_by_its_size(mirrored: MirrorCase, change: int) -> None:
    case = mirrored
    key = case.target.key("config.json")
    size = case.oss.object_meta(BUCKET, key).size  # type: ignore[union-attr]
    original = (case.model_dir / "config.json").read_bytes()
    resized = original + b"\n" if change > 0 else original[:-1]
    open_bucket(case.target, case.credentials).put_object(key, resized)

    status = is_mirrored(case.target, case.credentials)

    assert not status.complete
    assert status.reason == f"config.json: size {size + change} != manifest {size}"


def test_a_missing_object_is_named(mirrored: MirrorCase) -> None:
    case = mirrored
    open_bucket(case.target, case.credentials).delete_object(case.target.key(case.shard(3)))

    status = is_mirrored(case.target, case.credentials)

    assert not status.complete
    assert status.reason == f"{case.shard(3)}: object missing"


@pytest.mark.parametrize(("count", "suffix"), [(3, ""), (7, " (+4 more)")])
def test_problems_name_three_and_count_the_rest(
    mirrored: MirrorCase, count: int, suffix: str
) -> None:
    case = mirrored
    bucket = open_bucket(case.target, case.credentials)
    broken = sorted(r.path for r in case.client.list_files(case.source).files)[:count]
    for path in broken:
        bucket.delete_object(case.target.key(path))

    status = is_mirrored(case.target, case.credentials)

    assert not status.complete
    listed = status.reason.removesuffix(suffix)
    assert all(part.endswith(": object missing") for part in listed.split("; "))
    named = [part.split(":")[0] for part in listed.split("; ")]
    assert len(named) == 3 and set(named) <= set(broken)
    assert status.reason == listed + suffix


def test_a_manifest_for_other_content_is_not_complete(mirrored: MirrorCase) -> None:
    case = mirrored
    changed = derive_changed_revision(
        case.model_dir, case.model_dir.parent / "v2", changed_shards=[1], seed=11
    )
    case.hub.add_revision_from_dir(case.source.model_id, "v2", changed)
    listing = case.client.list_files(case.source.model_copy(update={"revision": "v2"}))

    status = is_mirrored(case.target, case.credentials, listing)

    assert not status.complete
    assert status.reason == "manifest is for different content than the hub lists now"
    assert status.manifest is not None
    # Without a listing only OSS is consulted: the objects are all there and verified.
    assert is_mirrored(case.target, case.credentials).complete


@pytest.mark.parametrize("sorts", ["after", "before"])
def test_a_manifest_for_another_model_with_the_same_files_is_not_complete(
    mirrored: MirrorCase, sorts: str
) -> None:
    case = mirrored
    # The other model's id sorts after, then before this one's: compared for equality.
    owner, name = case.source.model_id.split("/")
    other_id = f"{owner}/{name}-copy" if sorts == "after" else f"aaa/{name}"
    assert (other_id > case.source.model_id) == (sorts == "after")
    other = case.source.model_copy(update={"model_id": other_id})
    case.hub.add_revision_from_dir(other.model_id, "v1", case.model_dir)
    listing = case.client.list_files(other)
    manifest = is_mirrored(case.target, case.credentials).manifest
    assert manifest is not None and listing.content_digest == manifest.content_digest

    status = is_mirrored(case.target, case.credentials, listing)

    assert not status.complete
    assert status.reason == "manifest is for different content than the hub lists now"


def test_no_manifest_is_not_complete(mirrored: MirrorCase) -> None:
    case = mirrored
    open_bucket(case.target, case.credentials).delete_object(manifest_key(case.target))

    status = is_mirrored(case.target, case.credentials)

    assert not status.complete
    assert status.reason == "no manifest"
    assert status.manifest is None
    assert status.manifest_uri == f"oss://{BUCKET}/{manifest_key(case.target)}"


def test_an_unreadable_manifest_is_no_manifest(mirrored: MirrorCase) -> None:
    case = mirrored
    bucket = open_bucket(case.target, case.credentials)
    bucket.put_object(manifest_key(case.target), b'{"not": "a manifest"}')

    status = is_mirrored(case.target, case.credentials)

    assert not status.complete and status.reason == "no manifest"


def test_head_of_a_missing_bucket_raises_instead_of_reading_as_absent(case: MirrorCase) -> None:
    gone = case.target.model_copy(update={"bucket": "no-such-bucket"})
    bucket = open_bucket(gone, case.credentials)
    with pytest.raises(OssPermanentError) as failure:
        head_object(bucket, gone.key("config.json"))
    assert failure.value.code == "NoSuchBucket"
    assert head_object(open_bucket(case.target, case.credentials), "no/such/key") is None


def test_a_rerun_keeps_each_skipped_files_upload_time(mirrored: MirrorCase) -> None:
    case = mirrored
    bucket = open_bucket(case.target, case.credentials)
    key = manifest_key(case.target)
    manifest = json.loads(bucket.get_object(key).read())
    for record in manifest["files"]:
        record["uploaded_at"] = "2020-01-01T00:00:00Z"
    bucket.put_object(key, json.dumps(manifest).encode())

    result = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert {o.status for o in result.files} == {"skipped"}
    assert {r.uploaded_at for r in result.manifest.files} == {"2020-01-01T00:00:00Z"}


@pytest.mark.parametrize("sorts", ["above", "below"])
def test_a_listing_with_other_content_is_not_complete_whichever_way_its_digest_sorts(
    mirrored: MirrorCase, sorts: str
) -> None:
    case = mirrored
    listing = case.client.list_files(case.source)
    recorded = listing.content_digest
    first, *rest = listing.files
    for n in range(64):
        # Another sha256 for one file: other content, as the hub would list after a change.
        changed = listing.model_copy(
            update={"files": (first.model_copy(update={"sha256": f"{n:064x}"}), *rest)}
        )
        if (changed.content_digest > recorded) == (sorts == "above"):
            break
    else:
        pytest.fail(f"no listing found whose digest sorts {sorts}")

    status = is_mirrored(case.target, case.credentials, changed)

    assert not status.complete
    assert status.reason == "manifest is for different content than the hub lists now"
