"""Clean up older revision prefixes of a model in OSS after a promotion.

Revisions of one model live side by side under `<storage.prefix>/<model_id>/<revision>/`.
After a refresh promotes a new revision, the newest `keep` complete revisions stay, plus --
whatever their age -- the serving revision, the previous one (the rollback target) and any
revision another stable Service in the cluster records for the same model. A prefix without a
manifest is never deleted: it may be a mirror in progress.

Deleting a revision removes its manifest first, so it stops looking complete before any of its
objects disappear.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import oss2
import oss2.models
from kubernetes import client as k8s_client

from llm_rollout.kube.resources import request_json
from llm_rollout.kube.views import ObjectView, items_at
from llm_rollout.mirror.manifest import read_manifest
from llm_rollout.oss import OssTarget, oss_call
from llm_rollout.upstream_names import UnsafeUpstreamData, check_revision, under_prefix
from llm_rollout.vocabulary import ANN_MODEL, ANN_REVISION

_DELETE_BATCH = 1000


@dataclass(frozen=True)
class RevisionDir:
    """One revision folder of a model in OSS."""

    revision: str
    prefix: str  # ends with "/"
    created_at: str | None  # from the manifest; None when there is none (incomplete)


@dataclass(frozen=True)
class RetentionPlan:
    keep: tuple[str, ...]
    delete: tuple[str, ...]
    incomplete: tuple[str, ...]


@dataclass(frozen=True)
class DeletedRevision:
    revision: str
    objects: int
    bytes: int


def model_root(storage_prefix: str, model_id: str) -> str:
    """Key prefix holding every revision folder of `model_id` (ends with "/")."""
    return "/".join(p for p in (storage_prefix.strip("/"), model_id) if p) + "/"


def _list_page(bucket: oss2.Bucket, root: str, token: str) -> oss2.models.ListObjectsV2Result:
    return oss_call(
        f"LIST {root}",
        lambda: bucket.list_objects_v2(
            prefix=root, delimiter="/", continuation_token=token, max_keys=1000
        ),
    )


def _delete_batch(bucket: oss2.Bucket, folder: str, batch: list[str]) -> None:
    oss_call(
        f"DELETE {len(batch)} objects under {folder}", lambda: bucket.batch_delete_objects(batch)
    )


def list_revisions(bucket: oss2.Bucket, target: OssTarget, root: str) -> list[RevisionDir]:
    """Every revision folder under `root`, with its manifest's creation time."""
    folders: list[str] = []
    token = ""
    while True:
        page = _list_page(bucket, root, token)
        folders.extend(str(p) for p in page.prefix_list)
        if not page.is_truncated:
            break
        token = str(page.next_continuation_token)
    revisions: list[RevisionDir] = []
    where = f"OSS listing of {root}"
    for folder in folders:
        # The folder names a revision to delete: one checked segment directly under `root`.
        if not folder.startswith(root) or not folder.endswith("/"):
            raise UnsafeUpstreamData(where, folder, "outside-prefix", f"not a folder of {root}")
        revision = check_revision(folder[len(root) : -1], where=where)
        at = target.model_copy(update={"prefix": folder.rstrip("/")})
        manifest = read_manifest(bucket, at)
        revisions.append(RevisionDir(revision, folder, manifest.created_at if manifest else None))
    return revisions


def plan_retention(
    revisions: Iterable[RevisionDir], *, keep: int, protected: Iterable[str]
) -> RetentionPlan:
    """Keep the newest `keep` complete revisions and every protected one; delete the rest."""
    if keep < 1:
        raise ValueError("keep must be at least 1: the serving revision always stays")
    protected_set = {p for p in protected if p}
    complete = sorted(
        (r for r in revisions if r.created_at is not None),
        key=lambda r: (r.created_at or "", r.revision),
        reverse=True,
    )
    incomplete = tuple(sorted(r.revision for r in revisions if r.created_at is None))
    kept = {r.revision for r in complete[:keep]} | (protected_set & {r.revision for r in complete})
    return RetentionPlan(
        keep=tuple(sorted(kept)),
        delete=tuple(sorted(r.revision for r in complete if r.revision not in kept)),
        incomplete=incomplete,
    )


def delete_revision(bucket: oss2.Bucket, folder: str, manifest_key: str) -> DeletedRevision:
    """Delete every object under `folder`, the manifest first."""
    oss_call(f"DELETE {manifest_key}", lambda: bucket.delete_object(manifest_key))
    keys: list[str] = []
    total = 0
    for obj in oss2.ObjectIteratorV2(bucket, prefix=folder):
        # Only keys inside the folder are deleted, whatever the listing answers.
        keys.append(under_prefix(folder, str(obj.key), where=f"OSS listing of {folder}"))
        total += int(obj.size)
    for start in range(0, len(keys), _DELETE_BATCH):
        batch = keys[start : start + _DELETE_BATCH]
        _delete_batch(bucket, folder, batch)
    revision = folder.rstrip("/").rsplit("/", 1)[-1]
    return DeletedRevision(revision, len(keys) + 1, total)


def revisions_in_use(api: k8s_client.ApiClient, model_id: str) -> set[str]:
    """Revisions of `model_id` that any stable Service in the cluster records as serving."""
    # Across all namespaces: another service may serve the same model from the same bucket.
    listing = request_json(api, "GET", "/api/v1/services", target="Service list (all namespaces)")
    used: set[str] = set()
    for service in map(ObjectView, items_at(listing, "items")):
        annotations = service.metadata.annotations
        model = str(annotations.get(ANN_MODEL) or "")
        revision = annotations.get(ANN_REVISION)
        if revision and (model == model_id or model.endswith(":" + model_id)):
            used.add(str(revision))
    return used
