"""Hostile specs and parameters: every entry point refuses them, naming the field, unwritten."""

from __future__ import annotations

import pytest
import yaml

from bench.reliability import (
    HOSTILE_PARAMS,
    HOSTILE_SPECS,
    InputWorld,
    Mutation,
    _cli,
    check_hostile_param,
    check_hostile_spec,
)


def test_at_least_forty_hostile_inputs() -> None:
    assert len(HOSTILE_SPECS) + len(HOSTILE_PARAMS) >= 40


@pytest.mark.parametrize(
    ("label", "field", "mutate"), HOSTILE_SPECS, ids=[c[0] for c in HOSTILE_SPECS]
)
def test_hostile_spec_refused(world: InputWorld, label: str, field: str, mutate: Mutation) -> None:
    assert check_hostile_spec(world, label, field, mutate) == ""


@pytest.mark.parametrize(
    ("label", "expected", "argv"), HOSTILE_PARAMS, ids=[c[0] for c in HOSTILE_PARAMS]
)
def test_hostile_parameter_refused(
    world: InputWorld, label: str, expected: str, argv: list[str]
) -> None:
    assert check_hostile_param(world, label, expected, argv) == ""


def test_a_valid_spec_does_reach_the_sandbox(world: InputWorld) -> None:
    """The harness can see a write: the same base spec, unchanged, mirrors into the OSS log."""
    path = world.work / "valid.yaml"
    world.work.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(world.base))
    before = world.counts()
    code, output = _cli(
        ["sync", str(path), "--no-progress", "--checkpoint-dir", str(world.work / "ck")]
    )
    assert code == 0, output
    after = world.counts()
    assert after[0] > before[0] and after[1] > before[1]
