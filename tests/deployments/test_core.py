"""Plain functions of the refresh against the sandbox hub and OSS and the session's REAL cluster
(real clients): refresh diff, server-side incremental copy that the mirror then skips,
retention, the refresh of a service not deployed yet, the lease."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import oss2
import pytest
from pydantic import SecretStr

from llm_rollout.credentials import OssCredentials
from llm_rollout.hub import HubClient
from llm_rollout.incremental import CopyItem, copy_unchanged, part_ranges
from llm_rollout.kube.client import new_api_client
from llm_rollout.kube.objects import get
from llm_rollout.locking import ServiceLockedError, lease_ref, service_lock
from llm_rollout.mirror import MirrorOptions, mirror_model
from llm_rollout.mirror.manifest import manifest_key, read_manifest
from llm_rollout.oss import open_bucket
from llm_rollout.refresh import (
    hub_source,
    inspect_refresh,
    pinned,
    plan_refresh,
    revision_target,
)
from llm_rollout.retention import (
    RevisionDir,
    delete_revision,
    list_revisions,
    model_root,
    plan_retention,
)
from llm_rollout.spec import ServiceSpec, spec_from_dict, spec_hash
from llm_rollout.strategy import ReleaseState
from sandbox.cluster.api_proxy import ApiFaultProxy, ProxyRecord
from sandbox.cluster.control_plane import Cluster
from sandbox.hub import HubServer
from sandbox.oss import OssServer
from sandbox.synthetic import derive_changed_revision, shard_name
from tests.deployments.conftest import (
    BUCKET,
    KEY_ID,
    KEY_SECRET,
    SHARDS,
    Model,
    admin_kubeconfig_via,
    spec_data,
    writes,
)

CREDS = OssCredentials(access_key_id=SecretStr(KEY_ID), access_key_secret=SecretStr(KEY_SECRET))


def _options(tmp: Path) -> MirrorOptions:
    return MirrorOptions(part_size_mb=0.25, checkpoint_dir=tmp / "ckpt", retry_base_delay_s=0.01)


def _mirror(spec: ServiceSpec, revision: str, tmp: Path) -> None:
    source = hub_source(pinned(spec, revision))
    mirror_model(source, revision_target(spec, revision), CREDS, _options(tmp))


def _state(spec: ServiceSpec, revision: str) -> ReleaseState:
    return ReleaseState(
        service=spec.name,
        namespace=spec.namespace,
        current_release="r1",
        revision=revision,
        spec_hash=spec_hash(pinned(spec, revision)),
    )


def test_refresh_moves_only_changed_bytes(
    hub: HubServer, oss: OssServer, model: Model, tmp_path: Path
) -> None:
    spec = spec_from_dict(spec_data(oss, model.model_id, name="core-diff"))
    _mirror(spec, "master", tmp_path)
    client = HubClient(endpoint=hub.base_url)
    bucket = open_bucket(revision_target(spec, "master"), CREDS)
    manifest = read_manifest(bucket, revision_target(spec, "master"))
    assert manifest is not None

    # Unchanged hub: up to date, nothing to copy or move.
    plan = plan_refresh(
        spec, _state(spec, "master"), client.list_files(hub_source(spec)), manifest, None
    )
    assert plan.up_to_date and plan.reason.startswith("up to date")

    v2 = derive_changed_revision(model.v1_dir, tmp_path / "v2", changed_shards=[2], seed=99)
    hub.add_revision_from_dir(model.model_id, "v2", v2)
    hub.move_branch(model.model_id, "master", "v2")
    listing = client.list_files(hub_source(spec))
    plan = plan_refresh(spec, _state(spec, "master"), listing, manifest, "v2")
    assert not plan.up_to_date
    assert plan.target_revision == "v2"
    assert [f.path for f in plan.changed] == [shard_name(2, SHARDS)]
    assert len(plan.copies) == len(listing.files) - 1
    assert all(c.target_key.startswith(f"models/{model.model_id}/v2/") for c in plan.copies)

    oss.reset_counters()
    # A tiny multipart threshold so shards take UploadPartCopy and small files CopyObject.
    result = copy_unchanged(
        bucket, plan.copies, multipart_threshold_bytes=64 * 1024, part_bytes=256 * 1024
    )
    methods = {o.method for o in result.outcomes}
    assert methods == {"copy-object", "upload-part-copy"}
    oss.wait_idle()  # the last request's record lands just after its answer
    ops = {r.op for r in oss.request_log}
    assert "PutObject" not in ops and "UploadPart" not in ops
    assert oss.bytes_received < 64 * 1024  # request bodies only (XML of the completes)

    oss.reset_counters()
    mirrored = mirror_model(
        hub_source(pinned(spec, "v2")), revision_target(spec, "v2"), CREDS, _options(tmp_path)
    )
    changed = plan.changed_bytes
    assert mirrored.bytes_sent == changed
    uploaded = [o for o in mirrored.files if o.status != "skipped"]
    assert [o.record.path for o in uploaded] == [shard_name(2, SHARDS)]
    # Everything OSS received: the changed shard plus the manifest and request overhead (<1%).
    assert oss.bytes_received <= changed * 1.01
    # The copies verify like any mirrored object: a second copy run finds them all present.
    again = copy_unchanged(bucket, plan.copies)
    assert {o.method for o in again.outcomes} == {"already-present"}


def test_refresh_without_the_deployed_manifest_plans_a_full_mirror_that_moves_nothing(
    hub: HubServer, oss: OssServer, model: Model, tmp_path: Path
) -> None:
    spec = spec_from_dict(spec_data(oss, model.model_id, name="core-nomanifest"))
    _mirror(spec, "master", tmp_path)
    target = revision_target(spec, "master")
    bucket = open_bucket(target, CREDS)
    # The objects stay; only the completeness marker is gone (a run that stopped before
    # writing it, or a manifest removed by hand).
    bucket.delete_object(manifest_key(target))
    assert read_manifest(bucket, target) is None
    listing = HubClient(endpoint=hub.base_url).list_files(hub_source(spec))

    plan = plan_refresh(spec, _state(spec, "master"), listing, None, None)

    assert not plan.up_to_date
    assert plan.reason == "no mirror manifest for the deployed revision master: full mirror"
    assert plan.deployed_digest is None
    assert plan.target_revision == "master"
    assert plan.copies == [] and plan.removed == []
    assert sorted(f.path for f in plan.changed) == sorted(f.path for f in listing.files)
    # The full mirror finds every object verified in place: it sends no file again (each
    # object keeps the stored segments it had: none was rewritten), only the manifest.
    stored = {
        k: oss.object_meta(BUCKET, k) for k in oss.keys(BUCKET) if k.startswith(target.prefix)
    }
    result = mirror_model(hub_source(spec), target, CREDS, _options(tmp_path))
    assert result.bytes_sent == 0 and {o.status for o in result.files} == {"skipped"}
    for key, meta in stored.items():
        assert oss.object_meta(BUCKET, key) == meta, key
    manifest = read_manifest(bucket, target)
    assert manifest is not None
    again = plan_refresh(spec, _state(spec, "master"), listing, manifest, None)
    assert again.up_to_date, again.reason


def test_part_ranges_cover_exactly() -> None:
    ranges = part_ranges(1_000_001, 300_000)
    assert ranges[0] == (0, 299_999) and ranges[-1] == (900_000, 1_000_000)
    assert sum(last - first + 1 for first, last in ranges) == 1_000_001


def test_copy_that_does_not_verify_is_removed(
    oss: OssServer, model: Model, tmp_path: Path, hub: HubServer
) -> None:
    spec = spec_from_dict(spec_data(oss, model.model_id, name="core-bad"))
    _mirror(spec, "master", tmp_path)
    bucket = open_bucket(revision_target(spec, "master"), CREDS)
    manifest = read_manifest(bucket, revision_target(spec, "master"))
    assert manifest is not None
    record = manifest.files[0]
    wrong = CopyItem(
        record.path,
        record.key,
        f"models/{model.model_id}/bad/{record.path}",
        record.size,
        record.sha256,
        crc64="1",
    )
    with pytest.raises(Exception, match="did not verify"):
        copy_unchanged(bucket, [wrong])
    assert not bucket.object_exists(wrong.target_key)


def test_retention_keeps_serving_previous_and_newest(
    oss: OssServer, model: Model, tmp_path: Path, hub: HubServer
) -> None:
    spec = spec_from_dict(spec_data(oss, model.model_id, name="core-ret"))
    for rev in ("v1",):
        _mirror(spec, rev, tmp_path)
    for n, rev in enumerate(("v2", "v3"), start=2):
        changed = derive_changed_revision(model.v1_dir, tmp_path / rev, changed_shards=[n], seed=n)
        hub.add_revision_from_dir(model.model_id, rev, changed)
        _mirror(spec, rev, tmp_path)
    bucket = open_bucket(revision_target(spec, "v1"), CREDS)
    root = model_root(spec.storage.prefix, model.model_id)
    found = list_revisions(bucket, revision_target(spec, "v1"), root)
    assert sorted(r.revision for r in found) == ["v1", "v2", "v3"]

    plan = plan_retention(found, keep=1, protected={"v3", "v2"})
    assert plan.delete == ("v1",) and plan.keep == ("v2", "v3")
    deleted = delete_revision(bucket, root + "v1/", root + "v1/.llm-rollout/manifest.json")
    assert deleted.objects > SHARDS
    assert not list(oss2.ObjectIteratorV2(bucket, prefix=root + "v1/"))
    assert sorted(
        r.revision for r in list_revisions(bucket, revision_target(spec, "v1"), root)
    ) == ["v2", "v3"]


def test_retention_plan_never_deletes_protected_or_incomplete() -> None:
    revisions = [
        RevisionDir("a", "m/a/", "2024-01-01T00:00:00Z"),
        RevisionDir("b", "m/b/", "2024-01-02T00:00:00Z"),
        RevisionDir("c", "m/c/", "2024-01-03T00:00:00Z"),
        RevisionDir("partial", "m/partial/", None),
    ]
    plan = plan_retention(revisions, keep=1, protected={"a"})
    assert plan.keep == ("a", "c")
    assert plan.delete == ("b",)
    assert plan.incomplete == ("partial",)
    with pytest.raises(ValueError, match="keep"):
        plan_retention(revisions, keep=0, protected=set())


@pytest.fixture
def proxy(recording_proxy: ApiFaultProxy) -> Iterator[ApiFaultProxy]:
    """The recording proxy with no records from earlier tests."""
    recording_proxy.clear()
    yield recording_proxy
    recording_proxy.clear()


def test_refresh_of_a_service_not_deployed_yet_plans_a_full_deploy_and_writes_nothing(
    hub: HubServer,
    oss: OssServer,
    model: Model,
    real_cluster: Cluster,
    real_namespace: str,
    proxy: ApiFaultProxy,
) -> None:
    spec = spec_from_dict(
        spec_data(oss, model.model_id, name="core-undeployed", namespace=real_namespace)
    )
    listing = HubClient(endpoint=hub.base_url).list_files(hub_source(spec))
    api = new_api_client(admin_kubeconfig_via(real_cluster, proxy, "core-refresh"))
    bucket = open_bucket(revision_target(spec, "master"), CREDS)
    oss.reset_counters()
    try:
        plan = inspect_refresh(spec, hub=HubClient(endpoint=hub.base_url), bucket=bucket, api=api)
    finally:
        api.close()

    assert not plan.up_to_date
    assert plan.reason == f"Service {real_namespace}/core-undeployed is not deployed yet"
    assert plan.deployed_revision is None and plan.deployed_digest is None
    # The hub resolves master to the one revision published (the `model` fixture's v1).
    assert plan.target_revision == "v1"
    assert plan.copies == [] and plan.removed == []
    assert sorted(f.path for f in plan.changed) == sorted(f.path for f in listing.files)
    # It looked for the stable Service on the real API server, and wrote nothing there or in
    # OSS (no manifest is read for a revision that was never deployed).
    assert any(
        r.path.endswith(f"/namespaces/{real_namespace}/services/core-undeployed")
        for r in proxy.records()
    )
    assert writes(proxy.records()) == []
    oss.wait_idle()
    assert list(oss.request_log) == []


def test_lease_serialises_two_holders_and_names_the_holder(
    real_cluster: Cluster,
    real_namespace: str,
    proxy: ApiFaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = real_namespace
    api = new_api_client(real_cluster.admin_kubeconfig)
    # B's calls go through the recording proxy, which shows that B waits on a watch.
    api_b = new_api_client(admin_kubeconfig_via(real_cluster, proxy, "lease-b"))
    leases_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    # Appended by the threads in the order things happened (list.append is atomic).
    events: list[tuple[str, str]] = []
    first_in = threading.Event()
    release_first = threading.Event()
    b_watching = threading.Event()
    record = proxy.server.add_record

    def recorded(entry: ProxyRecord) -> None:
        record(entry)
        if entry.watch and entry.path.startswith(leases_path):
            b_watching.set()

    # Told when the proxy relays B's watch of the Lease (recorded once the API server
    # answered its request), so A lets go only once B waits on that watch.
    monkeypatch.setattr(proxy.server, "add_record", recorded)

    def first() -> None:
        with service_lock(
            api, namespace, "svc", holder="run-A", owner="A", wait_s=5, duration_s=15
        ):
            events.append(("A", "in"))
            first_in.set()
            release_first.wait(30)
            events.append(("A", "out"))

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(30)
    # Fail fast names the holder.
    with (
        pytest.raises(ServiceLockedError, match="run-A") as info,
        service_lock(api, namespace, "svc", holder="run-B", owner="B", wait_s=0),
    ):
        pass
    assert info.value.holder == "run-A"
    lease = get(api, lease_ref(namespace, "svc"))
    assert lease is not None and lease["spec"]["holderIdentity"] == "run-A"

    def let_go() -> None:
        # Bounded so that the test fails instead of hanging when B never watches.
        b_watching.wait(30)
        events.append(("A", "release"))
        release_first.set()

    releaser = threading.Thread(target=let_go)
    releaser.start()
    with service_lock(api_b, namespace, "svc", holder="run-B", owner="B", wait_s=30):
        events.append(("B", "in"))
    thread.join(30)
    releaser.join(30)
    assert b_watching.is_set(), "B did not wait on a watch of the Lease"
    lease_watches = [r for r in proxy.records() if r.watch and r.path.startswith(leases_path)]
    assert len(lease_watches) == 1, lease_watches
    assert events == [("A", "in"), ("A", "release"), ("A", "out"), ("B", "in")]
    # Re-entrant for the same owner; released lease has no holder.
    with service_lock(api, namespace, "svc", holder="run-C", owner="C", wait_s=0):
        with service_lock(api, namespace, "svc", holder="run-C/sub", owner="C", wait_s=0) as inner:
            assert inner.reentrant
        lease = get(api, lease_ref(namespace, "svc"))
        assert lease is not None and lease["spec"]["holderIdentity"] == "run-C"
    lease = get(api, lease_ref(namespace, "svc"))
    assert lease is not None and not lease["spec"].get("holderIdentity")
    api.close()
    api_b.close()
