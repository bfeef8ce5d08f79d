"""The redeploy flow's gate: whatever fails it after the change was applied reverts the change.

The flow runs on the session's Prefect test server with its stages replaced by recording stand-ins
(the stages themselves are tested against the real cluster in tests/real/test_redeploy_kinds.py);
what is under test is the flow's own control: which failures reach the revert.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_engine import TaskRunTimeoutError

import flows.redeploy as redeploy_flow
from flows.redeploy import RedeployFailed, redeploy
from llm_rollout.artifacts import ServiceId
from llm_rollout.errors import PermanentError
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import ReadyReport
from llm_rollout.redeploy import RedeployRequest
from llm_rollout.smoke import SmokeTarget, SmokeUnreachable
from tasks.redeploy import AppliedChange
from tasks.smoke import SmokeOutcome

WORKLOAD = ObjectRef("apps/v1", "Deployment", "llm", "qwen-r1")
CHANGE = AppliedChange(
    release="r1",
    workload=WORKLOAD,
    before={"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "qwen-r1"}},
    service_name="qwen",
    service_port=8000,
    model="qwen",
    api_key=None,
)


def _stage_stand_ins(
    monkeypatch: pytest.MonkeyPatch, smoke_error: Exception
) -> list[tuple[str, object]]:
    calls: list[tuple[str, object]] = []

    @contextlib.contextmanager
    def rollout_lease(namespace: str, service: str, *, wait_s: float) -> Iterator[None]:
        calls.append(("lease", service))
        yield

    @task(cache_policy=NO_CACHE)
    def apply_change(request: RedeployRequest) -> AppliedChange:
        calls.append(("apply", request.action))
        return CHANGE

    @task(cache_policy=NO_CACHE)
    def wait_workload_ready(
        workload: ObjectRef, service_id: ServiceId, timeout_s: float
    ) -> ReadyReport:
        calls.append(("ready", workload.name))
        return ReadyReport(workload=workload, elapsed_s=0.0, noticed_at=0.0, pods=[])

    @task(cache_policy=NO_CACHE)
    def prove_rolled(change: AppliedChange, timeout_s: float) -> list[str]:
        calls.append(("prove", change.release))
        return []

    @task(cache_policy=NO_CACHE)
    def smoke_test(target: SmokeTarget) -> SmokeOutcome:
        calls.append(("smoke", target.service))
        raise smoke_error

    @task(cache_policy=NO_CACHE)
    def revert_change(change: AppliedChange) -> AppliedChange:
        calls.append(("revert", change.release))
        return change

    for name, stand_in in {
        "rollout_lease": rollout_lease,
        "apply_change": apply_change,
        "wait_workload_ready": wait_workload_ready,
        "prove_rolled": prove_rolled,
        "smoke_test": smoke_test,
        "revert_change": revert_change,
    }.items():
        monkeypatch.setattr(redeploy_flow, name, stand_in)
    return calls


@pytest.mark.parametrize(
    "smoke_error",
    [
        SmokeUnreachable("GET /v1/models: connection refused after 3 attempts"),
        PermanentError("smoke test failed: chat: HTTP 500"),
        TaskRunTimeoutError("Scope timed out after 905 second(s)."),
    ],
    ids=["transient", "permanent", "task-timeout"],
)
def test_a_failed_smoke_gate_reverts_the_change(
    prefect_server: None, monkeypatch: pytest.MonkeyPatch, smoke_error: Exception
) -> None:
    calls = _stage_stand_ins(monkeypatch, smoke_error)
    with pytest.raises(RedeployFailed, match="restart of llm/qwen reverted") as failed:
        redeploy(service="qwen", namespace="llm", action="restart")
    assert failed.value.__cause__ is smoke_error
    assert calls == [
        ("lease", "qwen"),
        ("apply", "restart"),
        ("ready", "qwen-r1"),
        ("prove", "r1"),
        ("smoke", "qwen"),
        ("revert", "r1"),
        ("ready", "qwen-r1"),
        ("prove", "r1"),
    ]
