"""Retry policy shared by every task: retry transient failures, never permanent ones; and
`api_task`, the `@task` of the stages made of idempotent API calls."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from llm_rollout.errors import is_transient
from llm_rollout.locking import check_lease


def retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for `@task`: retry only when the failure is a `TransientError`.

    Prefect passes the failed state; its result re-raises the task's exception.
    """
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # noqa: BLE001 - we classify, then let Prefect decide
        return is_transient(exc)
    return False


# What a stage bounded by one of the spec's limits may spend beyond it: the API calls before
# and after its wait, and a retry's back-off.
TASK_SLACK_S = 300

P = ParamSpec("P")
R = TypeVar("R")


def api_task(name: str, *, timeout_seconds: float) -> Callable[[Callable[P, R]], Task[P, R]]:
    """`@task` for a stage made of idempotent Kubernetes / OSS API calls (the Kubernetes
    stages, the refresh's and the day-2 actions'): three retries after 1, 3 and 9 s, on
    transient errors only, and no result cache: the state lives in the cluster and the bucket,
    not in Prefect. Under a rollout lease, each attempt first checks the lease is still this
    run's (`llm_rollout.locking.check_lease`): a lost lease stops the run before the stage.
    """

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            check_lease()
            return fn(*args, **kwargs)

        return task(
            name=name,
            retries=3,
            retry_delay_seconds=[1, 3, 9],
            retry_condition_fn=retry_transient_only,
            timeout_seconds=timeout_seconds,
            cache_policy=NO_CACHE,
        )(guarded)

    return decorate


def bounded_by(stage: Task[P, R], limit_s: float) -> Task[P, R]:
    """`stage` with its Prefect timeout derived from the spec's own limit for it, so the task
    never cuts short what the spec allows (and never waits far beyond it)."""
    return stage.with_options(timeout_seconds=limit_s + TASK_SLACK_S)
