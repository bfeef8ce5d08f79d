"""The deployments in prefect.yaml on a REAL Prefect server with a REAL process worker, against
the sandbox hub and OSS and the session's REAL cluster (the worker's flow runs reach them over
HTTP; the cluster through a recording proxy, so the tests see every request the runs made). The
service is a single-GPU SGLang Deployment: its pod runs the SGLang stand-in, ready at once, as
nothing here depends on the engine.

Order matters inside the module: deploy-model first, then refreshes of that service, then
redeploys of it (two at once for the lease). Two of the refreshes are not started by hand: the
server's scheduler creates them from a schedule added to refresh-model, as a user would add one
in the UI with the service's spec as its parameter."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from kubernetes import client as k8s
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.client.schemas.sorting import LogSort
from prefect.flow_runs import wait_for_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from llm_rollout.kube.client import new_api_client
from llm_rollout.release.state import read_release_state
from sandbox.cluster.api_proxy import ApiFaultProxy
from sandbox.cluster.control_plane import Cluster
from sandbox.hub import HubServer
from sandbox.oss import OssServer
from sandbox.prefect_stack import PrefectStack, deployments_worker, poll
from sandbox.synthetic import derive_changed_revision, make_synthetic_model, shard_name
from tests.deployments.conftest import (
    BUCKET,
    KEY_ID,
    KEY_SECRET,
    SHARD_BYTES,
    SHARDS,
    admin_kubeconfig_via,
    spec_data,
    writes,
)

# Each test's own bound; the module's stack (deploy --all, the worker) is set up outside it.
RUN_TIMEOUT_S = 300
pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_S + 60, func_only=True)]
SERVICE = "tiny-chat"
NAMESPACE = "llm-deployments"
MODEL_ID = "acme/refresh-model"
REFRESH = "refresh-model/refresh-model"
# A schedule added by a test has its first slot this soon; should the scheduler miss that slot
# (its loop is 1 s, see conftest), the next one comes an interval later, within the deadline.
SCHEDULE_LEAD = timedelta(seconds=4)
SCHEDULE_INTERVAL = timedelta(minutes=1)
SCHEDULED_PICKUP_TIMEOUT_S = 100


@dataclass
class Stack:
    prefect: PrefectStack
    cluster: Cluster
    proxy: ApiFaultProxy
    hub: HubServer
    oss: OssServer
    work: Path
    spec: dict[str, Any]


@pytest.fixture(scope="module")
def stack(
    prefect_stack: PrefectStack,
    hub: HubServer,
    oss: OssServer,
    real_cluster: Cluster,
    real_admin: k8s.ApiClient,
    recording_proxy: ApiFaultProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("deployments")
    v1 = make_synthetic_model(work / "v1", shards=SHARDS, shard_size_bytes=SHARD_BYTES, seed=5)
    hub.add_revision_from_dir(MODEL_ID, "v1", v1)
    env = {
        "KUBECONFIG": str(admin_kubeconfig_via(real_cluster, recording_proxy, "deployments")),
        "MODELSCOPE_ENDPOINT": hub.base_url,
        "OSS_ACCESS_KEY_ID": KEY_ID,
        "OSS_ACCESS_KEY_SECRET": KEY_SECRET,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    try:
        with (
            deployments_worker(prefect_stack, env),
            temporary_settings({PREFECT_API_URL: prefect_stack.api_url}),
        ):
            spec = spec_data(oss, MODEL_ID, name=SERVICE, namespace=NAMESPACE)
            yield Stack(prefect_stack, real_cluster, recording_proxy, hub, oss, work, spec)
    finally:
        # The service's pods hold a GPU of the session's cluster: free it for other modules.
        k8s.CoreV1Api(real_admin).delete_namespace(NAMESPACE)


def _cli_run(stack: Stack, deployment: str, params: dict[str, Any]) -> UUID:
    """`prefect deployment run NAME --params JSON`; returns the flow run id it prints."""
    result = stack.prefect.run("deployment", "run", deployment, "--params", json.dumps(params))
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", result.stdout)
    assert match, result.stdout
    return UUID(match.group(1))


def _finish(run_id: UUID) -> FlowRun:
    import asyncio

    return asyncio.run(wait_for_flow_run(run_id, timeout=RUN_TIMEOUT_S, log_states=False))


def _logs(run_id: UUID) -> list[tuple[float, str]]:
    import asyncio

    async def read() -> list[tuple[float, str]]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                sort=LogSort.TIMESTAMP_ASC,
            )
            return [(log.timestamp.timestamp(), log.message) for log in logs]

    return asyncio.run(read())


def _logs_with(run_id: UUID, *needles: str, timeout_s: float = 30) -> list[tuple[float, str]]:
    """The run's logs once each needle appears in some line: the flow-run process ships its
    last log lines in the background, after the run's final state is already set."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        logs = _logs(run_id)
        if all(any(n in m for _, m in logs) for n in needles) or time.monotonic() > deadline:
            return logs
        # Logs arrive through the API only; a short pause between reads.
        time.sleep(0.5)


def _schedule_runs(
    client: SyncPrefectClient, deployment_id: UUID, schedule_id: UUID
) -> list[FlowRun]:
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    )
    return [r for r in runs if r.created_by is not None and r.created_by.id == schedule_id]


def _scheduled_refresh(parameters: dict[str, Any]) -> FlowRun:
    """A refresh-model run the server's SCHEDULER creates: add an active interval schedule that
    carries `parameters` (POST /deployments/{id}/schedules, what the UI's "add schedule" sends),
    wait until the worker picked up the first run created from it, delete the schedule (the
    server deletes its other, still scheduled runs with it) and follow the run to its end."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(REFRESH)
        assert "spec" not in (deployment.parameters or {})  # the spec comes from the schedule
        anchor = datetime.now(UTC) + SCHEDULE_LEAD
        interval = IntervalSchedule(interval=SCHEDULE_INTERVAL, anchor_date=anchor)
        [schedule] = client.create_deployment_schedules(
            deployment.id,
            [DeploymentScheduleCreate(schedule=interval, active=True, parameters=parameters)],
        )
        try:

            def picked_up() -> FlowRun | None:
                runs = _schedule_runs(client, deployment.id, schedule.id)
                left = [r for r in runs if r.state is not None and not r.state.is_scheduled()]
                return left[0] if left else None

            run = poll(
                picked_up,
                timeout_s=SCHEDULED_PICKUP_TIMEOUT_S,
                interval_s=0.5,
                what=f"no run of schedule {schedule.id} picked up by the worker",
            )
        finally:
            client.delete_deployment_schedule(deployment.id, schedule.id)
        # Exactly one run of the schedule ever left Scheduled; the rest went with the schedule.
        assert [r.id for r in _schedule_runs(client, deployment.id, schedule.id)] == [run.id]
    assert run.auto_scheduled
    assert run.created_by is not None and run.created_by.type == "SCHEDULE"
    assert run.parameters == parameters
    return _finish(run.id)


def _assert_completed(run: FlowRun) -> None:
    assert run.state is not None
    if not run.state.is_completed():
        messages = "\n".join(m for _, m in _logs(run.id))
        pytest.fail(f"flow run {run.name} ended {run.state.type}: {run.state.message}\n{messages}")


def _serving_revision(stack: Stack) -> str | None:
    api = new_api_client(stack.cluster.admin_kubeconfig)
    try:
        return read_release_state(api, NAMESPACE, SERVICE).revision
    finally:
        api.close()


def _revision_folders(stack: Stack) -> set[str]:
    import oss2

    bucket = oss2.Bucket(oss2.Auth(KEY_ID, KEY_SECRET), stack.oss.endpoint, BUCKET)
    listing = bucket.list_objects_v2(prefix=f"models/{MODEL_ID}/", delimiter="/")
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in listing.prefix_list}


def test_deploy_model_runs_to_completion(stack: Stack, real_admin: k8s.ApiClient) -> None:
    run = _finish(_cli_run(stack, "deploy-model/deploy-model", {"spec": stack.spec}))
    _assert_completed(run)
    assert _serving_revision(stack) == "master"
    # The run's writes reached the real API server through the proxy with the admin's identity.
    assert {r.identity for r in writes(stack.proxy.records())} == {"cert:llm-rollout-admin"}
    (pod,) = k8s.CoreV1Api(real_admin).list_namespaced_pod(NAMESPACE).items
    assert pod.status.phase == "Running" and pod.spec.node_name
    assert _revision_folders(stack) == {"master"}


@pytest.mark.parametrize("trigger", ["manual", "scheduled"])
def test_refresh_when_nothing_changed_writes_nothing(stack: Stack, trigger: str) -> None:
    """Started by hand (`prefect deployment run`), then by the server's scheduler."""
    stack.oss.reset_counters()
    stack.proxy.clear()
    params = {"spec": stack.spec}
    if trigger == "manual":
        run = _finish(_cli_run(stack, REFRESH, params))
    else:
        run = _scheduled_refresh(params)
    _assert_completed(run)
    assert any("up to date" in message for _, message in _logs_with(run.id, "up to date"))
    stack.oss.wait_idle()  # the last request's record lands just after its answer
    oss_writes = [r for r in stack.oss.request_log if r.method not in ("GET", "HEAD")]
    assert oss_writes == []
    assert len(stack.oss.request_log) > 0  # it did look
    assert writes(stack.proxy.records()) == []
    assert len(stack.proxy.records()) > 0  # it did read the release state


def _move_master(stack: Stack, revision: str, changed_shard: int, seed: int) -> int:
    changed = derive_changed_revision(
        stack.work / "v1", stack.work / revision, changed_shards=[changed_shard], seed=seed
    )
    stack.hub.add_revision_from_dir(MODEL_ID, revision, changed)
    stack.hub.move_branch(MODEL_ID, "master", revision)
    return (changed / shard_name(changed_shard, SHARDS)).stat().st_size


def test_scheduled_refresh_after_master_moved_moves_only_changed_bytes(stack: Stack) -> None:
    changed_bytes = _move_master(stack, "v2", changed_shard=2, seed=21)
    stack.oss.reset_counters()
    run = _scheduled_refresh({"spec": stack.spec})
    _assert_completed(run)
    stack.oss.wait_idle()
    uploads = [r for r in stack.oss.request_log if r.op in ("PutObject", "UploadPart")]
    uploaded_keys = {r.key for r in uploads}
    assert uploaded_keys == {
        f"models/{MODEL_ID}/v2/{shard_name(2, SHARDS)}",
        f"models/{MODEL_ID}/v2/.llm-rollout/manifest.json",
    }
    shard_in = sum(r.bytes_in for r in uploads if r.key.endswith(shard_name(2, SHARDS)))
    assert shard_in == changed_bytes
    assert stack.oss.bytes_received <= changed_bytes * 1.01 + 64 * 1024  # + manifest and XML
    copies = [r for r in stack.oss.request_log if r.op in ("CopyObject", "UploadPartCopy")]
    assert copies, "unchanged files must be copied inside OSS"
    assert _serving_revision(stack) == "v2"
    # The previous revision stays (rollback target); nothing older exists yet.
    assert _revision_folders(stack) == {"master", "v2"}


def test_second_refresh_cleans_up_the_oldest_revision(stack: Stack) -> None:
    _move_master(stack, "v3", changed_shard=3, seed=31)
    run = _finish(_cli_run(stack, REFRESH, {"spec": stack.spec, "keep_revisions": 1}))
    _assert_completed(run)
    assert _serving_revision(stack) == "v3"
    assert _revision_folders(stack) == {"v2", "v3"}
    assert any("deleted revision" in m for _, m in _logs_with(run.id, "deleted revision"))


def test_two_redeploys_of_one_service_never_interleave(stack: Stack) -> None:
    params = {"service": SERVICE, "namespace": NAMESPACE, "action": "restart"}
    first = _cli_run(stack, "redeploy/redeploy", params)
    second = _cli_run(stack, "redeploy/redeploy", params)
    runs = [_finish(first), _finish(second)]
    for run in runs:
        _assert_completed(run)
    spans = []
    for run in runs:
        logs = _logs_with(run.id, "held by", "released by")
        held = [t for t, m in logs if "rollout lease" in m and "held by" in m]
        released = [t for t, m in logs if "rollout lease" in m and "released by" in m]
        assert len(held) == 1 and len(released) == 1, [m for _, m in logs]
        spans.append((held[0], released[0]))
    (_a_in, a_out), (b_in, _b_out) = sorted(spans)
    assert a_out <= b_in, f"rollouts overlapped: {spans}"
    assert _serving_revision(stack) == "v3"


def test_deployment_forms_show_field_descriptions(stack: Stack) -> None:
    import asyncio

    async def schemas() -> dict[str, dict[str, Any]]:
        async with get_client() as client:
            out = {}
            for name in (
                "deploy-model/deploy-model",
                "refresh-model/refresh-model",
                "redeploy/redeploy",
            ):
                deployment = await client.read_deployment_by_name(name)
                out[name] = deployment.parameter_openapi_schema or {}
                if name.startswith("refresh"):
                    out["refresh-schedules"] = {
                        "cron": [s.schedule.cron for s in deployment.schedules]
                    }  # type: ignore[union-attr]
            return out

    found = asyncio.run(schemas())
    deploy_schema = json.dumps(found["deploy-model/deploy-model"])
    assert "Service name (DNS-1123 label)" in deploy_schema
    assert "ModelScope model id" in deploy_schema
    assert "Newest complete revisions kept" in json.dumps(found["refresh-model/refresh-model"])
    assert found["refresh-schedules"]["cron"] == ["0 3 * * *"]
    redeploy = found["redeploy/redeploy"]
    assert redeploy["properties"]["action"]["enum"] == ["restart", "update", "scale", "rollback"]
    assert "Namespace of the service" in json.dumps(redeploy)


@pytest.mark.timeout(2 * RUN_TIMEOUT_S, func_only=True)
def test_redeploy_custom_run_from_the_ui(stack: Stack, repo_root: Path) -> None:
    """Headless Chromium opens the redeploy deployment, starts a custom run with a changed
    parameter, waits for the UI's create_flow_run call and the run page to say Completed."""
    import asyncio

    from prefect.client.schemas.actions import DeploymentUpdate

    async def prepare() -> UUID:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("redeploy/redeploy")
            defaults = {"service": SERVICE, "namespace": NAMESPACE, "action": "restart"}
            await client.update_deployment(deployment.id, DeploymentUpdate(parameters=defaults))
            return deployment.id

    deployment_id = asyncio.run(prepare())
    out_dir = repo_root / "test-output" / "ui"
    result = subprocess.run(
        [
            "node",
            "custom_run.mjs",
            stack.prefect.ui_url,
            str(deployment_id),
            "ready_timeout_s",
            "600",
            str(out_dir),
            str(RUN_TIMEOUT_S * 1000),  # the run's final state on the run page
        ],
        cwd=repo_root / "tests" / "ui",
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reported = json.loads(result.stdout.strip().splitlines()[-1])
    assert reported["parameters"]["ready_timeout_s"] == 600
    run = _finish(UUID(reported["flow_run_id"]))
    _assert_completed(run)
    assert run.parameters["ready_timeout_s"] == 600
    assert run.parameters["service"] == SERVICE
    assert (out_dir / "flow-run-completed.png").stat().st_size > 0
