"""Startup and HTTP probes, and a container whose configuration cannot be resolved, on the
node agent (probes as k8s.io/kubernetes pkg/kubelet/prober runs them)."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client as k8s

from tests.cluster.pod_helpers import (
    SHELL_IMAGE,
    is_ready,
    make_pod,
    shell_container,
    wait_pod,
    wait_unhealthy,
)


def test_liveness_and_readiness_wait_for_the_startup_probe(
    admin: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    gate = tmp_path / "started"
    container = shell_container(
        "main",
        "exec sleep 3600",
        startupProbe={
            "exec": {"command": ["cat", str(gate)]},
            "periodSeconds": 1,
            "failureThreshold": 600,
        },
        # Would fail at once if it ran: it must not until the startup probe passed.
        livenessProbe={"exec": {"command": ["cat", str(tmp_path / "never")]}, "periodSeconds": 1},
        readinessProbe={"exec": {"command": ["true"]}, "periodSeconds": 1},
    )
    k8s.CoreV1Api(admin).create_namespaced_pod(namespace, make_pod("slow", [container]))
    messages = wait_unhealthy(admin, namespace, "slow", "Startup probe failed: ")
    assert not [m for m in messages if not m.startswith("Startup probe failed: ")]
    pod = wait_pod(admin, namespace, "slow", "Running", lambda p: p.status.phase == "Running")
    status = pod.status.container_statuses[0]
    assert status.started is False and status.ready is False
    gate.write_text("up")
    # Started now, the liveness probe runs and fails, and the container is restarted.
    wait_unhealthy(admin, namespace, "slow", "Liveness probe failed: ")
    restarted = wait_pod(
        admin,
        namespace,
        "slow",
        "restarted by its liveness probe",
        lambda p: p.status.container_statuses[0].restart_count >= 1,
    )
    assert restarted.status.container_statuses[0].last_state.terminated is not None


def test_http_probes_judge_the_status_code(admin: k8s.ApiClient, namespace: str) -> None:
    # The host's python3 by absolute path serves HTTP (see test_two_pods_bind_the_same_port).
    container = {
        "name": "http",
        "image": SHELL_IMAGE,
        "command": ["/usr/bin/python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"],
        "ports": [{"name": "web", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "web"}, "periodSeconds": 1},
    }
    missing = dict(container, name="http")
    missing["readinessProbe"] = {"httpGet": {"path": "/missing", "port": 8080}, "periodSeconds": 1}
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, make_pod("found", [container]))
    core.create_namespaced_pod(namespace, make_pod("notfound", [missing]))
    wait_pod(admin, namespace, "found", "Ready", is_ready)
    # pkg/probe/http/http.go: 200 <= code < 400 succeeds; a 404 is this message.
    # Refused until the server listens, then the status code.
    messages = wait_unhealthy(
        admin, namespace, "notfound", "Readiness probe failed: HTTP probe failed with statuscode"
    )
    assert "Readiness probe failed: HTTP probe failed with statuscode: 404" in messages
    assert not is_ready(core.read_namespaced_pod("notfound", namespace))


def test_a_missing_secret_holds_the_container_in_create_container_config_error(
    admin: k8s.ApiClient, namespace: str
) -> None:
    container = shell_container(
        "main",
        "exec sleep 3600",
        env=[{"name": "T", "valueFrom": {"secretKeyRef": {"name": "later", "key": "t"}}}],
    )
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, make_pod("needs-secret", [container]))
    waiting = wait_pod(
        admin,
        namespace,
        "needs-secret",
        "CreateContainerConfigError",
        lambda p: (
            p.status.container_statuses
            and p.status.container_statuses[0].state.waiting is not None
            and p.status.container_statuses[0].state.waiting.reason == "CreateContainerConfigError"
        ),
    )
    assert waiting.status.container_statuses[0].state.waiting.message == 'secret "later" not found'
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "later"}, "stringData": {"t": "x"}}
    )
    wait_pod(admin, namespace, "needs-secret", "Ready once the Secret exists", is_ready)
