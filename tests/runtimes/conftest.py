"""What runs for each image (``sandbox.cluster.images``), tested without a cluster.

Processes run on loopback ports in this test's namespace, each in a session of its own
(``sandbox.cluster.processes.Supervisor``), stopped after the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llm_rollout.render import default_release, render
from llm_rollout.spec import load_spec
from sandbox.cluster import images
from sandbox.cluster.processes import Component, Supervisor, _group_alive
from sandbox.runtimes import install as runtimes_install

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
TINY_ANSWER = "hello from the stand-in"
SGLANG_IMAGE = "lmsysorg/sglang:v0.4.10.post2-cu126"
LAUNCH = ["python3", "-m", "sglang.launch_server"]
STOP_GRACE_S = 20


@dataclass(frozen=True)
class RenderedContainer:
    example: str
    name: str
    image: str
    argv: list[str]


def _containers(obj: Any, example: str, out: list[RenderedContainer]) -> None:
    if isinstance(obj, dict):
        if "image" in obj and "name" in obj and ("command" in obj or "args" in obj):
            argv = [*obj.get("command", []), *obj.get("args", [])]
            out.append(RenderedContainer(example, obj["name"], obj["image"], argv))
        for value in obj.values():
            _containers(value, example, out)
    elif isinstance(obj, list):
        for value in obj:
            _containers(value, example, out)


def rendered_containers() -> list[RenderedContainer]:
    """Every container (init containers too) of every example, v0.6 and v0.7 RBG flavours."""
    found: list[RenderedContainer] = []
    for path in EXAMPLES:
        spec = load_spec(path)
        for flavor in ("v0.6", "v0.7"):
            rendered = render(spec, release=default_release(spec), rbg_flavor=flavor)
            for obj in rendered.all():
                _containers(obj, path.stem, found)
    return found


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def http_post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start_standin(supervisor: Supervisor, name: str, argv: list[str]) -> Component:
    runtime = images.resolve(SGLANG_IMAGE)
    assert runtime is not None
    host = runtime.command([*LAUNCH, *argv])
    return supervisor.start(name, host.argv, env=host.env)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A model directory the stand-in accepts: config.json and the tiny model's answer file."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    (model / "tiny_model.json").write_text(json.dumps({"answer": TINY_ANSWER}))
    return model


def stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM a process group, wait for all of it to end, SIGKILL what is left. An engine's
    children (vLLM's EngineCore, Ray's daemons) outlive their group leader by a moment."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(log_dir=tmp_path / "logs")
    try:
        yield sup
    finally:
        for component in reversed(sup.components):
            # The leader first (stopped and reaped: a zombie still counts as a group member),
            # then whatever it started and left behind.
            component.stop(STOP_GRACE_S)
            stop_group(component.process.pid, STOP_GRACE_S)
        sup.stop_all(grace_s=STOP_GRACE_S)


# Fail, never skip: the test command's set-up installs them, so their absence is a defect.
@pytest.fixture
def router_installed() -> None:
    if not runtimes_install.is_router_installed():
        pytest.fail("sglang-router is not installed: run scripts/install-runtimes", pytrace=False)


@pytest.fixture
def lb_installed() -> None:
    if not runtimes_install.is_lb_installed():
        pytest.fail(
            "the mini_lb layer is not installed: run scripts/install-runtimes", pytrace=False
        )


@pytest.fixture
def layer_installed() -> None:
    if not runtimes_install.is_layer_installed():
        pytest.fail(
            "the vLLM image layer is not installed: run scripts/install-runtimes", pytrace=False
        )
