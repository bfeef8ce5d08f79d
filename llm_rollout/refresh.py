"""What a model refresh has to do: compare what the hub's branch points at now with what serves.

The serving revision comes from the stable Service's annotations (model revision, spec hash);
its file list with sizes, sha256 and CRC-64 comes from that revision's mirror manifest in OSS.
The hub's branch (e.g. a moving `master`) is listed now. `plan_refresh` only reads: an
up-to-date service costs one Service GET, one hub listing and one manifest GET.

When the content moved, the new content goes to a *new* revision prefix named after the
concrete revision the branch resolves to (the hub listing reports it per file), so the serving
release keeps reading unchanged bytes while the new one is prepared, and the previous revision
stays available for a rollback. Files whose sha256 is unchanged (also under a new path) are
planned as server-side copies; only the rest is left for the mirror to transfer.
"""

from __future__ import annotations

import oss2
from kubernetes import client as k8s_client
from pydantic import BaseModel, Field

from llm_rollout.errors import PermanentError
from llm_rollout.hub import HubClient, HubFile, HubListing, HubSource
from llm_rollout.incremental import CopyItem
from llm_rollout.mirror.inputs import hub_source_of
from llm_rollout.mirror.manifest import read_manifest
from llm_rollout.mirror.models import Manifest
from llm_rollout.oss import OssTarget
from llm_rollout.release.state import read_release_state
from llm_rollout.spec import ServiceSpec, spec_hash
from llm_rollout.strategy import ReleaseState
from llm_rollout.upstream_names import check_revision


class RefreshPlan(BaseModel):
    """The difference between the hub now and the serving revision, and what to do about it."""

    service: str = Field(description="Service name.")
    namespace: str = Field(description="Service namespace.")
    branch: str = Field(description="Revision the spec asks for (may be a moving branch).")
    deployed_revision: str | None = Field(description="Revision the stable Service records.")
    target_revision: str = Field(description="Revision (and OSS folder) to roll out.")
    content_digest: str = Field(description="Digest of the hub's file list now.")
    deployed_digest: str | None = Field(description="Digest recorded in the deployed manifest.")
    copies: list[CopyItem] = Field(description="Unchanged files to copy inside OSS.")
    changed: list[HubFile] = Field(description="New or modified files the mirror transfers.")
    removed: list[str] = Field(description="Paths of the deployed revision the hub dropped.")
    spec_changed: bool = Field(description="The spec differs from the deployed one.")
    reason: str = Field(description="One line saying why (not) up to date.")

    @property
    def up_to_date(self) -> bool:
        return (
            self.deployed_revision is not None
            and self.content_digest == self.deployed_digest
            and not self.spec_changed
        )

    @property
    def changed_bytes(self) -> int:
        return sum(f.size for f in self.changed)

    @property
    def copied_bytes(self) -> int:
        return sum(c.size for c in self.copies)


def pinned(spec: ServiceSpec, revision: str) -> ServiceSpec:
    """A copy of `spec` whose ModelScope revision (and so OSS folder) is `revision`."""
    if spec.model.modelscope is None:
        raise PermanentError("model.modelscope: a refresh needs a ModelScope source")
    copy = spec.model_copy(deep=True)
    assert copy.model.modelscope is not None
    copy.model.modelscope.revision = revision
    return copy


def hub_source(spec: ServiceSpec) -> HubSource:
    source = spec.model.modelscope
    if source is None:
        raise PermanentError(
            "model.modelscope: a refresh needs a ModelScope source (an oss_uri is used as-is)"
        )
    return hub_source_of(source)


def concrete_revision(hub: HubClient, source: HubSource) -> str | None:
    """The revision `source.revision` resolves to now, when the hub's listing says so.

    ModelScope's file listing carries a `Revision` per entry; when they all agree it names the
    commit (or tag) the branch points at. None when absent or ambiguous.
    """
    from modelscope_hub.api import HubApi

    legacy = HubApi(endpoint=hub.endpoint).legacy
    raw = legacy.list_repo_files(
        repo_id=source.model_id, repo_type="model", revision=source.revision, recursive=True
    )
    revisions = {
        str(item.get("Revision") or "")
        for item in raw
        if (item.get("Type") or item.get("type") or "blob") == "blob"
    }
    if len(revisions) != 1:
        return None
    (revision,) = revisions
    if not revision:
        return None
    # It names the OSS folder the refresh writes to: a hostile value is refused, not ignored.
    return check_revision(revision, where=f"hub listing of {source.model_id}@{source.revision}")


def diff_files(
    listing: HubListing, manifest: Manifest, target_prefix: str
) -> tuple[list[CopyItem], list[HubFile], list[str]]:
    """(server-side copies, files to transfer, removed paths) from `manifest` to `listing`.

    A file is copied when the deployed revision holds the same bytes (same sha256 and size),
    at the same path or at another one (a renamed file moves no bytes either).
    """
    by_path = {r.path: r for r in manifest.files}
    by_content = {(r.sha256, r.size): r for r in manifest.files}
    copies: list[CopyItem] = []
    changed: list[HubFile] = []
    prefix = target_prefix.rstrip("/") + "/"
    for file in listing.files:
        same_path = by_path.get(file.path)
        record = (
            same_path
            if same_path is not None
            and same_path.sha256 == file.sha256
            and same_path.size == file.size
            else by_content.get((file.sha256, file.size))
        )
        if record is None:
            changed.append(file)
            continue
        copies.append(
            CopyItem(
                path=file.path,
                source_key=record.key,
                target_key=prefix + file.path,
                size=file.size,
                sha256=file.sha256,
                crc64=record.crc64,
            )
        )
    listed = {f.path for f in listing.files}
    removed = sorted(path for path in by_path if path not in listed)
    return copies, changed, removed


def plan_refresh(
    spec: ServiceSpec,
    state: ReleaseState,
    listing: HubListing,
    manifest: Manifest | None,
    resolved_revision: str | None,
) -> RefreshPlan:
    """Decide from what was read: up to date, spec-only change, or new content.

    `manifest` is the deployed revision's (None when absent); `resolved_revision` is what the
    branch resolves to now (None when the hub does not say: the branch's own folder is
    refreshed in place then, and the mirror's moved-branch handling applies).
    """
    branch = hub_source(spec).revision
    deployed = state.revision if state.current_release else None
    base = {
        "service": spec.name,
        "namespace": spec.namespace,
        "branch": branch,
        "deployed_revision": deployed,
        "content_digest": listing.content_digest,
        "deployed_digest": manifest.content_digest if manifest else None,
    }
    if deployed is None:
        return RefreshPlan(
            **base,
            target_revision=resolved_revision or branch,
            copies=[],
            changed=list(listing.files),
            removed=[],
            spec_changed=True,
            reason=f"Service {spec.namespace}/{spec.name} is not deployed yet",
        )
    spec_changed = state.spec_hash != spec_hash(pinned(spec, deployed))
    if manifest is not None and manifest.content_digest == listing.content_digest:
        reason = (
            "the spec changed; the model content is unchanged"
            if spec_changed
            else f"up to date: {branch} still has the content of revision {deployed}"
        )
        return RefreshPlan(
            **base,
            target_revision=deployed,
            copies=[],
            changed=[],
            removed=[],
            spec_changed=spec_changed,
            reason=reason,
        )
    target = resolved_revision or branch
    target_prefix = pinned(spec, target).model_object_prefix
    if manifest is None:
        copies, changed, removed = list[CopyItem](), list(listing.files), list[str]()
        reason = f"no mirror manifest for the deployed revision {deployed}: full mirror"
    elif target == deployed:
        # Same folder: the mirror itself skips the unchanged objects in place.
        _, changed, removed = diff_files(listing, manifest, target_prefix)
        copies = []
        reason = f"{branch} moved; the hub names no concrete revision: refreshing in place"
    else:
        copies, changed, removed = diff_files(listing, manifest, target_prefix)
        reason = (
            f"{branch} moved from {deployed} to {target}: {len(changed)} file(s) changed, "
            f"{len(copies)} unchanged, {len(removed)} removed"
        )
    return RefreshPlan(
        **base,
        target_revision=target,
        copies=copies,
        changed=changed,
        removed=removed,
        spec_changed=spec_changed,
        reason=reason,
    )


def revision_target(spec: ServiceSpec, revision: str) -> OssTarget:
    """Where revision `revision` of the spec's model lives in OSS."""
    return OssTarget(
        endpoint=spec.storage.endpoint,
        bucket=spec.storage.bucket,
        region=spec.storage.region,
        prefix=pinned(spec, revision).model_object_prefix.rstrip("/"),
    )


def inspect_refresh(
    spec: ServiceSpec, *, hub: HubClient, bucket: oss2.Bucket, api: k8s_client.ApiClient
) -> RefreshPlan:
    """Read the stable Service, the hub listing and the deployed manifest; plan. Writes nothing.

    The concrete revision is only asked for when the content moved.
    """
    source = hub_source(spec)
    state = read_release_state(api, spec.namespace, spec.name)
    listing = hub.list_files(source)
    manifest = None
    if state.current_release and state.revision:
        manifest = read_manifest(bucket, revision_target(spec, state.revision))
    resolved = None
    if manifest is None or manifest.content_digest != listing.content_digest:
        resolved = concrete_revision(hub, source)
    return plan_refresh(spec, state, listing, manifest, resolved)
