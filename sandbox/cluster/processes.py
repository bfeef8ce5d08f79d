"""Start, wait for and stop the cluster's processes, each logging to a file of its own.

Every process is started in a session of its own with the parent-death signal set to SIGKILL
(``prctl(PR_SET_PDEATHSIG)``), so that a test run killed mid-way leaves no control plane behind;
an orderly stop sends SIGTERM to the whole process group, waits, then kills.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 40


class ComponentFailed(RuntimeError):
    """A component exited or did not become ready; the message carries its log's tail."""


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Component:
    """One running process of the cluster."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    started_at: float
    ready_s: float | None = None

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ComponentFailed(
                f"{self.name} exited with {code}; last lines of {self.log}:\n{log_tail(self.log)}"
            )

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.process.pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            return 0.0

    def stop(self, grace_s: float) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=grace_s)


@dataclass
class Supervisor:
    """The components of one cluster, in start order; stops them in reverse."""

    log_dir: Path
    components: list[Component] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        executable: Path | None = None,
    ) -> Component:
        """Start ``argv``; ``executable``, when given, runs with ``argv[0]`` as its name."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(argv),
                executable=executable,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        component = Component(name=name, process=process, log=log, started_at=time.monotonic())
        self.components.append(component)
        return component

    def wait_ready(
        self, component: Component, probe: Callable[[], bool], *, timeout_s: float
    ) -> float:
        """Poll ``probe`` until it answers True; return the seconds since the component started."""
        deadline = time.monotonic() + timeout_s
        while True:
            component.check_alive()
            if probe():
                component.ready_s = time.monotonic() - component.started_at
                return component.ready_s
            if time.monotonic() > deadline:
                raise ComponentFailed(
                    f"{component.name} not ready after {timeout_s:.0f} s; last lines of "
                    f"{component.log}:\n{log_tail(component.log)}"
                )
            time.sleep(0.1)

    def check_alive(self) -> None:
        for component in self.components:
            component.check_alive()

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Stop every component, newest first; raise if any process of theirs is left."""
        for component in reversed(self.components):
            component.stop(grace_s)
        left = [c.name for c in self.components if _group_alive(c.process.pid)]
        if left:
            raise ComponentFailed(f"processes left running after stop: {left}")

    def tails(self) -> str:
        return "\n\n".join(f"==> {c.log} <==\n{log_tail(c.log)}" for c in self.components)


def _group_alive(pgid: int) -> bool:
    # Each component leads its own process group (start_new_session), so this asks whether
    # it or anything it started is still running.
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def http_ok(url: str, *, context: ssl.SSLContext | None = None) -> bool:
    """True when ``url`` answers 200 (a probe: connection errors and other codes are False)."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False


def tls_accepts(host: str, port: int, context: ssl.SSLContext) -> bool:
    """True when ``host:port`` completes a TLS handshake that ``context`` verifies (a probe for
    servers that answer only on their own paths, such as webhooks)."""
    try:
        with (
            socket.create_connection((host, port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except (ConnectionError, TimeoutError, ssl.SSLError, OSError):
        return False
