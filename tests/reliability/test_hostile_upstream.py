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

    assert set(SIDES) == {"hub listing", "second listing", "Content-Range", "OSS listing"}
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
