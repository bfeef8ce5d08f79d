"""Golden files pin the rendering of every example; UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_rollout.render import RbgFlavor, render, to_yaml
from llm_rollout.spec import load_spec
from llm_rollout.validation import validate_objects

from .conftest import EXAMPLES

GOLDEN = Path(__file__).resolve().parent / "golden"
RELEASE = "r1"
CASES: list[tuple[Path, RbgFlavor]] = [(path, "v0.6") for path in EXAMPLES] + [
    (path, "v0.7") for path in EXAMPLES if "rbg" in path.stem
]


def test_every_required_example_exists() -> None:
    names = {path.stem for path in EXAMPLES}
    assert names >= {
        "seed-vllm-lws",
        "seed-sglang-lws",
        "seed-sglang-pd-rbg",
        "seed-vllm-single-gpu",
        "seed-vllm-tp4",
        "seed-vllm-ray-tp8-pp2",
        "seed-qwen14b-ray-tp2",
    }


@pytest.mark.parametrize(("path", "flavor"), CASES, ids=lambda v: getattr(v, "stem", v))
def test_example_renders_validates_and_matches_golden(path: Path, flavor: RbgFlavor) -> None:
    rendered = render(load_spec(path), release=RELEASE, rbg_flavor=flavor)
    objects = rendered.all()
    validate_objects(objects)
    text = "---\n".join(to_yaml(obj) for obj in objects)
    suffix = "" if flavor == "v0.6" else f".{flavor}"
    golden = GOLDEN / f"{path.stem}{suffix}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"{golden} missing; run with UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(encoding="utf-8")
