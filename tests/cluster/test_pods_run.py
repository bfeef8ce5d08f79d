"""Pods bound by the real kube-scheduler run on the node agent: their real command lines in
sandboxes of their own, restarts, probes and logs as the kubelet does them, read back only
through the API server (its log endpoint proxies to the node agent's kubelet endpoint)."""

from __future__ import annotations

import base64
import ipaddress
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.stream import portforward, stream

from sandbox.cluster.control_plane import Cluster, ClusterConfig
from sandbox.cluster.node_agent import NodeSpec
from sandbox.cluster.pods.sandbox import veth_name
from sandbox.cluster.waits import wait_for
from tests.cluster.pod_helpers import (
    POD_TIMEOUT_S,
    SHELL_IMAGE,
    alive,
    delete_pod,
    interfaces,
    is_ready,
    make_pod,
    marked_processes,
    shell_container,
    wait_for_log,
    wait_pod,
    wait_unhealthy,
)


def _events(admin: k8s.ApiClient, namespace: str, name: str) -> list[k8s.CoreV1Event]:
    return list(
        k8s.CoreV1Api(admin)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        .items
    )


def test_a_deployments_pod_runs_its_real_command_in_its_own_sandbox(
    cluster: Cluster,
    admin: k8s.ApiClient,
    namespace: str,
    gpu_nodes: tuple[NodeSpec, ...],
) -> None:
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "creds"}, "data": {"token": base64.b64encode(b"t0k").decode()}},
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cfg"}, "data": {"mode": "fast"}}
    )
    script = (
        # $(hostname) names no variable, so the kubelet leaves it for the shell.
        "echo host=$(hostname); echo ip=$(hostname -i); echo pwd=$(pwd); "
        "echo greeting=$(GREETING); echo node=$NODE app=$APP pod_ip=$POD_IP; "
        "echo secret=$TOKEN mode=$MODE; echo 'literal=$$(GREETING)'; exec sleep 3600"
    )
    container = shell_container(
        "main",
        script,
        workingDir="/usr",
        env=[
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GREETING", "value": "hello-$(POD_NAME)"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        ],
    )
    template = make_pod("web", [container])
    created = time.monotonic()
    k8s.AppsV1Api(admin).create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template,
            },
        },
    )
    (pod,) = wait_for(
        core.list_namespaced_pod,
        lambda items: len(items) == 1 and is_ready(items[0]),
        namespace=namespace,
        label_selector="app=web",
        timeout_s=POD_TIMEOUT_S,
        what="the Deployment's pod Ready",
    )
    print(f"POD_READY_S {time.monotonic() - created:.2f} (Deployment created -> pod Ready)")
    name = pod.metadata.name
    node = {n.name: n for n in gpu_nodes}[pod.spec.node_name]
    # The node agent wrote the status with the node's identity, as the kubelet does.
    assert pod.status.host_ip == node.internal_ip
    pod_cidr = core.read_node(node.name).spec.pod_cidr
    assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(pod_cidr)
    assert [p.ip for p in pod.status.pod_ips] == [pod.status.pod_ip]
    assert pod.status.phase == "Running"
    (status,) = pod.status.container_statuses
    assert status.ready and status.started and status.state.running is not None
    # The status is the node agent's write, under the node's own identity (its merge patch
    # replaces the conditions list, PodScheduled included, so it owns them all).
    status_writers = {
        m.manager for m in pod.metadata.managed_fields or [] if m.subresource == "status"
    }
    assert status_writers == {"llm-rollout-node-agent"}
    kinds = {c.type: c.status for c in pod.status.conditions}
    assert kinds == {
        "PodScheduled": "True",
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    lines = wait_for_log(core, namespace, name, "main", "literal=")
    assert f"host={name}" in lines
    assert f"ip={pod.status.pod_ip}" in lines
    assert "pwd=/usr" in lines
    assert f"greeting=hello-{name}" in lines
    assert f"node={node.name} app=web pod_ip={pod.status.pod_ip}" in lines
    assert "secret=t0k mode=fast" in lines
    assert "literal=$(GREETING)" in lines
    assert core.read_namespaced_pod_log(name, namespace, container="main", tail_lines=1) == (
        "literal=$(GREETING)\n"
    )


def test_two_pods_bind_the_same_port_and_reach_each_other(
    admin: k8s.ApiClient, namespace: str
) -> None:
    # busybox would serve with its httpd applet; the host has no such applet, so this test
    # names the host's python3 by absolute path (host_argv keeps absolute paths). What it
    # checks is the sandbox: two listeners on 0.0.0.0:8000, each pod reached at its own IP.
    server = {
        "name": "http",
        "image": SHELL_IMAGE,
        "command": ["/usr/bin/python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"],
        "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
    }
    core = k8s.CoreV1Api(admin)
    for name in ("one", "two"):
        core.create_namespaced_pod(namespace, make_pod(name, [dict(server)]))
    one = wait_pod(admin, namespace, "one", "Ready", is_ready)
    two = wait_pod(admin, namespace, "two", "Ready", is_ready)
    assert one.status.pod_ip != two.status.pod_ip
    # From inside pod one, pod two's server answers on its own IP.
    core.create_namespaced_pod(
        namespace,
        make_pod(
            "client",
            [
                {
                    "name": "get",
                    "image": SHELL_IMAGE,
                    "command": [
                        "/usr/bin/python3",
                        "-c",
                        "import urllib.request,sys;"
                        f"print('status', urllib.request.urlopen('http://{two.status.pod_ip}:8000/',"
                        "timeout=5).status)",
                    ],
                }
            ],
            restartPolicy="Never",
        ),
    )
    done = wait_pod(
        admin, namespace, "client", "Succeeded", lambda p: p.status.phase == "Succeeded"
    )
    assert done.status.container_statuses[0].state.terminated.reason == "Completed"
    assert core.read_namespaced_pod_log("client", namespace) == "status 200\n"


def test_a_pod_has_no_way_out_of_the_harness_namespace(
    admin: k8s.ApiClient, namespace: str
) -> None:
    # The pod's default route leads to the harness namespace, which has none: traffic to an
    # outside address goes nowhere (no uplink, scripts/in-netns).
    probe = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 80), timeout=3)\n"
        "    print('reached')\n"
        "except OSError as exc:\n"
        "    print('unreachable', type(exc).__name__)\n"
    )
    container = {
        "name": "out",
        "image": SHELL_IMAGE,
        "command": ["/usr/bin/python3", "-c", probe],
    }
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, make_pod("outbound", [container], restartPolicy="Never"))
    wait_pod(admin, namespace, "outbound", "Succeeded", lambda p: p.status.phase == "Succeeded")
    assert core.read_namespaced_pod_log("outbound", namespace).startswith("unreachable ")


# The client offers v5 first by default; the API server translates v5 streams to SPDY for the
# kubelet (subresources.go), which this node does not speak, and proxies v4 as it is.
V4_ONLY = {"sec-websocket-protocol": "v4.channel.k8s.io"}


def _exec(core: k8s.CoreV1Api, namespace: str, script: str, *, preload: bool = True) -> Any:
    """``sh -c script`` in pod ``shell``'s container, through the API server's exec."""
    return stream(
        core.connect_get_namespaced_pod_exec,
        "shell",
        namespace,
        container="main",
        command=["sh", "-c", script],
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
        _headers=V4_ONLY,
        _preload_content=preload,
    )


def test_exec_through_the_api_server_runs_in_the_pod(admin: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(admin)
    container = shell_container(
        "main", "exec sleep 3600", env=[{"name": "GREETING", "value": "hi"}], workingDir="/usr"
    )
    core.create_namespaced_pod(namespace, make_pod("shell", [container]))
    running = wait_pod(admin, namespace, "shell", "Ready", is_ready)
    output = _exec(core, namespace, "echo $GREETING $(hostname) $(hostname -i) $(pwd)")
    assert output == f"hi shell {running.status.pod_ip} /usr\n"
    failing = _exec(core, namespace, "echo oops >&2; exit 3", preload=False)
    failing.run_forever(timeout=POD_TIMEOUT_S)
    assert failing.read_stderr() == "oops\n"
    assert failing.returncode == 3


PROBE_7000 = "import socket; socket.create_connection(('127.0.0.1', 7000), 1)"
ECHO_SERVER = (
    "import socket\n"
    "server = socket.create_server(('127.0.0.1', 7000))\n"
    "while True:\n"
    "    conn, _ = server.accept()\n"
    "    while data := conn.recv(1024):\n"
    "        conn.sendall(b'echo:' + data)\n"
    "    conn.close()\n"
)


def test_port_forward_through_the_api_server_reaches_the_pods_loopback(
    admin: k8s.ApiClient, namespace: str
) -> None:
    # The server listens on the pod's 127.0.0.1 only: reachable by port-forward, which dials
    # inside the pod's network namespace, and by nothing outside it.
    server = {
        "name": "echo",
        "image": SHELL_IMAGE,
        "command": ["/usr/bin/python3", "-c", ECHO_SERVER],
        "readinessProbe": {
            "exec": {"command": ["/usr/bin/python3", "-c", PROBE_7000]},
            "periodSeconds": 1,
        },
    }
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, make_pod("echo", [server]))
    wait_pod(admin, namespace, "echo", "Ready", is_ready)
    forward = portforward(
        core.connect_get_namespaced_pod_portforward, "echo", namespace, ports="7000"
    )
    conn = forward.socket(7000)
    conn.settimeout(POD_TIMEOUT_S)
    try:
        conn.sendall(b"ping")
        received = b""
        while len(received) < len(b"echo:ping"):
            chunk = conn.recv(1024)
            assert chunk, f"stream closed after {received!r}"
            received += chunk
        assert received == b"echo:ping"
    finally:
        conn.close()
        forward.close()


def test_init_containers_run_first_and_complete(admin: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(admin)
    pod = make_pod(
        "inits",
        [shell_container("main", "echo main-started; exec sleep 3600")],
        initContainers=[
            shell_container("first", "echo first-done"),
            shell_container("second", "echo second-done"),
        ],
    )
    core.create_namespaced_pod(namespace, pod)
    ready = wait_pod(admin, namespace, "inits", "Ready", is_ready)
    first, second = ready.status.init_container_statuses
    main = ready.status.container_statuses[0]
    for init in (first, second):
        assert init.state.terminated.exit_code == 0
        assert init.state.terminated.reason == "Completed"
    # Each started after the one before it finished (the API's times are whole seconds).
    assert first.state.terminated.finished_at <= second.state.terminated.started_at
    assert second.state.terminated.finished_at <= main.state.running.started_at
    assert core.read_namespaced_pod_log("inits", namespace, container="first") == "first-done\n"
    assert core.read_namespaced_pod_log("inits", namespace, container="second") == "second-done\n"
    assert wait_for_log(core, namespace, "inits", "main", "main-started") == ["main-started"]
    started = {
        e.involved_object.field_path
        for e in _events(admin, namespace, "inits")
        if e.reason == "Started"
    }
    assert started == {
        "spec.initContainers{first}",
        "spec.initContainers{second}",
        "spec.containers{main}",
    }


def test_an_init_container_still_running_holds_the_pod_initializing(
    admin: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    pod = make_pod(
        "held",
        [shell_container("main", "exec sleep 3600")],
        initContainers=[shell_container("wait", f"until [ -e {gate} ]; do sleep 0.2; done")],
    )
    k8s.CoreV1Api(admin).create_namespaced_pod(namespace, pod)
    held = wait_pod(
        admin,
        namespace,
        "held",
        "init container running",
        lambda p: (
            p.status.init_container_statuses
            and p.status.init_container_statuses[0].state.running is not None
        ),
    )
    assert held.status.phase == "Pending"
    assert held.status.container_statuses[0].state.waiting.reason == "PodInitializing"
    initialized = {c.type: c for c in held.status.conditions}["Initialized"]
    assert initialized.status == "False"
    assert initialized.reason == "ContainersNotInitialized"
    gate.touch()
    wait_pod(admin, namespace, "held", "Ready", is_ready)


def test_a_failing_container_crash_loops_with_its_previous_log(
    admin: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_pod(
        namespace, make_pod("crash", [shell_container("main", "echo attempt; exit 1")])
    )
    looping = wait_pod(
        admin,
        namespace,
        "crash",
        "CrashLoopBackOff after a restart",
        lambda p: (
            p.status.container_statuses
            and p.status.container_statuses[0].state.waiting is not None
            and p.status.container_statuses[0].state.waiting.reason == "CrashLoopBackOff"
            and p.status.container_statuses[0].restart_count >= 1
        ),
    )
    status = looping.status.container_statuses[0]
    assert status.last_state.terminated.exit_code == 1
    assert status.last_state.terminated.reason == "Error"
    assert status.ready is False
    assert status.state.waiting.message.startswith("back-off ")
    assert (
        f"restarting failed container=main pod=crash_{namespace}(" in status.state.waiting.message
    )
    assert looping.status.phase == "Running"
    assert core.read_namespaced_pod_log("crash", namespace, previous=True) == "attempt\n"
    backoffs = [e for e in _events(admin, namespace, "crash") if e.reason == "BackOff"]
    assert backoffs and backoffs[0].message.startswith(
        "Back-off restarting failed container main in pod crash_"
    )


def test_readiness_probe_holds_ready_false_until_it_passes(
    admin: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    flag = tmp_path / "ready"
    container = shell_container(
        "main",
        "exec sleep 3600",
        readinessProbe={"exec": {"command": ["cat", str(flag)]}, "periodSeconds": 1},
    )
    k8s.CoreV1Api(admin).create_namespaced_pod(namespace, make_pod("gated", [container]))
    wait_unhealthy(admin, namespace, "gated", "Readiness probe failed: ")
    unready = wait_pod(admin, namespace, "gated", "Running", lambda p: p.status.phase == "Running")
    assert not is_ready(unready)
    assert unready.status.container_statuses[0].ready is False
    assert unready.status.container_statuses[0].started is True
    ready_condition = {c.type: c for c in unready.status.conditions}["Ready"]
    assert ready_condition.reason == "ContainersNotReady"
    assert ready_condition.message == "containers with unready status: [main]"
    flag.write_text("ok")
    ready = wait_pod(admin, namespace, "gated", "Ready", is_ready)
    assert ready.status.container_statuses[0].ready is True
    assert ready.status.container_statuses[0].restart_count == 0


def test_liveness_failure_kills_and_restarts_the_container(
    admin: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    container = shell_container(
        "main",
        "echo up; exec sleep 3600",
        livenessProbe={
            "exec": {"command": ["cat", str(tmp_path / "never")]},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
    )
    k8s.CoreV1Api(admin).create_namespaced_pod(namespace, make_pod("unlive", [container]))
    restarted = wait_pod(
        admin,
        namespace,
        "unlive",
        "restarted",
        lambda p: p.status.container_statuses and p.status.container_statuses[0].restart_count >= 1,
    )
    last = restarted.status.container_statuses[0].last_state.terminated
    # sh ignores SIGTERM as PID 1: the grace period ends in SIGKILL, 128 + 9.
    assert last.exit_code == 137
    events = _events(admin, namespace, "unlive")
    assert any(
        e.reason == "Killing"
        and e.message == "Container main failed liveness probe, will be restarted"
        for e in events
    )
    assert any(
        e.reason == "Unhealthy" and e.message.startswith("Liveness probe failed: ") for e in events
    )


def test_an_image_without_a_runtime_fails_to_pull(admin: k8s.ApiClient, namespace: str) -> None:
    image = "registry.example.invalid/nothing:1"
    pod = make_pod("nopull", [{"name": "main", "image": image}])
    k8s.CoreV1Api(admin).create_namespaced_pod(namespace, pod)
    seen: set[str] = set()

    def reasons(p: k8s.V1Pod) -> bool:
        for status in p.status.container_statuses or []:
            if status.state.waiting is not None:
                seen.add(status.state.waiting.reason)
        return {"ErrImagePull", "ImagePullBackOff"} <= seen

    stuck = wait_pod(admin, namespace, "nopull", "ErrImagePull then ImagePullBackOff", reasons)
    assert stuck.status.phase == "Pending"
    events = _events(admin, namespace, "nopull")
    failed = [e.message for e in events if e.reason == "Failed"]
    assert any(m.startswith(f'Failed to pull image "{image}": ') for m in failed)
    assert "Error: ErrImagePull" in failed
    assert any(
        e.reason == "BackOff" and e.message == f'Back-off pulling image "{image}"' for e in events
    )


def test_deleting_a_pod_stops_its_processes_and_sandbox(
    admin: k8s.ApiClient, namespace: str
) -> None:
    marker = uuid.uuid4().hex
    container = shell_container(
        "main", f"sleep 3600 & sleep 3600 # {marker}", env=[{"name": "MARKER", "value": marker}]
    )
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, make_pod("doomed", [container]))
    pod = wait_pod(admin, namespace, "doomed", "Ready", is_ready)
    # Running as soon as started: the shell forks its two sleeps a moment later.
    deadline = time.monotonic() + POD_TIMEOUT_S
    while True:
        marked = marked_processes(marker)
        sleeps = [p for p in marked if p.name() == "sleep"]
        if len(sleeps) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(sleeps) == 2
    veth = veth_name(pod.metadata.uid)
    # /proc/net/dev lists the interfaces of the reader's network namespace (/sys/class/net
    # shows the namespace sysfs was mounted in, the root one).
    assert veth in interfaces()
    delete_pod(admin, namespace, "doomed")
    assert not [p for p in marked if alive(p)]
    assert not marked_processes(marker)
    assert veth not in interfaces()
    assert any(e.reason == "Killing" for e in _events(admin, namespace, "doomed"))


def test_the_cluster_config_default_back_off_is_the_kubelets() -> None:
    assert ClusterConfig(nodes=()).container_backoff_base_s == 10.0
