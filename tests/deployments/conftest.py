"""Fixtures of the deployments area: sandbox hub + OSS for the session, and -- for the tests
that need them -- a REAL `prefect server start` and a REAL process worker on free ports with a
private PREFECT_HOME. The worker is a separate process: it reaches the sandbox through the
endpoints in the spec and the KUBECONFIG / MODELSCOPE_ENDPOINT / OSS key variables it is
started with."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.hub import HubServer
from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.oss import OssServer
from sandbox.synthetic import make_synthetic_model

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY_ID = "LTAIdeploymentsKeyId"
KEY_SECRET = "deploymentsSecretNeverLogged0123"
BUCKET = "llm-models"
POOL = "llm-rollout"  # the pool prefect.yaml names (a private server per session)
SHARDS = 4
SHARD_BYTES = 3 * 256 * 1024 + 777

_models = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    server = HubServer(tmp_path_factory.mktemp("hub"))
    url = server.start()
    # The modelscope library reads its endpoint once per process: set it before any hub call.
    os.environ["MODELSCOPE_ENDPOINT"] = url
    yield server
    server.stop()


@pytest.fixture(scope="session")
def oss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssServer]:
    server = OssServer(
        tmp_path_factory.mktemp("oss"), credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET]
    )
    server.start()
    yield server
    server.stop()


@dataclass
class Model:
    model_id: str
    v1_dir: Path
    root: Path


@pytest.fixture
def model(hub: HubServer, tmp_path: Path) -> Model:
    """A fresh synthetic model published as v1 (and `master`)."""
    model_id = f"acme/tiny-{next(_models)}-{os.getpid()}"
    v1 = make_synthetic_model(tmp_path / "v1", shards=SHARDS, shard_size_bytes=SHARD_BYTES, seed=3)
    hub.add_revision_from_dir(model_id, "v1", v1)
    return Model(model_id, v1, tmp_path)


def spec_data(
    oss: OssServer, model_id: str, *, name: str, namespace: str = "llm-test"
) -> dict[str, Any]:
    """A single-GPU vLLM spec whose storage is the sandbox OSS."""
    return {
        "name": name,
        "namespace": namespace,
        "model": {
            "modelscope": {"model_id": model_id, "revision": "master"},
            "size_bytes": SHARDS * SHARD_BYTES + 4096,
        },
        "storage": {
            "bucket": BUCKET,
            "endpoint": oss.endpoint,
            "prefix": "models",
            "region": oss.region,
            "credentials": {
                "access_key_id_env": "OSS_ACCESS_KEY_ID",
                "access_key_secret_env": "OSS_ACCESS_KEY_SECRET",
            },
        },
        "serving": {
            "engine": "vllm",
            "shape": "single-gpu",
            "image": "vllm/vllm-openai:v0.10.0",
            "gpu_memory_gib": 24,
        },
        "rollout": {"promote_grace_s": 0, "ready_timeout_s": 60, "smoke_timeout_s": 60},
    }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SandboxCluster]:
    with SandboxCluster(ClusterConfig(), tmp_path / "kube") as sandbox_cluster:
        yield sandbox_cluster


# --- a real Prefect server and process worker ------------------------------------------------


@dataclass
class PrefectStack:
    api_url: str
    ui_url: str
    home: Path
    env: dict[str, str]
    worker: subprocess.Popen[bytes] | None = None
    worker_log: Path | None = None

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


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {process.returncode}")
            try:
                if client.get(url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            # The server offers no readiness push; a short pause between health probes.
            time.sleep(0.25)
    raise TimeoutError(f"prefect server not healthy after {timeout_s}s")


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
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
    log = (home / "server.log").open("wb")
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
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(api_url, server, 90)
        yield PrefectStack(api_url, f"http://127.0.0.1:{port}", home, env)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
