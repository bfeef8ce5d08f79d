"""Shared machinery of the sandbox controllers: a work queue, the controller loop, object helpers.

Controllers see the store the way informers see the API server: every committed change arrives
as an event, the controller maps it to the keys of the objects it owns and reconciles those keys
from a single worker thread. Reconciles are level-based (they read current state), so coalescing
duplicate keys is safe and a Conflict is handled by simply requeueing the key.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sandbox.kube.store import Conflict, Invalid, NotFound, ResourceType, Store

log = logging.getLogger("sandbox.kube.controllers")

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def key_of(obj: Mapping[str, Any]) -> Key:
    m = meta(obj)
    return (m.get("namespace") or "", m.get("name", ""))


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict(meta(obj).get("labels") or {})


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def owner_ref(owner: Mapping[str, Any], *, controller: bool = True) -> dict[str, Any]:
    m = meta(owner)
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": m["name"],
        "uid": m["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    return controller_uid(obj) == meta(owner).get("uid")


def controller_ref(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    for ref in meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def stable_hash(value: Any, length: int = 10) -> str:
    """A short hash of a JSON value, spelled with the characters Kubernetes uses for
    pod-template-hash (no vowels, so it never spells words)."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    n = int.from_bytes(digest[:12], "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, len(alphabet))
        out.append(alphabet[r])
    return "".join(out)


def get_condition(obj: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def set_condition(
    conditions: list[dict[str, Any]],
    ctype: str,
    status: str,
    reason: str = "",
    message: str = "",
    *,
    probe_time: bool = False,
    update_time: bool = False,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Upsert a condition; lastTransitionTime only moves when the status flips, as upstream."""
    out = [dict(c) for c in conditions]
    ts = now_iso()
    for cond in out:
        if cond.get("type") == ctype:
            if cond.get("status") != status:
                cond["lastTransitionTime"] = ts
            cond["status"] = status
            if reason:
                cond["reason"] = reason
            if message or "message" in cond:
                cond["message"] = message
            if update_time:
                cond["lastUpdateTime"] = ts
            if observed_generation is not None:
                cond["observedGeneration"] = observed_generation
            return out
    new: dict[str, Any] = {"type": ctype, "status": status, "lastTransitionTime": ts}
    if reason:
        new["reason"] = reason
    if message:
        new["message"] = message
    if probe_time:
        new["lastProbeTime"] = None
    if update_time:
        new["lastUpdateTime"] = ts
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    out.append(new)
    return out


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    cond = get_condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True") and not is_deleting(pod)


def pod_is_active(pod: Mapping[str, Any]) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not is_deleting(pod)


def pod_ready_since(pod: Mapping[str, Any]) -> float | None:
    cond = get_condition(pod, "Ready")
    if not cond or cond.get("status") != "True" or is_deleting(pod):
        return None
    return parse_iso(cond.get("lastTransitionTime"))


def pod_available(pod: Mapping[str, Any], min_ready_seconds: int, at: float) -> bool:
    since = pod_ready_since(pod)
    if since is None:
        return False
    # Timestamps have second resolution, so anything Ready counts once minReadySeconds is 0.
    return min_ready_seconds <= 0 or at - since >= min_ready_seconds


def deep_merge(base: Any, patch: Any) -> Any:
    """Strategic-merge-like patch for pod templates: maps merge recursively, lists of named
    items (containers, env, ports, volumes) merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = deep_merge(base.get(k), v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list):
        if all(isinstance(x, dict) and "name" in x for x in base + patch):
            merged = [dict(x) for x in base]
            index = {x["name"]: i for i, x in enumerate(merged)}
            for item in patch:
                if item["name"] in index:
                    merged[index[item["name"]]] = deep_merge(merged[index[item["name"]]], item)
                else:
                    merged.append(item)
            return merged
        return list(patch)
    return patch


def inject_env(pod_spec: dict[str, Any], env: list[dict[str, Any]]) -> None:
    """Prepend env vars to every container (and init container) unless the user set them."""
    for group in ("containers", "initContainers"):
        for container in pod_spec.get(group) or []:
            existing = container.get("env") or []
            names = {e.get("name") for e in existing}
            container["env"] = [e for e in env if e["name"] not in names] + existing


class WorkQueue:
    """Coalescing queue of keys with delayed re-adds (the controller-runtime workqueue idea)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: list[Key] = []
        self._queued: set[Key] = set()
        self._delayed: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self._closed = False

    def add(self, key: Key) -> None:
        with self._cond:
            if key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
                self._cond.notify()

    def add_after(self, key: Key, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), key))
            self._cond.notify()

    def get(self) -> Key | None:
        """Block until a key is due; None once the queue is closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, _, key = heapq.heappop(self._delayed)
                    if key not in self._queued:
                        self._queued.add(key)
                        self._ready.append(key)
                if self._ready:
                    key = self._ready.pop(0)
                    self._queued.discard(key)
                    return key
                timeout = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Controller:
    """One reconcile loop on its own thread. Subclasses implement ``keys_for`` and ``reconcile``."""

    name = "controller"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queue = WorkQueue()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    # Event routing -------------------------------------------------------------------------
    def keys_for(self, event: str, obj: dict[str, Any]) -> Iterable[Key]:
        raise NotImplementedError

    def on_event(self, event: str, obj: dict[str, Any]) -> None:
        for key in self.keys_for(event, obj):
            self.queue.add(key)

    def resync(self) -> None:
        """Enqueue every object this controller owns (used at start)."""

    # Loop -----------------------------------------------------------------------------------
    def reconcile(self, key: Key) -> float | None:
        """Bring ``key`` to its desired state; return seconds until it must be looked at again."""
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"kube-{self.name}", daemon=True)
        self._thread.start()
        self.resync()

    def stop(self) -> None:
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                again = self.reconcile(key)
            except (Conflict, NotFound):
                # Someone else changed or removed the object under us: look again with fresh state.
                self.queue.add_after(key, 0.01)
                continue
            except Invalid as exc:
                self.errors.append(f"{key}: {exc}")
                log.warning("%s: %s rejected by the store: %s", self.name, key, exc)
                continue
            if again is not None:
                self.queue.add_after(key, again)


def rt_of(store: Store, obj: Mapping[str, Any]) -> ResourceType:
    return store.resource_type(str(obj["apiVersion"]), str(obj["kind"]))


def try_get(
    store: Store, rt: ResourceType, namespace: str | None, name: str
) -> dict[str, Any] | None:
    try:
        return store.get(rt, namespace, name)
    except NotFound:
        return None


def list_owned(store: Store, rt: ResourceType, owner: Mapping[str, Any]) -> list[dict[str, Any]]:
    items, _ = store.list(rt, meta(owner).get("namespace"))
    return [o for o in items if owned_by(o, owner)]


def write_status(store: Store, obj: dict[str, Any], status: dict[str, Any]) -> None:
    """Write status only when it changed, so controllers don't wake each other in a loop."""
    if obj.get("status") == status:
        return
    new = dict(obj)
    new["status"] = status
    store.update_status(new)


EventSink = Callable[[dict[str, Any], str, str, str], None]
