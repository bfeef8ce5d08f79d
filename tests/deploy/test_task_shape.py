"""Issue 17 points 3 and 6: tasks are thin edges. Every Prefect task in `tasks/` fits on one
screen; the logic it runs lives in plain core functions that tests call directly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TASKS = sorted((Path(__file__).resolve().parents[2] / "tasks").glob("*.py"))
# A screen: what a reader sees of a task without scrolling.
SCREEN_LINES = 60
TASK_DECORATORS = {"task", "api_task"}


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Attribute):
        return target.attr
    return target.id if isinstance(target, ast.Name) else ""


def _tasks(path: Path) -> list[ast.FunctionDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and any(_decorator_name(d) in TASK_DECORATORS for d in node.decorator_list)
    ]


def _body_lines(function: ast.FunctionDef) -> int:
    """Lines from the signature to the end, the docstring left out."""
    doc_lines = 0
    if ast.get_docstring(function, clean=False) is not None:
        doc = function.body[0]
        doc_lines = (doc.end_lineno or doc.lineno) - doc.lineno + 1
    return (function.end_lineno or function.lineno) - function.lineno + 1 - doc_lines


def test_the_tasks_folder_holds_tasks() -> None:
    # The check below must see what it checks: the stages' tasks are found by their decorator.
    names = {t.name for path in TASKS for t in _tasks(path)}
    assert {"preflight", "volumes", "rollout", "promote", "rollback", "smoke_test"} <= names


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.stem)
def test_no_task_body_is_longer_than_a_screen(path: Path) -> None:
    long = {t.name: _body_lines(t) for t in _tasks(path) if _body_lines(t) > SCREEN_LINES}
    assert long == {}, f"{path.name}: tasks longer than {SCREEN_LINES} lines: {long}"
