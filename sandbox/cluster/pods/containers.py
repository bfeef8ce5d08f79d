"""One container's processes: start in the pod's namespaces, log, stop, and the restart back-off.

Each run of a container is ``nsenter`` into the pod's namespaces, then ``unshare --pid --fork
--kill-child --mount-proc``: the command is PID 1 of a PID namespace of its own, as in a
container, so stopping it takes its whole process tree with it (and, as in a container, a PID 1
without a SIGTERM handler ignores SIGTERM until the SIGKILL after the grace period). As runc
sets up a container, the run also gets a mount namespace of its own with a ``/proc`` of its PID
namespace and, for an image whose runtime says so (``sandbox.cluster.images``), a fresh
``/tmp`` (the image's writable layer): psutil and ``ps`` see only the container's processes
(and vLLM's CPU worker, reading ``/proc/<its own pid>/status`` in
``vllm/utils/cpu_resource_utils.py``, finds its own),
and two Ray pods on one host share nothing under ``/tmp`` (Ray keeps its session, sockets and
``node_ip_address.json`` in ``/tmp/ray``; shared, a second node's ``ray start`` takes the
first's for its own). Commands run in a running container (exec probes,
``kubectl exec``) enter its namespaces (``enter_container``). Processes stay in
the node agent's process group, so the harness's stop of the agent reaches any that are left.
Each run's stdout and stderr go to a file of its own: the current run's is the container's log,
the one before it is ``--previous``. Each run's processes, and the commands run in it, are in
the run's memory cgroup (``sandbox.cluster.pods.memory``), which bounds them by the container's
memory limit and tells an OOM kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from sandbox.cluster.pods.memory import RunCgroup, remove_cgroup

# k8s.io/kubernetes pkg/kubelet/kubelet.go: backOffPeriod = 10 s, MaxContainerBackOff = 300 s;
# the back-off doubles from one to the next and resets after a run longer than twice the
# maximum (flowcontrol.Backoff, used by kuberuntime's doBackOff).
BACKOFF_BASE_S = 10.0
BACKOFF_MAX_S = 300.0


@dataclass(frozen=True)
class BackoffPolicy:
    base_s: float = BACKOFF_BASE_S
    max_s: float = BACKOFF_MAX_S


class Backoff:
    """flowcontrol.Backoff as kuberuntime's doBackOff uses it for one container (or one image
    pull): no wait before the first restart; afterwards the next start waits until ``base``,
    then twice as long each time, after the event (the container's exit), up to ``max``; an
    entry idle for twice ``max`` starts over."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self._policy = policy
        self.current_s: float | None = None
        self._last_update = 0.0

    def _expired(self, at: float) -> bool:
        return self.current_s is None or at - self._last_update > 2 * self._policy.max_s

    def wait_s(self, event_mono: float, now: float) -> float:
        """Seconds from ``now`` until a restart for an exit at ``event_mono`` may go ahead."""
        if self.current_s is None or self._expired(event_mono):
            return 0.0
        return max(0.0, event_mono + self.current_s - now)

    def in_backoff_since_update(self, now: float) -> bool:
        """IsInBackOffSinceUpdate: the image puller's test."""
        return self.current_s is not None and now - self._last_update < self.current_s

    def next(self, now: float) -> None:
        if self._expired(now):
            self.current_s = self._policy.base_s
        else:
            assert self.current_s is not None
            self.current_s = min(self.current_s * 2, self._policy.max_s)
        self._last_update = now


@dataclass
class Run:
    """One run of a container."""

    process: subprocess.Popen[bytes]
    log: Path
    started_at: str
    started_mono: float
    exit_code: int | None = None
    finished_at: str | None = None
    finished_mono: float = 0.0
    killed: bool = False
    exited: threading.Event = field(default_factory=threading.Event)
    cgroup: RunCgroup | None = None
    # The kernel OOM-killed a process of the run (its cgroup's count, read at its end).
    oom_killed: bool = False

    def pid1(self) -> int | None:
        """The container's PID 1 (the child of ``unshare --fork``), once it exists."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return None
        return children[0].pid if children else None

    def signal(self, signum: int) -> None:
        # To the container's PID 1: SIGKILL there takes the whole PID namespace down and
        # unshare, its parent, reaps it and exits with the same signal (no orphan left to
        # init). Before PID 1 exists only unshare can be signalled.
        target = self.pid1()
        try:
            os.kill(target if target is not None else self.process.pid, signum)
        except ProcessLookupError:
            return

    def stop(self, grace_s: float) -> None:
        if self.process.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.signal(signal.SIGKILL)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # PID 1 not yet forked when signalled: unshare itself, whose --kill-child
                # takes the child with it.
                self.process.kill()
                self.process.wait(timeout=30)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# PID 1 of the run mounts the run's own /tmp over the pod's, then becomes the container's
# command. A tmpfs rather than a directory on disk: the pod's own mounts (an emptyDir on
# /dev/shm) can hide the node agent's directories from inside, and a tmpfs goes with the run's
# mount namespace. Its size is a ceiling, not a reservation (pages are used as written).
PRIVATE_TMP_SIZE = "1g"
_PRIVATE_TMP = (
    f'mount -t tmpfs -o mode=1777,size={PRIVATE_TMP_SIZE} container-tmp /tmp && exec "$@"'
)


def enter_container(
    pid1: int, workdir: str | None = None, cgroup: RunCgroup | None = None
) -> list[str]:
    """The argv prefix that runs a command inside a running container: the pod's network and
    UTS namespaces, and the container's own mount (its /proc and /tmp) and PID namespaces; and
    its memory cgroup, as runc's exec joins the container's cgroups."""
    prefix = ["nsenter", f"--target={pid1}", "--net", "--uts", "--mount", "--pid"]
    if workdir:
        prefix.append(f"--wd={workdir}")
    join = cgroup.join_argv() if cgroup is not None else []
    return [*join, *prefix, "--"]


def start_run(
    *,
    enter: list[str],
    argv: list[str],
    env: dict[str, str],
    log: Path,
    on_exit: Callable[[], None],
    private_tmp: bool = False,
    cgroup: RunCgroup | None = None,
) -> Run:
    """Start one run and a thread that records its exit and calls ``on_exit``. With
    ``private_tmp`` the run has a /tmp of its own, empty at its start; with ``cgroup`` its
    processes are in that memory cgroup, removed once the run has ended."""
    log.parent.mkdir(parents=True, exist_ok=True)
    unshare = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--"]
    private = ["/bin/sh", "-c", _PRIVATE_TMP, "container"] if private_tmp else []
    join = cgroup.join_argv() if cgroup is not None else []
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*join, *enter, *unshare, *private, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    run = Run(
        process=process,
        log=log,
        started_at=utc_now(),
        started_mono=time.monotonic(),
        cgroup=cgroup,
    )

    def wait() -> None:
        code = process.wait()
        # unshare returns once the PID namespace is empty (its PID 1's exit kills the rest and
        # waits for them), so the count is final here.
        if cgroup is not None:
            run.oom_killed = cgroup.oom_killed()
            remove_cgroup(cgroup.path)
        # A run killed by a signal reports 128 + the signal, as container runtimes do.
        # unshare re-raises its child's fatal signal on itself, except SIGKILL, which it
        # cannot reset to SIG_DFL: util-linux 2.38 (this machine's) sys-utils/unshare.c then
        # exits 1 (later versions skip the reset for SIGKILL). That 1 is read as SIGKILL after
        # the agent's own kill, and after an OOM kill (the kernel's SIGKILL): a PID 1 that
        # itself exits 1 after the kernel killed one of its children reads 137 too.
        if (run.killed or run.oom_killed) and code == 1:
            code = -signal.SIGKILL
        run.exit_code = code if code >= 0 else 128 - code
        run.finished_at = utc_now()
        run.finished_mono = time.monotonic()
        run.exited.set()
        on_exit()

    threading.Thread(target=wait, name=f"wait-{process.pid}", daemon=True).start()
    return run


def read_log(path: Path, tail_lines: int | None) -> bytes:
    return read_log_bytes(path.read_bytes(), tail_lines)


def read_log_bytes(data: bytes, tail_lines: int | None) -> bytes:
    if tail_lines is None:
        return data
    if tail_lines <= 0:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-tail_lines:])
