"""A REAL `prefect server start` and a REAL process worker for prefect.yaml's deployments.

The server runs on a free port with a private PREFECT_HOME; `deployments_worker` creates the
process work pool prefect.yaml names, runs `prefect deploy --all` from the repository root and
starts `prefect worker start` on that pool with the given environment (the worker's flow runs
reach the sandbox through it: KUBECONFIG, MODELSCOPE_ENDPOINT, the OSS key variables).
`run_deployment` starts a flow run through the API and waits for its final state.

Used by tests/deployments and bench/refresh.py; product code never imports it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import httpx

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

REPO_ROOT = Path(__file__).resolve().parent.parent
POOL = "llm-rollout"  # the pool prefect.yaml names (a private server each time)
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrefectStack:
    api_url: str
    ui_url: str
    home: Path
    env: dict[str, str]
    worker: subprocess.Popen[bytes] | None = None
    worker_log: Path | None = None
    deployment_ids: dict[str, UUID] = field(default_factory=dict)

    def run(self, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
        """Run the `prefect` CLI against this server from the repo root."""
        return subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def must_run(self, *args: str, timeout_s: float = 180) -> str:
        """`run`, raising with the CLI's output when it fails; returns its stdout."""
        result = self.run(*args, timeout_s=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(
                f"prefect {' '.join(args)} exited {result.returncode}:\n"
                + result.stdout
                + result.stderr
            )
        return result.stdout


def poll(
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    interval_s: float,
    what: str,
    alive: Callable[[], None] | None = None,
) -> T:
    """Call `check()` until it returns something truthy or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if alive is not None:
            alive()
        # Nothing pushes these states to us: a short pause between probes.
        time.sleep(interval_s)
    raise TimeoutError(f"{what} after {timeout_s}s")


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    def exited() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}")

    with httpx.Client(timeout=2) as client:

        def healthy() -> bool | None:
            try:
                return client.get(url + "/health").status_code == 200 or None
            except httpx.TransportError:
                return None

        exited()
        poll(
            healthy,
            timeout_s=timeout_s,
            interval_s=0.25,
            what="prefect server not healthy",
            alive=exited,
        )


def _stop(process: subprocess.Popen[bytes], sig: int) -> None:
    process.send_signal(sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def prefect_server(
    home: Path,
    *,
    startup_timeout_s: float = 90,
    scheduler_loop_s: float | None = None,
    port: int | None = None,
) -> Iterator[PrefectStack]:
    """`prefect server start` on `port` (default: a free one) of 127.0.0.1 with
    PREFECT_HOME=`home`; stopped on exit.

    `scheduler_loop_s` sets how often the server's scheduler service turns active deployment
    schedules into flow runs (Prefect's default: every 60 s). A schedule added through the API
    does not touch its deployment's `updated`, so the 5 s "recent deployments" pass does not
    see it: tests that wait for a scheduled run need the main loop to be short.
    """
    port = free_port() if port is None else port
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_API_KEY", None)
    server_env = dict(env)
    if scheduler_loop_s is not None:
        server_env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = str(scheduler_loop_s)
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=home,
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(api_url, server, startup_timeout_s)
            yield PrefectStack(api_url, f"http://127.0.0.1:{port}", home, env)
        finally:
            # SIGTERM stops the server promptly (see NOTES).
            _stop(server, signal.SIGTERM)


def pool_ready(stack: PrefectStack, timeout_s: float) -> None:
    """Wait until the work pool reports a live worker (status READY)."""

    def worker_alive() -> None:
        if stack.worker is not None and stack.worker.poll() is not None:
            raise RuntimeError(f"worker exited with {stack.worker.returncode}")

    with httpx.Client(base_url=stack.api_url, timeout=5) as client:

        def ready() -> bool | None:
            response = client.get(f"/work_pools/{POOL}")
            ok = response.status_code == 200 and response.json().get("status") == "READY"
            return ok or None

        # The worker's first heartbeat marks the pool READY.
        poll(
            ready,
            timeout_s=timeout_s,
            interval_s=0.5,
            what="work pool never became READY",
            alive=worker_alive,
        )


@contextmanager
def deployments_worker(
    stack: PrefectStack, env: Mapping[str, str], *, ready_timeout_s: float = 60
) -> Iterator[PrefectStack]:
    """Create the process pool, `prefect deploy --all`, start a worker with `env` added to the
    server's environment and wait for the pool to be READY; the worker stops (SIGINT) on exit.
    """
    stack.env = {**stack.env, **env, "PWD": str(REPO_ROOT)}
    stack.must_run("work-pool", "create", POOL, "--type", "process")
    stack.must_run("deploy", "--all")
    log_path = stack.home / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
            cwd=REPO_ROOT,
            env=stack.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.worker, stack.worker_log = worker, log_path
        try:
            pool_ready(stack, ready_timeout_s)
            yield stack
        finally:
            # SIGINT stops a worker promptly; SIGTERM is slow (see NOTES).
            _stop(worker, signal.SIGINT)
            stack.worker = None


@dataclass
class FlowRunTiming:
    """A flow run started through the API and followed to its final state."""

    flow_run_id: UUID
    state: str
    message: str | None
    run_s: float | None  # the run's own start_time -> end_time, as the API records them
    wall_s: float  # from the create_flow_run request to the final state seen by polling
    pickup_s: float | None  # Scheduled -> Pending: the worker found the run and submitted it
    process_start_s: float | None  # Pending -> Running: the flow-run process started, loaded


def _client(stack: PrefectStack) -> SyncPrefectClient:
    # Prefect's own client: it retries the server's 503s (SQLite busy under concurrent writes).
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(stack.api_url)


def run_deployment(
    stack: PrefectStack,
    name: str,
    parameters: Mapping[str, Any],
    *,
    timeout_s: float = 150,
    poll_s: float = 0.1,
) -> FlowRunTiming:
    """Start a run of deployment `name` ("flow/deployment") with `parameters` through the API
    (`create_flow_run_from_deployment`, what `prefect deployment run` calls) and poll it every
    `poll_s` until its final state."""
    with _client(stack) as client:
        deployment_id = stack.deployment_ids.get(name)
        if deployment_id is None:
            deployment_id = stack.deployment_ids[name] = client.read_deployment_by_name(name).id
        started = time.monotonic()
        run_id = client.create_flow_run_from_deployment(
            deployment_id, parameters=dict(parameters)
        ).id

        def final() -> FlowRun | None:
            run = client.read_flow_run(run_id)
            return run if run.state is not None and run.state.is_final() else None

        run = poll(final, timeout_s=timeout_s, interval_s=poll_s, what=f"flow run {run_id}")
        wall_s = time.monotonic() - started
        entered: dict[str, datetime] = {}
        for state in sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp):
            entered.setdefault(state.type.value, state.timestamp)
    assert run.state is not None
    run_s = None
    if run.start_time is not None and run.end_time is not None:
        run_s = (run.end_time - run.start_time).total_seconds()

    def between(first: str, then: str) -> float | None:
        if first in entered and then in entered:
            return (entered[then] - entered[first]).total_seconds()
        return None

    return FlowRunTiming(
        flow_run_id=run_id,
        state=run.state.type.value,
        message=run.state.message,
        run_s=run_s,
        wall_s=wall_s,
        pickup_s=between("SCHEDULED", "PENDING"),
        process_start_s=between("PENDING", "RUNNING"),
    )


def flow_run_logs(stack: PrefectStack, flow_run_id: UUID) -> list[str]:
    """The run's log messages, oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with _client(stack) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            sort=LogSort.TIMESTAMP_ASC,
        )
    return [log.message for log in logs]


def single_gpu_spec(
    *,
    name: str,
    namespace: str,
    model_id: str,
    size_bytes: int,
    oss_endpoint: str,
    oss_region: str,
    bucket: str,
) -> dict[str, Any]:
    """A single-GPU SGLang spec on a ModelScope `master` whose storage is the sandbox OSS
    (credentials from OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET). On the sandbox's cluster the
    SGLang image runs the SGLang stand-in (sandbox.cluster.images), which is ready at once and
    serves any model directory with a config.json, such as sandbox.synthetic's."""
    return {
        "name": name,
        "namespace": namespace,
        "model": {
            "modelscope": {"model_id": model_id, "revision": "master"},
            "size_bytes": size_bytes,
        },
        "storage": {
            "bucket": bucket,
            "endpoint": oss_endpoint,
            "prefix": "models",
            "region": oss_region,
            "credentials": {
                "access_key_id_env": "OSS_ACCESS_KEY_ID",
                "access_key_secret_env": "OSS_ACCESS_KEY_SECRET",
            },
        },
        "serving": {
            "engine": "sglang",
            "shape": "single-gpu",
            "image": "lmsysorg/sglang:v0.4.10.post2-cu126",
            "gpu_memory_gib": 24,
        },
        "rollout": {"promote_grace_s": 0, "ready_timeout_s": 60, "smoke_timeout_s": 60},
    }
