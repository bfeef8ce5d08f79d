"""Hostile hub and OSS answers through the real clients (modelscope, httpx, oss2) against the
sandbox: the mirror fails naming the entry and the rule before writing anything, and nothing
lands outside the model's place (bucket-wide key listing, temporary root scanned)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bench.hostile_upstream import plant_stray_part
from llm_rollout.hub import HubClient, HubSource, PlainHttpHubError, check_hub_endpoint
from llm_rollout.mirror import MirrorError, is_mirrored, manifest_key, mirror_model
from llm_rollout.mirror.checkpoint import CheckpointStore
from llm_rollout.oss import open_bucket, plain_http_warning
from llm_rollout.upstream_names import UnsafeUpstreamData
from tests.mirror.conftest import BUCKET, MirrorCase

MODES = ["streamed", "staged"]


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} if root.exists() else set()


def _keys(case: MirrorCase) -> set[str]:
    return set(case.oss.keys(BUCKET))


def _writes(case: MirrorCase) -> int:
    return sum(
        1
        for e in case.oss.request_log
        if e.method in ("PUT", "POST", "DELETE") and e.key.startswith(case.target.key())
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("entry", "rule"),
    [
        ({"Path": "../../escape.bin"}, "dot-segment"),
        ({"Path": "/tmp/llm-rollout-hostile-escape.bin"}, "absolute"),
        ({"Path": "..\\escape.bin"}, "backslash"),
        ({"Path": "%2e%2e/escape.bin"}, "percent-dot-segment"),
        ({"Path": "\uff0e\uff0e/escape.bin"}, "nfkc-dot-segment"),
        ({"Path": ".llm-rollout/manifest.json"}, "reserved"),
        ({"Path": "CONFIG.JSON"}, "collision"),
        ({"Path": "model-*.safetensors"}, "glob-char"),
        ({"Path": "config.json", "Size": -5}, "size"),
        ({"Path": "config.json", "Sha256": "not-hex"}, "sha256"),
    ],
)
def test_hostile_listing_fails_before_any_write(
    case: MirrorCase, tmp_path: Path, mode: str, entry: dict[str, object], rule: str
) -> None:
    hostile = {"Size": 3, "Sha256": hashlib.sha256(b"bad").hexdigest(), **entry}
    case.hub.faults.hostile_listing([hostile], model_id=case.source.model_id)
    keys_before, tree_before = _keys(case), _tree(tmp_path)
    options = case.options.model_copy(update={"mode": mode})

    with pytest.raises(UnsafeUpstreamData) as caught:
        mirror_model(case.source, case.target, case.credentials, options, hub=case.client)

    assert caught.value.rule == rule
    assert ascii(entry["Path"]) in str(caught.value)
    assert _keys(case) == keys_before
    assert _writes(case) == 0
    assert _tree(tmp_path) == tree_before
    assert not Path("/tmp/llm-rollout-hostile-escape.bin").exists()
    assert not is_mirrored(case.target, case.credentials).complete


def test_second_listing_that_differs_is_never_acted_on(case: MirrorCase, tmp_path: Path) -> None:
    # The first listing is truthful; every later one adds a path leaving the staging dir and
    # claims another size for config.json. The staged download must not list again.
    real = case.hub.files(case.source.model_id, "v1")["config.json"]
    case.hub.faults.hostile_listing(
        [
            {"Path": "../outside-staging.bin", "Size": 3, "Sha256": "ab" * 32},
            {"Path": "config.json", "Size": real.size + 7},
        ],
        model_id=case.source.model_id,
        skip=1,
    )
    case.hub.reset_counters()
    options = case.options.model_copy(update={"mode": "staged"})
    tree_before, keys_before = _tree(tmp_path), _keys(case)

    result = mirror_model(case.source, case.target, case.credentials, options, hub=case.client)

    listings = [r for r in case.hub.request_log if r.path.endswith("/repo/files")]
    assert len(listings) == 1
    new = _tree(tmp_path) - tree_before
    assert new and all(p.split("/")[0] in ("staging", "checkpoints") for p in new), new
    assert "outside-staging.bin" not in new
    stored = {r.path: r.size for r in result.manifest.files}
    assert stored["config.json"] == real.size
    assert set(_keys(case)) >= {case.target.key(p) for p in stored}
    added = _keys(case) - keys_before
    assert added and all(k.startswith(case.target.key() + "/") for k in added), added


def test_forged_content_range_is_refused(case: MirrorCase) -> None:
    shard = case.shard(1)
    size = (case.model_dir / shard).stat().st_size
    case.hub.faults.bad_content_range(shard, f"bytes 0-1023/{size + 1}", times=50)

    with pytest.raises(MirrorError) as caught:
        mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert "rule content-range" in caught.value.failed[shard]
    assert case.target.key(shard) not in _keys(case)
    assert manifest_key(case.target) not in _keys(case)


def test_listparts_part_number_out_of_range_is_refused(case: MirrorCase) -> None:
    # A checkpointed upload of a shard, and OSS listing a part the file cannot have.
    bucket = open_bucket(case.target, case.credentials)
    shard = case.shard(2)
    key = case.target.key(shard)
    data = (case.model_dir / shard).read_bytes()
    assert case.options.checkpoint_dir is not None
    store = CheckpointStore(case.options.checkpoint_dir, case.target.endpoint)
    plant_stray_part(bucket, store, key, data, case.options.part_size_for(len(data)))

    with pytest.raises(MirrorError) as caught:
        mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)

    assert "9999" in caught.value.failed[shard]
    assert "rule part-number" in caught.value.failed[shard]
    assert key not in _keys(case)
    assert manifest_key(case.target) not in _keys(case)


def test_manifest_record_pointing_outside_the_prefix_is_refused(case: MirrorCase) -> None:
    first = mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    bucket = open_bucket(case.target, case.credentials)
    forged = first.manifest.model_dump(mode="json")
    forged["files"][0]["key"] = "models/someone-else/v1/secret.bin"
    bucket.put_object(manifest_key(case.target), json.dumps(forged).encode())

    with pytest.raises(UnsafeUpstreamData) as caught:
        is_mirrored(case.target, case.credentials)
    assert caught.value.rule == "outside-prefix"


def test_oss_key_with_dot_segments_written_through_oss2_is_stored_verbatim(
    case: MirrorCase,
) -> None:
    # The premise of the OSS-side cases: OSS itself accepts such keys.
    bucket = open_bucket(case.target, case.credentials)
    hostile = case.target.key() + "/../escape.bin"
    bucket.put_object(hostile, b"x")
    assert hostile in _keys(case)


def test_plain_http_hub_on_a_remote_host_is_refused_before_any_request() -> None:
    client = HubClient(endpoint="http://hub.example.invalid")
    with pytest.raises(PlainHttpHubError, match="allow_plain_http_hub"):
        client.list_files(HubSource(model_id="acme/x", revision="v1"))
    # Near misses: https anywhere, plain HTTP on loopback, or explicitly allowed.
    check_hub_endpoint("https://hub.example.invalid", allow_plain_http=False)
    check_hub_endpoint("http://127.0.0.1:8080", allow_plain_http=False)
    check_hub_endpoint("http://[::1]:8080", allow_plain_http=False)
    check_hub_endpoint("http://localhost:8080", allow_plain_http=False)
    check_hub_endpoint("http://hub.example.invalid", allow_plain_http=True)


def test_plain_http_oss_endpoint_is_a_warning() -> None:
    warning = plain_http_warning("http://oss-cn-hangzhou.aliyuncs.com")
    assert warning is not None and "plain HTTP" in warning
    assert plain_http_warning("https://oss-cn-hangzhou.aliyuncs.com") is None


def test_retention_refuses_a_revision_folder_named_by_a_hostile_key(case: MirrorCase) -> None:
    from llm_rollout.retention import list_revisions, model_root

    bucket = open_bucket(case.target, case.credentials)
    root = model_root("models", case.source.model_id)
    mirror_model(case.source, case.target, case.credentials, case.options, hub=case.client)
    # Near miss: the real revision folder is listed.
    assert [r.revision for r in list_revisions(bucket, case.target, root)] == ["v1"]
    # OSS stores `<root>../x` as is; listed with delimiter '/', it names a folder `..`.
    bucket.put_object(root + "../escape.bin", b"x")

    with pytest.raises(UnsafeUpstreamData) as caught:
        list_revisions(bucket, case.target, root)
    assert caught.value.rule == "revision"


def _spec_data(endpoint: str, **modelscope: object) -> dict[str, object]:
    import yaml

    from sandbox.sync_cli import EXAMPLE

    data = yaml.safe_load(EXAMPLE.read_text())
    data["storage"]["endpoint"] = endpoint
    data["model"]["modelscope"] = {**data["model"]["modelscope"], **modelscope}
    return data


def test_preflight_warns_about_a_plain_http_oss_endpoint() -> None:
    from llm_rollout.preflight import PreflightReport, check_oss
    from llm_rollout.spec import spec_from_dict

    report = PreflightReport()
    check_oss(spec_from_dict(_spec_data("http://oss-cn-hangzhou.aliyuncs.com")), report, {})
    assert any("plain HTTP" in w for w in report.warnings)

    report = PreflightReport()
    check_oss(spec_from_dict(_spec_data("https://oss-cn-hangzhou.aliyuncs.com")), report, {})
    assert not any("plain HTTP" in w for w in report.warnings)


def test_spec_allowance_reaches_the_hub_source_and_not_the_spec_hash() -> None:
    from llm_rollout.mirror.inputs import mirror_inputs
    from llm_rollout.spec import spec_from_dict, spec_hash

    https = "https://oss-cn-hangzhou.aliyuncs.com"
    strict = spec_from_dict(_spec_data(https))
    allowed = spec_from_dict(_spec_data(https, allow_plain_http_hub=True))
    assert mirror_inputs(allowed).source.allow_plain_http_hub
    assert not mirror_inputs(strict).source.allow_plain_http_hub
    # How the hub is reached is not part of what is deployed.
    assert spec_hash(strict) == spec_hash(allowed)


def test_preflight_reports_a_plain_http_remote_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_rollout.preflight import PreflightReport, check_hub
    from llm_rollout.spec import spec_from_dict

    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://hub.example.invalid")
    report = PreflightReport()
    check_hub(spec_from_dict(_spec_data("https://oss-cn-hangzhou.aliyuncs.com")), report)
    assert any("allow_plain_http_hub" in p for p in report.problems), report.problems
