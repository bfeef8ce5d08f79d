"""The kubelet's HTTPS endpoint, as far as the API server needs it for logs.

The API server reaches a node at its InternalIP on ``status.daemonEndpoints.kubeletEndpoint``
(10250) over TLS with its kubelet client certificate (``--kubelet-client-certificate``); this
server presents a serving certificate for that IP signed by the cluster CA and accepts only
client certificates from that CA. It serves ``GET /containerLogs/<ns>/<pod>/<container>``
with ``previous``, ``tailLines`` and ``follow`` as ``pkg/kubelet/server/server.go``
getContainerLogs does (a pod or container it does not know is 404; ``sinceSeconds``,
``timestamps`` and ``limitBytes`` are not implemented and are refused with 400 rather than
ignored), and
``GET /exec/<ns>/<pod>/<container>?command=...`` over a WebSocket with the
``v4.channel.k8s.io`` protocol, which the API server proxies as it is (only ``v5`` requests are
translated to SPDY, ``pkg/registry/core/pod/rest/subresources.go``): stdout and stderr on
channels 1 and 2, then the outcome as a ``Status`` on channel 3 (``NonZeroExitCode`` with the
exit code as the ``ExitCode`` cause, as ``remotecommand`` writes it). stdin, tty and SPDY
clients are refused with 400. The command runs in the pod's network, UTS and mount namespaces
with the container's environment, not in its PID namespace. ``GET /portForward/<ns>/<pod>``
over the same WebSocket protocol (the API server proxies it as it is unless the client asks
for the ``v2.portforward.k8s.io`` tunnel, which is not served).
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sandbox.cluster.pods import websocket
from sandbox.cluster.pods.containers import read_log, read_log_bytes
from sandbox.cluster.pods.sandbox import dial_in_pod

KUBELET_PORT = 10250
_UNSUPPORTED = ("sinceSeconds", "sinceTime", "timestamps", "limitBytes")
# How long a followed log waits for the container to write before it reads again: the kubelet
# waits for an fsnotify event on the log's directory, or logForceCheckPeriod (1 s) at most
# (k8s.io/cri-client v0.36.3 pkg/logs/logs.go waitLogs); a write wakes it there, here the
# container's exit does and a write is seen within this period.
FOLLOW_CHECK_S = 0.2

# (namespace, pod, container, previous) -> the log file; None when the pod or container is
# unknown, a str when known but the requested log does not exist (the message to return).
LogLookup = Callable[[str, str, str, bool], "Path | str | None"]
# (namespace, pod, container, log file) -> set when the run writing that log ends; None when no
# running container writes it (the log is then read to its end and the stream closes).
FollowLookup = Callable[[str, str, str, Path], "threading.Event | None"]
# (namespace, pod, container) -> the argv prefix entering the pod and the container's env, or
# None when no such container is running.
ExecLookup = Callable[[str, str, str], "tuple[list[str], dict[str, str]] | None"]
# (namespace, pod) -> the pid holding the pod's namespaces, or None.
SandboxLookup = Callable[[str, str], "int | None"]
CHANNEL_PROTOCOL = "v4.channel.k8s.io"
DIAL_TIMEOUT_S = 5.0


def exec_status(argv: list[str], exit_code: int) -> dict[str, object]:
    """The Status remotecommand writes on the error channel when the command has ended."""
    if exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": (
            f"command terminated with non-zero exit code: error executing command {argv}, "
            f"exit code {exit_code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


class _Handler(BaseHTTPRequestHandler):
    lookup: LogLookup
    follow_lookup: FollowLookup
    exec_lookup: ExecLookup
    sandbox_lookup: SandboxLookup

    def log_message(self, format: str, *args: object) -> None:
        return

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if url.path == "/healthz":
            self._reply(200, b"ok")
            return
        query = urllib.parse.parse_qs(url.query)
        if len(parts) == 4 and parts[0] == "exec":
            self._exec(parts[1], parts[2], parts[3], query)
            return
        if len(parts) == 3 and parts[0] == "portForward":
            self._port_forward(parts[1], parts[2], query)
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._reply(404, b"not found")
            return
        asked = [name for name in _UNSUPPORTED if name in query and query[name] != ["false"]]
        if asked:
            self._reply(400, f"not supported by this node agent: {asked}".encode())
            return
        previous = query.get("previous", ["false"])[0] == "true"
        follow = query.get("follow", ["false"])[0] == "true"
        tail: int | None = None
        if "tailLines" in query:
            try:
                tail = int(query["tailLines"][0])
            except ValueError:
                self._reply(400, b"tailLines must be an integer")
                return
        _, namespace, pod, container = parts
        found = type(self).lookup(namespace, pod, container, previous)
        if found is None:
            self._reply(404, f'pod "{pod}" or container "{container}" not found'.encode())
        elif isinstance(found, str):
            self._reply(400, found.encode())
        elif follow:
            self._follow(found, type(self).follow_lookup(namespace, pod, container, found), tail)
        else:
            self._reply(200, read_log(found, tail))

    def _follow(self, path: Path, exited: threading.Event | None, tail: int | None) -> None:
        """The log as ReadLogs with Follow streams it (cri-client pkg/logs/logs.go): from the
        tail on, then what the container writes, until it is no longer running and the
        log's end is read. The body ends with the connection (HTTP/1.0, no length), which the
        API server streams on to its client as it comes (its LocationStreamer flushes when
        following)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.close_connection = True
        with path.open("rb") as log:
            # What the tail holds, then everything written after it.
            data = log.read()
            self.wfile.write(read_log_bytes(data, tail))
            try:
                while True:
                    # Whether it still runs is read before the last read, so nothing
                    # written before its end is missed.
                    ended = exited is None or exited.is_set()
                    while chunk := log.read(65536):
                        self.wfile.write(chunk)
                    self.wfile.flush()
                    if ended:
                        return
                    assert exited is not None
                    exited.wait(FOLLOW_CHECK_S)
            except (BrokenPipeError, ConnectionResetError):
                # The client (the API server on kubectl's behalf) stopped following.
                return

    def _upgrade(self, key: str) -> None:
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket.accept_key(key))
        self.send_header("Sec-WebSocket-Protocol", CHANNEL_PROTOCOL)
        self.end_headers()

    def _websocket_key(self) -> str | None:
        protocols = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        key = self.headers.get("Sec-WebSocket-Key")
        if key is None or CHANNEL_PROTOCOL not in protocols:
            self._reply(400, f"only WebSocket clients speaking {CHANNEL_PROTOCOL}".encode())
            return None
        return key

    def _port_forward(self, namespace: str, pod: str, query: dict[str, list[str]]) -> None:
        """The kubelet's WebSocket port-forward (pkg/kubelet/cri/streaming/portforward/
        websocket.go): two channels per port, data (2i) and error (2i+1), each opened with
        the port number as two little-endian bytes; the pod side is 127.0.0.1:<port> in the
        pod's network namespace."""
        key = self._websocket_key()
        if key is None:
            return
        try:
            # The API server passes the client's ``ports`` on as repeated ``port`` parameters
            # (PortForwardLocation, pkg/registry/core/pod/strategy.go).
            ports = [int(value) for value in query.get("port", [])]
        except ValueError:
            self._reply(400, b"ports must be integers")
            return
        holder = type(self).sandbox_lookup(namespace, pod)
        if not ports or holder is None:
            self._reply(404 if holder is None else 400, b"no such pod, or no ports asked")
            return
        self._upgrade(key)
        lock = threading.Lock()

        def out(channel: int, payload: bytes) -> None:
            with lock:
                websocket.send(self.wfile, websocket.OPCODE_BINARY, bytes([channel]) + payload)

        conns: dict[int, socket.socket] = {}
        for index, port in enumerate(ports):
            out(2 * index, port.to_bytes(2, "little"))
            out(2 * index + 1, port.to_bytes(2, "little"))
            try:
                conns[2 * index] = dial_in_pod(holder, port, DIAL_TIMEOUT_S)
            except OSError as exc:
                out(2 * index + 1, f"failed to connect to localhost:{port} in pod: {exc}".encode())

        def pump(channel: int, conn: socket.socket) -> None:
            while chunk := conn.recv(65536):
                out(channel, chunk)
            # The pod closed its side: so does the stream, as a closed data stream does; unless
            # the stream ended first (ValueError: its file is closed already).
            with lock, contextlib.suppress(OSError, ValueError):
                websocket.send(self.wfile, websocket.OPCODE_CLOSE, b"\x03\xe8")

        for channel, conn in conns.items():
            threading.Thread(target=pump, args=(channel, conn), daemon=True).start()
        try:
            while (received := websocket.read_frame(self.rfile)) is not None:
                opcode, payload = received
                if opcode == websocket.OPCODE_CLOSE:
                    break
                if opcode == websocket.OPCODE_BINARY and payload and payload[0] in conns:
                    conns[payload[0]].sendall(payload[1:])
        except OSError as exc:
            # The API server dropped the stream, or the pod side reset: either ends it.
            self.log_error("port-forward to %s/%s ended: %s", namespace, pod, exc)
        finally:
            for conn in conns.values():
                # The end of the stream ends the pod connection, as containerd's portForward
                # closes it once either copy stops (internal/cri/server/
                # sandbox_portforward_linux.go; Go's Close wakes the other copy and sends the
                # FIN). Shut down first: a plain close from this thread neither wakes the pump
                # reading the socket nor lets the pod see the end while that read is blocked.
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        self.close_connection = True

    def _exec(self, namespace: str, pod: str, container: str, query: dict[str, list[str]]) -> None:
        argv = query.get("command", [])
        key = self._websocket_key()
        if key is None:
            return
        wanted = [n for n in ("stdin", "tty") if query.get(n, ["false"])[0] in ("1", "true")]
        if wanted or not argv:
            self._reply(400, f"not supported: {wanted or 'an empty command'}".encode())
            return
        target = type(self).exec_lookup(namespace, pod, container)
        if target is None:
            self._reply(404, f'container "{container}" of pod "{pod}" is not running'.encode())
            return
        enter, env = target
        self._upgrade(key)
        process = subprocess.Popen(
            [*enter, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        lock = threading.Lock()

        def pump(stream: io.BufferedReader, channel: int) -> None:
            while chunk := stream.read1(65536):
                with lock:
                    websocket.send(self.wfile, websocket.OPCODE_BINARY, bytes([channel]) + chunk)

        # Popen's pipes, unbuffered by us: bytes go out as soon as the command writes them.
        assert isinstance(process.stdout, io.BufferedReader)
        assert isinstance(process.stderr, io.BufferedReader)
        pumps = [
            threading.Thread(target=pump, args=(process.stdout, 1), daemon=True),
            threading.Thread(target=pump, args=(process.stderr, 2), daemon=True),
        ]
        for thread in pumps:
            thread.start()
        for thread in pumps:
            thread.join()
        status = exec_status(argv, process.wait())
        with lock:
            websocket.send(
                self.wfile, websocket.OPCODE_BINARY, b"\x03" + json.dumps(status).encode()
            )
            websocket.send(self.wfile, websocket.OPCODE_CLOSE, b"\x03\xe8")
        self.close_connection = True


class KubeletServer:
    """One node's endpoint on ``ip:port``."""

    def __init__(
        self,
        ip: str,
        port: int,
        cert: Path,
        key: Path,
        client_ca: Path,
        lookup: LogLookup,
        exec_lookup: ExecLookup,
        sandbox_lookup: SandboxLookup,
        follow_lookup: FollowLookup = lambda namespace, pod, container, path: None,
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        context.load_verify_locations(str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
        handler = type(
            "Handler",
            (_Handler,),
            {
                "lookup": staticmethod(lookup),
                "follow_lookup": staticmethod(follow_lookup),
                "exec_lookup": staticmethod(exec_lookup),
                "sandbox_lookup": staticmethod(sandbox_lookup),
            },
        )
        self._server = ThreadingHTTPServer((ip, port), handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"kubelet-{ip}", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the kernel's choice for 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
