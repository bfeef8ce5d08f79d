"""SIGTERM reaches the long-running process of every rendered shell script.

A container's command runs as PID 1 of the pod's PID namespace, and the kernel drops a signal
whose disposition is the default for that namespace's init (pid_namespaces(7)): bash without a
trap ignores the kubelet's SIGTERM, and bash never passes a signal on to its foreground child,
so a deletion waits out terminationGracePeriodSeconds and SIGKILLs ray or vLLM. Each script
therefore `exec`s its last long-running command, and runs any earlier one through `run_child`
(llm_rollout/render.py `_Ctx.signal_forwarding`), which forwards SIGTERM. KubeRay leaves our
commands alone under `ray.io/overwrite-container-cmd` (ray-operator
controllers/ray/common/pod.go BuildPod, v1.5.0), so its containers are ours as rendered.
tests/real/test_sigterm_forwarding.py runs the scripts in real pods.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_rollout.render import render
from llm_rollout.spec import spec_from_dict

from .conftest import EXAMPLES, example_dict

SHELLS = ("/bin/bash", "bash", "/bin/sh", "sh")
# What runs for long in our scripts: ray's blocking node, vLLM, the wait for Ray nodes
# (python3), the pause between join attempts, and a head's `ray start --head` (it returns once
# the node's processes started, ray/scripts/scripts.py `start`, ray 2.48.0; measured 12 s here).
LONG_RUNNING = ("ray start", "vllm serve", "python3", "sleep ")


def _containers(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("containers", "initContainers") and isinstance(item, list):
                yield from item
            else:
                yield from _containers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _containers(item)


def _scripts() -> list[tuple[str, str]]:
    found = []
    for path in EXAMPLES:
        workload = render(spec_from_dict(example_dict(path.stem)), release="r1").workload
        for container in _containers(workload):
            argv = [*container.get("command", []), *container.get("args", [])]
            if argv and argv[0] in SHELLS:
                assert argv[1] == "-c", (path.stem, container["name"], argv[:2])
                found.append((f"{path.stem}/{container['name']}", argv[2]))
    return found


def test_every_long_running_command_is_execed_or_signal_forwarded() -> None:
    scripts = _scripts()
    # vLLM on LWS (leader, worker) and on KubeRay (head, worker), twice.
    assert len(scripts) == 6, [name for name, _ in scripts]
    for name, script in scripts:
        body = script.split("trap forward_term TERM INT\n", 1)[-1]
        for line in body.splitlines():
            if any(marker in line for marker in LONG_RUNNING):
                command = line.strip().removeprefix("until ")
                assert command.startswith(("exec ", "run_child ")), (name, line)
        if "run_child " in body:
            assert "trap forward_term TERM INT\n" in script, name


def _fake_ray(tmp_path: Path) -> tuple[Path, Path]:
    """A `ray` that blocks until SIGTERM, records it and exits 1 as ray 2.48.0's
    `ray start --block` does (ray/_private/node.py `_register_shutdown_hooks` L447-462)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "ray-events"
    ray = bin_dir / "ray"
    ray.write_text(
        "#!/bin/bash\n"
        f"trap 'echo term >> {record}; exit 1' TERM\n"
        f"echo started >> {record}\n"
        "while :; do sleep 0.1; done\n",
        encoding="utf-8",
    )
    ray.chmod(ray.stat().st_mode | stat.S_IEXEC)
    return bin_dir, record


def _wait_for_line(path: Path, line: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and line in path.read_text(encoding="utf-8").split()):
        assert time.monotonic() < deadline, f"{path} never had {line!r}"
        time.sleep(0.05)


@pytest.mark.timeout(30)
def test_lws_worker_forwards_sigterm_to_ray_and_exits_143(tmp_path: Path) -> None:
    lwt = render(spec_from_dict(example_dict("seed-vllm-lws")), release="r1").workload["spec"][
        "leaderWorkerTemplate"
    ]
    script = lwt["workerTemplate"]["spec"]["containers"][0]["command"][-1]
    bin_dir, record = _fake_ray(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    script = script.replace("$(LWS_LEADER_ADDRESS)", "lws-0.lws.ns")
    with subprocess.Popen(["bash", "-c", script], env=env, stderr=subprocess.PIPE, text=True) as sh:
        _wait_for_line(record, "started", timeout_s=20)
        sh.send_signal(signal.SIGTERM)
        _, stderr = sh.communicate(timeout=20)
    assert sh.returncode == 143, stderr
    assert record.read_text(encoding="utf-8").split() == ["started", "term"]
    assert "SIGTERM forwarded to the running command, which exited 1" in stderr
