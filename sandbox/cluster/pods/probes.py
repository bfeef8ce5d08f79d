"""Container probes as the kubelet runs them (k8s.io/kubernetes ``pkg/kubelet/prober/``).

One worker thread per probe of a container run (``worker.go``): it waits ``initialDelaySeconds``
from the container's start, probes every ``periodSeconds`` with ``timeoutSeconds``, and changes
its result only after ``successThreshold`` / ``failureThreshold`` equal outcomes in a row.
Readiness starts as failure, liveness as success, startup as unknown; liveness and readiness
do not probe until the startup probe has succeeded. Each failed attempt is an ``Unhealthy``
Event with ``prober.go``'s message, ``"<Kind> probe failed: <output>"``. HTTP and TCP probes
dial the pod's IP from the node (the harness namespace), exec probes run inside the pod's
namespaces. The outputs follow ``pkg/probe/http/http.go`` ("HTTP probe failed with statuscode:
%d") and, for dial errors, Go's error text for the same failure.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class ProbeKind(Enum):
    STARTUP = "Startup"
    READINESS = "Readiness"
    LIVENESS = "Liveness"


@dataclass(frozen=True)
class Outcome:
    success: bool
    output: str


def _port(value: object, ports: dict[str, int]) -> int:
    if isinstance(value, int):
        return value
    text = str(value)
    if text.isdigit():
        return int(text)
    if text not in ports:
        raise ValueError(f"port {text!r} is not a named port of the container")
    return ports[text]


def http_get(spec: dict[str, Any], pod_ip: str, ports: dict[str, int], timeout_s: float) -> Outcome:
    host = str(spec.get("host") or pod_ip)
    port = _port(spec["port"], ports)
    path = str(spec.get("path") or "/")
    scheme = str(spec.get("scheme") or "HTTP").lower()
    url = f"{scheme}://{host}:{port}{path}"
    connection: http.client.HTTPConnection = (
        http.client.HTTPSConnection(host, port, timeout=timeout_s)
        if scheme == "https"
        else http.client.HTTPConnection(host, port, timeout=timeout_s)
    )
    headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
    headers.setdefault("User-Agent", "kube-probe/1.36")
    try:
        connection.request("GET", path, headers=headers)
        status = connection.getresponse().status
    except ConnectionRefusedError:
        return Outcome(False, f'Get "{url}": dial tcp {host}:{port}: connect: connection refused')
    except TimeoutError:
        return Outcome(
            False,
            f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting '
            "headers)",
        )
    except OSError as exc:
        return Outcome(False, f'Get "{url}": {exc}')
    finally:
        connection.close()
    # http.go: 200 <= code < 400 is success.
    if 200 <= status < 400:
        return Outcome(True, "")
    return Outcome(False, f"HTTP probe failed with statuscode: {status}")


def tcp_socket(
    spec: dict[str, Any], pod_ip: str, ports: dict[str, int], timeout_s: float
) -> Outcome:
    host = str(spec.get("host") or pod_ip)
    port = _port(spec["port"], ports)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return Outcome(True, "")
    except ConnectionRefusedError:
        return Outcome(False, f"dial tcp {host}:{port}: connect: connection refused")
    except TimeoutError:
        return Outcome(False, f"dial tcp {host}:{port}: i/o timeout")
    except OSError as exc:
        return Outcome(False, f"dial tcp {host}:{port}: {exc}")


def exec_command(
    spec: dict[str, Any], enter: list[str], env: dict[str, str], timeout_s: float
) -> Outcome:
    command = [str(c) for c in spec.get("command") or []]
    try:
        done = subprocess.run(
            [*enter, *command],
            capture_output=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Outcome(False, f"command {command!r} timed out")
    output = (done.stdout + done.stderr).decode(errors="replace")
    return Outcome(done.returncode == 0, output)


Prober = Callable[[float], Outcome]


@dataclass(frozen=True)
class ProbeSpec:
    """A probe's timing, with the API server's defaults already filled in."""

    initial_delay_s: float
    period_s: float
    timeout_s: float
    success_threshold: int
    failure_threshold: int

    TIMING_FIELDS = frozenset(
        {
            "initialDelaySeconds",
            "periodSeconds",
            "timeoutSeconds",
            "successThreshold",
            "failureThreshold",
            "terminationGracePeriodSeconds",
        }
    )

    @staticmethod
    def of(spec: dict[str, Any]) -> ProbeSpec:
        return ProbeSpec(
            initial_delay_s=float(spec.get("initialDelaySeconds") or 0),
            period_s=float(spec.get("periodSeconds") or 10),
            timeout_s=float(spec.get("timeoutSeconds") or 1),
            success_threshold=int(spec.get("successThreshold") or 1),
            failure_threshold=int(spec.get("failureThreshold") or 3),
        )


def prober_for(
    spec: dict[str, Any],
    pod_ip: str,
    ports: dict[str, int],
    enter: Callable[[], list[str]],
    env: dict[str, str],
) -> Prober:
    """``enter`` gives, at each exec probe, the argv prefix entering the container (the kubelet
    runs exec probes in the container: its processes, its /proc and /tmp)."""
    if "httpGet" in spec:
        return lambda timeout_s: http_get(spec["httpGet"], pod_ip, ports, timeout_s)
    if "tcpSocket" in spec:
        return lambda timeout_s: tcp_socket(spec["tcpSocket"], pod_ip, ports, timeout_s)
    if "exec" in spec:
        return lambda timeout_s: exec_command(spec["exec"], enter(), env, timeout_s)
    # grpc: not implemented here; a probe that cannot run fails rather than passing unseen.
    handlers = sorted(k for k in spec if k not in ProbeSpec.TIMING_FIELDS)
    return lambda timeout_s: Outcome(False, f"probe handler {handlers} not supported by this node")


class ProbeWorker:
    """One probe of one container run; ``result`` is None while unknown."""

    def __init__(
        self,
        kind: ProbeKind,
        timing: ProbeSpec,
        probe: Prober,
        *,
        started_mono: float,
        may_run: Callable[[], bool],
        on_failure: Callable[[ProbeKind, str], None],
        on_change: Callable[[], None],
    ) -> None:
        self.kind = kind
        self._timing = timing
        self._probe = probe
        self._started_mono = started_mono
        self._may_run = may_run
        self._on_failure = on_failure
        self._on_change = on_change
        initial = {ProbeKind.READINESS: False, ProbeKind.LIVENESS: True, ProbeKind.STARTUP: None}
        self.result: bool | None = initial[kind]
        self._last: bool | None = None
        self._run_length = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"probe-{kind.value}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        delay_s = self._timing.initial_delay_s - (time.monotonic() - self._started_mono)
        if delay_s > 0 and self._stop.wait(delay_s):
            return
        # The period is the probe's schedule (worker.go's ticker), not a stand-in for a wait:
        # the next probe is due a period after this one started, at once if it took longer
        # (a Go ticker keeps one missed tick).
        while True:
            started = time.monotonic()
            if self._may_run():
                outcome = self._probe(self._timing.timeout_s)
                if self._stop.is_set():
                    return
                self._record(outcome)
                if self.kind is ProbeKind.STARTUP and self.result:
                    # worker.go: a startup probe stops once the container has started.
                    return
            if self._stop.wait(max(0.0, started + self._timing.period_s - time.monotonic())):
                return

    def _record(self, outcome: Outcome) -> None:
        if outcome.success == self._last:
            self._run_length += 1
        else:
            self._last = outcome.success
            self._run_length = 1
        if not outcome.success:
            self._on_failure(self.kind, outcome.output)
        threshold = (
            self._timing.success_threshold if outcome.success else self._timing.failure_threshold
        )
        if self._run_length >= threshold and self.result != outcome.success:
            self.result = outcome.success
            self._on_change()
