"""Containers' memory limits on the node agent: each run in a cgroup v1 memory cgroup of its own
limited to ``resources.limits.memory``, an OOM kill reported as the kubelet reports it
(``lastState.terminated.reason: OOMKilled``, exit code 137; containerd
``internal/cri/server/events.go`` TaskOOM, kubelet ``pkg/kubelet/kuberuntime/
kuberuntime_container.go`` toKubeContainerStatus), restarts and back-off as for any exit, and
no cgroup left behind (sandbox/cluster/pods/memory.py).

Memory is taken with ``head -c N /dev/zero | tail``: tail keeps the stream's last line in
memory, and the stream has no newline, so it holds all N bytes.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from sandbox.cluster.pods.containers import Run, start_run
from sandbox.cluster.pods.memory import (
    MemoryCgroups,
    memory_controller_unavailable,
    memory_limit_bytes,
    oom_kills,
    own_memory_cgroup,
)
from tests.cluster.pod_helpers import (
    POD_TIMEOUT_S,
    delete_pod,
    make_pod,
    shell_container,
    wait_for_log,
    wait_pod,
)

LIMIT_BYTES = 64 * 2**20
# No limit written: the v1 controller's "unlimited" (PAGE_COUNTER_MAX pages, 4 KiB pages).
UNLIMITED_BYTES = 9223372036854771712
HOG = "head -c 300m /dev/zero | tail"
UNAVAILABLE = memory_controller_unavailable()
needs_memory_cgroup = pytest.mark.skipif(
    bool(UNAVAILABLE), reason=f"memory cgroup unavailable: {UNAVAILABLE}"
)


def test_memory_limits_in_bytes_as_the_kubelet_reads_them() -> None:
    def limit(value: str) -> int | None:
        return memory_limit_bytes({"resources": {"limits": {"memory": value}}})

    assert limit("64Mi") == LIMIT_BYTES
    assert limit("1G") == 10**9
    assert limit("129e6") == 129 * 10**6
    # Quantity.Value() rounds a fraction of a byte up.
    assert limit("1500m") == 2
    assert memory_limit_bytes({"resources": {"limits": {"cpu": "1"}}}) is None
    assert memory_limit_bytes({"name": "bare"}) is None


def test_without_a_memory_controller_the_agent_says_so_once_and_sets_no_limits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/agent\n1:cpu:/\n")
    # The hierarchy's directory does not exist: nothing can be made under it.
    with caplog.at_level(logging.WARNING, logger="node-agent.memory"):
        memory = MemoryCgroups.open(proc, tmp_path / "no-memory-hierarchy")
    assert memory.create("uid", "main-0", LIMIT_BYTES) is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert warnings[0].startswith("memory limits are not enforced: cannot create a memory cgroup")
    proc.write_text("0::/\n")
    assert memory_controller_unavailable(proc).startswith("no cgroup v1 memory controller")


def _run_in(memory: MemoryCgroups, name: str, script: str, tmp_path: Path) -> Run:
    cgroup = memory.create("pod-uid", name, LIMIT_BYTES)
    assert cgroup is not None
    assert (cgroup.path / "memory.limit_in_bytes").read_text().strip() == str(LIMIT_BYTES)
    ended = threading.Event()
    run = start_run(
        enter=[],
        argv=["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin"},
        log=tmp_path / f"{name}.log",
        on_exit=ended.set,
        cgroup=cgroup,
    )
    assert ended.wait(POD_TIMEOUT_S), f"{script} still runs"
    assert not cgroup.path.exists(), "the run's cgroup outlived the run"
    return run


@needs_memory_cgroup
def test_a_run_over_its_limit_is_oom_killed_and_its_cgroups_removed(tmp_path: Path) -> None:
    memory = MemoryCgroups.open()
    assert memory.base is not None
    try:
        # A child is the kernel's victim: the shell reports it as 128 + SIGKILL.
        child = _run_in(memory, "child-0", HOG, tmp_path)
        assert (child.oom_killed, child.exit_code) == (True, 128 + signal.SIGKILL)
        # PID 1 itself is the victim (unshare then exits 1 on util-linux 2.38): still 137.
        pid1 = _run_in(memory, "pid1-0", "exec tail /dev/zero", tmp_path)
        assert (pid1.oom_killed, pid1.exit_code) == (True, 128 + signal.SIGKILL)
        calm = _run_in(memory, "calm-0", "head -c 8m /dev/zero | tail | wc -c", tmp_path)
        assert (calm.oom_killed, calm.exit_code) == (False, 0)
        assert calm.log.read_text().split() == [str(8 * 2**20)]
    finally:
        memory.close()
    assert not memory.base.exists()


@needs_memory_cgroup
def test_a_killed_agents_cgroups_are_removed_by_the_next(tmp_path: Path) -> None:
    own = own_memory_cgroup(Path("/proc/self/cgroup").read_text())
    assert own is not None
    # Above any pid_max: no process has this pid.
    stale = own / "llm-rollout-99999999"
    (stale / "pod-uid" / "main-0").mkdir(parents=True)
    memory = MemoryCgroups.open()
    try:
        assert not stale.exists()
        assert memory.base is not None and memory.base.is_dir()
    finally:
        memory.close()


# --- on the real cluster ------------------------------------------------------------------------


def _cgroup_of(core: k8s.CoreV1Api, namespace: str, pod: str, container: str) -> Path:
    """The container's memory cgroup, as the container's own /proc/self/cgroup names it (the
    script prints it first)."""
    lines = wait_for_log(core, namespace, pod, container, "cg=")
    line = next(ln for ln in lines if ln.startswith("cg="))
    path = next(p for p in line.removeprefix("cg=").split() if ":memory:" in p)
    return Path("/sys/fs/cgroup/memory") / path.split(":", 2)[2].lstrip("/")


def _status(pod: k8s.V1Pod, name: str) -> Any:
    return next(s for s in pod.status.container_statuses or [] if s.name == name)


@needs_memory_cgroup
def test_a_container_over_its_memory_limit_is_oom_killed_and_restarted(
    admin: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(admin)
    show = "echo cg=$(cat /proc/self/cgroup); "
    limits = {"limits": {"memory": "64Mi"}}
    pod = make_pod(
        "oom",
        [
            shell_container("hog", f"{show}echo filling; {HOG}", resources=limits),
            shell_container(
                "calm",
                f"{show}head -c 16m /dev/zero | tail | wc -c; exec sleep 3600",
                resources=limits,
            ),
            shell_container("free", f"{show}exec sleep 3600"),
        ],
    )
    core.create_namespaced_pod(namespace, pod)

    def hog_restarted(found: k8s.V1Pod) -> bool:
        hog = _status(found, "hog") if found.status.container_statuses else None
        return hog is not None and hog.restart_count >= 2

    seen = wait_pod(admin, namespace, "oom", "hog OOMKilled and restarted twice", hog_restarted)
    hog = _status(seen, "hog")
    last = hog.last_state.terminated
    assert (last.reason, last.exit_code) == ("OOMKilled", 137)
    # An OOM kill is one more exit: restarted with the back-off, announced as for any crash.
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=oom").items
    assert any(
        e.reason == "BackOff" and e.message.startswith("Back-off restarting failed container hog")
        for e in events
    )
    previous = core.read_namespaced_pod_log("oom", namespace, container="hog", previous=True)
    assert "filling" in previous.splitlines()

    calm, free = _status(seen, "calm"), _status(seen, "free")
    assert (calm.restart_count, free.restart_count) == (0, 0)
    assert calm.state.running is not None and free.state.running is not None
    calm_cgroup = _cgroup_of(core, namespace, "oom", "calm")
    assert str(16 * 2**20) in core.read_namespaced_pod_log("oom", namespace, container="calm")
    assert int((calm_cgroup / "memory.limit_in_bytes").read_text()) == LIMIT_BYTES
    # Its 16 MiB were charged to its cgroup, and nothing was killed there.
    assert int((calm_cgroup / "memory.max_usage_in_bytes").read_text()) >= 16 * 2**20
    assert oom_kills(calm_cgroup) == 0
    free_cgroup = _cgroup_of(core, namespace, "oom", "free")
    assert int((free_cgroup / "memory.limit_in_bytes").read_text()) == UNLIMITED_BYTES
    # One cgroup per run: the hog's earlier runs' are gone, the pod holds the live ones.
    pod_cgroup = calm_cgroup.parent
    assert free_cgroup.parent == pod_cgroup
    assert {"hog-0", "hog-1"}.isdisjoint(p.name for p in pod_cgroup.iterdir())

    delete_pod(admin, namespace, "oom")
    assert not pod_cgroup.exists(), "the pod's memory cgroups outlived it"
