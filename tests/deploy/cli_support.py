"""The CLI as a user runs it, and what a user checks afterwards, for deploy tests on any cluster
``KUBECONFIG`` selects (the real one in tests/real, see tests/real_deploy.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from llm_rollout.cli import app
from llm_rollout.kube.client import shared_api_client
from llm_rollout.kube.proxy import httpx_client_for, service_proxy_url
from sandbox.cluster.api_proxy import ApiFaultProxy, running_proxy
from sandbox.cluster.control_plane import Cluster


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def stable_models(namespace: str, name: str, port: int = 8000) -> httpx.Response:
    """`GET /v1/models` on the stable Service, through the API server's service proxy."""
    api = shared_api_client()
    try:
        url = service_proxy_url(api, namespace, name, port) + "/v1/models"
        with httpx_client_for(api, timeout_s=10) as client:
            return client.get(url)
    finally:
        api.close()  # type: ignore[no-untyped-call]


def deploy_and_check(path: str, data: dict[str, Any], *secrets: str) -> tuple[str, str]:
    """`llm-rollout deploy`, then `status` says ready; returns the serving release and the
    deploy's output. None of `secrets` appears in what the user sees."""
    result = cli("deploy", path)
    assert result.exit_code == 0, result.output
    assert "smoke test answer" in result.output and "flow run" in result.output
    status = cli("status", data["name"], "-n", data["namespace"])
    assert status.exit_code == 0, status.output
    assert "ready" in status.output and "NOT ready" not in status.output
    for secret in secrets:
        assert secret not in result.output + status.output
    release = serving_release(data["name"], data["namespace"])
    assert f"serves release {release}" in result.output
    return release, result.output


def teardown_and_check(data: dict[str, Any], workload_kind: str) -> None:
    """`llm-rollout teardown` removes the workload, storage objects, Secret and Service, keeps
    the OSS mirror, and `status` then finds nothing (exit 3)."""
    result = cli("teardown", data["name"], "-n", data["namespace"], "--timeout-s", "60")
    assert result.exit_code == 0, result.output
    for kind in (workload_kind, "PersistentVolumeClaim", "PersistentVolume", "Secret", "Service"):
        assert f"removed {kind}" in result.output, result.output
    assert "OSS was kept" in result.output
    assert cli("status", data["name"], "-n", data["namespace"]).exit_code == 3


@dataclass(frozen=True)
class TaskRun:
    name: str
    run_count: int
    state_type: str


def task_runs(output: str) -> list[TaskRun]:
    """The task runs of the flow run the CLI output names, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found = re.search(r"flow run ([0-9a-f-]{36})", output)
    assert found is not None, output

    async def read() -> list[TaskRun]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(found.group(1))]))
            )
        return [
            TaskRun(
                # Prefect names a task run "<task name>-<suffix>".
                r.name.rsplit("-", 1)[0],
                r.run_count,
                r.state.type.value if r.state else "",
            )
            for r in runs
        ]

    return asyncio.run(read())


def serving_release(name: str, namespace: str) -> str:
    """The release `llm-rollout status` says the Service serves (it must be ready)."""
    status = cli("status", name, "-n", namespace)
    assert status.exit_code == 0, status.output
    return status.output.split("release:")[1].split()[0]


def writes_seen(proxy: ApiFaultProxy) -> list[str]:
    """Every state-changing request the API fault proxy passed on (dry runs included)."""
    return [f"{r.method} {r.path}" for r in proxy.records() if r.method not in ("GET", "HEAD")]


@contextmanager
def product_via_proxy(cluster: Cluster) -> Iterator[ApiFaultProxy]:
    """For the block, the product reaches the API server as the admin through a fresh API fault
    proxy (sandbox/cluster/api_proxy.py), whose records show every request it made."""
    with running_proxy(cluster.pki, cluster.api_url) as proxy, pytest.MonkeyPatch.context() as mp:
        path = cluster.kubeconfig_for("admin-via-proxy", cluster.pki.admin, server=proxy.url)
        mp.setenv("KUBECONFIG", str(path))
        yield proxy
