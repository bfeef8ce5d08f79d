"""The kubelet's HTTPS endpoint, as far as the API server needs it for logs.

The API server reaches a node at its InternalIP on ``status.daemonEndpoints.kubeletEndpoint``
(10250) over TLS with its kubelet client certificate (``--kubelet-client-certificate``); this
server presents a serving certificate for that IP signed by the cluster CA and accepts only
client certificates from that CA. It serves ``GET /containerLogs/<ns>/<pod>/<container>``
with ``previous`` and ``tailLines`` as ``pkg/kubelet/server/server.go`` getContainerLogs does
(a pod or container it does not know is 404; ``follow``, ``sinceSeconds``, ``timestamps`` and
``limitBytes`` are not implemented and are refused with 400 rather than ignored).
Port-forward and exec are not served.
"""

from __future__ import annotations

import ssl
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sandbox.cluster.pods.containers import read_log

KUBELET_PORT = 10250
_UNSUPPORTED = ("follow", "sinceSeconds", "sinceTime", "timestamps", "limitBytes")

# (namespace, pod, container, previous) -> the log file; None when the pod or container is
# unknown, a str when known but the requested log does not exist (the message to return).
LogLookup = Callable[[str, str, str, bool], "Path | str | None"]


class _Handler(BaseHTTPRequestHandler):
    lookup: LogLookup

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
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._reply(404, b"not found")
            return
        query = urllib.parse.parse_qs(url.query)
        asked = [name for name in _UNSUPPORTED if name in query and query[name] != ["false"]]
        if asked:
            self._reply(400, f"not supported by this node agent: {asked}".encode())
            return
        previous = query.get("previous", ["false"])[0] == "true"
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
        else:
            self._reply(200, read_log(found, tail))


class KubeletServer:
    """One node's endpoint on ``ip:port``."""

    def __init__(
        self, ip: str, port: int, cert: Path, key: Path, client_ca: Path, lookup: LogLookup
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        context.load_verify_locations(str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
        handler = type("Handler", (_Handler,), {"lookup": staticmethod(lookup)})
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
