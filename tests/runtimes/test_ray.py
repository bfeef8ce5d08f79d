"""The vLLM image's ray (2.48.0, no extras) through the image table: a head and a second node on
this host form one cluster, the rendered LWS leader's wait loop sees both nodes, and the dashboard
agent serves no HTTP (Ray's minimal install: `python/ray/dashboard/agent.py` starts its HTTP
server only outside minimal mode; the probes KubeRay injects target it: finding F2)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cluster import images
from sandbox.vllm.engine import free_port
from tests.runtimes.conftest import STOP_GRACE_S, http_get, rendered_containers, stop_group

pytestmark = pytest.mark.usefixtures("layer_installed")

VLLM_IMAGE = "vllm/vllm-openai:v0.10.0"
START_TIMEOUT_S = 90


def _leader_wait_script() -> str:
    """The Python program of the rendered vLLM-on-LWS leader (its `python3 -c '...'`,
    run_child'ed, llm_rollout/render.py `_Ctx.wait_for_ray_nodes`): wait for N live Ray nodes."""
    leader = next(
        c for c in rendered_containers() if c.example == "seed-vllm-lws" and c.name == "vllm-leader"
    )
    script = leader.argv[-1]
    return script.split("run_child python3 -c '\n", 1)[1].split("\n' ", 1)[0]


class RayProcesses:
    """`ray start` daemonises its services into the starting process's session: each start
    gets a session of its own, and teardown signals those process groups."""

    def __init__(self) -> None:
        self.groups: list[int] = []

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        runtime = images.resolve(VLLM_IMAGE)
        assert runtime is not None
        host = runtime.command(argv)
        process = subprocess.Popen(
            host.argv,
            env={**host.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.groups.append(process.pid)
        out, _ = process.communicate(timeout=START_TIMEOUT_S)
        return subprocess.CompletedProcess(host.argv, process.returncode, out, "")

    def stop(self) -> None:
        for group in self.groups:
            stop_group(group, STOP_GRACE_S)


@pytest.fixture
def ray_processes() -> Iterator[RayProcesses]:
    processes = RayProcesses()
    try:
        yield processes
    finally:
        processes.stop()


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    # Ray's unix sockets live under --temp-dir, and socket paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="rt-ray-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _ports(*names: str) -> list[str]:
    return [f"--{name}={free_port()}" for name in names]


@pytest.mark.timeout(240)
def test_a_second_node_joins_the_head_and_the_leaders_wait_loop_sees_both(
    ray_processes: RayProcesses, ray_tmp: Path
) -> None:
    gcs_port = free_port()
    agent_port = free_port()
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    # The rendered flags (--head --num-gpus=1 --disable-usage-stats), plus test-only ports and
    # temp dir so that this cluster shares nothing with any other on the host.
    common = [
        "--num-gpus=1",
        "--disable-usage-stats",
        "--num-cpus=1",
        "--node-ip-address=127.0.0.1",
    ]
    head = ray_processes.start(
        [
            "ray",
            "start",
            "--head",
            f"--port={gcs_port}",
            *common,
            f"--temp-dir={ray_tmp}",
            f"--dashboard-agent-listen-port={agent_port}",
            *_ports(
                "dashboard-port",
                "node-manager-port",
                "object-manager-port",
                "ray-client-server-port",
                "metrics-export-port",
                "runtime-env-agent-port",
                "dashboard-agent-grpc-port",
            ),
        ],
        env,
    )
    assert head.returncode == 0, head.stdout[-3000:]
    worker = ray_processes.start(
        [
            "ray",
            "start",
            f"--address=127.0.0.1:{gcs_port}",
            *common,
            *_ports(
                "node-manager-port",
                "object-manager-port",
                "metrics-export-port",
                "runtime-env-agent-port",
                "dashboard-agent-grpc-port",
                "dashboard-agent-listen-port",
            ),
        ],
        env,
    )
    assert worker.returncode == 0, worker.stdout[-3000:]
    runtime = images.resolve(VLLM_IMAGE)
    assert runtime is not None
    host = runtime.command(["python3", "-", "2", "60"])
    # ray.init(address="auto") finds a cluster through RAY_ADDRESS first (the image's pods find
    # it through /tmp/ray; this test's cluster lives under its own temp dir).
    waited = subprocess.run(
        host.argv,
        input=_leader_wait_script(),
        env={**host.env, **env, "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    assert waited.returncode == 0, waited.stderr[-3000:]
    # The minimal dashboard agent does not listen on its HTTP port (KubeRay's injected probe
    # target, 52365 by default; this head's is agent_port).
    assert http_get(f"http://127.0.0.1:{agent_port}/api/local_raylet_healthz")[0] == 0
