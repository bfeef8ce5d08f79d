"""The pod runner's parts that need no cluster: the kubelet endpoint's TLS and query handling,
the phase and conditions it reports (pkg/kubelet/kubelet_pods.go getPhase,
pkg/kubelet/status/generate.go), and Go's duration text in back-off messages."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.cluster.pki import ClusterPki, make_pki
from sandbox.cluster.pods import websocket
from sandbox.cluster.pods.runner import go_duration
from sandbox.cluster.pods.server import KubeletServer, exec_status
from sandbox.cluster.pods.status import (
    Conditions,
    ContainerRecord,
    Terminated,
    pod_conditions,
    pod_phase,
)

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPki:
    return make_pki(
        tmp_path_factory.mktemp("pki"), advertise_ip="10.244.255.254", service_ip="10.96.0.1"
    )


@pytest.fixture
def server(pki: ClusterPki, tmp_path: Path) -> Iterator[int]:
    log = tmp_path / "main.log"
    log.write_text("one\ntwo\nthree\n")

    def lookup(namespace: str, pod: str, container: str, previous: bool) -> Path | str | None:
        if (namespace, pod, container) != ("ns", "p", "main"):
            return None
        return 'previous terminated container "main" in pod "p" not found' if previous else log

    serving = pki.serving("kubelet-test", "system:node:test", server_ips=(HOST,))
    kubelet = KubeletServer(
        HOST,
        0,
        serving.cert,
        serving.key,
        pki.ca.cert,
        lookup,
        lambda ns, pod, container: None,
        lambda ns, pod: None,
    )
    kubelet.start()
    yield kubelet.port
    kubelet.stop()


def _get(pki: ClusterPki, port: int, path: str, *, with_cert: bool = True) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if with_cert:
        context.load_cert_chain(
            str(pki.apiserver_kubelet_client.cert), str(pki.apiserver_kubelet_client.key)
        )
    connection = http.client.HTTPSConnection(HOST, port, context=context, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_logs_with_tail_lines_previous_and_unknown_containers(pki: ClusterPki, server: int) -> None:
    assert _get(pki, server, "/containerLogs/ns/p/main") == (200, b"one\ntwo\nthree\n")
    assert _get(pki, server, "/containerLogs/ns/p/main?tailLines=2") == (200, b"two\nthree\n")
    status, body = _get(pki, server, "/containerLogs/ns/p/main?previous=true")
    assert status == 400 and b"previous terminated container" in body
    assert _get(pki, server, "/containerLogs/ns/p/other")[0] == 404
    # Not implemented, so refused rather than ignored.
    assert _get(pki, server, "/containerLogs/ns/p/main?sinceSeconds=5")[0] == 400
    # Followed, a log no running container writes is read to its end and the stream closes.
    assert _get(pki, server, "/containerLogs/ns/p/main?follow=true&tailLines=1") == (
        200,
        b"three\n",
    )
    assert _get(pki, server, "/containerLogs/ns/p/main?tailLines=x")[0] == 400
    # exec: only WebSocket clients of the v4 channel protocol.
    assert _get(pki, server, "/exec/ns/p/main?command=true")[0] == 400


def test_a_client_without_a_cluster_certificate_is_refused(pki: ClusterPki, server: int) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        _get(pki, server, "/containerLogs/ns/p/main", with_cert=False)
    # The refusal did not take the endpoint down.
    assert _get(pki, server, "/healthz") == (200, b"ok")


def _record(name: str, *, running: bool = False, exit_code: int | None = None) -> ContainerRecord:
    record = ContainerRecord(name=name, image="i", init=False)
    if running:
        record.running_since = "t"
        record.waiting_reason = None
    if exit_code is not None:
        record.terminated = Terminated(exit_code, "t0", "t1", "id")
    return record


def test_phase_follows_get_phase() -> None:
    done, failed = _record("a", exit_code=0), _record("b", exit_code=1)
    assert pod_phase([], [_record("a")], "Always") == "Pending"
    assert pod_phase([], [_record("a", running=True)], "Always") == "Running"
    assert pod_phase([], [done], "Never") == "Succeeded"
    assert pod_phase([], [done, failed], "Never") == "Failed"
    init = ContainerRecord(name="i", image="i", init=True)
    assert pod_phase([init], [_record("a")], "Always") == "Pending"
    init.terminated = Terminated(1, "t0", "t1", "id")
    assert pod_phase([init], [_record("a")], "Never") == "Failed"
    assert pod_phase([init], [_record("a")], "OnFailure") == "Pending"


def _sidecar_conditions(
    conditions: Conditions, now: str, sidecar: ContainerRecord, main: ContainerRecord, phase: str
) -> dict[str, dict[str, Any]]:
    pod_conditions(
        conditions,
        now=now,
        sandbox_ready=True,
        init_records=[sidecar],
        records=[main],
        phase=phase,
    )
    return {c["type"]: c for c in conditions.as_list()}


def test_sidecars_phase_and_conditions_follow_get_phase_and_generate() -> None:
    sidecar = ContainerRecord(name="side", image="i", init=True, sidecar=True)
    main = _record("a")
    # Not yet run: Pending (getPhase pendingRestartableInitContainers, pod not initialized).
    assert pod_phase([sidecar], [main], "Always") == "Pending"
    sidecar.running_since, sidecar.waiting_reason = "t", None
    assert pod_phase([sidecar], [main], "Always") == "Pending"
    conditions = Conditions()
    by_type = _sidecar_conditions(conditions, "t1", sidecar, main, "Pending")
    assert by_type["Initialized"]["message"] == "containers with incomplete status: [side]"
    # Started (isInitContainerInitialized), then a main container runs: Running and, the
    # sidecar's readiness counting with the containers', not Ready until it is ready.
    sidecar.started = True
    main.running_since, main.waiting_reason = "t", None
    main.ready = True
    by_type = _sidecar_conditions(conditions, "t2", sidecar, main, "Running")
    assert pod_phase([sidecar], [main], "Always") == "Running"
    assert by_type["Initialized"]["status"] == "True"
    assert by_type["Ready"]["message"] == "containers with unready status: [side]"
    # Restarting after the pod initialized: the pod stays Running and Initialized.
    sidecar.running_since, sidecar.started = None, False
    sidecar.last_terminated = Terminated(3, "t0", "t1", "id")
    assert pod_phase([sidecar], [main], "Never") == "Running"
    by_type = _sidecar_conditions(conditions, "t3", sidecar, main, "Running")
    assert by_type["Initialized"]["status"] == "True"


def test_conditions_name_the_unready_containers_and_keep_transition_times() -> None:
    conditions = Conditions()
    records = [_record("a", running=True), _record("b", running=True)]
    records[0].ready = True
    pod_conditions(
        conditions, now="t1", sandbox_ready=True, init_records=[], records=records, phase="Running"
    )
    by_type = {c["type"]: c for c in conditions.as_list()}
    assert by_type["Ready"]["status"] == "False"
    assert by_type["Ready"]["reason"] == "ContainersNotReady"
    assert by_type["Ready"]["message"] == "containers with unready status: [b]"
    assert by_type["Initialized"]["status"] == "True"
    records[1].ready = True
    pod_conditions(
        conditions, now="t2", sandbox_ready=True, init_records=[], records=records, phase="Running"
    )
    by_type = {c["type"]: c for c in conditions.as_list()}
    assert by_type["Ready"]["status"] == "True" and "reason" not in by_type["Ready"]
    assert by_type["Ready"]["lastTransitionTime"] == "t2"
    # Unchanged since t1.
    assert by_type["PodReadyToStartContainers"]["lastTransitionTime"] == "t1"


def test_exec_status_is_what_remotecommand_writes() -> None:
    assert exec_status(["true"], 0) == {"metadata": {}, "status": "Success"}
    failed = exec_status(["sh", "-c", "exit 3"], 3)
    assert failed["reason"] == "NonZeroExitCode"
    assert failed["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}


def test_websocket_accept_key_and_frames() -> None:
    # RFC 6455 section 1.3's example key and answer.
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert websocket.frame(websocket.OPCODE_BINARY, b"\x01hi") == b"\x82\x03\x01hi"
    long = websocket.frame(websocket.OPCODE_BINARY, b"x" * 300)
    assert long[:4] == b"\x82\x7e\x01\x2c" and len(long) == 304


@pytest.mark.parametrize(
    ("seconds", "text"), [(10, "10s"), (20, "20s"), (80, "1m20s"), (160, "2m40s"), (300, "5m0s")]
)
def test_back_off_durations_print_as_go_does(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
