"""The SGLang stand-in: it takes every flag our templates render, refuses any other with exit
code 2, and behaves on /health and in multi-node and PD mode as its docstring says."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sandbox.cluster import images
from sandbox.cluster.processes import Supervisor, http_ok
from sandbox.sglang_standin import server
from sandbox.vllm.engine import free_port
from tests.runtimes.conftest import (
    LAUNCH,
    SGLANG_IMAGE,
    TINY_ANSWER,
    http_get,
    http_post,
    rendered_containers,
    start_standin,
)

# $(VAR) values the kubelet would expand from the LWS webhook's env.
LWS_ENV = {"LWS_LEADER_ADDRESS": "leader.example", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "1"}
READY_TIMEOUT_S = 30


def _expand(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        for name, value in LWS_ENV.items():
            arg = arg.replace(f"$({name})", value)
        out.append(arg)
    return out


SERVER_ARGVS = [c for c in rendered_containers() if c.argv[:3] == LAUNCH and "sglang" in c.image]


@pytest.mark.parametrize("container", SERVER_ARGVS, ids=lambda c: f"{c.example}-{c.name}")
def test_every_rendered_server_command_is_accepted(container: Any) -> None:
    args = server.parse_args(_expand(container.argv[3:]))
    assert args.model_path.startswith("/models/")
    assert args.tp_size >= 1


def test_server_argvs_cover_every_sglang_shape() -> None:
    modes = {server.parse_args(_expand(c.argv[3:])).disaggregation_mode for c in SERVER_ARGVS}
    assert modes == {"null", "prefill", "decode"}
    assert any("--nnodes" in c.argv for c in SERVER_ARGVS)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    runtime = images.resolve(SGLANG_IMAGE)
    assert runtime is not None
    host = runtime.command(argv)
    return subprocess.run(
        host.argv, env=host.env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "extra",
    [
        ["--mem-fraction-static", "0.8"],
        ["--tp-siz", "2"],  # SGLang would take an unambiguous prefix; the stand-in does not
        ["--disaggregation-mode", "both"],
    ],
)
def test_an_unknown_flag_or_value_is_refused_with_exit_code_2(
    tiny_model: Path, extra: list[str]
) -> None:
    result = _run([*LAUNCH, "--model-path", str(tiny_model), *extra])
    assert result.returncode == 2
    assert "sglang stand-in" in result.stderr
    assert extra[0] in result.stderr or extra[1] in result.stderr


def test_a_missing_model_fails_the_start(tmp_path: Path) -> None:
    result = _run([*LAUNCH, "--model-path", str(tmp_path / "absent"), "--port", "1"])
    assert result.returncode == 1
    assert "config.json" in result.stderr


def test_health_generates_and_api_key_guards_all_but_health_and_metrics(
    supervisor: Supervisor, tiny_model: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = ["--model-path", str(tiny_model), "--served-model-name", "tiny", "--port", str(port)]
    proc = start_standin(supervisor, "single", [*argv, "--enable-metrics", "--api-key", "k"])
    supervisor.wait_ready(proc, lambda: http_ok(f"{base}/health"), timeout_s=READY_TIMEOUT_S)
    assert http_get(f"{base}/health_generate")[0] == 200
    assert http_post(f"{base}/health_generate", {})[0] == 405
    assert http_get(f"{base}/v1/models")[0] == 401
    status, body = http_get(f"{base}/v1/models", {"Authorization": "Bearer k"})
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == ["tiny"]
    # Each /health ran a one-token generation, as SGLang's does.
    status, metrics = http_get(f"{base}/metrics")
    assert status == 200
    assert 'sglang:generation_tokens_total{model_name="tiny"} 2' in metrics.decode()


def test_multi_node_rank_0_is_healthy_only_with_every_rank_and_dies_with_them(
    supervisor: Supervisor, tiny_model: Path
) -> None:
    leader_port, worker_port, dist_port = free_port(), free_port(), free_port()
    common = ["--model-path", str(tiny_model), "--tp", "2", "--host", "127.0.0.1"]
    group = ["--dist-init-addr", f"127.0.0.1:{dist_port}", "--nnodes", "2"]
    leader = start_standin(
        supervisor, "rank0", [*common, "--port", str(leader_port), *group, "--node-rank", "0"]
    )
    supervisor.wait_ready(
        leader,
        lambda: http_get(f"http://127.0.0.1:{leader_port}/health")[0] == 503,
        timeout_s=READY_TIMEOUT_S,
    )
    worker = start_standin(
        supervisor, "rank1", [*common, "--port", str(worker_port), *group, "--node-rank", "1"]
    )
    health = f"http://127.0.0.1:{leader_port}/health"
    supervisor.wait_ready(leader, lambda: http_ok(health), timeout_s=READY_TIMEOUT_S)
    # Ranks >= 1 serve SGLang's dummy health server only.
    assert http_get(f"http://127.0.0.1:{worker_port}/health")[0] == 200
    assert http_get(f"http://127.0.0.1:{worker_port}/v1/models")[0] == 404
    worker.stop(grace_s=10)
    assert leader.process.wait(timeout=READY_TIMEOUT_S) == 1


def test_pd_servers_refuse_requests_without_the_routers_bootstrap_fields(
    supervisor: Supervisor, tiny_model: Path
) -> None:
    port = free_port()
    argv = ["--model-path", str(tiny_model), "--port", str(port)]
    proc = start_standin(supervisor, "decode", [*argv, "--disaggregation-mode", "decode"])
    base = f"http://127.0.0.1:{port}"
    supervisor.wait_ready(proc, lambda: http_ok(f"{base}/health"), timeout_s=READY_TIMEOUT_S)
    chat = {"model": str(tiny_model), "messages": [{"role": "user", "content": "hi"}]}
    status, body = http_post(f"{base}/v1/chat/completions", chat)
    assert status == 400
    assert "bootstrap_room" in body["error"]["message"]
    # A bootstrap address nobody listens on fails the "transfer", as a dead prefill would.
    dead = free_port()
    status, body = http_post(
        f"{base}/v1/chat/completions",
        {**chat, "bootstrap_host": "127.0.0.1", "bootstrap_port": dead, "bootstrap_room": 7},
    )
    assert status == 500
    assert "KV transfer failed" in body["error"]["message"]


def test_the_answer_is_the_tiny_models(supervisor: Supervisor, tiny_model: Path) -> None:
    port = free_port()
    proc = start_standin(
        supervisor, "plain", ["--model-path", str(tiny_model), "--port", str(port)]
    )
    base = f"http://127.0.0.1:{port}"
    supervisor.wait_ready(proc, lambda: http_ok(f"{base}/health"), timeout_s=READY_TIMEOUT_S)
    status, body = http_post(
        f"{base}/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30},
    )
    assert status == 200
    assert body["choices"][0]["message"]["content"] == TINY_ANSWER
    assert body["choices"][0]["finish_reason"] == "stop"
    status, body = http_post(f"{base}/v1/chat/completions", {"messages": [], "max_tokens": 2})
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_a_chat_completion_asking_to_be_held_stays_unanswered_until_its_client_goes(
    supervisor: Supervisor, tiny_model: Path
) -> None:
    # The test knob (server.HOLD_PROMPT) the smoke test's cut is observed with on the real
    # cluster: the request reaches the server and gets no answer; closing the connection is
    # what ends it, and the server logs both.
    port = free_port()
    proc = start_standin(supervisor, "hold", ["--model-path", str(tiny_model), "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    supervisor.wait_ready(proc, lambda: http_ok(f"{base}/health"), timeout_s=READY_TIMEOUT_S)
    body = json.dumps({"messages": [{"role": "user", "content": server.HOLD_PROMPT}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    client = socket.create_connection(("127.0.0.1", port), timeout=READY_TIMEOUT_S)
    try:
        client.sendall(head + body)
        supervisor.wait_ready(
            proc, lambda: server.HELD_LOG in proc.log.read_text(), timeout_s=READY_TIMEOUT_S
        )
        assert server.HELD_CLOSED_LOG not in proc.log.read_text()
        # Nothing came back while it was held.
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(1)
    finally:
        client.close()
    supervisor.wait_ready(
        proc, lambda: server.HELD_CLOSED_LOG in proc.log.read_text(), timeout_s=READY_TIMEOUT_S
    )
    # Any other message is answered as before.
    status, answer = http_post(
        f"{base}/v1/chat/completions",
        {"messages": [{"role": "user", "content": server.HOLD_PROMPT + "?"}], "max_tokens": 30},
    )
    assert status == 200 and answer["choices"][0]["message"]["content"] == TINY_ANSWER
