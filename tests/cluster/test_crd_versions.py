"""Offline validation against the CRDs of the operator versions the real cluster runs.

``llm-rollout plan`` validates custom resources against the CRD files in
``$LLM_ROLLOUT_CRD_DIR`` (``llm_rollout/crds.py``; by default ``../shared/crds``, which holds
LWS v0.10.0 and KubeRay v1.7.0). The test cluster runs LWS v0.9.0 and KubeRay v1.6.2 (the
newest versions the Go module proxy served whole, ``sandbox/cluster/build.py``), and
``build.py`` copies those modules' own ``config/crd/bases`` into the cluster-bin directory.
Here every example is planned against exactly those CRDs, and the real API server (with the
same CRDs installed, and LWS's admission webhooks) is asked to accept every rendered object
with a server-side dry-run.

RoleBasedGroup has no CRD in the real cluster yet (its reconciler is still our own); its
offline schema stays the shared v0.6/v0.7 files, and it is not sent to the server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from llm_rollout.crds import CRD_DIR_ENV
from llm_rollout.errors import RolloutError
from llm_rollout.kube.objects import apply
from sandbox.cluster import build
from sandbox.cluster.rbg import upstream_crd_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.name for p in (REPO_ROOT / "examples").glob("*.yaml"))
SHARED_CRDS = upstream_crd_dir()
RBG_EXAMPLES = {"seed-sglang-pd-rbg.yaml"}


@pytest.fixture(scope="module")
def built_crd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built operators' CRDs (and, for RoleBasedGroup only, the shared files)."""
    built = build.binaries_dir() / "crds"
    out = tmp_path_factory.mktemp("built-crds")
    copied = []
    for source in sorted(built.glob("*/*.yaml")):
        shutil.copyfile(source, out / source.name)
        copied.append(source.name)
    assert "leaderworkerset.x-k8s.io_leaderworkersets.yaml" in copied
    assert "ray.io_rayclusters.yaml" in copied
    for rbg in sorted(SHARED_CRDS.glob("workloads.x-k8s.io_rolebasedgroups.*.yaml")):
        shutil.copyfile(rbg, out / rbg.name)
    return out


def _plan(
    example: str, crd_dir: Path, out_dir: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "llm-rollout"
    return subprocess.run(
        [str(cli), "plan", str(REPO_ROOT / "examples" / example), "--out", str(out_dir), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, CRD_DIR_ENV: str(crd_dir)},
        check=False,
    )


def _planned(out_dir: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(out_dir.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_the_built_crds_are_the_pinned_versions(built_crd_dir: Path) -> None:
    lws = yaml.safe_load(
        (built_crd_dir / "leaderworkerset.x-k8s.io_leaderworkersets.yaml").read_text()
    )
    ray = yaml.safe_load((built_crd_dir / "ray.io_rayclusters.yaml").read_text())
    assert [v["name"] for v in lws["spec"]["versions"]] == ["v1"]
    assert "v1" in [v["name"] for v in ray["spec"]["versions"]]
    go_mods = {
        "lws": (build.GO_MODULES_DIR / "lws" / "go.mod").read_text(),
        "kuberay": (build.GO_MODULES_DIR / "kuberay" / "go.mod").read_text(),
    }
    assert "sigs.k8s.io/lws v0.9.0" in go_mods["lws"]
    assert "github.com/ray-project/kuberay/ray-operator v1.6.2" in go_mods["kuberay"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_validates_offline_against_the_built_crds(
    example: str, built_crd_dir: Path, tmp_path: Path
) -> None:
    result = _plan(example, built_crd_dir, tmp_path / "plan")
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in _planned(tmp_path / "plan")}
    assert kinds & {"Deployment", "LeaderWorkerSet", "RoleBasedGroup", "RayCluster"}


@pytest.mark.parametrize("example", sorted(set(EXAMPLES) - RBG_EXAMPLES))
def test_the_real_api_server_accepts_every_planned_object_in_a_dry_run(
    example: str, built_crd_dir: Path, tmp_path: Path, admin: k8s.ApiClient, namespace: str
) -> None:
    result = _plan(example, built_crd_dir, tmp_path / "plan")
    assert result.returncode == 0, result.stderr
    refused: list[str] = []
    for doc in _planned(tmp_path / "plan"):
        if doc["kind"] != "PersistentVolume":
            doc["metadata"]["namespace"] = namespace
        try:
            stored = apply(admin, doc, dry_run=True)
        except RolloutError as exc:
            refused.append(f"{doc['kind']} {doc['metadata']['name']}: {exc}")
            continue
        assert stored["kind"] == doc["kind"]
    assert refused == []
