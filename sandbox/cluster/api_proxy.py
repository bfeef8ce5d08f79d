"""A fault-injecting proxy in front of the real API server that keeps the caller's identity.

Issue 14, item 7: API faults (429 with Retry-After, 500, connection reset, a cut watch stream,
410 Gone) are injected between a client and the real kube-apiserver, while the API server
still authenticates and authorizes the real caller:

- a bearer token (a ServiceAccount's) passes through unchanged on a connection that presents
  no client certificate, so the API server's token authenticator judges it;
- a client certificate ends here (TLS terminates in the proxy), so the proxy verifies it
  against the cluster CA and forwards its identity with the API server's request-header
  authentication: it connects with the front-proxy client certificate (signed by the
  ``--requestheader-client-ca-file`` CA, its CN in ``--requestheader-allowed-names``) and sets
  ``X-Remote-User`` to the certificate's CN and one ``X-Remote-Group`` per O. The API server
  trusts those headers only from a connection whose certificate verifies against that CA and
  names an allowed CN (k8s.io/apiserver
  ``pkg/authentication/request/headerrequest/requestheader.go``: ``NewDynamicVerifyOptionsSecure``
  wraps the header authenticator in an x509 verifier with the allowed names). Headers of that
  name sent by a client are dropped here, so no caller can choose its own identity.

A test sets a :class:`FaultPlan` (rules matched on method, path and watch-ness, each firing a
given number of times) and reads what the proxy saw (:meth:`ApiFaultProxy.records`): the
product's retry and re-list behaviour is asserted by those counts, never by time.

It runs as threads of the test process, inside the run's network namespace like the cluster.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import ssl
import struct
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from sandbox.cluster.pki import CertPair, ClusterPki

FaultAction = Literal["throttle", "error", "reset", "cut", "gone"]

# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business on each leg.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
IDENTITY_HEADER_PREFIX = "x-remote-"
# Longer than any watch window the product asks for (llm_rollout/kube/watching.py: 60 s).
_UPSTREAM_TIMEOUT_S = 120.0


@dataclass
class FaultRule:
    """One fault: which requests it matches and what it does, ``times`` times (None: always).

    ``path`` is a regular expression searched in the URL path. ``watch`` narrows to watch
    requests (True) or to the rest (False). ``gone`` answers a watch with an ERROR event
    carrying a 410 Status, as the API server does for an expired resourceVersion, and any
    other request with HTTP 410; ``cut`` relays ``events_before_cut`` events of a real watch
    and then breaks the connection mid-stream.
    """

    action: FaultAction
    path: str
    method: str | None = None
    watch: bool | None = None
    times: int | None = 1
    retry_after_s: int = 1
    status: int = 500
    events_before_cut: int = 0
    hits: int = 0

    def matches(self, method: str, path: str, watch: bool) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method != method:
            return False
        if self.watch is not None and self.watch != watch:
            return False
        return re.search(self.path, path) is not None


@dataclass(frozen=True)
class ProxyRecord:
    """One request the proxy received; ``status`` 0 when the connection was reset."""

    method: str
    path: str
    query: dict[str, list[str]]
    watch: bool
    identity: str
    status: int
    fault: str


class FaultPlan:
    """The rules a test sets; the first matching rule with firings left fires."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str, watch: bool) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, watch):
                    rule.hits += 1
                    return rule
        return None


def _status_body(code: int, reason: str, message: str) -> dict[str, object]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _fault_status(rule: FaultRule, watch: bool) -> int:
    """The HTTP status a fault answers with; 0 for a reset (no answer at all)."""
    if rule.action == "throttle":
        return 429
    if rule.action == "error":
        return rule.status
    if rule.action == "gone":
        return 200 if watch else 410
    return 0


def _subject(cert: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(CN, [O...]) of a certificate as ``SSLSocket.getpeercert()`` returns it."""
    common_name = ""
    organizations: list[str] = []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                common_name = str(value)
            elif key == "organizationName":
                organizations.append(str(value))
    return common_name, organizations


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        return  # the records are the log

    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _identity(self) -> tuple[str, str, list[str]]:
        """("token" | "cert" | "anonymous", user, groups) of the caller."""
        assert isinstance(self.connection, ssl.SSLSocket)
        cert = self.connection.getpeercert()
        if cert:
            user, groups = _subject(cert)
            return "cert", user, groups
        if self.headers.get("Authorization"):
            return "token", "", []
        return "anonymous", "", []

    def _record(
        self, method: str, url: str, watch: bool, identity: str, status: int, fault: str
    ) -> None:
        parts = urlsplit(url)
        self.server.add_record(
            ProxyRecord(method, parts.path, parse_qs(parts.query), watch, identity, status, fault)
        )

    def _send_json(self, code: int, body: dict[str, object], extra: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN: the client
        # sees "connection reset by peer", not an orderly end.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _fault(self, rule: FaultRule, watch: bool, query: dict[str, list[str]]) -> None:
        """Answer with the rule's fault (``_fault_status``) instead of the API server."""
        if rule.action == "throttle":
            self._send_json(
                429,
                _status_body(429, "TooManyRequests", "injected: too many requests"),
                {"Retry-After": str(rule.retry_after_s)},
            )
            return
        if rule.action == "error":
            self._send_json(
                rule.status,
                _status_body(rule.status, "InternalError", "injected: internal error"),
                {},
            )
            return
        if rule.action == "reset":
            self._reset()
            return
        # "gone". The cacher's answer to an expired version of a watch is a 200 stream whose
        # one event is an ERROR with a 410 Status (k8s.io/apiserver
        # pkg/storage/cacher/cacher.go -> watch_cache.go NewResourceExpired "too old resource
        # version"); a list is refused with HTTP 410.
        version = (query.get("resourceVersion") or [""])[0]
        status = _status_body(
            410, "Expired", f"too old resource version: {version or '0'} (injected)"
        )
        if not watch:
            self._send_json(410, status, {})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
        self.wfile.write(b"0\r\n\r\n")

    def _forward_headers(self, kind: str, user: str, groups: list[str]) -> list[tuple[str, str]]:
        headers = [
            (key, value)
            for key, value in self.headers.items()
            if key.lower() not in _HOP_BY_HOP and not key.lower().startswith(IDENTITY_HEADER_PREFIX)
        ]
        if kind == "cert":
            headers.append(("X-Remote-User", user))
            headers += [("X-Remote-Group", group) for group in groups]
        return headers

    def _proxy(self) -> None:
        method = self.command
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        watch = (query.get("watch") or [""])[0] in ("true", "1")
        kind, user, groups = self._identity()
        identity = f"cert:{user}" if kind == "cert" else kind
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        rule = self.server.plan.take(method, parts.path, watch)
        if rule is not None and rule.action != "cut":
            status = _fault_status(rule, watch)
            self._record(method, self.path, watch, identity, status, rule.action)
            self._fault(rule, watch, query)
            return
        upstream = self.server.upstream(with_front_proxy_cert=kind == "cert")
        upgrade = self.headers.get("Upgrade")
        try:
            upstream.putrequest(method, self.path, skip_host=False, skip_accept_encoding=True)
            for key, value in self._forward_headers(kind, user, groups):
                upstream.putheader(key, value)
            if upgrade:
                # exec / port-forward / attach over WebSocket (or SPDY): the upgrade request
                # passes on as it came, and a 101 turns the exchange into a byte tunnel.
                upstream.putheader("Connection", "Upgrade")
                upstream.putheader("Upgrade", upgrade)
            if body is not None:
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            # Held before reading the answer: http.client drops its reference to the socket
            # when it judges a 101 to end the connection, and a tunnel still writes to it.
            upstream_socket = upstream.sock
            response = upstream.getresponse()
            # Recorded before the client can see the answer, so a test that reads the records
            # right after its call returns finds this one.
            self._record(
                method, self.path, watch, identity, response.status, rule.action if rule else ""
            )
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            if upgrade and response.status == 101:
                self.send_header("Connection", "Upgrade")
                self.send_header("Upgrade", response.getheader("Upgrade") or upgrade)
                self.end_headers()
                assert upstream_socket is not None
                self._tunnel(response, upstream_socket)
            elif watch and response.status == 200:
                try:
                    self._relay_stream(response, rule)
                except OSError:
                    # The client ended its watch (the product's stream stopped): nothing left
                    # to relay to.
                    self.close_connection = True
            else:
                data = response.read()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        finally:
            upstream.close()

    def _tunnel(self, response: http.client.HTTPResponse, upstream_socket: socket.socket) -> None:
        """Relay bytes both ways after a 101 until either side closes."""
        self.wfile.flush()

        def to_upstream() -> None:
            try:
                while data := self.rfile.read1(65536):
                    upstream_socket.sendall(data)
            except OSError:
                pass  # the client went: the other direction ends at the close below
            finally:
                # shutdown, not close: the response's reader still holds the socket open, and
                # the API server must see the end to end its side (and the loop below).
                with contextlib.suppress(OSError):
                    upstream_socket.shutdown(socket.SHUT_RDWR)

        sender = threading.Thread(target=to_upstream, name="api-proxy-tunnel", daemon=True)
        sender.start()
        try:
            # The response's buffer may already hold the first frames after the 101 head.
            while data := response.fp.read1(65536):
                self.wfile.write(data)
                self.wfile.flush()
        except (OSError, ValueError):
            pass  # the upstream closed (ValueError: its buffer was closed under us)
        finally:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            sender.join(timeout=_UPSTREAM_TIMEOUT_S)
            response.close()

    def _relay_stream(self, response: http.client.HTTPResponse, rule: FaultRule | None) -> None:
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        relayed = 0
        while True:
            if rule is not None and relayed >= rule.events_before_cut:
                # The stream breaks without its final chunk: the client's read fails. A FIN,
                # not a reset: an RST may reach the client before it read the response head,
                # and the kernel then drops that unread data, so the client would see a
                # connection closed before any answer and resend the GET, never learning
                # that its stream broke.
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            line = response.readline()
            if not line:
                self.wfile.write(b"0\r\n\r\n")
                return
            self._chunk(line)
            relayed += 1


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        *,
        serving: ssl.SSLContext,
        upstream_host: str,
        upstream_port: int,
        plain_upstream: ssl.SSLContext,
        front_proxy_upstream: ssl.SSLContext,
    ) -> None:
        super().__init__(address, _Handler)
        self.plan = FaultPlan()
        self._serving = serving
        self._upstream_host = upstream_host
        self._upstream_port = upstream_port
        self._plain = plain_upstream
        self._front_proxy = front_proxy_upstream
        self._records: list[ProxyRecord] = []
        self._records_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        raw, address = self.socket.accept()
        # The handshake runs on the handler's thread (at its first read), not here.
        wrapped = self._serving.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def upstream(self, *, with_front_proxy_cert: bool) -> http.client.HTTPSConnection:
        context = self._front_proxy if with_front_proxy_cert else self._plain
        return http.client.HTTPSConnection(
            self._upstream_host, self._upstream_port, context=context, timeout=_UPSTREAM_TIMEOUT_S
        )

    def add_record(self, record: ProxyRecord) -> None:
        with self._records_lock:
            self._records.append(record)

    def records(self) -> list[ProxyRecord]:
        with self._records_lock:
            return list(self._records)

    def clear_records(self) -> None:
        with self._records_lock:
            self._records.clear()


@dataclass
class ApiFaultProxy:
    """A running proxy: its URL, its fault plan and what it saw."""

    url: str
    server: _ProxyServer
    thread: threading.Thread
    serving: CertPair
    plan: FaultPlan = field(init=False)

    def __post_init__(self) -> None:
        self.plan = self.server.plan

    def records(self) -> list[ProxyRecord]:
        return self.server.records()

    def clear(self) -> None:
        """Drop the plan's rules and the records (between tests)."""
        self.plan.clear()
        self.server.clear_records()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def start_proxy(pki: ClusterPki, api_url: str, *, listen_ip: str = "127.0.0.1") -> ApiFaultProxy:
    """Start a proxy on an ephemeral port of ``listen_ip`` in front of ``api_url``."""
    serving_pair = pki.serving("api-proxy", "llm-rollout-api-proxy", server_ips=(listen_ip,))
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca.cert))
    serving.load_cert_chain(str(serving_pair.cert), str(serving_pair.key))
    # A client certificate is optional (token callers have none) but, when sent, must verify
    # against the cluster CA, as the API server's own x509 authenticator requires.
    serving.verify_mode = ssl.CERT_OPTIONAL
    plain = ssl.create_default_context(cafile=str(pki.ca.cert))
    front_proxy = ssl.create_default_context(cafile=str(pki.ca.cert))
    front_proxy.load_cert_chain(str(pki.front_proxy_client.cert), str(pki.front_proxy_client.key))
    upstream = urlsplit(api_url)
    assert upstream.hostname is not None and upstream.port is not None
    server = _ProxyServer(
        (listen_ip, 0),
        serving=serving,
        upstream_host=upstream.hostname,
        upstream_port=upstream.port,
        plain_upstream=plain,
        front_proxy_upstream=front_proxy,
    )
    thread = threading.Thread(target=server.serve_forever, name="api-fault-proxy", daemon=True)
    thread.start()
    port = server.server_address[1]
    return ApiFaultProxy(
        url=f"https://{listen_ip}:{port}", server=server, thread=thread, serving=serving_pair
    )


@contextmanager
def running_proxy(pki: ClusterPki, api_url: str) -> Iterator[ApiFaultProxy]:
    proxy = start_proxy(pki, api_url)
    try:
        yield proxy
    finally:
        proxy.stop()
