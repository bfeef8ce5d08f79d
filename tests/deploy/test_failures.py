"""The deploy flow failing the right way on the sandbox: each pod failure kind, too little
capacity, and preflight problems that must stop the run before any write."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest

from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.kube.nodes import NodeSpec
from tests.deploy.conftest import (
    KEY_SECRET,
    Stores,
    cli,
    cluster_env,
    http_writes,
    oss_writes,
    stable_models,
    write_spec,
)

pytestmark = pytest.mark.usefixtures("prefect_server")

NAMESPACE = "fail"
NAME = "qwen3-32b-tp4"
VERSION_LABEL = "app.kubernetes.io/version"


@pytest.fixture(scope="module")
def serving(
    stores: Stores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SandboxCluster, str]]:
    """A cluster where release 1 of the tp4 example serves; yields it and `status` output."""
    tmp = tmp_path_factory.mktemp("failures")
    with cluster_env(ClusterConfig(), tmp / "kube") as cluster:
        path, _ = write_spec(stores, "seed-vllm-tp4", tmp, namespace=NAMESPACE)
        first = cli("deploy", str(path))
        assert first.exit_code == 0, first.output
        status = cli("status", NAME, "-n", NAMESPACE)
        assert status.exit_code == 0, status.output
        yield cluster, status.output


@dataclass(frozen=True)
class _TaskRun:
    name: str
    run_count: int
    state_type: str


def _task_runs(output: str) -> list[_TaskRun]:
    """The task runs of the flow run the CLI output names, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found = re.search(r"flow run ([0-9a-f-]{36})", output)
    assert found is not None, output

    async def read() -> list[_TaskRun]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(found.group(1))]))
            )
        return [
            _TaskRun(
                # Prefect names a task run "<task name>-<suffix>".
                r.name.rsplit("-", 1)[0],
                r.run_count,
                r.state.type.value if r.state else "",
            )
            for r in runs
        ]

    return asyncio.run(read())


def _inject(kind: str) -> Callable[[SandboxCluster, dict[str, str]], object]:
    return {
        "ImagePullBackOff": lambda c, s: c.kubelet.inject_image_pull_error(selector=s),
        "CrashLoopBackOff": lambda c, s: c.kubelet.inject_crash_loop(selector=s),
        "OOMKilled": lambda c, s: c.kubelet.inject_oom(selector=s),
        "FailedMount": lambda c, s: c.kubelet.inject_mount_failure(selector=s),
        # Nothing to inject: the release asks for more memory than any node has.
        "Unschedulable": lambda c, s: None,
    }[kind]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("ImagePullBackOff", ("ImagePullBackOff", "ErrImagePull")),
        ("CrashLoopBackOff", ("CrashLoopBackOff",)),
        ("OOMKilled", ("OOMKilled",)),
        ("Unschedulable", ("Unschedulable",)),
        ("FailedMount", ("FailedMount",)),
    ],
)
def test_each_pod_failure_fails_fast_and_the_old_release_keeps_serving(
    stores: Stores,
    serving: tuple[SandboxCluster, str],
    tmp_path: Path,
    kind: str,
    expected: tuple[str, ...],
) -> None:
    cluster, before = serving
    tag = f"bad-{kind.lower()}"
    changes: dict[str, object] = {"image": f"vllm/vllm-openai:{tag}"}
    if kind == "Unschedulable":
        changes["resources"] = {"memory_gib": 1024}  # the nodes have 512 GiB
    # The kubelet retries a CSI mount error, so readiness tolerates it (rollout.mount_tolerance_s);
    # this case is about the report once the tolerance is spent.
    rollout = {"mount_tolerance_s": 0} if kind == "FailedMount" else {}
    path, _ = write_spec(
        stores,
        "seed-vllm-tp4",
        tmp_path,
        namespace=NAMESPACE,
        serving=changes,
        rollout=rollout,
    )
    _inject(kind)(cluster, {VERSION_LABEL: tag})
    try:
        result = cli("deploy", str(path))
    finally:
        cluster.kubelet.clear()
    assert result.exit_code == 1, result.output
    assert any(reason in result.output for reason in expected), result.output
    assert "keeps serving" in result.output
    # A pod failure is permanent: readiness ran once and was not retried (tasks/readiness.py
    # retries transient errors only), counted from the run's task runs, not from the clock.
    runs = _task_runs(result.output)
    assert [
        (r.name, r.run_count, r.state_type) for r in runs if r.name.startswith("readiness")
    ] == [("readiness", 1, "FAILED")], runs
    assert [r for r in runs if r.run_count > 1] == [], runs
    after = cli("status", NAME, "-n", NAMESPACE)
    assert after.exit_code == 0 and after.output == before  # nothing promoted
    assert stable_models(NAMESPACE, NAME).status_code == 200


def test_too_little_capacity_auto_recreates_and_forced_blue_green_is_refused(
    stores: Stores, tmp_path: Path
) -> None:
    config = ClusterConfig(nodes=[NodeSpec("gpu-node-a", gpus=4)])
    with cluster_env(config, tmp_path / "kube") as cluster:
        path, data = write_spec(stores, "seed-vllm-tp4", tmp_path, namespace="cap")
        assert cli("deploy", str(path)).exit_code == 0
        second = cli("deploy", str(path))
        assert second.exit_code == 0, second.output
        assert "(strategy recreate)" in second.output
        before = cli("status", NAME, "-n", "cap").output
        forced, _ = write_spec(
            stores, "seed-vllm-tp4", tmp_path, namespace="cap", rollout={"strategy": "blue-green"}
        )
        cluster.api.request_log.clear()
        refused = cli("deploy", str(forced))
        assert refused.exit_code == 1
        assert "preflight failed" in refused.output and "blue-green" in refused.output
        assert http_writes(cluster) == []
        assert cli("status", NAME, "-n", "cap").output == before
        assert data["name"] == NAME


@pytest.mark.parametrize(
    ("case", "example", "config", "wrong_secret", "expected"),
    [
        (
            "missing CRD",
            "seed-vllm-lws",
            ClusterConfig(lws_version=None),
            False,
            "needs CRD LeaderWorkerSet.leaderworkerset.x-k8s.io",
        ),
        (
            "too few GPUs",
            "seed-vllm-tp4",
            ClusterConfig(nodes=[NodeSpec("small", gpus=2)]),
            False,
            "capacity: the release needs 4 nvidia.com/gpu",
        ),
        ("wrong keys", "seed-vllm-tp4", ClusterConfig(), True, "OSS bucket"),
    ],
    ids=["missing-crd", "too-few-gpus", "wrong-keys"],
)
def test_preflight_problem_stops_the_run_before_any_write(
    stores: Stores,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    example: str,
    config: ClusterConfig,
    wrong_secret: bool,
    expected: str,
) -> None:
    if wrong_secret:
        monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "notTheSecretOfThisKey000")
    with cluster_env(config, tmp_path / "kube") as cluster:
        path, data = write_spec(stores, example, tmp_path, namespace="pre")
        stores.oss.request_log.clear()
        result = cli("deploy", str(path))
        assert result.exit_code == 1, result.output
        assert "preflight failed" in result.output and expected in result.output, case
        assert http_writes(cluster) == []
        assert oss_writes(stores) == []
        assert KEY_SECRET not in result.output and "notTheSecretOfThisKey000" not in result.output
        assert cli("status", data["name"], "-n", "pre").exit_code == 3
