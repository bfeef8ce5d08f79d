"""Each custom workload kind's vocabulary appears in code only in its own module of
`llm_rollout/kinds/` and in its own templates (issue 16 point 7): its API group and the label
keys its controller puts on pods anywhere in a string, its kind name as a whole string (what
a caller would compare `obj["kind"]` with; prose such as a field description may name it).

Code means string literals outside docstrings in llm_rollout/, tasks/, flows/ and cli/;
comments that cite upstream files are free to name anything. Templates are every file under
manifests/: a kind's literals may only appear in the templates its class lists. Built-in kinds
(Deployment, StatefulSet) are left out: `apps` and their labels are Kubernetes' own words.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llm_rollout.kinds import WorkloadKind, all_kinds

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("llm_rollout", "tasks", "flows", "cli")
MANIFESTS = ROOT / "manifests"


CUSTOM = [kind for kind in all_kinds() if kind.custom]


def _literals(kind: WorkloadKind) -> set[str]:
    found = {kind.group, *kind.controller_label_prefixes, *kind.revision_labels}
    return found


def _misplaced(kind: WorkloadKind, value: str) -> bool:
    return value == kind.kind or any(literal in value for literal in _literals(kind))


def _module_of(kind: WorkloadKind) -> Path:
    return Path(type(kind).__module__.replace(".", "/") + ".py")


def _code_strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
    ]


def _sources() -> list[Path]:
    return sorted(p.relative_to(ROOT) for d in SOURCES for p in (ROOT / d).rglob("*.py"))


def test_every_custom_kind_has_literals_to_check() -> None:
    # The check below is only as good as what the classes declare.
    assert {k.kind for k in CUSTOM} == {"LeaderWorkerSet", "RoleBasedGroup", "RayCluster"}
    assert all(k.controller_label_prefixes and k.group for k in CUSTOM)


@pytest.mark.parametrize("kind", CUSTOM, ids=lambda k: k.kind)
def test_kind_literals_only_in_the_kinds_module(kind: WorkloadKind) -> None:
    own = _module_of(kind)
    misplaced = [
        f"{path}:{line}: {value!r}"
        for path in _sources()
        if path != own
        for line, value in _code_strings(ROOT / path)
        if _misplaced(kind, value)
    ]
    assert misplaced == []


@pytest.mark.parametrize("kind", CUSTOM, ids=lambda k: k.kind)
def test_kind_literals_only_in_the_kinds_templates(kind: WorkloadKind) -> None:
    literals = _literals(kind)
    own = set(kind.templates.values())
    misplaced = [
        str(path.relative_to(MANIFESTS))
        for path in sorted(MANIFESTS.rglob("*.j2"))
        if str(path.relative_to(MANIFESTS)) not in own
        and any(literal in path.read_text(encoding="utf-8") for literal in literals)
    ]
    assert misplaced == []


def test_the_scan_finds_a_misplaced_literal(tmp_path: Path) -> None:
    # The scan sees code strings and skips docstrings, so the checks above can fail.
    sample = tmp_path / "sample.py"
    sample.write_text('"""ray.io in a docstring."""\nSELECTOR = "ray.io/cluster"\n')
    assert _code_strings(sample) == [(2, "ray.io/cluster")]
