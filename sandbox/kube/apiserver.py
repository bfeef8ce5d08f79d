"""The sandbox Kubernetes API server: the store over HTTP, as the real client expects it.

A ThreadingHTTPServer (HTTP/1.1 keep-alive, TCP_NODELAY, one thread per connection) on
127.0.0.1. Watches, follow-logs and proxied responses are chunked streams flushed per chunk;
`pods/{name}/portforward` upgrades its connection to a WebSocket (sandbox/kube/portforward.py).
Errors are `Status` objects with the reasons and codes of a real server.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

from sandbox.kube import apply as ssa
from sandbox.kube.faults import FaultPlan, FaultRule, RequestLog, RequestRecord
from sandbox.kube.network import PodNetwork
from sandbox.kube.patch import json_merge_patch, json_patch, strategic_merge_patch
from sandbox.kube.portforward import (
    PORT_FORWARD_PROTOCOL,
    PortForwardSession,
    accept_key,
    offered_protocols,
    parse_ports,
)
from sandbox.kube.rbac import (
    RbacAuthorizer,
    RequestInfo,
    UserInfo,
    forbidden_message,
    name_part,
    qualified_resource,
    request_info,
    service_account_user,
)
from sandbox.kube.selectors import (
    SelectorError,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from sandbox.kube.store import (
    BadRequest,
    Forbidden,
    Gone,
    NotFound,
    Obj,
    ResourceType,
    Store,
    StoreError,
    clone,
    now_iso,
    qualified,
)

GIT_VERSION = "v1.30.6"
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "authorization",
    }
)
_BUILTIN_GROUPS = frozenset(
    {"", "apps", "coordination.k8s.io", "rbac.authorization.k8s.io", "apiextensions.k8s.io"}
)
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
# Registries that answer a completed delete with the object (genericregistry.Store
# ReturnDeletedObject, or their own Delete that returns it: CRDs); the others answer a Status.
_RETURNS_DELETED_OBJECT = frozenset(
    {
        ("", "Pod"),
        ("", "Service"),
        ("", "PersistentVolume"),
        ("", "PersistentVolumeClaim"),
        ("", "Namespace"),
        ("", "ServiceAccount"),
        ("apiextensions.k8s.io", "CustomResourceDefinition"),
    }
)
# The garbage-collector finalizer a delete with this propagation policy puts on the object.
_GC_FINALIZERS = {"Foreground": "foregroundDeletion", "Orphan": "orphan"}


class _Reset(Exception):
    """Close the connection without answering (a fault, or a cut stream)."""


class _ClientGone(Exception):
    """The client closed its end while we were streaming."""


def _status(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    body: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _error_status(exc: StoreError) -> Obj:
    details: Obj = {}
    if exc.name:
        details["name"] = exc.name
    if exc.group:
        details["group"] = exc.group
    if exc.kind:
        details["kind"] = exc.kind
    if exc.causes:
        details["causes"] = exc.causes
    return _status(exc.code, exc.reason, exc.message, details or None)


def _version_key(version: str) -> tuple[int, int, int]:
    """Kubernetes version priority: GA > beta > alpha, then by number."""
    m = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    if not m:
        return (0, 0, 0)
    stage = {"alpha": 1, "beta": 2, None: 3}[m.group(2)]
    return (stage, int(m.group(1)), int(m.group(3) or 0))


@dataclass
class Request:
    handler: BaseHTTPRequestHandler
    method: str
    path: str
    query: dict[str, str]
    raw_query: str
    body: bytes
    user: str
    verb: str = ""
    logged: bool = False
    # Set when RBAC applies to this request (None for superusers and unauthenticated ones).
    auth: tuple[UserInfo, RequestInfo] | None = None

    def header(self, name: str) -> str:
        return self.handler.headers.get(name, "") or ""

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("true", "1")

    def json_body(self) -> Any:
        if not self.body:
            raise BadRequest("the request body is empty")
        ctype = self.header("Content-Type").split(";")[0].strip()
        try:
            if "yaml" in ctype:
                return yaml.safe_load(self.body)
            return json.loads(self.body)
        except (ValueError, yaml.YAMLError) as exc:
            raise BadRequest(f"the body of the request could not be decoded: {exc}") from exc


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: ApiServer

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self) -> None:
        self.server.api.handle(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        return


class ApiServer:
    def __init__(
        self,
        store: Store,
        network: PodNetwork,
        *,
        faults: FaultPlan | None = None,
        bookmark_interval: float = 1.0,
        default_watch_timeout: float = 1800.0,
    ) -> None:
        self.store = store
        self.network = network
        self.faults = faults or FaultPlan()
        self.request_log = RequestLog()
        # Authentication: bearer token -> user name (a request without credentials is
        # "system:anonymous"). Authorization: users in `superusers` may do anything, like the
        # members of system:masters; every other user is authorized by RBAC from the store.
        # The default kubeconfig (no token) and tokens written for "admin" stay superusers,
        # so only identities a test creates for the purpose (see
        # `service_account_kubeconfig`) are held to their Roles.
        self.tokens: dict[str, str] = {}
        self.superusers: set[str] = {"admin", "system:anonymous"}
        self.authorizer = RbacAuthorizer(store)
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._rr = 0
        self.url = ""
        # Upgraded port-forward connections: the HTTP server's shutdown does not end them.
        self._streams: set[socket.socket] = set()
        self._streams_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.api = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="kube-apiserver",
            daemon=True,
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return self.url

    def stop(self) -> None:
        self._stopping.set()
        self.store.close()
        with self._streams_lock:
            streams = list(self._streams)
        for sock in streams:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def write_kubeconfig(
        self, path: Path, *, token: str | None = None, user: str = "admin"
    ) -> Path:
        if not self.url:
            raise RuntimeError("start the API server before writing its kubeconfig")
        user_entry: Obj = {}
        if token:
            self.tokens[token] = user
            user_entry = {"token": token}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sandbox", "cluster": {"server": self.url}}],
            "users": [{"name": user, "user": user_entry}],
            "contexts": [
                {
                    "name": "sandbox",
                    "context": {"cluster": "sandbox", "user": user, "namespace": "default"},
                }
            ],
            "current-context": "sandbox",
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def service_account_kubeconfig(
        self, path: Path, namespace: str, name: str, *, token: str | None = None
    ) -> Path:
        """A kubeconfig authenticating as ServiceAccount `namespace/name` (which must exist),
        like a token from the TokenRequest API; its context defaults to `namespace`."""
        self.store.get(self.store.resource_type("v1", "ServiceAccount"), namespace, name)
        user = service_account_user(namespace, name)
        path = self.write_kubeconfig(path, token=token or secrets.token_urlsafe(24), user=user)
        config = yaml.safe_load(path.read_text())
        config["contexts"][0]["context"]["namespace"] = namespace
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # ------------------------------------------------------------------- plumbing

    def _authenticate(self, handler: BaseHTTPRequestHandler) -> str | None:
        auth = handler.headers.get("Authorization", "")
        if not auth:
            return "system:anonymous"
        if auth.startswith("Bearer "):
            return self.tokens.get(auth[7:].strip())
        return None

    @staticmethod
    def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
        length = handler.headers.get("Content-Length")
        if length:
            return handler.rfile.read(int(length))
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    handler.rfile.readline()
                    break
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
            return b"".join(chunks)
        return b""

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        body = self._read_body(handler)
        user = self._authenticate(handler)
        # Like the Go server, route on the decoded path (clients escape "/" in proxy paths).
        path = unquote(split.path)
        req = Request(handler, handler.command, path, query, split.query, body, user or "")
        status = 0
        try:
            rule = self.faults.take(req.method, req.path, watch=req.flag("watch"))
            if user is None:
                status = self._send_json(req, 401, _status(401, "Unauthorized", "Unauthorized"))
            elif rule is not None and not rule.in_stream:
                status = self._fire(req, rule)
            else:
                self._authorize(req)
                status = self._route(req, rule)
        except _Reset:
            # Logged before the reset, so a client that saw the reset also sees the record.
            self._log(req, 0)
            self._reset(handler)
            return
        except StoreError as exc:
            status = self._send_json(req, exc.code, _error_status(exc))
        except (BrokenPipeError, ConnectionResetError, _ClientGone):
            handler.close_connection = True
        if not req.logged:
            self._log(req, status)

    def _authorize(self, req: Request) -> None:
        """403 unless RBAC allows the request (after authentication and the fault layer, as
        the real filter chain runs authorization after priority and fairness)."""
        if req.user in self.superusers:
            return
        user = UserInfo.for_name(req.user)
        info = request_info(req.method, req.path, req.raw_query)
        req.auth = (user, info)
        decision = self.authorizer.authorize(user, info)
        if decision.allowed:
            return
        req.verb = info.verb
        raise Forbidden(
            forbidden_message(user.name, info, decision.reason),
            kind=info.resource,
            name=info.name,
            group=info.api_group,
        )

    def _authorize_create_on_apply(self, req: Request) -> None:
        """An apply that creates the object also needs `create` (handlers/patch.go checks it
        with the create attributes once it finds the object missing)."""
        # withAuthorization answers NewForbidden(gr, name, reason): no "User ... cannot".
        self._authorize_create(req, user_in_message=False)

    def _authorize_create(self, req: Request, *, user_in_message: bool) -> None:
        """403 unless RBAC also allows `create` on what the request addresses."""
        if req.auth is None:
            return
        user, info = req.auth
        create = info.with_verb("create")
        decision = self.authorizer.authorize(user, create)
        if decision.allowed:
            return
        message = (
            forbidden_message(user.name, create, decision.reason)
            if user_in_message
            else f"{qualified_resource(create)}{name_part(create)} is forbidden: {decision.reason}"
        )
        raise Forbidden(message, kind=create.resource, name=create.name, group=create.api_group)

    def _log(self, req: Request, status: int) -> None:
        """Record a request; done before the answer leaves, so whoever saw it finds the record."""
        if req.logged:
            return
        req.logged = True
        self.request_log.add(
            RequestRecord(
                req.method,
                req.path,
                req.raw_query,
                status,
                req.user,
                req.verb,
                req.header("Content-Type"),
            )
        )

    def _fire(self, req: Request, rule: FaultRule) -> int:
        req.verb = "fault"
        if rule.action == "throttle":
            body = _status(
                429,
                "TooManyRequests",
                rule.message or "Too many requests, please try again later.",
                {
                    "causes": [{"reason": "TooManyRequests", "message": "Too many requests"}],
                    "retryAfterSeconds": rule.retry_after,
                },
            )
            return self._send_json(req, 429, body, {"Retry-After": str(rule.retry_after)})
        if rule.action == "error":
            reason = "InternalError" if rule.code == 500 else "ServiceUnavailable"
            message = rule.message or "Internal error occurred: injected fault"
            return self._send_json(req, rule.code, _status(rule.code, reason, message))
        raise _Reset

    @staticmethod
    def _reset(handler: BaseHTTPRequestHandler) -> None:
        """Drop the connection with a TCP RST, as a crashing or overloaded peer does."""
        handler.close_connection = True
        sock = handler.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return

    def _send_json(
        self, req: Request, code: int, body: Any, headers: dict[str, str] | None = None
    ) -> int:
        data = json.dumps(body, separators=(",", ":")).encode()
        self._log(req, code)
        h = req.handler
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Audit-Id", str(len(self.request_log)))
        for warning in self.store.take_warnings():
            h.send_header("Warning", "299 - " + json.dumps(warning))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if req.method != "HEAD":
            h.wfile.write(data)
        return code

    def _send_text(self, req: Request, code: int, text: str) -> int:
        data = text.encode()
        self._log(req, code)
        h = req.handler
        h.send_response(code)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        return code

    def _start_stream(
        self,
        req: Request,
        code: int,
        content_type: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self._log(req, code)
        h = req.handler
        h.send_response(code)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        for k, v in headers or []:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.flush()

    @staticmethod
    def _chunk(req: Request, data: bytes) -> None:
        if not data:
            return
        try:
            req.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            req.handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise _ClientGone from exc

    @staticmethod
    def _end_stream(req: Request) -> None:
        try:
            req.handler.wfile.write(b"0\r\n\r\n")
            req.handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise _ClientGone from exc

    # -------------------------------------------------------------------- routing

    def _route(self, req: Request, rule: FaultRule | None) -> int:
        parts = [p for p in req.path.split("/") if p]
        if req.method == "GET" and parts in (["healthz"], ["readyz"], ["livez"]):
            req.verb = "health"
            return self._send_text(req, 200, "ok")
        if req.method == "GET" and parts == ["version"]:
            req.verb = "version"
            return self._send_json(req, 200, self._version())
        if parts[:1] == ["api"]:
            if len(parts) == 1:
                req.verb = "discovery"
                return self._send_json(req, 200, self._api_versions(req))
            if parts[1] != "v1":
                raise NotFound("the server could not find the requested resource")
            if len(parts) == 2:
                req.verb = "discovery"
                return self._send_json(req, 200, self._resource_list("", "v1"))
            return self._resource(req, "", "v1", parts[2:], rule)
        if parts[:1] == ["apis"]:
            if len(parts) == 1:
                req.verb = "discovery"
                return self._send_json(req, 200, self._group_list())
            if len(parts) == 2:
                req.verb = "discovery"
                group = self._group(parts[1])
                if group is None:
                    raise NotFound("the server could not find the requested resource")
                return self._send_json(req, 200, {"kind": "APIGroup", "apiVersion": "v1", **group})
            if len(parts) == 3:
                req.verb = "discovery"
                if not any(
                    rt.group == parts[1] and rt.version == parts[2]
                    for rt in self.store.resource_types()
                ):
                    raise NotFound("the server could not find the requested resource")
                return self._send_json(req, 200, self._resource_list(parts[1], parts[2]))
            return self._resource(req, parts[1], parts[2], parts[3:], rule)
        raise NotFound("the server could not find the requested resource")

    # ------------------------------------------------------------------ discovery

    @staticmethod
    def _version() -> Obj:
        minor = GIT_VERSION.split(".")[1]
        return {
            "major": "1",
            "minor": minor,
            "gitVersion": GIT_VERSION,
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.22.8",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def _api_versions(self, req: Request) -> Obj:
        host = req.header("Host") or self.url.removeprefix("http://")
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        }

    def _group(self, name: str) -> Obj | None:
        versions = sorted(
            {rt.version for rt in self.store.resource_types() if rt.group == name},
            key=_version_key,
            reverse=True,
        )
        if not versions:
            return None
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": entries, "preferredVersion": entries[0]}

    def _group_list(self) -> Obj:
        names = sorted({rt.group for rt in self.store.resource_types() if rt.group})
        groups = [g for g in (self._group(n) for n in names) if g is not None]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> Obj:
        resources: list[Obj] = []
        for rt in sorted(self.store.resource_types(), key=lambda r: r.plural):
            if rt.group != group or rt.version != version:
                continue
            entry: Obj = {
                "name": rt.plural,
                "singularName": rt.singular or rt.kind.lower(),
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": list(_VERBS),
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            resources.append(entry)
            for sub in sorted(rt.subresources):
                sub_entry: Obj = {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                }
                if sub == "status":
                    sub_entry.update(kind=rt.kind, verbs=["get", "patch", "update"])
                elif sub == "scale":
                    sub_entry.update(
                        group="autoscaling",
                        version="v1",
                        kind="Scale",
                        verbs=["get", "patch", "update"],
                    )
                elif sub == "log":
                    sub_entry.update(kind="Pod", verbs=["get"])
                elif sub == "proxy":
                    sub_entry.update(
                        kind=f"{rt.kind}ProxyOptions",
                        verbs=["create", "delete", "get", "patch", "update"],
                    )
                resources.append(sub_entry)
            if rt.group == "" and rt.kind == "Pod":
                resources.append(
                    {
                        "name": "pods/portforward",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "PodPortForwardOptions",
                        "verbs": ["create", "get"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    # ------------------------------------------------------------------ resources

    def _resource(
        self, req: Request, group: str, version: str, parts: list[str], rule: FaultRule | None
    ) -> int:
        namespace: str | None = None
        if parts[0] == "namespaces" and len(parts) >= 3:
            try:
                inner = self.store.by_plural(group, version, parts[2])
            except NotFound:
                inner = None
            if inner is not None and inner.namespaced:
                namespace = parts[1]
                parts = parts[2:]
        rt = self.store.by_plural(group, version, parts[0])
        name = parts[1] if len(parts) > 1 else None
        sub = parts[2] if len(parts) > 2 else None
        rest = parts[3:]
        if sub == "portforward" and rt.group == "" and rt.kind == "Pod" and name and namespace:
            req.verb = "portforward"
            return self._port_forward(req, namespace, name)
        if sub is not None and sub not in rt.subresources:
            raise NotFound("the server could not find the requested resource")
        if sub == "proxy" and name is not None:
            req.verb = "proxy"
            return self._proxy(
                req, rt, namespace or "", name, "/".join(rest), req.path.endswith("/")
            )
        if sub == "log" and name is not None:
            req.verb = "get"
            return self._logs(req, namespace or "", name)
        if rt.namespaced and namespace is None and (name is not None or req.method == "POST"):
            raise NotFound("the server could not find the requested resource")
        m = req.method
        if m == "GET" and name is None:
            if req.flag("watch"):
                req.verb = "watch"
                return self._watch(req, rt, namespace, rule)
            req.verb = "list"
            return self._list(req, rt, namespace)
        if m == "GET":
            req.verb = "get"
            obj = self.store.get(rt, namespace, name or "")
            if sub == "scale":
                return self._send_json(req, 200, self._scale_of(rt, obj))
            return self._send_json(req, 200, obj)
        if m == "POST" and name is None:
            req.verb = "create"
            return self._create(req, rt, namespace)
        if m == "PUT" and name is not None:
            req.verb = "update"
            return self._replace(req, rt, namespace, name, sub)
        if m == "PATCH" and name is not None:
            req.verb = "patch"
            return self._patch(req, rt, namespace, name, sub)
        if m == "DELETE" and name is not None and sub is None:
            req.verb = "delete"
            return self._delete(req, rt, namespace, name)
        if m == "DELETE" and name is None:
            req.verb = "deletecollection"
            return self._delete_collection(req, rt, namespace)
        return self._send_json(
            req,
            405,
            _status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ),
        )

    def _field_validation(self, req: Request) -> str:
        value = req.query.get("fieldValidation", "Warn") or "Warn"
        if value not in ("Strict", "Warn", "Ignore"):
            raise BadRequest(
                f'fieldValidation must be one of "Ignore", "Warn", or "Strict", got "{value}"'
            )
        return value

    def _dry_run(self, req: Request) -> bool:
        value = req.query.get("dryRun")
        if value is None:
            return False
        if value != "All":
            raise BadRequest(f'Invalid dry run value: "{value}"; only "All" is supported')
        return True

    def _manager(self, req: Request) -> str:
        manager = req.query.get("fieldManager")
        if manager:
            return manager
        agent = req.header("User-Agent")
        return agent.split("/", 1)[0] if agent else "unknown"

    def _body_object(self, req: Request, rt: ResourceType, namespace: str | None) -> Obj:
        body = req.json_body()
        if not isinstance(body, dict):
            raise BadRequest("the body of the request must be an object")
        body.setdefault("apiVersion", rt.api_version)
        body.setdefault("kind", rt.kind)
        if body["kind"] != rt.kind or body["apiVersion"] != rt.api_version:
            raise BadRequest(
                f"the API version in the data ({body['apiVersion']}) does not match the expected "
                f"API version ({rt.api_version})"
                if body["kind"] == rt.kind
                else f'the kind in the data ("{body["kind"]}") does not match "{rt.kind}"'
            )
        meta = body.setdefault("metadata", {})
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise BadRequest(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            meta["namespace"] = namespace
        return body

    def _list(self, req: Request, rt: ResourceType, namespace: str | None) -> int:
        items, rv = self.store.list(
            rt, namespace, req.query.get("labelSelector"), req.query.get("fieldSelector")
        )
        limit = req.query.get("limit")
        meta: Obj = {"resourceVersion": rv}
        if limit and limit.isdigit() and int(limit) > 0 and len(items) > int(limit):
            # No continue tokens: a truncated list says so, as the API allows.
            items = items[: int(limit)]
            meta["remainingItemCount"] = 0
        return self._send_json(
            req,
            200,
            {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta, "items": items},
        )

    def _create(self, req: Request, rt: ResourceType, namespace: str | None) -> int:
        obj = self._body_object(req, rt, namespace)
        ssa.record_update(None, obj, manager=self._manager(req), api_version=rt.api_version)
        created = self.store.create(
            obj, dry_run=self._dry_run(req), field_validation=self._field_validation(req)
        )
        return self._send_json(req, 201, created)

    def _replace(
        self, req: Request, rt: ResourceType, namespace: str | None, name: str, sub: str | None
    ) -> int:
        if sub == "scale":
            scale = req.json_body()
            if not isinstance(scale, dict) or scale.get("kind", "Scale") != "Scale":
                raise BadRequest("the body of a scale update must be an autoscaling/v1 Scale")
            return self._write_scale(req, rt, namespace, name, scale)
        obj = self._body_object(req, rt, namespace)
        if obj["metadata"].get("name") not in (None, name):
            raise BadRequest(
                f"the name of the object ({obj['metadata']['name']}) does not match the name on "
                f"the URL ({name})"
            )
        obj["metadata"]["name"] = name
        old = self.store.get(rt, namespace, name)
        return self._write(req, rt, old, obj, sub)

    def _write(self, req: Request, rt: ResourceType, old: Obj, new: Obj, sub: str | None) -> int:
        dry = self._dry_run(req)
        manager = self._manager(req)
        if "managedFields" not in (new.get("metadata") or {}):
            new["metadata"]["managedFields"] = clone(old["metadata"].get("managedFields") or [])
        ssa.record_update(old, new, manager=manager, api_version=rt.api_version, sub=sub or "")
        if sub == "status":
            out = self.store.update_status(new, dry_run=dry)
        else:
            out = self.store.update(new, dry_run=dry, field_validation=self._field_validation(req))
        return self._send_json(req, 200, out)

    def _patched(self, req: Request, rt: ResourceType, current: Obj) -> Obj:
        ctype = req.header("Content-Type").split(";")[0].strip()
        body = req.json_body()
        if ctype == "application/merge-patch+json":
            return json_merge_patch(current, body)
        if ctype == "application/json-patch+json":
            return json_patch(current, body)
        if ctype == "application/strategic-merge-patch+json":
            if rt.group not in _BUILTIN_GROUPS:
                raise StoreErrorWithCode(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: application/json-patch+json, application/merge-patch+json, "
                    "application/apply-patch+yaml",
                )
            return strategic_merge_patch(current, body)
        raise StoreErrorWithCode(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: "
            "application/json-patch+json, application/merge-patch+json, "
            "application/apply-patch+yaml, application/strategic-merge-patch+json",
        )

    def _patch(
        self, req: Request, rt: ResourceType, namespace: str | None, name: str, sub: str | None
    ) -> int:
        ctype = req.header("Content-Type").split(";")[0].strip()
        if ctype == "application/apply-patch+yaml":
            return self._apply(req, rt, namespace, name, sub)
        current = self.store.get(rt, namespace, name)
        if sub == "scale":
            scale = self._patched(req, rt, self._scale_of(rt, current))
            return self._write_scale(req, rt, namespace, name, scale)
        new = self._patched(req, rt, current)
        if not isinstance(new, dict):
            raise BadRequest("the patch did not produce an object")
        meta = new.setdefault("metadata", {})
        if meta.get("name") != name or (rt.namespaced and meta.get("namespace") != namespace):
            raise BadRequest("metadata.name and metadata.namespace cannot be changed by a patch")
        # A patch without a resourceVersion applies to whatever is current.
        if meta.get("resourceVersion") == current["metadata"]["resourceVersion"]:
            meta.pop("resourceVersion", None)
        return self._write(req, rt, current, new, sub)

    def _apply(
        self, req: Request, rt: ResourceType, namespace: str | None, name: str, sub: str | None
    ) -> int:
        manager = req.query.get("fieldManager")
        if not manager:
            raise BadRequest("PATCH, fieldManager: Required value: is required for apply patch")
        applied = self._body_object(req, rt, namespace)
        if applied["metadata"].get("name") not in (None, name):
            raise BadRequest("the name of the object does not match the name on the URL")
        applied["metadata"]["name"] = name
        force = req.flag("force")
        dry = self._dry_run(req)
        fv = self._field_validation(req)
        try:
            live: Obj | None = self.store.get(rt, namespace, name)
        except NotFound:
            live = None
        if live is None:
            if sub:
                raise NotFound(
                    f'{qualified(rt)} "{name}" not found', kind=rt.plural, name=name, group=rt.group
                )
            self._authorize_create_on_apply(req)
            result = ssa.server_side_apply(
                None, applied, manager=manager, force=force, api_version=rt.api_version
            )
            return self._send_json(
                req, 201, self.store.create(result, dry_run=dry, field_validation=fv)
            )
        result = ssa.server_side_apply(
            live, applied, manager=manager, force=force, api_version=rt.api_version, sub=sub or ""
        )
        want = applied["metadata"].get("resourceVersion")
        result["metadata"]["resourceVersion"] = want or live["metadata"]["resourceVersion"]
        if sub == "status":
            out = self.store.update_status(result, dry_run=dry)
        else:
            out = self.store.update(result, dry_run=dry, field_validation=fv)
        return self._send_json(req, 200, out)

    def _delete_options(self, req: Request) -> Obj:
        opts: Obj = {}
        if req.body:
            try:
                parsed = json.loads(req.body)
            except ValueError as exc:
                raise BadRequest(f"invalid DeleteOptions: {exc}") from exc
            if isinstance(parsed, dict):
                opts = parsed
        for key in ("propagationPolicy", "gracePeriodSeconds", "dryRun"):
            if key in req.query:
                opts[key] = req.query[key]
        if isinstance(opts.get("dryRun"), list):
            opts["dryRun"] = opts["dryRun"][0] if opts["dryRun"] else None
        if opts.get("dryRun") not in (None, "All"):
            raise BadRequest(f'Invalid dry run value: "{opts["dryRun"]}"')
        return opts

    def _delete(self, req: Request, rt: ResourceType, namespace: str | None, name: str) -> int:
        opts = self._delete_options(req)
        pre = opts.get("preconditions") or {}
        grace = opts.get("gracePeriodSeconds")
        propagation = opts.get("propagationPolicy") or "Background"
        out = self.store.delete(
            rt,
            namespace,
            name,
            propagation=propagation,
            grace_period_seconds=int(grace) if grace is not None else None,
            dry_run=opts.get("dryRun") == "All",
            expect_rv=pre.get("resourceVersion"),
            expect_uid=pre.get("uid"),
        )
        if out["metadata"].get("deletionTimestamp") and self._exists(rt, namespace, name, out):
            return self._send_json(req, 200, out)
        finalizer = _GC_FINALIZERS.get(propagation)
        if finalizer and not out["metadata"].get("deletionTimestamp"):
            # The real store first writes the GC finalizer and a deletionTimestamp and answers
            # with that object; the garbage collector removes it afterwards. Here both steps
            # already happened (no dependents to wait for), so answer what the first one wrote.
            marked = clone(out)
            meta = marked["metadata"]
            meta["deletionTimestamp"] = now_iso()
            meta["deletionGracePeriodSeconds"] = 0
            meta["finalizers"] = [*(meta.get("finalizers") or []), finalizer]
            return self._send_json(req, 200, marked)
        if (rt.group, rt.kind) in _RETURNS_DELETED_OBJECT:
            return self._send_json(req, 200, out)
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": rt.group,
                "kind": rt.plural,
                "uid": out["metadata"]["uid"],
            },
        }
        return self._send_json(req, 200, body)

    def _exists(self, rt: ResourceType, namespace: str | None, name: str, seen: Obj) -> bool:
        try:
            return self.store.get(rt, namespace, name)["metadata"]["uid"] == seen["metadata"]["uid"]
        except NotFound:
            return False

    def _delete_collection(self, req: Request, rt: ResourceType, namespace: str | None) -> int:
        opts = self._delete_options(req)
        items, _ = self.store.list(
            rt, namespace, req.query.get("labelSelector"), req.query.get("fieldSelector")
        )
        for item in items:
            try:
                self.store.delete(
                    rt,
                    item["metadata"].get("namespace"),
                    item["metadata"]["name"],
                    propagation=opts.get("propagationPolicy") or "Background",
                    dry_run=opts.get("dryRun") == "All",
                )
            except NotFound:
                continue
        return self._send_json(
            req,
            200,
            {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": {}, "items": items},
        )

    # ---------------------------------------------------------------------- scale

    @staticmethod
    def _scale_of(rt: ResourceType, obj: Obj) -> Obj:
        meta = obj["metadata"]
        status = obj.get("status") or {}
        selector = status.get("selector") or status.get("hpaPodSelector")
        if not selector:
            match = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": int((obj.get("spec") or {}).get("replicas", 0))},
            "status": {"replicas": int(status.get("replicas", 0)), "selector": selector},
        }

    def _write_scale(
        self, req: Request, rt: ResourceType, namespace: str | None, name: str, scale: Obj
    ) -> int:
        current = self.store.get(rt, namespace, name)
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise StoreErrorWithCode(
                422,
                "Invalid",
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                f"{json.dumps(replicas)}: "
                "must be greater than or equal to 0",
            )
        want_rv = (scale.get("metadata") or {}).get("resourceVersion")
        current.setdefault("spec", {})["replicas"] = replicas
        current["metadata"]["resourceVersion"] = want_rv or current["metadata"]["resourceVersion"]
        out = self.store.update(current, dry_run=self._dry_run(req))
        return self._send_json(req, 200, self._scale_of(rt, out))

    # ---------------------------------------------------------------------- watch

    def _watch(
        self, req: Request, rt: ResourceType, namespace: str | None, rule: FaultRule | None
    ) -> int:
        try:
            reqs = parse_label_selector(req.query.get("labelSelector"))
            fmatch = parse_field_selector(req.query.get("fieldSelector"), rt.kind)
        except SelectorError as exc:
            raise BadRequest(str(exc)) from exc
        timeout = float(req.query.get("timeoutSeconds") or self.default_watch_timeout)
        bookmarks = req.flag("allowWatchBookmarks")

        def matches(obj: Obj) -> bool:
            meta = obj.get("metadata") or {}
            if namespace and rt.namespaced and meta.get("namespace") != namespace:
                return False
            return labels_match(reqs, meta.get("labels")) and fmatch(obj)

        rv_param = req.query.get("resourceVersion", "")
        current, list_rv = self.store.list(rt, namespace)
        initial: list[Obj] = []
        if rv_param in ("", "0"):
            initial = [o for o in current if matches(o)]
            last_rv = int(list_rv)
        else:
            try:
                last_rv = int(rv_param)
            except ValueError as exc:
                raise BadRequest(f'invalid resource version "{rv_param}"') from exc
        self._start_stream(req, 200, "application/json")
        deadline = time.monotonic() + timeout
        sent = 0
        gone_after = (rule.after_events or 0) if rule and rule.action == "gone_watch" else None
        cut_events = rule.after_events if rule is not None and gone_after is None else None
        cut_at = (
            time.monotonic() + rule.after_seconds
            if rule is not None and rule.after_seconds is not None
            else None
        )

        def emit(type_: str, obj: Obj) -> None:
            nonlocal sent
            if cut_events is not None and sent >= cut_events:
                raise _Reset
            line = (
                json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"
            )
            self._chunk(req, line)
            sent += 1

        for obj in initial:
            emit("ADDED", obj)
        last_bookmark = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if cut_at is not None and now >= cut_at:
                raise _Reset
            if cut_events is not None and sent >= cut_events:
                raise _Reset
            if gone_after is not None and sent >= gone_after:
                emit("ERROR", _status(410, "Expired", f"too old resource version: {last_rv}"))
                break
            wait = deadline - now
            if bookmarks:
                wait = min(wait, max(0.0, last_bookmark + self.bookmark_interval - now))
            if cut_at is not None:
                wait = min(wait, max(0.0, cut_at - now))
            try:
                events, newest = self.store.events_since(rt.storage_key, last_rv, max(wait, 0.001))
            except Gone as exc:
                emit("ERROR", _status(410, "Expired", exc.message))
                break
            for ev in events:
                last_rv = ev.rv
                obj = {**ev.obj, "apiVersion": rt.api_version}
                # Objects entering or leaving the selection are ADDED / DELETED for this watch.
                was = ev.prev is not None and matches(ev.prev)
                now_in = matches(obj)
                if ev.type == "DELETED":
                    if now_in:
                        emit("DELETED", obj)
                elif now_in:
                    emit(ev.type if was else "ADDED", obj)
                elif was:
                    emit("DELETED", obj)
            if bookmarks and time.monotonic() - last_bookmark >= self.bookmark_interval:
                last_rv = max(last_rv, newest) if not events else last_rv
                emit(
                    "BOOKMARK",
                    {
                        "kind": rt.kind,
                        "apiVersion": rt.api_version,
                        "metadata": {"resourceVersion": str(last_rv)},
                    },
                )
                last_bookmark = time.monotonic()
        self._end_stream(req)
        return 200

    # ----------------------------------------------------------------------- logs

    def _logs(self, req: Request, namespace: str, name: str) -> int:
        pod = self.store.get(self.store.resource_type("v1", "Pod"), namespace, name)
        containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
        container = req.query.get("container")
        if not container:
            if len(containers) != 1:
                raise BadRequest(
                    f"a container name must be specified for pod {name}, choose one of: "
                    f"[{' '.join(containers)}]"
                )
            container = containers[0]
        init = [c["name"] for c in (pod.get("spec") or {}).get("initContainers") or []]
        if container not in containers and container not in init:
            raise BadRequest(f"container {container} is not valid for pod {name}")
        previous = req.flag("previous")
        if previous and not self.store.has_previous_log(namespace, name, container):
            raise BadRequest(
                f'previous terminated container "{container}" in pod "{name}" not found'
            )
        tail = req.query.get("tailLines")
        tail_lines = int(tail) if tail and tail.lstrip("-").isdigit() else None
        lines = self.store.read_log(
            namespace, name, container, previous=previous, tail_lines=tail_lines
        )
        if not req.flag("follow") or previous:
            return self._send_text(req, 200, "".join(f"{line}\n" for line in lines))
        self._start_stream(req, 200, "text/plain")
        self._chunk(req, "".join(f"{line}\n" for line in lines).encode())
        seen = len(self.store.read_log(namespace, name, container))
        pod_rt = self.store.resource_type("v1", "Pod")
        while not self._stopping.is_set():
            more = self.store.wait_log(namespace, name, container, seen, timeout=0.5)
            if more:
                seen += len(more)
                self._chunk(req, "".join(f"{line}\n" for line in more).encode())
                continue
            if not self._exists(pod_rt, namespace, name, pod):
                break
        self._end_stream(req)
        return 200

    # ---------------------------------------------------------------- port-forward

    def _port_forward(self, req: Request, namespace: str, name: str) -> int:
        h = req.handler
        pod = self.store.get(self.store.resource_type("v1", "Pod"), namespace, name)
        if req.method == "POST":
            raise BadRequest("the sandbox serves port-forward over WebSockets only, not SPDY")
        if req.method != "GET":
            raise StoreErrorWithCode(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        # A WebSocket upgrade is a GET, authorized as `get` by the filter chain; since 1.35
        # (AuthorizePodWebsocketUpgradeCreatePermission, on by default) exec, attach and
        # portforward upgrades also need `create`, as the SPDY POST always did.
        self._authorize_create(req, user_in_message=True)
        if "websocket" not in req.header("Upgrade").lower() or not req.header("Sec-WebSocket-Key"):
            raise BadRequest("Upgrade request required")
        if PORT_FORWARD_PROTOCOL not in offered_protocols(req.header("Sec-WebSocket-Protocol")):
            raise BadRequest(
                f"unable to upgrade: no supported subprotocol offered (want "
                f"{PORT_FORWARD_PROTOCOL})"
            )
        try:
            ports = parse_ports(parse_qs(req.raw_query).get("ports", []))
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        if not ports:
            raise BadRequest("at least one port must be specified")
        if not (pod.get("spec") or {}).get("nodeName"):
            raise BadRequest(f"pod {name} does not have a host assigned")
        phase = (pod.get("status") or {}).get("phase")
        if phase != "Running" or pod["metadata"].get("deletionTimestamp"):
            raise BadRequest(
                f"unable to forward port because pod is not running. Current status={phase}"
            )
        pod_ip = (pod.get("status") or {}).get("podIP", "")
        uid = pod["metadata"].get("uid", "")

        def dial(port: int) -> socket.socket:
            url = self.network.resolve(namespace, name, port)
            if url is None:
                raise ConnectionRefusedError("connect: connection refused")
            parts = urlsplit(url)
            sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), 10)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock

        def describe(port: int, exc: OSError) -> str:
            # The container runtime's wording (dial inside the pod's network namespace).
            reason = exc.strerror or str(exc) or type(exc).__name__
            return (
                f"error forwarding port {port} to pod {uid}, uid : failed to connect to "
                f"localhost:{port} inside namespace of pod {pod_ip}, IPv4: dial tcp4 "
                f"127.0.0.1:{port}: {reason.lower()}"
            )

        self._log(req, 101)
        h.send_response(101)
        h.send_header("Upgrade", "websocket")
        h.send_header("Connection", "Upgrade")
        h.send_header("Sec-WebSocket-Accept", accept_key(req.header("Sec-WebSocket-Key")))
        h.send_header("Sec-WebSocket-Protocol", PORT_FORWARD_PROTOCOL)
        h.end_headers()
        h.wfile.flush()
        h.close_connection = True
        sock = h.connection
        with self._streams_lock:
            self._streams.add(sock)
        try:
            PortForwardSession(sock, h.rfile, ports, dial, describe).run()
        finally:
            with self._streams_lock:
                self._streams.discard(sock)
        return 101

    # ---------------------------------------------------------------------- proxy

    @staticmethod
    def _pod_ready(pod: Obj) -> bool:
        if pod["metadata"].get("deletionTimestamp"):
            return False
        conds = (pod.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    @staticmethod
    def _container_port(pod: Obj, target: int | str) -> int | None:
        if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
            return int(target)
        for c in (pod.get("spec") or {}).get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == target:
                    return int(p["containerPort"])
        return None

    def _proxy(
        self, req: Request, rt: ResourceType, namespace: str, name_spec: str, rest: str, slash: bool
    ) -> int:
        bits = name_spec.split(":")
        if len(bits) == 3:
            scheme, name, port_spec = bits
        elif len(bits) == 2:
            scheme, (name, port_spec) = "http", bits
        else:
            scheme, name, port_spec = "http", bits[0], ""
        if scheme != "http":
            raise BadRequest(f"unsupported proxy scheme {scheme!r} in the sandbox")
        if rt.kind == "Service":
            svc = self.store.get(rt, namespace, name)
            url = self._service_backend(svc, port_spec)
        elif rt.kind == "Pod":
            pod = self.store.get(rt, namespace, name)
            port = self._container_port(pod, port_spec) if port_spec else None
            if port is None:
                first = [
                    p for c in pod["spec"].get("containers") or [] for p in c.get("ports") or []
                ]
                port = int(first[0]["containerPort"]) if first and not port_spec else 80
            url = self.network.resolve(namespace, name, port)
            if url is None:
                raise StoreErrorWithCode(
                    503,
                    "ServiceUnavailable",
                    "error trying to reach service: dial tcp "
                    f"{(pod.get('status') or {}).get('podIP', '')}:"
                    f"{port}: connect: connection refused",
                )
        else:
            raise NotFound("the server could not find the requested resource")
        target = "/" + rest + ("/" if slash and rest else "")
        if req.raw_query:
            target += "?" + req.raw_query
        return self._forward(req, url, target)

    def _service_backend(self, svc: Obj, port_spec: str) -> str:
        name = svc["metadata"]["name"]
        ns = svc["metadata"]["namespace"]
        ports = (svc.get("spec") or {}).get("ports") or []
        chosen = None
        for p in ports:
            if not port_spec or port_spec in (p.get("name"), str(p.get("port"))):
                chosen = p
                break
        if chosen is None:
            raise StoreErrorWithCode(
                503,
                "ServiceUnavailable",
                f'no endpoints available for service "{name}:{port_spec}"',
            )
        selector = (svc.get("spec") or {}).get("selector") or {}
        candidates: list[str] = []
        if selector:
            pods, _ = self.store.list(
                self.store.resource_type("v1", "Pod"),
                ns,
                ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
            )
            for pod in pods:
                if not self._pod_ready(pod):
                    continue
                port = self._container_port(pod, chosen.get("targetPort", chosen.get("port")))
                url = (
                    self.network.resolve(ns, pod["metadata"]["name"], port)
                    if port is not None
                    else None
                )
                if url:
                    candidates.append(url)
        if not candidates:
            raise StoreErrorWithCode(
                503, "ServiceUnavailable", f'no endpoints available for service "{name}"'
            )
        self._rr += 1
        return candidates[self._rr % len(candidates)]

    def _forward(self, req: Request, url: str, target: str) -> int:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=300
        )
        headers = {k: v for k, v in req.handler.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["Host"] = parts.netloc
        try:
            conn.request(
                req.method,
                (parts.path or "") + quote(target, safe="/?=&%:@,;+!$'()*~-._"),
                body=req.body or None,
                headers=headers,
            )
            resp = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise StoreErrorWithCode(
                503, "ServiceUnavailable", f"error trying to reach service: {exc}"
            ) from exc
        try:
            out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_HEADERS]
            if req.method == "HEAD" or resp.status in (204, 304):
                self._log(req, resp.status)
                h = req.handler
                h.send_response(resp.status)
                for k, v in out_headers:
                    h.send_header(k, v)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return resp.status
            self._start_stream(
                req,
                resp.status,
                resp.getheader("Content-Type", "application/octet-stream"),
                [(k, v) for k, v in out_headers if k.lower() != "content-type"],
            )
            while True:
                try:
                    data = resp.read1(65536)
                except OSError:
                    raise _Reset from None  # the backend died mid-response: so does ours
                if not data:
                    break
                self._chunk(req, data)
            self._end_stream(req)
            return resp.status
        finally:
            conn.close()


class StoreErrorWithCode(StoreError):
    """A Status with an explicit code and reason (415, 503, ...)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
