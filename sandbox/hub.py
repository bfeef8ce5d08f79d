"""A local ModelScope hub speaking the wire protocol the ``modelscope`` library (1.40.2, via
``modelscope-hub`` 0.5.1) uses, on a free 127.0.0.1 port.

Use::

    with HubServer(tmp_path / "hub") as hub:                 # start() -> "http://127.0.0.1:P"
        hub.add_revision_from_dir("acme/tiny", "v1", model_dir)   # also becomes `master`
        hub.add_revision("acme/tiny", "v2", {"config.json": b"{}", "w.bin": Path(...)})
        hub.move_branch("acme/tiny", "master", "v2")         # v1 stays reachable as "v1"
        os.environ["MODELSCOPE_ENDPOINT"] = hub.base_url       # before the first hub call

Endpoints (all JSON bodies use the hub's ``{"Code","Data","Message","RequestId","Success"}``
envelope; errors keep that envelope so the library raises ``NotExistError`` & co.):

- ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=&Root=`` file listing:
  ``Data.Files[]`` entries with ``Path, Name, Type ("blob"|"tree"), Sha256, Size, Revision``
  (``Revision`` is the concrete revision a branch resolved to).
- ``GET|HEAD /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=`` file bytes: 200 without
  ``Range``; ``bytes=N-``, ``bytes=N-M``, ``bytes=-S`` -> 206 + exact ``Content-Range``;
  unsatisfiable -> 416 + ``Content-Range: bytes */SIZE``.
- ``GET /api/v1/models/{owner}/{name}`` (legacy model info) and
  ``GET /openapi/v1/models/{owner}/{name}`` (what ``HubApi.get_model`` asks first).
- ``GET /api/v1/models/{owner}/{name}/revisions``: ``Data.RevisionMap.{Branches,Tags}``
  (branches are the moving names, every added revision is listed as a tag).
- ``GET /api/v1/repos/internalAccelerationInfo``: 404, as off Alibaba Cloud.

Files given as ``Path`` are served from disk by reference (``sendfile``); their sha256/size are
computed once and cached by inode, so a hardlinked shard shared by two revisions is hashed once.

Faults (``hub.faults``, thread-safe, count-limited; ``clear()`` removes all):
``drop_after_bytes(file_path, nbytes, times=1)``, ``wrong_sha256(file_path)``,
``server_error(path_contains, times=1, status=503)``,
``slow_first_byte(seconds, path_contains="", times=None)``; hostile answers for issue 18:
``hostile_listing(entries, model_id=None, skip=0, times=None)`` (raw ``Data.Files`` entries
merged into a listing: an entry whose ``Path`` is listed replaces fields of it, others are
added; ``skip`` listings are answered truthfully first, so ``skip=1`` makes the *second*
listing differ from the first; an entry's ``Body`` (text) is left out of the listing and
served as the bytes of its ``Path``, so a hostile path is downloadable like a real file),
``bad_content_range(file_path, header, times=1)`` (a 206 whose ``Content-Range`` is
``header``; the body is still the range asked for).

Bandwidth: ``bandwidth_bytes_per_s`` caps each connection, ``aggregate_bandwidth_bytes_per_s``
caps all connections together (the link); both may be set, the tighter one wins.

Observation: ``request_log`` (``HubRequest`` records), ``bytes_served`` (body bytes sent) and
``stats()``; from another process the same through ``/__sandbox/stats`` and
``/__sandbox/requests`` (see ``sandbox.http``; ``sandbox.storage_proc`` runs the hub there).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from sandbox.http import (
    ByteCounter,
    ConnectionDropped,
    RequestLog,
    SandboxHandler,
    SandboxServer,
)

_HASH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int
    bytes_sent: int
    range: str | None = None


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str
    source: Path | None = None
    data: bytes | None = None


@dataclass
class _Repo:
    revisions: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    revision_created: dict[str, int] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class _Rule:
    times: int | None  # None: forever

    def take(self) -> bool:
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass
class _DropRule(_Rule):
    file_path: str
    nbytes: int
    model_id: str | None


@dataclass
class _ErrorRule(_Rule):
    path_contains: str
    status: int


@dataclass
class _SlowRule(_Rule):
    path_contains: str
    seconds: float


@dataclass
class _ListingRule(_Rule):
    entries: list[dict[str, object]]
    model_id: str | None
    skip: int


@dataclass
class _RangeRule(_Rule):
    file_path: str
    header: str


class HubFaults:
    """Scripted misbehaviour; every rule is consumed as it fires."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drops: list[_DropRule] = []
        self._errors: list[_ErrorRule] = []
        self._slow: list[_SlowRule] = []
        self._wrong_sha: dict[tuple[str | None, str], str] = {}
        self._listings: list[_ListingRule] = []
        self._ranges: list[_RangeRule] = []
        self._bodies: dict[tuple[str | None, str], bytes] = {}

    def drop_after_bytes(
        self, file_path: str, nbytes: int, *, times: int = 1, model_id: str | None = None
    ) -> None:
        """Cut the connection after ``nbytes`` of the body of the next ``times`` GETs."""
        with self._lock:
            self._drops.append(_DropRule(times, file_path, nbytes, model_id))

    def wrong_sha256(self, file_path: str, *, model_id: str | None = None) -> str:
        """List a wrong sha256 for the file (the bytes served stay right); returns it."""
        bogus = hashlib.sha256(f"wrong:{model_id}:{file_path}".encode()).hexdigest()
        with self._lock:
            self._wrong_sha[(model_id, file_path)] = bogus
        return bogus

    def server_error(self, path_contains: str, *, times: int = 1, status: int = 503) -> None:
        """Answer ``status`` to the next ``times`` requests whose path?query contains the text."""
        if not 500 <= status <= 599:
            raise ValueError("server_error wants a 5xx status")
        with self._lock:
            self._errors.append(_ErrorRule(times, path_contains, status))

    def slow_first_byte(
        self, seconds: float, *, path_contains: str = "", times: int | None = None
    ) -> None:
        """Delay the status line of matching requests by ``seconds``."""
        with self._lock:
            self._slow.append(_SlowRule(times, path_contains, seconds))

    def hostile_listing(
        self,
        entries: list[dict[str, object]],
        *,
        model_id: str | None = None,
        skip: int = 0,
        times: int | None = None,
    ) -> None:
        """Merge raw ``Data.Files`` entries into the listings of ``model_id`` (any when None)
        after ``skip`` truthful ones, for ``times`` listings (None: every one after)."""
        listed: list[dict[str, object]] = []
        with self._lock:
            for entry in entries:
                entry = dict(entry)
                body = entry.pop("Body", None)
                if body is not None:
                    self._bodies[(model_id, str(entry.get("Path")))] = str(body).encode()
                listed.append(entry)
            self._listings.append(_ListingRule(times, listed, model_id, skip))

    def bad_content_range(self, file_path: str, header: str, *, times: int = 1) -> None:
        """Answer the next ``times`` ranged GETs of ``file_path`` with ``Content-Range: header``."""
        with self._lock:
            self._ranges.append(_RangeRule(times, file_path, header))

    def clear(self) -> None:
        with self._lock:
            self._drops.clear()
            self._errors.clear()
            self._slow.clear()
            self._wrong_sha.clear()
            self._listings.clear()
            self._ranges.clear()
            self._bodies.clear()

    # -- used by the handler ------------------------------------------------------------
    def _take_error(self, target: str) -> int | None:
        with self._lock:
            for rule in self._errors:
                if rule.path_contains in target and rule.take():
                    return rule.status
        return None

    def _take_slow(self, target: str) -> float:
        with self._lock:
            for rule in self._slow:
                if rule.path_contains in target and rule.take():
                    return rule.seconds
        return 0.0

    def _take_drop(self, model_id: str, file_path: str) -> int | None:
        with self._lock:
            for rule in self._drops:
                if (
                    rule.file_path == file_path
                    and rule.model_id in (None, model_id)
                    and rule.take()
                ):
                    return rule.nbytes
        return None

    def _take_listing(self, model_id: str) -> list[dict[str, object]]:
        merged: list[dict[str, object]] = []
        with self._lock:
            for rule in self._listings:
                if rule.model_id not in (None, model_id):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                if rule.take():
                    merged.extend(dict(e) for e in rule.entries)
        return merged

    def _hostile_body(self, model_id: str, file_path: str) -> HubFile | None:
        with self._lock:
            body = self._bodies.get((model_id, file_path), self._bodies.get((None, file_path)))
        if body is None:
            return None
        return HubFile(file_path, len(body), hashlib.sha256(body).hexdigest(), data=body)

    def _take_range(self, file_path: str) -> str | None:
        with self._lock:
            for rule in self._ranges:
                if rule.file_path == file_path and rule.take():
                    return rule.header
        return None

    def _listed_sha(self, model_id: str, file_path: str, real: str) -> str:
        with self._lock:
            return self._wrong_sha.get(
                (model_id, file_path), self._wrong_sha.get((None, file_path), real)
            )


class _HashCache:
    """sha256 by (device, inode, size, mtime): computed once per distinct file on disk."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int, int, int], str] = {}

    def sha256(self, path: Path) -> tuple[int, str]:
        st = path.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while block := fh.read(_HASH_CHUNK):
                    digest.update(block)
            cached = digest.hexdigest()
            with self._lock:
                self._cache[key] = cached
        return st.st_size, cached


class HubError(Exception):
    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else status


_MODEL_ROUTE = re.compile(
    r"^/api/v1/models/(?P<owner>[^/]+)/(?P<name>[^/]+)(?P<rest>/repo/files|/repo|/revisions)?/?$"
)
_OPENAPI_MODEL_ROUTE = re.compile(r"^/openapi/v1/models/(?P<owner>[^/]+)/(?P<name>[^/]+)/?$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class HubServer(SandboxServer):
    """The ModelScope hub stand-in. See the module docstring for endpoints and faults."""

    def __init__(
        self,
        root: Path,
        *,
        bandwidth_bytes_per_s: int | None = None,
        aggregate_bandwidth_bytes_per_s: int | None = None,
    ) -> None:
        super().__init__(
            bandwidth_bytes_per_s=bandwidth_bytes_per_s,
            aggregate_bandwidth_bytes_per_s=aggregate_bandwidth_bytes_per_s,
        )
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.faults = HubFaults()
        self.request_log: RequestLog[HubRequest] = RequestLog()
        self._bytes_served = ByteCounter()
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self._hashes = _HashCache()

    handler_class: type[SandboxHandler]  # set below, after the handler is defined

    @property
    def bytes_served(self) -> int:
        return self._bytes_served.value

    def reset_counters(self) -> None:
        self.settle()
        self._bytes_served.reset()
        self.request_log.clear()

    def stats(self) -> dict[str, object]:
        records = self.request_log.snapshot()
        by_status: dict[str, int] = {}
        for r in records:
            by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
        file_gets = [r for r in records if r.method == "GET" and r.path.endswith("/repo")]
        return {
            **super().stats(),
            "bytes_served": self.bytes_served,
            "requests": len(records),
            "requests_by_status": by_status,
            "file_gets": len(file_gets),
            "range_gets": sum(1 for r in file_gets if r.range),
        }

    def request_records(self) -> list[dict[str, object]]:
        return [asdict(r) for r in self.request_log.snapshot()]

    # -- content --------------------------------------------------------------------------
    def add_revision(self, model_id: str, revision: str, files: Mapping[str, Path | bytes]) -> None:
        """Publish ``revision`` of ``model_id``; the first revision also becomes ``master``."""
        _check_model_id(model_id)
        entries: dict[str, HubFile] = {}
        for rel, content in files.items():
            rel_path = rel.strip("/")
            if not rel_path or ".." in rel_path.split("/"):
                raise ValueError(f"bad file path {rel!r}")
            if isinstance(content, bytes):
                entries[rel_path] = HubFile(
                    rel_path, len(content), hashlib.sha256(content).hexdigest(), data=content
                )
            else:
                source = Path(content).resolve()
                size, sha = self._hashes.sha256(source)
                entries[rel_path] = HubFile(rel_path, size, sha, source=source)
        with self._lock:
            repo = self._repos.setdefault(model_id, _Repo())
            if revision in repo.branches:
                raise ValueError(f"{revision!r} is a branch of {model_id}")
            repo.revisions[revision] = entries
            repo.revision_created[revision] = int(time.time())
            repo.branches.setdefault("master", revision)

    def add_revision_from_dir(self, model_id: str, revision: str, directory: Path) -> None:
        directory = Path(directory)
        files: dict[str, Path | bytes] = {
            p.relative_to(directory).as_posix(): p
            for p in sorted(directory.rglob("*"))
            if p.is_file()
        }
        self.add_revision(model_id, revision, files)

    def move_branch(self, model_id: str, branch: str, to_revision: str) -> None:
        with self._lock:
            repo = self._repos.get(model_id)
            if repo is None or to_revision not in repo.revisions:
                raise KeyError(f"{model_id}@{to_revision} does not exist")
            if branch in repo.revisions:
                raise ValueError(f"{branch!r} is a revision name, not a branch")
            repo.branches[branch] = to_revision

    def files(self, model_id: str, revision: str = "master") -> dict[str, HubFile]:
        """The files a revision (or branch) resolves to, with their true sha256 and size."""
        with self._lock:
            return dict(self._resolve(model_id, revision)[1])

    def _resolve(self, model_id: str, revision: str) -> tuple[str, dict[str, HubFile]]:
        repo = self._repos.get(model_id)
        if repo is None:
            raise HubError(404, f"Model {model_id} does not exist", 10010205001)
        concrete = repo.branches.get(revision, revision)
        entries = repo.revisions.get(concrete)
        if entries is None:
            raise HubError(404, f"Revision {revision} of model {model_id} does not exist")
        return concrete, entries

    def _repo(self, model_id: str) -> _Repo:
        repo = self._repos.get(model_id)
        if repo is None:
            raise HubError(404, f"Model {model_id} does not exist", 10010205001)
        return repo


def _check_model_id(model_id: str) -> None:
    parts = model_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"model id must be owner/name, got {model_id!r}")


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class _HubHandler(SandboxHandler):
    def _hub(self) -> HubServer:
        owner = self.server.owner
        assert isinstance(owner, HubServer)
        return owner

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, *, head: bool) -> None:
        hub = self._hub()
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        self._log_path, self._log_query = path, query
        self._sent = 0
        self._range_header = self.headers.get("Range")
        request_id = uuid.uuid4().hex
        target = f"{path}?{split.query}" if split.query else path
        try:
            delay = hub.faults._take_slow(target)
            if delay:
                # Simulates a slow origin: nothing is written until the delay has passed.
                time.sleep(delay)
            status = hub.faults._take_error(target)
            if status is not None:
                raise HubError(status, "Internal server error, please retry later", status)
            self._route(hub, path, query, request_id, head=head)
        except HubError as exc:
            self._send_json(
                exc.status,
                {
                    "Code": exc.code,
                    "Message": exc.message,
                    "RequestId": request_id,
                    "Success": False,
                },
                request_id,
                head=head,
            )
        except ConnectionDropped:
            self._record(self._status)
            return
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            self._record(self._status)
            return

    def _record(self, status: int) -> None:
        self._hub().request_log.append(
            HubRequest(
                self.command,
                self._log_path,
                self._log_query,
                status,
                self._sent,
                self._range_header,
            )
        )

    def _send_json(
        self, status: int, payload: object, request_id: str, *, head: bool = False
    ) -> None:
        body = json.dumps(payload).encode()
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-ID", request_id)
        self.end_headers()
        if not head:
            self._sent = self.send_body(body)
            self._hub()._bytes_served.add(self._sent)
        self._record(status)

    def _ok(self, data: object, request_id: str, *, head: bool) -> None:
        self._send_json(
            200,
            {
                "Code": 200,
                "Data": data,
                "Message": "success",
                "RequestId": request_id,
                "Success": True,
            },
            request_id,
            head=head,
        )

    def _route(
        self, hub: HubServer, path: str, query: dict[str, str], request_id: str, *, head: bool
    ) -> None:
        if path == "/api/v1/repos/internalAccelerationInfo":
            raise HubError(404, "not within an Alibaba Cloud region")
        m = _OPENAPI_MODEL_ROUTE.match(path)
        if m:
            self._openapi_model(hub, f"{m['owner']}/{m['name']}", request_id, head=head)
            return
        m = _MODEL_ROUTE.match(path)
        if m is None:
            raise HubError(404, f"no such API: {path}")
        model_id = f"{m['owner']}/{m['name']}"
        rest = m["rest"] or ""
        revision = query.get("Revision") or "master"
        with hub._lock:
            if rest == "/repo/files":
                data: object = self._listing(hub, model_id, revision, query)
            elif rest == "/revisions":
                data = self._revisions(hub, model_id)
            elif rest == "/repo":
                raw_path = query.get("FilePath") or ""
                file_path = raw_path.strip("/")
                _, entries = hub._resolve(model_id, revision)
                entry = entries.get(file_path) or hub.faults._hostile_body(model_id, raw_path)
                if entry is None:
                    raise HubError(404, f"File {file_path} not found in {model_id}@{revision}")
                data = None
            else:
                data = self._model_info(hub, model_id)
        if rest == "/repo":
            self._send_file(hub, model_id, entry, head=head)
            return
        self._ok(data, request_id, head=head)

    def _listing(
        self, hub: HubServer, model_id: str, revision: str, query: dict[str, str]
    ) -> dict[str, object]:
        concrete, entries = hub._resolve(model_id, revision)
        recursive = query.get("Recursive", "false").lower() == "true"
        root = (query.get("Root") or "").strip("/")
        created = hub._repo(model_id).revision_created.get(concrete, 0)
        files: list[dict[str, object]] = []
        dirs: set[str] = set()
        for rel in sorted(entries):
            entry = entries[rel]
            if root and not rel.startswith(root + "/"):
                continue
            below = rel[len(root) + 1 :] if root else rel
            parts = below.split("/")
            prefix = f"{root}/" if root else ""
            for depth in range(1, len(parts)):
                dirs.add(prefix + "/".join(parts[:depth]))
            if not recursive and len(parts) > 1:
                continue
            files.append(
                {
                    "CommitMessage": f"revision {concrete}",
                    "CommittedDate": created,
                    "CommitterName": "sandbox",
                    "InCheck": False,
                    "IsLFS": entry.source is not None,
                    "Mode": "33188",
                    "Name": rel.rsplit("/", 1)[-1],
                    "Path": rel,
                    "Revision": concrete,
                    "Sha256": hub.faults._listed_sha(model_id, rel, entry.sha256),
                    "Size": entry.size,
                    "Type": "blob",
                }
            )
        for d in sorted(dirs):
            if not recursive and "/" in (d[len(root) + 1 :] if root else d):
                continue
            files.append(
                {
                    "Name": d.rsplit("/", 1)[-1],
                    "Path": d,
                    "Revision": concrete,
                    "Sha256": "",
                    "Size": 0,
                    "Type": "tree",
                }
            )
        for hostile in hub.faults._take_listing(model_id):
            same = next((f for f in files if f.get("Path") == hostile.get("Path")), None)
            if same is not None:
                same.update(hostile)
            else:
                files.append({"Revision": concrete, "Type": "blob", **hostile})
        return {"Files": files, "LatestCommitter": {"CommitterName": "sandbox"}}

    def _revisions(self, hub: HubServer, model_id: str) -> dict[str, object]:
        repo = hub._repo(model_id)
        branches = [
            {"Revision": b, "CreatedAt": repo.revision_created[r], "Message": f"-> {r}"}
            for b, r in sorted(repo.branches.items())
        ]
        tags = [
            {"Revision": r, "CreatedAt": ts, "Message": ""}
            for r, ts in sorted(repo.revision_created.items(), key=lambda kv: kv[1])
        ]
        return {"RevisionMap": {"Branches": branches, "Tags": tags}}

    def _model_info(self, hub: HubServer, model_id: str) -> dict[str, object]:
        repo = hub._repo(model_id)
        owner, name = model_id.split("/")
        return {
            "Id": abs(hash(model_id)) % 10_000_000,
            "Name": name,
            "Path": owner,
            "ChineseName": "",
            "Description": f"sandbox model {model_id}",
            "Downloads": 0,
            "Likes": 0,
            "License": "Apache License 2.0",
            "Visibility": 5,
            "CreatedTime": repo.created,
            "LastUpdatedTime": max(repo.revision_created.values(), default=repo.created),
            "Revision": repo.branches.get("master", ""),
        }

    def _openapi_model(self, hub: HubServer, model_id: str, request_id: str, *, head: bool) -> None:
        with hub._lock:
            repo = hub._repos.get(model_id)
            if repo is None:
                payload: dict[str, object] = {
                    "success": False,
                    "code": "ResourceNotFound",
                    "message": f"Model {model_id} does not exist",
                    "request_id": request_id,
                }
                self._send_json(404, payload, request_id, head=head)
                return
            owner, name = model_id.split("/")
            data = {
                "id": model_id,
                "owner": owner,
                "name": name,
                "private": False,
                "license": "Apache License 2.0",
                "downloads": 0,
                "likes": 0,
                "created_at": _iso(repo.created),
                "last_modified": _iso(max(repo.revision_created.values(), default=repo.created)),
            }
        self._send_json(
            200, {"success": True, "data": data, "request_id": request_id}, request_id, head=head
        )

    def _send_file(self, hub: HubServer, model_id: str, entry: HubFile, *, head: bool) -> None:
        size = entry.size
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            parsed = _parse_range(range_header, size)
            if parsed == "unsatisfiable":
                self._status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                body = json.dumps(
                    {"Code": 416, "Message": "Requested range not satisfiable", "Success": False}
                ).encode()
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self._sent = self.send_body(body)
                self._record(416)
                return
            if parsed is not None:
                start, end = parsed
                status = 206
        length = max(0, end - start + 1)
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{entry.sha256}"')
        if status == 206:
            forged = hub.faults._take_range(entry.path)
            self.send_header("Content-Range", forged or f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            self._record(status)
            return
        limit = hub.faults._take_drop(model_id, entry.path)
        try:
            if entry.data is not None:
                self._sent = self.send_body(entry.data[start : end + 1], limit=limit)
            else:
                assert entry.source is not None
                with entry.source.open("rb") as fh:
                    self._sent = self.send_file_range(fh, start, length, limit=limit)
        finally:
            hub._bytes_served.add(self._sent)
        if limit is not None and self._sent < length:
            self.drop_connection()
            raise ConnectionDropped
        self._record(status)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """``(start, end)`` inclusive, ``"unsatisfiable"``, or None to ignore the header."""
    m = _RANGE.match(header.strip())
    if m is None:
        return None  # multi-range or another unit: serve the whole body, as RFC 9110 allows
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = size - 1 if not last else min(int(last), size - 1)
    if end < start:
        return None
    return start, end


HubServer.handler_class = _HubHandler

__all__ = ["HubFaults", "HubFile", "HubRequest", "HubServer"]
