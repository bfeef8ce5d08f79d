"""Pods of the tests' shell image and waits on them, shared by tests/cluster/test_pods_*.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
from kubernetes import client as k8s

from sandbox.cluster.waits import wait_for

SHELL_IMAGE = "docker.io/library/busybox:1.36"
# Bounds, not expectations: a pod is Ready in about a second on an idle machine.
POD_TIMEOUT_S = 60


def make_pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        # sh as a container's PID 1 ignores SIGTERM (no handler), as in a real container,
        # so every stop waits the grace period out: keep it short.
        "spec": {"terminationGracePeriodSeconds": 1, "containers": containers, **spec},
    }


def shell_container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": SHELL_IMAGE, "command": ["sh", "-c", script], **extra}


def wait_pod(admin: k8s.ApiClient, namespace: str, name: str, what: str, check: Any) -> k8s.V1Pod:
    (pod,) = wait_for(
        k8s.CoreV1Api(admin).list_namespaced_pod,
        lambda items: len(items) == 1 and bool(check(items[0])),
        namespace=namespace,
        field_selector=f"metadata.name={name}",
        timeout_s=POD_TIMEOUT_S,
        what=f"pod {name}: {what}",
    )
    return pod


def delete_pod(admin: k8s.ApiClient, namespace: str, name: str) -> None:
    """Delete the pod and wait until its node has stopped it and removed it from the API."""
    core = k8s.CoreV1Api(admin)
    core.delete_namespaced_pod(name, namespace)
    wait_for(
        core.list_namespaced_pod,
        lambda items: not items,
        namespace=namespace,
        field_selector=f"metadata.name={name}",
        timeout_s=POD_TIMEOUT_S,
        what=f"pod {name} deleted by its node",
    )


def is_ready(pod: k8s.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def wait_unhealthy(admin: k8s.ApiClient, namespace: str, name: str, prefix: str) -> list[str]:
    """Wait for an Unhealthy event of ``name`` starting with ``prefix``; return all such."""
    events = wait_for(
        k8s.CoreV1Api(admin).list_namespaced_event,
        lambda items: any(e.reason == "Unhealthy" and e.message.startswith(prefix) for e in items),
        namespace=namespace,
        field_selector=f"involvedObject.name={name}",
        timeout_s=POD_TIMEOUT_S,
        what=f"an Unhealthy event '{prefix}...' for {name}",
    )
    return [e.message for e in events if e.reason == "Unhealthy"]


def interfaces() -> set[str]:
    """The interfaces of this network namespace (/sys/class/net shows the root one's)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return {line.split(":")[0].strip() for line in lines}


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every process whose command line or ``MARKER`` variable carries ``marker``, with all
    their descendants (a container's ``nsenter``/``unshare`` keep its script in their argv)."""
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter():
        try:
            if (
                any(marker in arg for arg in process.cmdline())
                or process.environ().get("MARKER") == marker
            ):
                found[process.pid] = process
                found.update({child.pid: child for child in process.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return [p for p in found.values() if alive(p)]


def alive(process: psutil.Process) -> bool:
    """Running, and not a zombie its new parent (init) has yet to reap."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_log(
    core: k8s.CoreV1Api, namespace: str, name: str, container: str, last: str
) -> list[str]:
    """The container's log once a line starting with ``last`` is in it (the process writes
    after the status says Running; the log's content is only known once it has). Polled,
    within POD_TIMEOUT_S: a followed log (test_pods_kubelet_env.py) would hold a stream open
    for containers that never end."""
    deadline = time.monotonic() + POD_TIMEOUT_S
    while True:
        text = core.read_namespaced_pod_log(name, namespace, container=container)
        lines = text.splitlines()
        if any(line.startswith(last) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)
