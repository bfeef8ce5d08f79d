"""The real sglang-router (0.1.8, the version of the SGLang image the examples use) in PD mode
in front of prefill and decode stand-ins, started through the image table as the node agent
starts them, on loopback ports.

Router source read for these checks: sglang-router's Rust source (sgl-project/sglang
`sgl-router/`), from the PyPI sdists of 0.1.7 and 0.1.9 on either side of 0.1.8 (0.1.8 was
published as wheels only); the functions used here are the same in both:
- `src/routers/pd_router.rs` `PDRouter::new`: waits for every worker's `/health` at start
  (`Router::wait_for_healthy_workers`, `src/routers/router.rs`), then runs a health checker
  every `--worker-startup-check-interval` seconds (`src/core/worker.rs` `start_health_checker`,
  `check_health_async`: GET `/health`, 5 s timeout);
- `create_request_with_bootstrap`: adds `bootstrap_host` (the prefill URL's host,
  `src/routers/pd_types.rs` `get_hostname`), `bootstrap_port` (the one given after
  `--prefill URL`) and a random `bootstrap_room`, sent to prefill and decode at once;
- `health`: 503 "Unhealthy servers: [...]" when any prefill or decode worker is unhealthy,
  "All servers healthy" otherwise (it aggregates: the premise of finding F7);
  `readiness`: ready while at least one prefill and one decode are healthy;
  `liveness` (`src/routers/mod.rs`): 200 while the process serves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from llm_rollout.smoke import run_smoke
from sandbox.cluster import images
from sandbox.cluster.processes import Supervisor, http_ok
from sandbox.vllm.engine import free_port
from tests.runtimes.conftest import SGLANG_IMAGE, TINY_ANSWER, http_get, start_standin

pytestmark = pytest.mark.usefixtures("router_installed", "lb_installed")

READY_TIMEOUT_S = 60
# The router's health checker period for these tests; the rendered command keeps the
# router's default (10 s, launch_router.py RouterArgs.worker_startup_check_interval).
CHECK_INTERVAL_S = 1
SERVED = "tiny-qwen3"


def _server(supervisor: Supervisor, name: str, model: Path, mode: str, *extra: str) -> str:
    port = free_port()
    argv = ["--model-path", str(model), "--served-model-name", SERVED, "--tp", "1"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--disaggregation-mode", mode, *extra]
    proc = start_standin(supervisor, name, argv)
    url = f"http://127.0.0.1:{port}"
    supervisor.wait_ready(proc, lambda: http_ok(f"{url}/health"), timeout_s=READY_TIMEOUT_S)
    return url


def _start(supervisor: Supervisor, name: str, argv: list[str], port: int) -> str:
    runtime = images.resolve(SGLANG_IMAGE)
    assert runtime is not None
    host = runtime.command(argv)
    proc = supervisor.start(name, host.argv, env=host.env)
    url = f"http://127.0.0.1:{port}"
    supervisor.wait_ready(proc, lambda: http_ok(f"{url}/health"), timeout_s=READY_TIMEOUT_S)
    return url


def _router(supervisor: Supervisor, prefills: list[tuple[str, int]], decodes: list[str]) -> str:
    # The command shape llm_rollout.render renders for router: sglang_router.
    port = free_port()
    argv = ["python3", "-m", "sglang_router.launch_router", "--pd-disaggregation"]
    for url, bootstrap in prefills:
        argv += ["--prefill", url, str(bootstrap)]
    for url in decodes:
        argv += ["--decode", url]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    # Test-only: a free metrics port (default 29000 is shared on this host) and a short
    # health-check period, so a backend's loss shows within seconds.
    argv += ["--prometheus-port", str(free_port())]
    argv += ["--worker-startup-check-interval", str(CHECK_INTERVAL_S)]
    return _start(supervisor, "router", argv, port)


def _mini_lb(supervisor: Supervisor, prefills: list[tuple[str, int]], decodes: list[str]) -> str:
    # The command shape llm_rollout.render renders for router: mini_lb (the PD example's).
    port = free_port()
    argv = ["python3", "-m", "sglang.srt.disaggregation.mini_lb"]
    argv += ["--prefill", *[url for url, _ in prefills]]
    argv += ["--prefill-bootstrap-ports", *[str(b) for _, b in prefills]]
    argv += ["--decode", *decodes, "--host", "127.0.0.1", "--port", str(port)]
    return _start(supervisor, "router", argv, port)


Router = Callable[[Supervisor, list[tuple[str, int]], list[str]], str]


def _pd(
    supervisor: Supervisor, model: Path, prefill_count: int, router: Router = _router
) -> tuple[str, list[str]]:
    prefills = []
    for i in range(prefill_count):
        bootstrap = free_port()
        url = _server(
            supervisor,
            f"prefill-{i}",
            model,
            "prefill",
            "--disaggregation-bootstrap-port",
            str(bootstrap),
        )
        prefills.append((url, bootstrap))
    decode = _server(supervisor, "decode-0", model, "decode")
    return router(supervisor, prefills, [decode]), [u for u, _ in prefills]


def _smoke(url: str) -> None:
    with httpx.Client() as client:
        report = run_smoke(
            client,
            url,
            model=SERVED,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=30,
            api_key=None,
            timeout_s=30,
        )
    assert SERVED in report.served_models
    assert [c.call for c in report.calls][-2:] == ["chat", "stream"]
    for call in report.calls:
        assert call.status == 200, call
    chat, stream = report.call("chat"), report.call("stream")
    assert chat is not None and stream is not None
    assert (chat.content, chat.finish_reason) == (TINY_ANSWER, "stop")
    assert stream.content == TINY_ANSWER
    assert stream.completion_tokens == chat.completion_tokens


@pytest.mark.parametrize("router", [_router, _mini_lb], ids=["sglang_router", "mini_lb"])
def test_a_real_router_answers_the_smoke_test_through_prefill_and_decode(
    supervisor: Supervisor, tiny_model: Path, router: Router
) -> None:
    url, _ = _pd(supervisor, tiny_model, prefill_count=1, router=router)
    _smoke(url)


def test_router_health_aggregates_while_readiness_and_liveness_do_not(
    supervisor: Supervisor, tiny_model: Path
) -> None:
    url, prefills = _pd(supervisor, tiny_model, prefill_count=2)
    assert http_get(f"{url}/health") == (200, b"All servers healthy")
    down = next(c for c in supervisor.components if c.name == "prefill-1")
    down.stop(grace_s=10)
    router = next(c for c in supervisor.components if c.name == "router")
    # Within a few health-check periods the router marks it unhealthy.
    supervisor.wait_ready(
        router, lambda: http_get(f"{url}/health")[0] == 503, timeout_s=READY_TIMEOUT_S
    )
    status, body = http_get(f"{url}/health")
    assert status == 503
    assert body.decode().startswith("Unhealthy servers:")
    assert prefills[1] in body.decode()
    # The router still routes through the healthy prefill: readiness and liveness stay 200.
    assert http_get(f"{url}/readiness")[0] == 200
    assert http_get(f"{url}/liveness")[0] == 200


def test_mini_lb_health_does_not_look_at_its_backends(
    supervisor: Supervisor, tiny_model: Path
) -> None:
    # sglang 0.4.10.post2 python/sglang/srt/disaggregation/mini_lb.py: `/health` returns 200
    # unconditionally; `/health_generate` fans out to the servers but ignores their answers.
    url, _ = _pd(supervisor, tiny_model, prefill_count=2, router=_mini_lb)
    down = next(c for c in supervisor.components if c.name == "prefill-1")
    down.stop(grace_s=10)
    assert down.process.poll() is not None
    assert http_get(f"{url}/health")[0] == 200
