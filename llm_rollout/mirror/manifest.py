"""The manifest object (the only completeness marker) and the fast `is_mirrored` check."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import oss2
import oss2.exceptions
from pydantic import ValidationError

from llm_rollout.credentials import OssCredentials
from llm_rollout.hub import HubListing
from llm_rollout.mirror.models import MANIFEST_NAME, FileRecord, Manifest, MirrorStatus
from llm_rollout.mirror.transfer import head_object
from llm_rollout.oss import (
    IntegrityError,
    OssTarget,
    crc64,
    open_bucket,
    oss_call,
    translate_oss_error,
)
from llm_rollout.upstream_names import UnsafeUpstreamData, check_listing, check_sha256

_HEAD_WORKERS = 16


def manifest_key(target: OssTarget) -> str:
    """Key of the manifest of the revision stored under `target.prefix`."""
    return target.key(MANIFEST_NAME)


def read_manifest(bucket: oss2.Bucket, target: OssTarget) -> Manifest | None:
    """The manifest, or None when absent or unreadable as a manifest.

    Wrong keys and a missing bucket raise (translated), which makes this the run's preflight.
    """
    key = manifest_key(target)
    try:
        raw = bucket.get_object(key).read()
    except oss2.exceptions.NoSuchKey:
        return None
    except oss2.exceptions.NotFound as exc:
        if getattr(exc, "code", "") == "NoSuchBucket":
            raise translate_oss_error(exc, f"GET {key}") from exc
        return None
    except oss2.exceptions.OssError as exc:
        raise translate_oss_error(exc, f"GET {key}") from exc
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError:
        return None
    check_manifest_names(manifest, target)
    return manifest


def check_manifest_names(manifest: Manifest, target: OssTarget) -> None:
    """Every record of a manifest read back from OSS names a checked path and the key the
    mirror would give it under `target`: its keys are read (HEAD) and copied from by a
    refresh, so one pointing elsewhere in the bucket is refused, not followed."""
    where = f"manifest {manifest_key(target)}"
    check_listing([r.path for r in manifest.files], where=where)
    for record in manifest.files:
        expected = target.key(record.path)
        if record.key != expected:
            raise UnsafeUpstreamData(
                where, record.key, "outside-prefix", f"the key of {record.path} is {expected}"
            )
        check_sha256(record.sha256, where=where, entry=record.path)


def write_manifest(bucket: oss2.Bucket, target: OssTarget, manifest: Manifest) -> str:
    """PUT the manifest (CRC64 checked) and return its oss:// URI."""
    key = manifest_key(target)
    body = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    result = oss_call(
        f"PUT {key}",
        lambda: bucket.put_object(key, body, headers={"Content-Type": "application/json"}),
    )
    server_crc = getattr(result, "crc", None)
    if server_crc is not None and int(server_crc) != crc64(body):
        raise IntegrityError(f"manifest {key}: CRC64 mismatch after upload")
    return target.uri(key)


def delete_manifest(bucket: oss2.Bucket, target: OssTarget) -> None:
    """Remove the completion marker before changing objects under the prefix."""
    key = manifest_key(target)
    oss_call(f"DELETE {key}", lambda: bucket.delete_object(key))


def _record_problem(bucket: oss2.Bucket, record: FileRecord) -> str | None:
    info = head_object(bucket, record.key)
    if info is None:
        return f"{record.path}: object missing"
    if info.size != record.size:
        return f"{record.path}: size {info.size} != manifest {record.size}"
    if info.crc64 is None or str(info.crc64) != record.crc64:
        return f"{record.path}: CRC64 differs from the manifest"
    return None


def check_mirror(
    bucket: oss2.Bucket, target: OssTarget, listing: HubListing | None = None
) -> MirrorStatus:
    """Manifest present (and matching `listing` when given), every object there with the
    recorded size and CRC64 (HEAD only: no data is read)."""
    uri = target.uri(manifest_key(target))
    manifest = read_manifest(bucket, target)
    if manifest is None:
        return MirrorStatus(complete=False, reason="no manifest", manifest_uri=uri)
    if listing is not None and (
        manifest.content_digest != listing.content_digest or manifest.model_id != listing.model_id
    ):
        return MirrorStatus(
            complete=False,
            reason="manifest is for different content than the hub lists now",
            manifest_uri=uri,
            manifest=manifest,
        )
    with ThreadPoolExecutor(max_workers=_HEAD_WORKERS) as pool:
        problems = [p for p in pool.map(lambda r: _record_problem(bucket, r), manifest.files) if p]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return MirrorStatus(
            complete=False,
            reason="; ".join(problems[:3]) + more,
            manifest_uri=uri,
            manifest=manifest,
        )
    return MirrorStatus(complete=True, reason="", manifest_uri=uri, manifest=manifest)


def is_mirrored(
    target: OssTarget, credentials: OssCredentials, listing: HubListing | None = None
) -> MirrorStatus:
    """Fast check the deploy flow uses to skip the mirror stage.

    Pass the current hub `listing` to also require that the mirror matches what the revision
    points at now (a moving branch); without it, only OSS is consulted.
    """
    return check_mirror(open_bucket(target, credentials), target, listing)
