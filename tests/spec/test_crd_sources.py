"""Where offline validation gets its CRD schemas: a directory named, the cluster, or neither."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient
from typer.testing import CliRunner

from llm_rollout.cli import app
from llm_rollout.crds import CrdCatalog, CrdReadError, crds_from_cluster, crds_from_dir
from llm_rollout.errors import ManifestValidationError
from llm_rollout.render import render
from llm_rollout.spec import spec_from_dict
from llm_rollout.validation import validate_objects
from sandbox.cluster.control_plane import Cluster as RealCluster

from .conftest import EXAMPLES, example_dict

runner = CliRunner()
LWS = "leaderworkerset.x-k8s.io/v1 LeaderWorkerSet"
LWS_EXAMPLE = str(next(p for p in EXAMPLES if p.stem == "seed-vllm-lws"))


def _lws_objects() -> list[dict[str, Any]]:
    return render(spec_from_dict(example_dict("seed-vllm-lws")), release="r1").all()


def _with_unknown_lws_field(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = copy.deepcopy(objects)
    lws = next(obj for obj in out if obj["kind"] == "LeaderWorkerSet")
    lws["spec"]["leaderWorkerTemplate"]["bogusField"] = 1
    return out


@pytest.fixture
def no_crd_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CRD directory and no cluster configuration of any kind."""
    monkeypatch.delenv("LLM_ROLLOUT_CRD_DIR")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config


@pytest.fixture(scope="module")
def cluster_crds(real_admin: ApiClient) -> CrdCatalog:
    """The CRDs the real cluster serves (the LWS and KubeRay operators' own, installed by
    sandbox/cluster), read as the product reads them."""
    return crds_from_cluster(real_admin)


def test_without_a_catalog_custom_kinds_are_returned_unchecked(no_crd_source: None) -> None:
    objects = _lws_objects()
    assert validate_objects(objects) == [LWS]
    # Not checked means not checked: a field no schema allows goes through ...
    assert validate_objects(_with_unknown_lws_field(objects)) == [LWS]
    # ... while the webhook-style rules, which need no CRD, still apply.
    bad_name = copy.deepcopy(objects)
    next(o for o in bad_name if o["kind"] == "LeaderWorkerSet")["metadata"]["name"] = "Bad_Name"
    with pytest.raises(ManifestValidationError, match="'Bad_Name' is not a valid"):
        validate_objects(bad_name)


def test_the_directory_setting_checks_every_custom_kind() -> None:
    objects = _lws_objects()
    assert validate_objects(objects) == []
    with pytest.raises(ManifestValidationError, match="bogusField"):
        validate_objects(_with_unknown_lws_field(objects))


def test_the_clusters_crds_check_like_the_files_they_came_from(
    cluster_crds: CrdCatalog, real_cluster: RealCluster, no_crd_source: None
) -> None:
    assert cluster_crds.origin == f"the cluster at {real_cluster.api_url}"
    lws = cluster_crds.for_kind("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    assert [s.source for s in lws] == ["cluster CRD leaderworkersets.leaderworkerset.x-k8s.io"]
    objects = _lws_objects()
    assert validate_objects(objects, cluster_crds) == []
    with pytest.raises(ManifestValidationError) as info:
        validate_objects(_with_unknown_lws_field(objects), cluster_crds)
    assert "bogusField" in str(info.value)
    assert "(CRD cluster CRD leaderworkersets.leaderworkerset.x-k8s.io)" in str(info.value)


def test_a_file_that_is_no_crd_is_named(tmp_path: Path) -> None:
    broken = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    with pytest.raises(CrdReadError, match=r"broken\.yaml: not a CustomResourceDefinition"):
        crds_from_dir(tmp_path)


def test_plan_with_neither_says_which_kinds_it_could_not_check(
    tmp_path: Path, no_crd_source: None
) -> None:
    result = runner.invoke(app, ["plan", LWS_EXAMPLE, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"NOT checked against a CRD schema: {LWS}" in result.output
    assert "no CRD directory named, and no cluster to read them from" in result.output
    assert (tmp_path / "out" / "leaderworkerset-qwen3-32b-vllm-r9900af9.yaml").is_file()


def test_plan_reads_the_clusters_crds_when_one_is_configured(
    tmp_path: Path, real_cluster: RealCluster, no_crd_source: None
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(real_cluster.admin_kubeconfig))
        result = runner.invoke(app, ["plan", LWS_EXAMPLE, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (
        f"custom resources checked against the CRDs of the cluster at {real_cluster.api_url}"
        in (result.output)
    )
    assert "NOT checked" not in result.output


def test_plan_with_an_unreachable_cluster_says_so_and_goes_on(
    tmp_path: Path, no_crd_source: None
) -> None:
    with socket.socket() as sock:  # a port nothing listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        ),
        encoding="utf-8",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(config))
        result = runner.invoke(app, ["plan", LWS_EXAMPLE, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"NOT checked against a CRD schema: {LWS}" in result.output
    assert "the cluster's could not be read" in result.output


def test_plan_named_directory_wins_and_a_missing_one_fails(
    tmp_path: Path, shared_crds: Path, no_crd_source: None
) -> None:
    ok = runner.invoke(
        app,
        ["plan", LWS_EXAMPLE, "--out", str(tmp_path / "a"), "--crd-dir", str(shared_crds)],
    )
    assert ok.exit_code == 0, ok.output
    assert f"checked against the CRDs of the directory {shared_crds}" in ok.output
    missing = tmp_path / "nowhere"
    bad = runner.invoke(
        app, ["plan", LWS_EXAMPLE, "--out", str(tmp_path / "b"), "--crd-dir", str(missing)]
    )
    assert bad.exit_code == 1
    assert f"cannot validate: CRD directory {missing} from --crd-dir does not exist" in bad.output


def test_plan_renders_kuberay_recreate_only_from_a_crd_that_offers_it(
    tmp_path: Path, shared_crds: Path, no_crd_source: None
) -> None:
    ray_example = str(next(p for p in EXAMPLES if p.stem == "seed-qwen14b-ray-tp2"))

    def raycluster(out: Path) -> dict[str, Any]:
        (path,) = out.glob("raycluster-*.yaml")
        doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        return doc

    offline = runner.invoke(app, ["plan", ray_example, "--out", str(tmp_path / "a")])
    assert offline.exit_code == 0, offline.output
    assert "KubeRay upgradeStrategy not checked (no CRD to read)" in offline.output
    assert "upgradeStrategy" not in raycluster(tmp_path / "a")["spec"]
    named = runner.invoke(
        app,
        ["plan", ray_example, "--out", str(tmp_path / "b"), "--crd-dir", str(shared_crds)],
    )
    assert named.exit_code == 0, named.output
    assert "offers spec.upgradeStrategy Recreate" in named.output
    assert raycluster(tmp_path / "b")["spec"]["upgradeStrategy"] == {"type": "Recreate"}
