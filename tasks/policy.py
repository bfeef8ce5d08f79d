"""Retry policy shared by every task: retry transient failures, never permanent ones."""

from __future__ import annotations

from typing import Any

from llm_rollout.errors import is_transient


def retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for `@task`: retry only when the failure is a `TransientError`.

    Prefect passes the failed state; its result re-raises the task's exception.
    """
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # noqa: BLE001 - we classify, then let Prefect decide
        return is_transient(exc)
    return False
