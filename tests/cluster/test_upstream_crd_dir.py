"""Where the sandbox reads upstream's CRD files. A clone placed outside the checkout's usual
folder has no sibling `shared/crds`: a cold CI run from /work/cold/clone failed every
real-cluster test with a bare FileNotFoundError at the session cluster's start."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.cluster import rbg


def test_the_product_setting_names_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(rbg.CRD_DIR_ENV, str(tmp_path))
    assert rbg.upstream_crd_dir() == tmp_path.resolve()


def test_without_the_setting_the_checkouts_sibling_shared_crds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(rbg.CRD_DIR_ENV, raising=False)
    repo = Path(rbg.__file__).resolve().parents[2]
    assert rbg.upstream_crd_dir() == repo.parent / "shared" / "crds"


def test_a_missing_crd_file_is_named_with_the_setting_to_fix_it(tmp_path: Path) -> None:
    missing = tmp_path / "workloads.x-k8s.io_rolebasedgroups.v0.6.0.yaml"
    with pytest.raises(FileNotFoundError) as caught:
        rbg.require_crd_file(missing)
    assert str(missing) in str(caught.value)
    assert rbg.CRD_DIR_ENV in str(caught.value)


def test_a_present_crd_file_is_returned(tmp_path: Path) -> None:
    present = tmp_path / "crd.yaml"
    present.write_text("kind: CustomResourceDefinition\n")
    assert rbg.require_crd_file(present) == present
