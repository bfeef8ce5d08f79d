"""The cluster binaries' cache key follows every file of the pinned wrapper modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandbox.cluster import build


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "go"
    shutil.copytree(build.GO_MODULES_DIR, copy)
    monkeypatch.setattr(build, "GO_MODULES_DIR", copy)
    monkeypatch.setenv("LLM_ROLLOUT_CACHE", str(tmp_path / "cache"))
    return copy


def test_key_changes_with_any_pinned_module_file(modules: Path) -> None:
    before = build.artefact_dir()
    assert before.parent == (modules.parent / "cache").resolve()
    assert before == build.artefact_dir()
    for program in build.PROGRAMS:
        go_sum = modules / program.module_dir / "go.sum"
        original = go_sum.read_text()
        go_sum.write_text(original + "example.invalid/x v0.0.1 h1:AAAA=\n")
        assert build.artefact_dir() != before, program.module_dir
        go_sum.write_text(original)
    assert build.artefact_dir() == before


def test_unbuilt_binaries_name_the_command_that_builds_them(modules: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"\./scripts/build-cluster"):
        build.binaries_dir()
