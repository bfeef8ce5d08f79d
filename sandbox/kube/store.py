"""The sandbox cluster's object store: what etcd plus the generic registry are to a real API server.

Controllers use it in-process (like informers); the API server in `apiserver.py` serves it
over HTTP. Every committed change gets the next value of one global resourceVersion counter and
is kept in a bounded history ring, from which watches are served (older resourceVersions are
"compacted": a watch from one of them gets 410 Gone, as from a real server).

Notes for controllers (H5):
- `subscribe(cb)` callbacks run outside the store lock, in commit order, on the thread of the
  writer that drained the queue. Keep them short (enqueue work); they may write to the store,
  the resulting events are delivered after the current one. Every subscriber (and every watch)
  gets the same snapshot of the object, as informers share their cache: never mutate it, take
  `clone(obj)` or `get()` first.
- Pods: `delete()` of a pod bound to a node (spec.nodeName set) is graceful: the pod gets
  `metadata.deletionTimestamp` and `deletionGracePeriodSeconds` (a MODIFIED event) and stays until
  the kubelet calls `finalize_pod(ns, name)`. A pod never bound to a node, or a delete with
  `grace_period_seconds=0`, is removed at once. Objects with `metadata.finalizers` are only
  marked; they go away when an update empties the finalizers.
- Garbage collection follows ownerReferences (uid): Background removes the owner, then its
  dependents; Foreground marks the owner (finalizer `foregroundDeletion`) and removes it once
  its dependents are gone; Orphan strips the ownerReference from the dependents.
- `create` drops `status` for kinds with a status subresource (as a real server does): set it
  with `update_status` afterwards.
- Custom resources are stored per (group, plural) and not converted between versions: reading
  through another served version only relabels `apiVersion` (no conversion webhook here).
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sandbox.kube.selectors import (
    SelectorError,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

Obj = dict[str, Any]
Callback = Callable[[str, Obj], None]


def clone(value: Any) -> Any:
    """Deep copy of JSON-shaped data (dicts, lists, scalars); several times faster than
    copy.deepcopy, which matters for megabyte CRDs copied on every read and event."""
    if type(value) is dict:
        return {k: clone(v) for k, v in value.items()}
    if type(value) is list:
        return [clone(v) for v in value]
    return value


def now_iso(delta_seconds: float = 0) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=delta_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for core
    version: str  # "v1"
    kind: str  # "Pod"
    plural: str  # "pods"
    namespaced: bool
    subresources: frozenset[str] = frozenset()  # e.g. {"status"}, {"status", "scale"}
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    singular: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


def qualified(rt: ResourceType) -> str:
    """The resource as error messages name it: "pods", "deployments.apps"."""
    return f"{rt.plural}.{rt.group}" if rt.group else rt.plural


class StoreError(Exception):
    """Base of the errors the API server turns into `Status` bodies."""

    code = 500
    reason = "InternalError"

    def __init__(self, message: str, *, kind: str = "", name: str = "", group: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.name = name
        self.group = group
        self.causes: list[dict[str, str]] = []


class NotFound(StoreError):
    code = 404
    reason = "NotFound"


class Conflict(StoreError):
    """resourceVersion mismatch or a field-manager conflict (409 Conflict)."""

    code = 409
    reason = "Conflict"


class AlreadyExists(Conflict):
    reason = "AlreadyExists"


class Invalid(StoreError):
    """422: carries causes as (field_path, message) pairs."""

    code = 422
    reason = "Invalid"

    def __init__(
        self,
        kind: str,
        name: str,
        causes: list[tuple[str, str]],
        *,
        group: str = "",
        cause_reason: str = "FieldValueInvalid",
    ) -> None:
        detail = "; ".join(f"{path}: {msg}" if path else msg for path, msg in causes)
        shown = f"{kind}.{group}" if group else kind
        super().__init__(
            f'{shown} "{name}" is invalid: {detail}', kind=kind, name=name, group=group
        )
        self.field_causes = causes
        self.causes = [{"reason": cause_reason, "message": m, "field": p} for p, m in causes]


class BadRequest(StoreError):
    code = 400
    reason = "BadRequest"


class Gone(StoreError):
    code = 410
    reason = "Expired"


class Forbidden(StoreError):
    code = 403
    reason = "Forbidden"


class Validator(Protocol):
    """Defaulting, pruning and validation hooks (see `validation.py`)."""

    def admit(
        self,
        rt: ResourceType,
        obj: Obj,
        old: Obj | None,
        *,
        field_validation: str,
        schema: Obj | None,
    ) -> list[str]:
        """Default, prune or reject unknown fields (per `field_validation`: Strict, Warn,
        Ignore), raise Invalid; returns warnings. `schema`: a custom resource's
        openAPIV3Schema, None for built-in kinds."""
        ...


@dataclass
class WatchEvent:
    rv: int
    type: str  # ADDED / MODIFIED / DELETED
    key: tuple[str, str]  # storage key of the object's type
    obj: Obj
    prev: Obj | None = None  # the object before this change (None for ADDED)


@dataclass
class _LogBuffer:
    current: list[str] = field(default_factory=list)
    previous: list[str] | None = None


class Store:
    def __init__(self, *, history_size: int = 10_000, validator: Validator | None = None) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._schemas: dict[tuple[str, str], Obj] = {}
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._rv = itertools.count(1)
        self._last_rv = 0
        self._history: deque[WatchEvent] = deque()
        self._history_size = history_size
        self._compacted_rv = 0
        self._latest: dict[str, Obj] = {}  # uid -> last committed snapshot, for watch diffs
        self._subscribers: list[Callback] = []
        self._pending: deque[tuple[str, Obj]] = deque()
        self._deliver_lock = threading.Lock()
        self._tls = threading.local()
        self._logs: dict[tuple[str, str, str], _LogBuffer] = {}
        self._log_cond = threading.Condition(threading.Lock())
        self.validator = validator

    # ----------------------------------------------------------------- types

    def register(self, rt: ResourceType) -> None:
        with self._lock:
            self._types[(rt.group, rt.version, rt.kind)] = rt
            self._objects.setdefault(rt.storage_key, {})

    def unregister(self, rt: ResourceType) -> None:
        with self._lock:
            self._types.pop((rt.group, rt.version, rt.kind), None)

    def resource_type(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        rt = self._types.get((group, version, kind))
        if rt is None:
            raise NotFound(f'no matches for kind "{kind}" in version "{api_version}"', kind=kind)
        return rt

    def resource_types(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types.values())

    def by_plural(self, group: str, version: str, plural: str) -> ResourceType:
        for rt in self.resource_types():
            if rt.group == group and rt.version == version and rt.plural == plural:
                return rt
        raise NotFound(f"the server could not find the requested resource ({plural})", kind=plural)

    def set_schema(self, rt: ResourceType, schema: Obj) -> None:
        """An openAPIV3Schema to validate this (group, version, kind) with."""
        self._schemas[(rt.api_version, rt.kind)] = schema

    def schema(self, rt: ResourceType) -> Obj | None:
        return self._schemas.get((rt.api_version, rt.kind))

    # ------------------------------------------------------------- internals

    def _rt_of(self, obj: Obj) -> ResourceType:
        if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
            raise BadRequest("Object 'Kind' or 'apiVersion' is missing")
        return self.resource_type(obj["apiVersion"], obj["kind"])

    @staticmethod
    def _ns_key(rt: ResourceType, namespace: str | None) -> str:
        return (namespace or "") if rt.namespaced else ""

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault(rt.storage_key, {})

    def _find(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._bucket(rt).get((self._ns_key(rt, namespace), name))
        if obj is None:
            raise NotFound(
                f'{qualified(rt)} "{name}" not found',
                kind=rt.plural,
                name=name,
                group=rt.group,
            )
        return obj

    def _out(self, rt: ResourceType, obj: Obj) -> Obj:
        out = clone(obj)
        out["apiVersion"] = rt.api_version
        return out

    def _commit(self, rt: ResourceType, type_: str, obj: Obj) -> None:
        """Record an event for a change already applied to `_objects` (lock held)."""
        rv = next(self._rv)
        self._last_rv = rv
        obj["metadata"]["resourceVersion"] = str(rv)
        snapshot = clone(obj)
        uid = obj["metadata"].get("uid", "")
        prev = self._latest.get(uid)
        if type_ == "DELETED":
            self._latest.pop(uid, None)
        else:
            self._latest[uid] = snapshot
        self._history.append(WatchEvent(rv, type_, rt.storage_key, snapshot, prev))
        while len(self._history) > self._history_size:
            self._compacted_rv = self._history.popleft().rv
        self._pending.append((type_, snapshot))
        self._cond.notify_all()

    def _drain(self) -> None:
        """Deliver queued events to subscribers, in commit order, outside the store lock."""
        if getattr(self._tls, "delivering", False):
            return  # a subscriber wrote: the outer drain loop delivers it next
        while True:
            if not self._deliver_lock.acquire(blocking=False):
                return  # the holder will see our event before it lets go
            try:
                self._tls.delivering = True
                while True:
                    with self._lock:
                        if not self._pending:
                            break
                        type_, snapshot = self._pending.popleft()
                        subs = list(self._subscribers)
                    for cb in subs:
                        cb(type_, snapshot)
            finally:
                self._tls.delivering = False
                self._deliver_lock.release()
            with self._lock:
                if not self._pending:
                    return

    def _check_namespace(self, rt: ResourceType, obj: Obj) -> None:
        if not rt.namespaced:
            obj["metadata"].pop("namespace", None)
            return
        ns = obj["metadata"].get("namespace")
        if not ns:
            raise BadRequest("the namespace of the provided object does not match the request")
        ns_rt = self._types.get(("", "v1", "Namespace"))
        if ns_rt is None:
            return
        ns_obj = self._bucket(ns_rt).get(("", ns))
        if ns_obj is None:
            raise NotFound(f'namespaces "{ns}" not found', kind="namespaces", name=ns)
        if ns_obj["metadata"].get("deletionTimestamp"):
            raise Forbidden(
                f'{rt.plural} "{obj["metadata"].get("name", "")}" is forbidden: unable to create '
                f"new content in namespace {ns} because it is being terminated",
                kind=rt.plural,
                name=obj["metadata"].get("name", ""),
            )

    def _admit(self, rt: ResourceType, obj: Obj, old: Obj | None, field_validation: str) -> None:
        if self.validator is not None:
            self._tls.warnings = self.validator.admit(
                rt, obj, old, field_validation=field_validation, schema=self.schema(rt)
            )

    def take_warnings(self) -> list[str]:
        """Warnings of this thread's last write (unknown fields dropped), then forgotten."""
        warnings: list[str] = getattr(self._tls, "warnings", [])
        self._tls.warnings = []
        return warnings

    # ----------------------------------------------------------------- reads

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._last_rv)

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        with self._lock:
            return self._out(rt, self._find(rt, namespace, name))

    def list(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], str]:
        try:
            reqs = parse_label_selector(label_selector)
            fmatch = parse_field_selector(field_selector, rt.kind)
        except SelectorError as exc:
            raise BadRequest(str(exc)) from exc
        with self._lock:
            items = [
                self._out(rt, o)
                for (ns, _), o in sorted(self._bucket(rt).items())
                if (not namespace or not rt.namespaced or ns == namespace)
                and labels_match(reqs, o["metadata"].get("labels"))
                and fmatch(o)
            ]
            return items, str(self._last_rv)

    # ---------------------------------------------------------------- writes

    def create(self, obj: Obj, *, dry_run: bool = False, field_validation: str = "Strict") -> Obj:
        rt = self._rt_of(obj)
        new = clone(obj)
        meta = new.setdefault("metadata", {})
        with self._lock:
            self._check_namespace(rt, new)
            if not meta.get("name"):
                prefix = meta.get("generateName")
                if not prefix:
                    raise Invalid(
                        rt.kind,
                        "",
                        [("metadata.name", "Required value: name or generateName is required")],
                        group=rt.group,
                        cause_reason="FieldValueRequired",
                    )
                meta["name"] = prefix + uuid.uuid4().hex[:5]
            key = (self._ns_key(rt, meta.get("namespace")), meta["name"])
            if key in self._bucket(rt):
                raise AlreadyExists(
                    f'{qualified(rt)} "{meta["name"]}" already exists',
                    kind=rt.plural,
                    name=meta["name"],
                    group=rt.group,
                )
            if meta.get("resourceVersion"):
                raise BadRequest("resourceVersion should not be set on objects to be created")
            for drop in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(drop, None)
            if "status" in rt.subresources:
                new.pop("status", None)  # as on a real server: status is written via /status
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_iso()
            meta["generation"] = 1
            self._admit(rt, new, None, field_validation)
            if dry_run:
                return self._out(rt, new)
            self._bucket(rt)[key] = new
            self._commit(rt, "ADDED", new)
            out = self._out(rt, new)
            collect = self._late_dependent(new)
            if collect is not None:
                # A controller may create a dependent just after its owner's cascade ran (it
                # read the owner before the delete). The real garbage collector deletes such
                # late dependents too; without this the owner's foregroundDeletion never ends
                # or the dependent outlives its owner.
                self._delete_locked(rt, new, collect, None)
        self._drain()
        return out

    def _late_dependent(self, obj: Obj) -> str | None:
        """How the garbage collector would delete a just-created dependent, or None.

        Foreground when an owner is itself being deleted in the foreground; Background when
        every owner it names is already gone (lock held).
        """
        owner_uids = {r.get("uid") for r in obj["metadata"].get("ownerReferences") or []}
        if not owner_uids:
            return None
        found = False
        for bucket in self._objects.values():
            for owner in bucket.values():
                meta = owner["metadata"]
                if meta["uid"] not in owner_uids:
                    continue
                found = True
                if meta.get("deletionTimestamp") and "foregroundDeletion" in (
                    meta.get("finalizers") or []
                ):
                    return "Foreground"
        return None if found else "Background"

    @staticmethod
    def _spec_part(rt: ResourceType, obj: Obj) -> Obj:
        skip = {"metadata", "status", "apiVersion", "kind"}
        return {k: v for k, v in obj.items() if k not in skip}

    def update(
        self,
        obj: Obj,
        *,
        expect_rv: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Strict",
    ) -> Obj:
        rt = self._rt_of(obj)
        meta_in = obj.get("metadata") or {}
        with self._lock:
            old = self._find(rt, meta_in.get("namespace"), meta_in.get("name", ""))
            want = expect_rv if expect_rv is not None else meta_in.get("resourceVersion")
            self._check_rv(rt, old, want)
            if meta_in.get("uid") and meta_in["uid"] != old["metadata"]["uid"]:
                raise Conflict(
                    f"Precondition failed: UID in precondition: {meta_in['uid']}, "
                    f"UID in object meta: {old['metadata']['uid']}",
                    kind=rt.plural,
                    name=old["metadata"]["name"],
                    group=rt.group,
                )
            new = clone(obj)
            meta = new.setdefault("metadata", {})
            for sysfield in (
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
            ):
                if sysfield in old["metadata"]:
                    meta[sysfield] = old["metadata"][sysfield]
                else:
                    meta.pop(sysfield, None)
            if "managedFields" not in meta_in and "managedFields" in old["metadata"]:
                meta["managedFields"] = clone(old["metadata"]["managedFields"])
            if "status" in rt.subresources:
                if "status" in old:
                    new["status"] = clone(old["status"])
                else:
                    new.pop("status", None)
            if old["metadata"].get("deletionTimestamp"):
                # Once deleting, finalizers can only be removed, never added.
                kept = set(old["metadata"].get("finalizers") or [])
                meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f in kept] or None
                if meta["finalizers"] is None:
                    meta.pop("finalizers")
            if self._spec_part(rt, new) != self._spec_part(rt, old):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            self._admit(rt, new, old, field_validation)
            out = self._store_update(rt, old, new, dry_run)
        self._drain()
        return out

    def _check_rv(self, rt: ResourceType, old: Obj, want: str | None) -> None:
        if want and want != old["metadata"]["resourceVersion"]:
            raise Conflict(
                f"Operation cannot be fulfilled on {qualified(rt)} "
                f'"{old["metadata"]["name"]}": the object has been modified; please apply your '
                "changes to the latest version and try again",
                kind=rt.plural,
                name=old["metadata"]["name"],
                group=rt.group,
            )

    def _store_update(self, rt: ResourceType, old: Obj, new: Obj, dry_run: bool) -> Obj:
        """Write `new` over `old` (lock held); a no-op write keeps the resourceVersion."""
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if dry_run:
            return self._out(rt, new)
        if new == old:
            return self._out(rt, old)
        key = (self._ns_key(rt, new["metadata"].get("namespace")), new["metadata"]["name"])
        self._bucket(rt)[key] = new
        self._commit(rt, "MODIFIED", new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(rt, new)
        return self._out(rt, new)

    def update_status(
        self, obj: Obj, *, expect_rv: str | None = None, dry_run: bool = False
    ) -> Obj:
        rt = self._rt_of(obj)
        meta_in = obj.get("metadata") or {}
        with self._lock:
            old = self._find(rt, meta_in.get("namespace"), meta_in.get("name", ""))
            want = expect_rv if expect_rv is not None else meta_in.get("resourceVersion")
            self._check_rv(rt, old, want)
            new = clone(old)
            if "status" in obj:
                new["status"] = clone(obj["status"])
            else:
                new.pop("status", None)
            if "managedFields" in meta_in:
                new["metadata"]["managedFields"] = clone(meta_in["managedFields"])
            self._admit(rt, new, old, "Ignore")
            out = self._store_update(rt, old, new, dry_run)
        self._drain()
        return out

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        propagation: str = "Background",
        grace_period_seconds: int | None = None,
        dry_run: bool = False,
        expect_rv: str | None = None,
        expect_uid: str | None = None,
    ) -> Obj:
        """Delete (or start deleting) an object; returns its state after the call."""
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise BadRequest(f'propagationPolicy "{propagation}" is not supported')
        with self._lock:
            obj = self._find(rt, namespace, name)
            self._check_rv(rt, obj, expect_rv)
            if expect_uid and expect_uid != obj["metadata"]["uid"]:
                raise Conflict(
                    f"Precondition failed: UID in precondition: {expect_uid}, "
                    f"UID in object meta: {obj['metadata']['uid']}",
                    kind=rt.plural,
                    name=name,
                    group=rt.group,
                )
            if dry_run:
                return self._out(rt, obj)
            out = self._delete_locked(rt, obj, propagation, grace_period_seconds)
        self._drain()
        return out

    def _delete_locked(
        self, rt: ResourceType, obj: Obj, propagation: str, grace: int | None
    ) -> Obj:
        meta = obj["metadata"]
        if propagation == "Orphan":
            self._orphan_dependents(meta["uid"])
        graceful = (
            rt.kind == "Pod"
            and rt.group == ""
            and bool((obj.get("spec") or {}).get("nodeName"))
            and grace != 0
            and (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        )
        if propagation == "Foreground" and self._dependents(meta["uid"]):
            fins = list(meta.get("finalizers") or [])
            if "foregroundDeletion" not in fins:
                fins.append("foregroundDeletion")
            meta["finalizers"] = fins
        if meta.get("deletionTimestamp"):
            if rt.kind == "Pod" and grace == 0 and not meta.get("finalizers"):
                self._remove(rt, obj)
            return self._out(rt, obj)
        if graceful or meta.get("finalizers"):
            if rt.kind == "Pod" and rt.group == "":
                period = (
                    grace
                    if grace is not None
                    else int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
                )
                meta["deletionGracePeriodSeconds"] = period
                meta["deletionTimestamp"] = now_iso(period)
            else:
                meta["deletionTimestamp"] = now_iso()
                meta["deletionGracePeriodSeconds"] = 0
            meta["generation"] = int(meta.get("generation", 1)) + (0 if rt.kind == "Pod" else 1)
            self._commit(rt, "MODIFIED", obj)
            if propagation == "Foreground":
                for dep_rt, dep in self._dependents(meta["uid"]):
                    self._delete_locked(dep_rt, dep, "Foreground", None)
                self._maybe_finish_foreground(meta["uid"])
            return self._out(rt, obj)
        self._remove(rt, obj)
        return self._out(rt, obj)

    def _remove(self, rt: ResourceType, obj: Obj) -> None:
        """Drop an object for good and collect what it owned (lock held)."""
        meta = obj["metadata"]
        key = (self._ns_key(rt, meta.get("namespace")), meta["name"])
        if self._bucket(rt).get(key) is not obj:
            return
        del self._bucket(rt)[key]
        self._commit(rt, "DELETED", obj)
        if rt.kind == "Namespace" and rt.group == "":
            self._purge_namespace(meta["name"])
        for dep_rt, dep in self._dependents(meta["uid"]):
            self._delete_locked(dep_rt, dep, "Background", None)
        for ref in meta.get("ownerReferences") or []:
            self._maybe_finish_foreground(ref.get("uid", ""))
        if rt.kind == "Pod":
            with self._log_cond:
                for lkey in [
                    k for k in self._logs if k[0] == meta.get("namespace") and k[1] == meta["name"]
                ]:
                    del self._logs[lkey]

    def _purge_namespace(self, ns: str) -> None:
        for key, bucket in list(self._objects.items()):
            rt = self._any_type(key)
            if rt is None or not rt.namespaced:
                continue
            for (ons, _), obj in list(bucket.items()):
                if ons == ns:
                    obj["metadata"].pop("finalizers", None)
                    obj["metadata"]["deletionTimestamp"] = now_iso()
                    self._remove(rt, obj)

    def _any_type(self, key: tuple[str, str]) -> ResourceType | None:
        for rt in self._types.values():
            if rt.storage_key == key:
                return rt
        return None

    def _dependents(self, uid: str) -> list[tuple[ResourceType, Obj]]:
        found: list[tuple[ResourceType, Obj]] = []
        for key, bucket in self._objects.items():
            rt = self._any_type(key)
            if rt is None:
                continue
            for obj in bucket.values():
                if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or []):
                    found.append((rt, obj))
        return found

    def _orphan_dependents(self, uid: str) -> None:
        for rt, dep in self._dependents(uid):
            refs = [r for r in dep["metadata"]["ownerReferences"] if r.get("uid") != uid]
            if refs:
                dep["metadata"]["ownerReferences"] = refs
            else:
                del dep["metadata"]["ownerReferences"]
            self._commit(rt, "MODIFIED", dep)

    def _maybe_finish_foreground(self, uid: str) -> None:
        if not uid:
            return
        for key, bucket in self._objects.items():
            for obj in list(bucket.values()):
                meta = obj["metadata"]
                if meta["uid"] != uid or "foregroundDeletion" not in (meta.get("finalizers") or []):
                    continue
                if self._dependents(uid):
                    return
                rt = self._any_type(key)
                if rt is None:
                    return
                fins = [f for f in meta["finalizers"] if f != "foregroundDeletion"]
                if fins:
                    meta["finalizers"] = fins
                    self._commit(rt, "MODIFIED", obj)
                else:
                    meta.pop("finalizers")
                    self._remove(rt, obj)
                return

    def finalize_pod(self, namespace: str, name: str) -> None:
        """The kubelet's last word on a pod being deleted: it disappears from the API."""
        rt = self.resource_type("v1", "Pod")
        with self._lock:
            obj = self._find(rt, namespace, name)
            if obj["metadata"].get("finalizers"):
                return
            obj["metadata"].setdefault("deletionTimestamp", now_iso())
            self._remove(rt, obj)
        self._drain()

    # ----------------------------------------------------------------- watch

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def set_history_size(self, size: int) -> None:
        with self._lock:
            self._history_size = size
            while len(self._history) > size:
                self._compacted_rv = self._history.popleft().rv

    def events_since(
        self, key: tuple[str, str], after_rv: int, timeout: float | None
    ) -> tuple[list[WatchEvent], int]:
        """Events of one storage key newer than `after_rv`, waiting up to `timeout` for one.

        Returns (events, newest resourceVersion seen). Raises Gone when `after_rv` is older than
        the retained window.
        """
        with self._cond:
            if after_rv < self._compacted_rv:
                raise Gone(f"too old resource version: {after_rv} ({self._compacted_rv + 1})")

            def fresh() -> list[WatchEvent]:
                return [e for e in self._history if e.rv > after_rv and e.key == key]

            found = fresh()
            if not found and timeout:
                self._cond.wait_for(
                    lambda: self._last_rv > after_rv or self._closed, timeout=timeout
                )
                if after_rv < self._compacted_rv:
                    raise Gone(f"too old resource version: {after_rv} ({self._compacted_rv + 1})")
                found = fresh()
            return found, self._last_rv

    _closed = False

    def close(self) -> None:
        """Wake every waiting watch so servers can shut down promptly."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with self._log_cond:
            self._log_cond.notify_all()

    # ------------------------------------------------------------------ logs

    def append_log(self, namespace: str, pod: str, container: str, line: str) -> None:
        with self._log_cond:
            self._logs.setdefault((namespace, pod, container), _LogBuffer()).current.append(line)
            self._log_cond.notify_all()

    def rotate_logs(self, namespace: str, pod: str, container: str) -> None:
        with self._log_cond:
            buf = self._logs.setdefault((namespace, pod, container), _LogBuffer())
            buf.previous = buf.current
            buf.current = []
            self._log_cond.notify_all()

    def has_previous_log(self, namespace: str, pod: str, container: str) -> bool:
        with self._log_cond:
            buf = self._logs.get((namespace, pod, container))
            return buf is not None and buf.previous is not None

    def read_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        previous: bool = False,
        tail_lines: int | None = None,
    ) -> list[str]:
        with self._log_cond:
            buf = self._logs.get((namespace, pod, container))
            if buf is None:
                return []
            lines = (buf.previous or []) if previous else buf.current
            if tail_lines is not None:
                lines = lines[-tail_lines:] if tail_lines > 0 else []
            return list(lines)

    def wait_log(
        self, namespace: str, pod: str, container: str, seen: int, timeout: float
    ) -> list[str]:
        """Lines after the first `seen` of the current log, waiting up to `timeout` for more."""
        with self._log_cond:

            def more() -> bool:
                buf = self._logs.get((namespace, pod, container))
                return self._closed or (buf is not None and len(buf.current) > seen)

            self._log_cond.wait_for(more, timeout=timeout)
            buf = self._logs.get((namespace, pod, container))
            return list(buf.current[seen:]) if buf else []

    # ---------------------------------------------------------------- events

    def emit_event(
        self,
        involved: Obj,
        reason: str,
        message: str,
        type_: str = "Normal",
        component: str = "",
    ) -> None:
        rt = self.resource_type("v1", "Event")
        meta = involved.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        ref = {
            "apiVersion": involved.get("apiVersion", ""),
            "kind": involved.get("kind", ""),
            "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""),
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        ref = {k: v for k, v in ref.items() if v}
        stamp = now_iso()
        with self._lock:
            for ev in self._bucket(rt).values():
                if (
                    ev["metadata"].get("namespace") == ns
                    and ev.get("involvedObject", {}).get("uid") == ref.get("uid")
                    and ev.get("involvedObject", {}).get("name") == ref.get("name")
                    and ev.get("reason") == reason
                    and ev.get("message") == message
                    and ev.get("type") == type_
                ):
                    ev["count"] = int(ev.get("count", 1)) + 1
                    ev["lastTimestamp"] = stamp
                    self._commit(rt, "MODIFIED", ev)
                    break
            else:
                event = {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {
                        "name": f"{ref.get('name', 'unknown')}.{uuid.uuid4().hex[:16]}",
                        "namespace": ns,
                        "uid": str(uuid.uuid4()),
                        "creationTimestamp": stamp,
                    },
                    "involvedObject": ref,
                    "reason": reason,
                    "message": message,
                    "type": type_,
                    "count": 1,
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "source": {"component": component} if component else {},
                    "reportingComponent": component,
                    "reportingInstance": "",
                }
                self._bucket(rt)[(ns, event["metadata"]["name"])] = event
                self._commit(rt, "ADDED", event)
        self._drain()

    # ---------------------------------------------------------------- helpers

    def seed(self, objects: Iterable[Obj]) -> None:
        """Create objects, skipping those that already exist (cluster bootstrap)."""
        for obj in objects:
            try:
                self.create(obj)
            except AlreadyExists:
                continue
