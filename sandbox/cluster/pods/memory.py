"""Containers' memory limits through the cgroup v1 memory controller, and their OOM kills.

As runc does for the CRI runtime, each run of a container (a new container ID on every restart)
gets a memory cgroup of its own, here ``<the agent's memory cgroup>/llm-rollout-<pid>/<pod
uid>/<container>-<attempt>``, with ``memory.limit_in_bytes`` set to the container's
``resources.limits.memory`` (rounded up to a byte, Quantity.Value()) and, as the kubelet asks
for on cgroup v1 when swap is not allowed, the same swap-inclusive limit
(``memory.memsw.limit_in_bytes``; pkg/kubelet/kuberuntime/kuberuntime_container_linux.go
swapConfigurationHelper.ConfigureNoSwap: MemorySwapLimitInBytes = MemoryLimitInBytes). A
container without a memory limit still gets its cgroup, without a limit. The pod's own cgroup
carries no limit (pod-level accounting is not modelled).

An OOM kill is read as containerd's runc shim sees one on cgroup v1: the shim waits on the
cgroup's ``memory.oom_control`` event fd (containerd ``pkg/oom/v1/v1.go``) and publishes
TaskOOM, which the CRI plugin turns into the container's reason "OOMKilled" whatever the exit
code (``internal/cri/server/events.go`` TaskOOM -> ``oomExitReason``; ``container_status.go``
toCRIContainerStatus keeps that reason, else "Completed"/"Error"); the kubelet takes it as
it is (``pkg/kubelet/kuberuntime/kuberuntime_container.go`` toKubeContainerStatus) into
``state.terminated``, then ``lastState.terminated`` once restarted (``pkg/kubelet/
kubelet_pods.go`` convertToAPIContainerStatuses). Here the run's cgroup is read once the run
has ended: its ``oom_kill`` counter (kernel 4.13+) counts the kernel's kills in it.

Without a writable memory controller (no v1 hierarchy mounted, or our cgroup not writable) the
agent says so once and runs containers without limits.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes.utils import parse_quantity

log = logging.getLogger("node-agent.memory")

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
# containerd's CRI plugin's oomExitReason (internal/cri/server).
OOM_KILLED = "OOMKilled"
# A cgroup's last processes may still be leaving when the run's parent has been reaped (an
# exec'd command's nsenter outside the container's PID namespace); rmdir is retried this long.
REMOVE_WAIT_S = 5.0


def own_memory_cgroup(proc_cgroup: str, root: Path = MEMORY_ROOT) -> Path | None:
    """This process's cgroup in the v1 memory hierarchy (the ``memory`` line of
    ``/proc/self/cgroup``), or None when the memory controller has no v1 hierarchy."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return root / path.lstrip("/")
    return None


def memory_limit_bytes(container: dict[str, object]) -> int | None:
    """The container's ``resources.limits.memory`` in bytes, None without one."""
    resources = container.get("resources")
    limits = resources.get("limits") if isinstance(resources, dict) else None
    raw = limits.get("memory") if isinstance(limits, dict) else None
    if raw in (None, ""):
        return None
    return math.ceil(parse_quantity(raw))


def oom_kills(cgroup: Path) -> int:
    """The kernel's OOM kills in ``cgroup`` so far (``memory.oom_control``'s ``oom_kill``)."""
    for line in (cgroup / "memory.oom_control").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    raise OSError(f"{cgroup / 'memory.oom_control'} has no oom_kill counter (kernel < 4.13)")


def remove_cgroup(cgroup: Path, wait_s: float = REMOVE_WAIT_S) -> bool:
    """Remove ``cgroup`` and its children, bottom up; False when one still holds processes
    after ``wait_s`` (it is left, and named in the log)."""
    try:
        children = [p for p in cgroup.iterdir() if p.is_dir()]
    except FileNotFoundError:
        # Removed meanwhile (a run's own removal and its pod's race at the agent's stop).
        return True
    removed = all([remove_cgroup(child, wait_s) for child in children])
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cgroup.rmdir()
            return removed
        except FileNotFoundError:
            return removed
        except OSError as exc:
            # EBUSY while a process is still in it.
            if time.monotonic() > deadline:
                log.warning("memory cgroup %s not removed: %s", cgroup, exc)
                return False
        time.sleep(0.05)


@dataclass(frozen=True)
class RunCgroup:
    """One run's memory cgroup."""

    path: Path
    limit_bytes: int | None

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def join_argv(self) -> list[str]:
        """An argv prefix that moves the command into this cgroup before it runs: the shell
        moves itself, then becomes the command, so every process the command makes is in it."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs)]

    def oom_killed(self) -> bool:
        try:
            return oom_kills(self.path) > 0
        except FileNotFoundError:
            return False


class MemoryCgroups:
    """The agent's memory cgroups: one base under the agent's own, removed with the agent."""

    def __init__(self, base: Path | None, unavailable: str = "") -> None:
        self.base = base
        self.unavailable = unavailable

    @staticmethod
    def open(
        proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = MEMORY_ROOT
    ) -> MemoryCgroups:
        """The controller under this process's cgroup; when it cannot be used, an instance
        that sets no limits, having said why in the log."""
        reason = memory_controller_unavailable(proc_cgroup, root)
        if reason:
            log.warning("memory limits are not enforced: %s", reason)
            return MemoryCgroups(None, reason)
        own = own_memory_cgroup(proc_cgroup.read_text(), root)
        assert own is not None
        # An agent that was killed (not stopped) left its cgroups; its processes are gone.
        for stale in own.glob("llm-rollout-*"):
            pid = stale.name.rpartition("-")[2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                remove_cgroup(stale)
        base = own / f"llm-rollout-{os.getpid()}"
        base.mkdir(exist_ok=True)
        log.info("containers' memory cgroups under %s", base)
        return MemoryCgroups(base)

    def create(self, pod_uid: str, name: str, limit_bytes: int | None) -> RunCgroup | None:
        if self.base is None:
            return None
        pod = self.base / pod_uid
        pod.mkdir(exist_ok=True)
        path = pod / name
        path.mkdir()
        if limit_bytes is not None:
            # memsw may only be raised to at least the memory limit, so memory goes first.
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            memsw = path / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(limit_bytes))
        return RunCgroup(path, limit_bytes)

    def remove_pod(self, pod_uid: str) -> None:
        if self.base is not None:
            remove_cgroup(self.base / pod_uid)

    def close(self) -> None:
        if self.base is not None:
            remove_cgroup(self.base)


def memory_controller_unavailable(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = MEMORY_ROOT
) -> str:
    """Why child memory cgroups cannot be made under this process's cgroup; "" when they can
    (a probe cgroup is made and removed)."""
    own = own_memory_cgroup(proc_cgroup.read_text(), root)
    if own is None:
        return f"no cgroup v1 memory controller in {proc_cgroup}"
    probe = own / f"llm-rollout-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError as exc:
        return f"cannot create a memory cgroup under {own}: {exc.strerror}"
    try:
        if not (probe / "memory.limit_in_bytes").exists():
            return f"{own} is not a memory cgroup (no memory.limit_in_bytes)"
        oom_kills(probe)
    except OSError as exc:
        return f"cannot read OOM kills under {own}: {exc}"
    finally:
        probe.rmdir()
    return ""
