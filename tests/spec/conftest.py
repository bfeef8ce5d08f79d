"""Fixtures for the spec/render/validation tests: examples as data, rendering helpers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _crd_dir(shared_crds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Validation reads the upstream CRDs from the shared directory, never from the repo.
    monkeypatch.setenv("LLM_ROLLOUT_CRD_DIR", str(shared_crds))


def example_dict(name: str) -> dict[str, Any]:
    path = next(p for p in EXAMPLES if p.stem == name)
    return copy.deepcopy(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.fixture
def lws_dict() -> dict[str, Any]:
    return example_dict("seed-vllm-lws")
