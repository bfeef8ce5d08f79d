"""A Deployment's rendered `vllm serve` command, run through the image table as the node agent
runs it: the engine process's argv is the rendered argv plus the adaptation table's additions,
and it serves the tiny model's answer."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
import pytest

from sandbox.cluster import images
from sandbox.cluster.processes import Supervisor, http_ok
from sandbox.vllm.engine import free_port
from sandbox.vllm.tiny_model import TinyModelInfo, generate_tiny_model
from tests.runtimes.conftest import rendered_containers
from tests.vllm.conftest import require_engine

VLLM_IMAGE = "vllm/vllm-openai:v0.10.0"
# Measured 67 s to ready on the shared 2-core machine; CPU engines take longer under load.
READY_TIMEOUT_S = 480


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("layer_installed")
def test_rendered_vllm_serve_runs_with_only_the_tables_additions(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    require_engine()
    model = generate_tiny_model(tmp_path / "tiny-qwen3")
    info = TinyModelInfo.load(model)
    rendered = next(
        c.argv
        for c in rendered_containers()
        if c.example == "seed-vllm-single-gpu" and c.argv[:2] == ["vllm", "serve"]
    )
    port = free_port()
    # What the pod would see: the model mounted at the rendered path (here the tiny model's
    # directory) and the port free on loopback; every other argument as rendered.
    local = {"--served-model-name": info.served_name, "--host": "127.0.0.1", "--port": str(port)}
    argv = [*rendered[:2], model.as_posix()]
    for prev, arg in itertools.pairwise(rendered[2:]):
        argv.append(local.get(prev, arg))
    runtime = images.resolve(VLLM_IMAGE)
    assert runtime is not None
    host = runtime.command(argv)
    proc = supervisor.start(
        "vllm", host.argv, env={**host.env, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    )
    base = f"http://127.0.0.1:{port}"
    supervisor.wait_ready(proc, lambda: http_ok(f"{base}/v1/models"), timeout_s=READY_TIMEOUT_S)
    cmdline = Path(f"/proc/{proc.process.pid}/cmdline").read_bytes().split(b"\0")
    # [engine python, engine venv's vllm script, *args]: the shim exec'd the real one.
    assert [a.decode() for a in cmdline[2:] if a] == images.adapt(VLLM_IMAGE, argv)[1:]
    response = httpx.post(
        f"{base}/v1/chat/completions",
        json={
            "model": info.served_name,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 30,
        },
        timeout=120,
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == info.answer
