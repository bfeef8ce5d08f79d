"""A local port-forward to one Ready pod behind a Service, like `kubectl port-forward svc/NAME`.

Why: the API server's service proxy authenticates the caller with the Authorization header and
deletes it before proxying, so a server protected by an API key (vLLM `--api-key`) can never
see its key that way. A port-forward is a byte tunnel (the pods/portforward WebSocket of the
kubernetes client): HTTP requests, headers included, reach the pod untouched.

`forward_service(api, namespace, service, port)` resolves the Service to a Ready pod and its
target container port, listens on 127.0.0.1 on a free port and, for every accepted
connection, opens one port-forward stream and copies bytes both ways on two threads. One
stream is opened (and closed) before the listener is handed out, so a refused upgrade (RBAC,
unknown or not running pod) surfaces as a Permanent/Transient error from the context manager.
Streams that fail later only end their own connection, logged with the Pod's namespace/name.
"""

from __future__ import annotations

import logging
import re
import selectors
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward
from websocket import WebSocketBadStatusException

from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.kube.errors import translate
from llm_rollout.kube.objects import get
from llm_rollout.kube.resources import ObjectRef, list_objects
from llm_rollout.kube.views import ObjectView, items_at

__all__ = ["ForwardTarget", "PortForwarder", "forward_service", "pick_pod"]

log = logging.getLogger(__name__)

_CHUNK = 256 << 10
# websocket-client's WebSocketBadStatusException text, which the kubernetes client folds into
# ApiException(status=0, reason=...): "Handshake status 403 Forbidden -+-+- {...} -+-+- b'...'".
_HANDSHAKE = re.compile(r"Handshake status (\d{3}) ?([^-]*)")


class NoReadyPod(TransientError):
    """The Service selects no Ready pod right now (one may become Ready again)."""


@dataclass(frozen=True)
class ForwardTarget:
    """The pod and container port a Service port leads to."""

    namespace: str
    pod: str
    port: int

    def __str__(self) -> str:
        return f"Pod {self.namespace}/{self.pod} port {self.port}"


def _is_ready(pod: Mapping[str, Any]) -> bool:
    view = ObjectView(pod)
    if view.metadata.deletion_timestamp or view.status.get("phase") != "Running":
        return False
    ready = view.condition("Ready")
    return ready is not None and ready.is_true


def _container_port(pod: Mapping[str, Any], target: int | str) -> int | None:
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    for container in items_at(pod, "spec", "containers"):
        for port in items_at(container, "ports"):
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


def pick_pod(
    api: k8s_client.ApiClient, namespace: str, service: str, port: int | str
) -> ForwardTarget:
    """A Ready pod selected by Service `namespace/service` and the container port its `port`
    (number or name) targets. Several Ready pods: the first by name, so reruns are stable."""
    ref = ObjectRef("v1", "Service", namespace, service)
    svc = get(api, ref)
    if svc is None:
        raise PermanentError(f"{ref} does not exist")
    spec = svc.get("spec") or {}
    entry = next(
        (p for p in spec.get("ports") or [] if str(port) in (str(p.get("port")), p.get("name"))),
        None,
    )
    if entry is None:
        raise PermanentError(f"{ref} has no port {port}")
    selector = spec.get("selector") or {}
    if not selector:
        raise PermanentError(f"{ref} has no selector: there is no pod to forward to")
    labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    pods, _ = list_objects(api, "v1", "Pod", namespace, label_selector=labels)
    ready = sorted((p for p in pods if _is_ready(p)), key=lambda p: p["metadata"]["name"])
    if not ready:
        raise NoReadyPod(f"{ref} selects no Ready pod ({len(pods)} selected)")
    pod = ready[0]
    name = str(pod["metadata"]["name"])
    target_port = entry.get("targetPort", entry.get("port"))
    number = _container_port(pod, target_port)
    if number is None:
        raise PermanentError(
            f"{ref} port {port} targets {target_port!r}, which Pod {namespace}/{name} "
            "does not declare"
        )
    return ForwardTarget(namespace, name, number)


def _handshake_error(exc: ApiException, target: ForwardTarget) -> PermanentError | TransientError:
    # The kubernetes client folds websocket-client's handshake failure into
    # ApiException(status=0, reason=text); the original exception is its context.
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, WebSocketBadStatusException):
        status, phrase = int(cause.status_code), str(cause.status_message or "")
        raw = cause.resp_body or b""
        body = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    else:
        match = _HANDSHAKE.search(str(exc.reason or ""))
        if match is None:
            # No HTTP answer at all (refused, reset, TLS): the API server may be back soon.
            return TransientError(f"port-forward to {target}: the API server could not be reached")
        status, phrase = int(match.group(1)), match.group(2).strip()
        body = str(exc.reason).rsplit(" -+-+- ", 1)[-1].strip()
    answer = ApiException(status=status, reason=phrase or None)
    answer.body = body
    error = translate(answer, verb="port-forward to", target=str(target), ref=None)
    if status == 400:
        # The pod stopped running between our pick and the upgrade: pick again later.
        return TransientError(str(error))
    assert isinstance(error, PermanentError | TransientError)
    return error


def _close(sock: Any) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class PortForwarder:
    """A 127.0.0.1 listener whose connections are tunnelled to `target` (see module doc)."""

    def __init__(self, api: k8s_client.ApiClient, target: ForwardTarget) -> None:
        self.target = target
        # The kubernetes client swaps ApiClient.call_api while it opens a stream: a client of
        # our own keeps that away from the caller's, and the lock keeps opens one at a time.
        self._api = k8s_client.ApiClient(configuration=api.configuration)
        self._core = k8s_client.CoreV1Api(self._api)
        self._open_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._accepter: threading.Thread | None = None
        self._lock = threading.Lock()
        self._open_sockets: set[Any] = set()
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._base_url = ""
        self.connections = 0

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` of the listener (kept after stop, for messages)."""
        if not self._base_url:
            raise RuntimeError("the port-forward is not started")
        return self._base_url

    def _open(self) -> Any:
        try:
            with self._open_lock:
                return portforward(
                    self._core.connect_get_namespaced_pod_portforward,
                    self.target.pod,
                    self.target.namespace,
                    ports=str(self.target.port),
                )
        except ApiException as exc:
            raise _handshake_error(exc, self.target) from exc

    def start(self) -> PortForwarder:
        try:
            # Not kept for the first connection: an idle pod connection may be closed by the
            # server's keep-alive timeout before anyone uses it.
            self._open().close()
            self._listener = socket.create_server(("127.0.0.1", 0))
            host, port = self._listener.getsockname()[:2]
            self._base_url = f"http://{host}:{port}"
        except BaseException:
            self.stop()
            raise
        self._accepter = threading.Thread(
            target=self._accept_loop, name=f"port-forward {self.target}", daemon=True
        )
        self._accepter.start()
        log.info("port-forward %s -> %s", self.base_url, self.target)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with suppress(OSError):
            self._wake_w.send(b"x")
        if self._accepter is not None:
            self._accepter.join(timeout=5)
        with self._lock:
            sockets, workers = list(self._open_sockets), list(self._workers)
        for sock in sockets:
            _close(sock)
        for worker in workers:
            worker.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._api.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> PortForwarder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ serving
    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready or self._stopping.is_set():
                    return
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                worker = threading.Thread(
                    target=self._serve, args=(conn,), name=f"port-forward conn {self.target}"
                )
                worker.daemon = True
                with self._lock:
                    self.connections += 1
                    self._open_sockets.add(conn)
                    self._workers = [w for w in self._workers if w.is_alive()]
                    self._workers.append(worker)
                worker.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            stream = self._open()
        except (PermanentError, TransientError) as exc:
            log.warning("port-forward connection to %s not opened: %s", self.target, exc)
            self._forget(conn)
            return
        remote = stream.socket(self.target.port)
        with self._lock:
            self._open_sockets.add(remote)
        upstream = threading.Thread(target=_client_to_pod, args=(conn, remote), daemon=True)
        upstream.start()
        _pod_to_client(remote, conn)
        upstream.join()
        self._forget(conn)
        self._forget(remote)
        stream.close()
        error = stream.error(self.target.port)
        if error:
            log.warning("port-forward to %s ended with an error: %s", self.target, error.strip())

    def _forget(self, sock: Any) -> None:
        with self._lock:
            self._open_sockets.discard(sock)
        _close(sock)


def _pump(source: Any, sink: Any) -> bool:
    """Copy until `source` ends (True) or `sink` fails (False)."""
    try:
        while data := source.recv(_CHUNK):
            try:
                sink.sendall(data)
            except OSError:
                return False
    except OSError:
        pass
    return True


# `remote` is our end of the kubernetes client's socketpair; the client's proxy thread writes
# the pod's bytes into its end and raises (in its own thread) if ours is shut for reading.
# So ours is only ever shut for writing: that EOF makes the proxy close its end and the
# stream, and our reads of `remote` then end. Neither side of a forwarded HTTP connection
# half-closes, so the end of one direction is the end of the connection.
def _client_to_pod(conn: socket.socket, remote: Any) -> None:
    _pump(conn, remote)
    with suppress(OSError):
        remote.shutdown(socket.SHUT_WR)


def _pod_to_client(remote: Any, conn: socket.socket) -> None:
    if not _pump(remote, conn):
        # The client is gone: end the stream, and drain what the pod still sends until the
        # proxy has closed its end.
        with suppress(OSError):
            remote.shutdown(socket.SHUT_WR)
            while remote.recv(_CHUNK):
                pass
    with suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


@contextmanager
def forward_service(
    api: k8s_client.ApiClient, namespace: str, service: str, port: int | str
) -> Iterator[PortForwarder]:
    """Port-forward to a Ready pod of Service `namespace/service` (`port` of the Service);
    use `.base_url` of what is yielded."""
    target = pick_pod(api, namespace, service, port)
    with PortForwarder(api, target) as forwarder:
        yield forwarder
