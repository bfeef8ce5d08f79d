"""What the kubelet gives a container beyond its spec, and how it orders and streams it, on the
real cluster: the Services' variables (pkg/kubelet/kubelet_pods.go getServiceEnvVarMap,
pkg/kubelet/envvars/envvars.go), ``resourceFieldRef`` (kubelet_pods.go
containerResourceRuntimeValue, kubelet_resources.go defaultPodLimitsForDownwardAPI), sidecar
init containers (pkg/kubelet/kuberuntime/kuberuntime_container.go
computeInitContainerActions) and followed logs (k8s.io/cri-client pkg/logs/logs.go ReadLogs);
k8s.io/kubernetes v1.36.3. Read back only through the API server."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

from kubernetes import client as k8s
from kubernetes.utils import parse_quantity

from tests.cluster.pod_helpers import (
    POD_TIMEOUT_S,
    is_ready,
    make_pod,
    shell_container,
    wait_for_log,
    wait_pod,
)

# A Service named as an engine's own variables are: vLLM reads VLLM_PORT as an integer and
# refuses the Docker-link URL the kubelet puts there ("VLLM_PORT 'tcp://...' appears to be a
# URI", vllm-project/vllm vllm/envs.py get_vllm_port).
ENGINE_NAMED = "vllm"


def _started(pod: k8s.V1Pod) -> bool:
    statuses = pod.status.container_statuses or []
    return bool(statuses) and (statuses[0].state.running or statuses[0].state.terminated)


def _env_lines(admin: k8s.ApiClient, namespace: str, pod: str) -> dict[str, str]:
    """The ``NAME=value`` lines container ``main`` of ``pod`` printed before ``END``."""
    wait_pod(admin, namespace, pod, "main started", _started)
    lines = wait_for_log(k8s.CoreV1Api(admin), namespace, pod, "main", "END")
    assert lines[-1] == "END", lines
    return dict(line.split("=", 1) for line in lines[:-1])


def test_services_become_variables_unless_links_are_off(
    admin: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(admin)
    ports = [
        {"name": "http", "port": 8000, "targetPort": 8000},
        {"name": "metrics", "port": 9090, "protocol": "TCP"},
    ]
    engine = core.create_namespaced_service(
        namespace,
        {"metadata": {"name": ENGINE_NAMED}, "spec": {"selector": {"app": "x"}, "ports": ports}},
    )
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "group-headless"},
            "spec": {"clusterIP": "None", "selector": {"app": "x"}, "ports": ports[:1]},
        },
    )
    api_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    ip = engine.spec.cluster_ip
    script = "env | grep -E '^(VLLM|GROUP_HEADLESS|KUBERNETES|JOINED)' ; echo END"
    for name, links in (("links", True), ("nolinks", False)):
        container = shell_container(
            "main",
            script,
            # $(VAR) in a value sees the Services' variables (MappingFuncFor(tmpEnv, serviceEnv)).
            env=[{"name": "JOINED", "value": "$(VLLM_SERVICE_HOST):$(VLLM_SERVICE_PORT)"}],
        )
        pod = make_pod(name, [container], restartPolicy="Never", enableServiceLinks=links)
        core.create_namespaced_pod(namespace, pod)
    with_links = _env_lines(admin, namespace, "links")
    assert {k: v for k, v in with_links.items() if k.startswith("VLLM")} == {
        "VLLM_SERVICE_HOST": ip,
        "VLLM_SERVICE_PORT": "8000",
        "VLLM_SERVICE_PORT_HTTP": "8000",
        "VLLM_SERVICE_PORT_METRICS": "9090",
        "VLLM_PORT": f"tcp://{ip}:8000",
        "VLLM_PORT_8000_TCP": f"tcp://{ip}:8000",
        "VLLM_PORT_8000_TCP_PROTO": "tcp",
        "VLLM_PORT_8000_TCP_PORT": "8000",
        "VLLM_PORT_8000_TCP_ADDR": ip,
        "VLLM_PORT_9090_TCP": f"tcp://{ip}:9090",
        "VLLM_PORT_9090_TCP_PROTO": "tcp",
        "VLLM_PORT_9090_TCP_PORT": "9090",
        "VLLM_PORT_9090_TCP_ADDR": ip,
    }
    assert with_links["JOINED"] == f"{ip}:8000"
    assert not any(k.startswith("GROUP_HEADLESS") for k in with_links)
    without = _env_lines(admin, namespace, "nolinks")
    assert not any(k.startswith("VLLM") for k in without)
    assert without["JOINED"] == "$(VLLM_SERVICE_HOST):$(VLLM_SERVICE_PORT)"
    # The API server's own Service reaches every pod, links or not.
    for seen in (with_links, without):
        assert seen["KUBERNETES_SERVICE_HOST"] == api_ip
        assert seen["KUBERNETES_SERVICE_PORT"] == "443"
        assert seen["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
        assert seen["KUBERNETES_PORT_443_TCP"] == f"tcp://{api_ip}:443"


def test_resource_field_refs_with_divisors_and_the_nodes_allocatable(
    admin: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(admin)

    def ref(name: str, resource: str, divisor: str, container: str = "") -> dict[str, object]:
        field: dict[str, str] = {"resource": resource, "divisor": divisor}
        if container:
            field["containerName"] = container
        return {"name": name, "valueFrom": {"resourceFieldRef": field}}

    env = [
        ref("CPU_LIMIT", "limits.cpu", "1"),
        ref("CPU_LIMIT_M", "limits.cpu", "1m"),
        ref("MEM_LIMIT_MI", "limits.memory", "1Mi"),
        ref("CPU_REQUEST_M", "requests.cpu", "1m"),
        # No request set: the API server defaults it to the limit.
        ref("MEM_REQUEST", "requests.memory", "1"),
        ref("OTHER_CPU", "limits.cpu", "1", container="bare"),
        ref("OTHER_MEM_GI", "limits.memory", "1Gi", container="bare"),
    ]
    script = "env | grep -E '^(CPU|MEM|OTHER)_' ; echo END; exec sleep 3600"
    resources = {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}}
    pod = make_pod(
        "resources",
        [
            shell_container("main", script, env=env, resources=resources),
            shell_container("bare", "exec sleep 3600"),
        ],
    )
    core.create_namespaced_pod(namespace, pod)
    seen = _env_lines(admin, namespace, "resources")
    node_name = core.read_namespaced_pod("resources", namespace).spec.node_name
    allocatable = core.read_node(node_name).status.allocatable
    assert seen == {
        # 500m over 1 rounds up.
        "CPU_LIMIT": "1",
        "CPU_LIMIT_M": "500",
        "MEM_LIMIT_MI": "64",
        "CPU_REQUEST_M": "250",
        "MEM_REQUEST": str(64 * 2**20),
        # A container without limits gets the node's allocatable (MergeContainerResourceLimits).
        "OTHER_CPU": str(math.ceil(parse_quantity(allocatable["cpu"]))),
        "OTHER_MEM_GI": str(math.ceil(parse_quantity(allocatable["memory"]) / 2**30)),
    }


def test_a_sidecar_starts_before_the_next_init_container_and_keeps_restarting(
    admin: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(admin)
    shared = {"name": "shared", "mountPath": "/shared"}
    # First run: ready after a moment, then exits 3 once the main container has started;
    # the next run stays. The pod's restartPolicy is Never: the sidecar restarts anyway.
    side = shell_container(
        "side",
        "if [ -f /shared/go ]; then echo second-run; exec sleep 3600; fi; echo first-run; "
        "sleep 1; touch /shared/ready; while [ ! -f /shared/go ]; do sleep 0.1; done; exit 3",
        restartPolicy="Always",
        volumeMounts=[shared],
        startupProbe={
            "exec": {"command": ["test", "-f", "/shared/ready"]},
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
    )
    # Fails (and, under Never, fails the pod) unless the sidecar had started before it.
    after = shell_container(
        "after", "test -f /shared/ready && echo saw-sidecar", volumeMounts=[shared]
    )
    main = shell_container("main", "touch /shared/go; exec sleep 3600", volumeMounts=[shared])
    pod = make_pod(
        "sidecar",
        [main],
        initContainers=[side, after],
        restartPolicy="Never",
        volumes=[{"name": "shared", "emptyDir": {}}],
    )
    core.create_namespaced_pod(namespace, pod)

    def restarted_and_ready(found: k8s.V1Pod) -> bool:
        statuses = found.status.init_container_statuses or []
        return is_ready(found) and bool(statuses) and statuses[0].restart_count == 1

    ready = wait_pod(
        admin, namespace, "sidecar", "Ready with the sidecar restarted", restarted_and_ready
    )
    side_status, after_status = ready.status.init_container_statuses
    assert ready.status.phase == "Running"
    assert side_status.state.running is not None
    assert side_status.started is True and side_status.ready is True
    assert side_status.last_state.terminated.exit_code == 3
    assert after_status.state.terminated.exit_code == 0
    assert core.read_namespaced_pod_log("sidecar", namespace, container="after") == (
        "saw-sidecar\n"
    )
    previous = core.read_namespaced_pod_log("sidecar", namespace, container="side", previous=True)
    assert previous == "first-run\n"
    assert wait_for_log(core, namespace, "sidecar", "side", "second-run") == ["second-run"]
    conditions = {c.type: c.status for c in ready.status.conditions}
    assert conditions["Initialized"] == "True" and conditions["ContainersReady"] == "True"


def test_follow_streams_the_log_until_the_container_ends(
    admin: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = k8s.CoreV1Api(admin)
    gate = tmp_path / f"gate-{uuid.uuid4().hex[:8]}"
    script = f"echo one; while [ ! -f {gate} ]; do sleep 0.1; done; echo two"
    pod = make_pod("follow", [shell_container("main", script)], restartPolicy="Never")
    core.create_namespaced_pod(namespace, pod)
    wait_pod(admin, namespace, "follow", "running", lambda p: p.status.phase == "Running")
    stream = core.read_namespaced_pod_log(
        "follow",
        namespace,
        container="main",
        follow=True,
        _preload_content=False,
        _request_timeout=POD_TIMEOUT_S,
    )
    received = b""
    try:
        # "one" comes while the container still waits at its gate: streamed, not read at
        # its end.
        while b"one\n" not in received:
            chunk = stream.read1(1024)
            assert chunk, f"stream ended after {received!r}"
            received += chunk
        gate.touch()
        # The stream ends by itself once the container has ended.
        while chunk := stream.read1(1024):
            received += chunk
    finally:
        stream.release_conn()
    assert received == b"one\ntwo\n"
    wait_pod(admin, namespace, "follow", "Succeeded", lambda p: p.status.phase == "Succeeded")


def test_a_pods_end_stops_its_sidecar_for_good(admin: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(admin)
    # sleep as PID 1 has no SIGTERM handler: the sidecar goes at the end of its grace.
    side = shell_container("side", "exec sleep 3600", restartPolicy="Always")
    pod = make_pod(
        "ends",
        [shell_container("main", "echo done")],
        initContainers=[side],
        restartPolicy="Never",
    )
    core.create_namespaced_pod(namespace, pod)
    done = wait_pod(admin, namespace, "ends", "Succeeded", lambda p: p.status.phase == "Succeeded")
    (side_status,) = done.status.init_container_statuses
    assert side_status.state.terminated.exit_code == 137
    assert side_status.restart_count == 0
    assert done.status.container_statuses[0].state.terminated.exit_code == 0
    killing = [
        e.involved_object.field_path
        for e in core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=ends"
        ).items
        if e.reason == "Killing"
    ]
    assert killing == ["spec.initContainers{side}"]
