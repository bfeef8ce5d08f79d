"""Hostile upstream data (issue 18): the reliability class's cases through the same function the
benchmark uses -- every case through both sync modes, and one case per side through the deploy
and refresh flows (the benchmark runs every case through every path)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.hostile_upstream import (
    HOSTILE_CASES,
    PATHS,
    HostileCase,
    HostileWorld,
    applies,
    check_case,
    hostile_world,
)
from bench.reliability import InputWorld

SIDES = sorted({c.side for c in HOSTILE_CASES})
RULES = {c.rule for c in HOSTILE_CASES}


@pytest.fixture(scope="module")
def hw(world: InputWorld) -> Iterator[HostileWorld]:
    with hostile_world(world) as hostile:
        yield hostile


def test_every_rule_and_side_has_a_case() -> None:
    from llm_rollout import upstream_names

    assert set(SIDES) == {
        "hub listing",
        "second listing",
        "Content-Range",
        "OSS listing",
        "config.json",
    }
    for rule in ("empty", "absolute", "backslash", "drive-letter", "control-char"):
        assert rule in RULES
    for rule in ("empty-segment", "dot-segment", "glob-char", "reserved", "collision"):
        assert rule in RULES
    for rule in ("size", "sha256", "content-range", "part-number", "outside-prefix"):
        assert rule in RULES
    assert any(r and r.startswith("nfkc-") for r in RULES)
    assert any(r and r.startswith("percent-") for r in RULES)
    assert upstream_names.RESERVED_TOP in {
        str((c.entry or {}).get("Path", "")).split("/")[0] for c in HOSTILE_CASES
    }


SYNC_RUNS = [
    pytest.param(case, path, id=f"{case.label}-{path}")
    for case in HOSTILE_CASES
    for path in ("sync streamed", "sync staged")
    if applies(case, path)
]


@pytest.mark.parametrize(("case", "path"), SYNC_RUNS)
def test_sync_refuses_or_ignores(hw: HostileWorld, case: HostileCase, path: str) -> None:
    assert check_case(hw, case, path) == ""


def _one_per_side() -> list[HostileCase]:
    seen: dict[str, HostileCase] = {}
    for case in HOSTILE_CASES:
        seen.setdefault(case.side, case)
    return list(seen.values())


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", ["deploy", "refresh"])
@pytest.mark.parametrize("case", _one_per_side(), ids=[c.side for c in _one_per_side()])
def test_flows_refuse(hw: HostileWorld, case: HostileCase, path: str) -> None:
    assert path in PATHS
    assert check_case(hw, case, path) == ""


CONFIG_CASES = [c for c in HOSTILE_CASES if c.side == "config.json"]


def test_config_cases_run_where_config_json_sizes_something() -> None:
    """sync copies config.json's bytes and reads no field; deploy and refresh size the KV cache
    from it (preflight), so only they can be fooled by its numbers."""
    assert len(CONFIG_CASES) >= 5
    for case in CONFIG_CASES:
        assert [p for p in PATHS if applies(case, p)] == ["deploy", "refresh"]


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.label for c in CONFIG_CASES])
def test_deploy_refuses_a_config_json_that_cannot_be_true(
    hw: HostileWorld, case: HostileCase
) -> None:
    assert check_case(hw, case, "deploy") == ""
