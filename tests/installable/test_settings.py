"""Environment settings are read in one place (llm_rollout.settings), at call time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llm_rollout.settings import ENV_PREFIX, Settings, settings

REPO = Path(__file__).resolve().parents[2]
# Modules that read variables a spec names (credential references), not settings.
READS_NAMED_VARIABLES = {"llm_rollout/credentials.py", "llm_rollout/preflight.py"}


def test_every_setting_is_described_and_named_by_prefix_or_standard_name() -> None:
    names = {}
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"
        alias = field.validation_alias
        names[name] = alias if isinstance(alias, str) else f"{ENV_PREFIX}{name.upper()}"
    assert names == {
        "crd_dir": "LLM_ROLLOUT_CRD_DIR",
        "kubeconfig": "KUBECONFIG",
        "modelscope_endpoint": "MODELSCOPE_ENDPOINT",
        "xdg_cache_home": "XDG_CACHE_HOME",
    }


def test_read_at_each_call_and_empty_counts_as_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLM_ROLLOUT_CRD_DIR", str(tmp_path))
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://hub.test")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = settings()
    assert first.crd_dir == tmp_path
    assert first.modelscope_endpoint == "http://hub.test"
    assert first.cache_dir == tmp_path / "cache" / "llm-rollout"
    monkeypatch.setenv("LLM_ROLLOUT_CRD_DIR", "")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    second = settings()
    assert second.crd_dir is None
    assert second.cache_dir == tmp_path / "home" / ".cache" / "llm-rollout"


def _environment_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [
                f"{path.relative_to(REPO)}:{node.lineno} from os import {alias.name}"
                for alias in node.names
                if alias.name in ("environ", "getenv")
            ]
    return found


def test_no_module_reads_the_environment_but_settings() -> None:
    files = [p for d in ("llm_rollout", "tasks", "flows") for p in (REPO / d).rglob("*.py")]
    assert len(files) > 40  # the walk found the packages
    reads = [
        read
        for path in files
        if str(path.relative_to(REPO)) not in {"llm_rollout/settings.py", *READS_NAMED_VARIABLES}
        for read in _environment_reads(path)
    ]
    assert reads == []
    # The check sees what it is meant to: the credential resolver does read the environment.
    assert _environment_reads(REPO / "llm_rollout" / "credentials.py")
