"""What KubeRay adds to a RayCluster's pods and head Service, and what the plan must do about it.

Facts read from ray-project/kuberay (ray-operator, commit feeaf72fa; the same code is in the
v1.1.0 to v1.4.0 tags):

- `controllers/ray/common/service.go` `getServicePorts`: the head Service takes the head
  container's ports and adds `metrics: 8080` (`utils.DefaultMetricsPort`) whenever no port is
  named `metrics`; KubeRay's own default list (client 10001, gcs-server 6379, dashboard 8265,
  metrics 8080, serve 8000) is used only when the head container declares no port at all. A
  second 8080 in that Service is rejected by the API server (duplicate port), and KubeRay
  creates no pod after its head Service failed.
- `controllers/ray/common/pod.go` (`DefaultHeadPodTemplate` / `DefaultWorkerPodTemplate`):
  a `metrics` containerPort 8080 is appended to the Ray container (index 0) unless one named
  `metrics` exists; `rayStartParams["metrics-export-port"]` defaults to 8080.
- `controllers/ray/common/pod.go` `initLivenessAndReadinessProbe` (called from `BuildPod`
  unless the operator runs with `ENABLE_PROBES_INJECTION=false`): a Ray container without a
  liveness (readiness) probe gets one that wgets the dashboard agent on 52365
  (`DefaultDashboardAgentListenPort`). The vLLM image runs a minimal Ray whose agent serves no
  HTTP, so such a worker never becomes Ready and is killed after 30 s + 120 x 5 s. Declaring
  both probes ourselves is what makes KubeRay leave them alone.

Ray itself listens on the head on GCS 6379, dashboard 8265, Ray client 10001 and, on every
node, the dashboard agent 52365: a server port equal to one of those cannot bind.
"""

from __future__ import annotations

from typing import Any

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
DASHBOARD_AGENT_PORT = 52365
# KubeRay's `utils.DefaultMetricsPort`, added under the name `metrics` unless we name one.
KUBERAY_DEFAULT_METRICS_PORT = 8080
# Where Ray exports metrics when the server itself listens on KubeRay's default.
ALTERNATE_METRICS_PORT = 8081
METRICS_PORT_NAME = "metrics"

# Ports Ray binds in a node we also serve HTTP from; the server port must avoid them.
RAY_NODE_PORTS: dict[int, str] = {
    GCS_PORT: "Ray GCS",
    DASHBOARD_PORT: "Ray dashboard",
    CLIENT_PORT: "Ray client server",
    DASHBOARD_AGENT_PORT: "Ray dashboard agent",
}


def server_port_problem(port: int) -> str | None:
    """Why a server port cannot be used on a node that runs a Ray head, or None."""
    taken_by = RAY_NODE_PORTS.get(port)
    if taken_by is None:
        return None
    return (
        f"{port} is the {taken_by} port on a Ray head node; pick another port "
        f"(not {', '.join(str(p) for p in sorted(RAY_NODE_PORTS))})"
    )


def metrics_port(server_port: int) -> int:
    """Ray's metrics export port: KubeRay's default unless the server already listens there.

    The port is always declared under the name `metrics`, so KubeRay adds no `metrics: 8080`
    of its own to the head Service or the containers.
    """
    if server_port == KUBERAY_DEFAULT_METRICS_PORT:
        return ALTERNATE_METRICS_PORT
    return KUBERAY_DEFAULT_METRICS_PORT


def raylet_probe_command() -> list[str]:
    """Exec probe of a Ray worker: a process named `raylet` runs in the container.

    `ray start --address ... --block` joins the cluster before it starts the raylet and exits
    when one of its processes dies, so a running raylet means "joined and alive". Plain bash
    over /proc: the engine image may lack procps, wget and the dashboard agent.
    """
    script = (
        "for f in /proc/[0-9]*/comm; do "
        'read -r n 2>/dev/null < "$f" && [ "$n" = raylet ] && exit 0; '
        "done; exit 1"
    )
    return ["bash", "-c", script]


def worker_probes(
    *, period_s: int, timeout_s: int, failure_threshold: int, startup_budget_s: int
) -> dict[str, Any]:
    """Startup, readiness and liveness probes of a Ray worker container (see module docstring)."""
    handler = {"exec": {"command": raylet_probe_command()}}
    startup_failures = -(-startup_budget_s // period_s)
    timing = {"periodSeconds": period_s, "timeoutSeconds": timeout_s}
    return {
        "startupProbe": {**handler, **timing, "failureThreshold": startup_failures},
        "readinessProbe": {**handler, **timing, "failureThreshold": failure_threshold},
        "livenessProbe": {**handler, **timing, "failureThreshold": failure_threshold},
    }
