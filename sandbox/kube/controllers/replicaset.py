"""ReplicaSet: keep ``spec.replicas`` active pods; report ready and available counts."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sandbox.kube.controllers._base import (
    Controller,
    Key,
    controller_ref,
    key_of,
    list_owned,
    meta,
    pod_available,
    pod_is_active,
    pod_is_ready,
    pod_ready_since,
    try_get,
    write_status,
)
from sandbox.kube.controllers.pods import pod_from_template
from sandbox.kube.selectors import labels_match, selector_from_match
from sandbox.kube.store import Store

Obj = dict[str, Any]


def _deletion_rank(pod: Obj) -> tuple[int, int, int, str]:
    """Which pods go first on scale-down: unscheduled, then pending, then not ready, newest first
    (the upstream ActivePods ordering, reduced)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses") or [])
    return (
        0 if not spec.get("nodeName") else 1,
        0 if status.get("phase") == "Pending" else 1,
        0 if not pod_is_ready(pod) else 1,
        "" if restarts else meta(pod).get("creationTimestamp", ""),
    )


class ReplicaSetController(Controller):
    name = "replicaset"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.rs_rt = store.resource_type("apps/v1", "ReplicaSet")
        self.pod_rt = store.resource_type("v1", "Pod")

    def keys_for(self, event: str, obj: Obj) -> Iterable[Key]:
        if obj.get("kind") == "ReplicaSet":
            return [key_of(obj)]
        if obj.get("kind") == "Pod":
            ref = controller_ref(obj)
            if ref and ref.get("kind") == "ReplicaSet":
                return [(meta(obj).get("namespace") or "", str(ref.get("name")))]
        return []

    def resync(self) -> None:
        for rs in self.store.list(self.rs_rt)[0]:
            self.queue.add(key_of(rs))

    def reconcile(self, key: Key) -> float | None:
        rs = try_get(self.store, self.rs_rt, key[0], key[1])
        if rs is None or meta(rs).get("deletionTimestamp"):
            return None
        spec = rs.get("spec") or {}
        want = int(spec.get("replicas", 1))
        reqs = selector_from_match(spec.get("selector"))
        pods = [
            p
            for p in list_owned(self.store, self.pod_rt, rs)
            if labels_match(reqs, meta(p).get("labels"))
        ]
        active = [p for p in pods if pod_is_active(p)]
        if len(active) < want:
            for _ in range(want - len(active)):
                pod = pod_from_template(spec.get("template") or {}, rs)
                self.store.create(pod)
        elif len(active) > want:
            doomed = sorted(active, key=_deletion_rank)[: len(active) - want]
            for pod in doomed:
                self.store.delete(self.pod_rt, key[0], meta(pod)["name"])
        pods = [
            p
            for p in list_owned(self.store, self.pod_rt, rs)
            if labels_match(reqs, meta(p).get("labels"))
        ]
        active = [p for p in pods if pod_is_active(p)]
        min_ready = int(spec.get("minReadySeconds", 0))
        now = time.time()
        ready = [p for p in active if pod_is_ready(p)]
        available = [p for p in ready if pod_available(p, min_ready, now)]
        status: Obj = {
            "replicas": len(active),
            "fullyLabeledReplicas": len(active),
            "readyReplicas": len(ready),
            "availableReplicas": len(available),
            "observedGeneration": meta(rs).get("generation", 1),
        }
        status = {k: v for k, v in status.items() if v or k in ("replicas", "observedGeneration")}
        write_status(self.store, rs, status)
        if len(available) < len(ready):
            waits = [
                min_ready - (now - (pod_ready_since(p) or now)) for p in ready if p not in available
            ]
            return max(min(waits), 0.05)
        return None
