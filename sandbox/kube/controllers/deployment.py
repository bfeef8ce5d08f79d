"""Deployment: ReplicaSets per pod template (pod-template-hash), RollingUpdate and Recreate,
revision annotations, and the status/conditions ``kubectl rollout status`` reads."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from typing import Any

from sandbox.kube.controllers._base import (
    Controller,
    Key,
    controller_ref,
    get_condition,
    key_of,
    list_owned,
    meta,
    owner_ref,
    parse_iso,
    set_condition,
    stable_hash,
    try_get,
    write_status,
)
from sandbox.kube.store import Store

Obj = dict[str, Any]
REVISION = "deployment.kubernetes.io/revision"
COMPONENT = "deployment-controller"


def resolve_int_or_percent(value: Any, total: int, default: str, *, round_up: bool) -> int:
    if value is None:
        value = default
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("%"):
        raw = float(text[:-1]) * total / 100
        return math.ceil(raw) if round_up else math.floor(raw)
    return int(text)


def _replicas(obj: Obj) -> int:
    return int((obj.get("spec") or {}).get("replicas", 1))


def _status_int(obj: Obj, field: str) -> int:
    return int((obj.get("status") or {}).get(field, 0))


class DeploymentController(Controller):
    name = "deployment"

    def __init__(self, store: Store, deadline_scale: float = 1.0) -> None:
        super().__init__(store)
        self.deploy_rt = store.resource_type("apps/v1", "Deployment")
        self.rs_rt = store.resource_type("apps/v1", "ReplicaSet")
        self.pod_rt = store.resource_type("v1", "Pod")
        self.deadline_scale = deadline_scale

    def keys_for(self, event: str, obj: Obj) -> Iterable[Key]:
        if obj.get("kind") == "Deployment":
            return [key_of(obj)]
        if obj.get("kind") == "ReplicaSet":
            ref = controller_ref(obj)
            if ref and ref.get("kind") == "Deployment":
                return [(meta(obj).get("namespace") or "", str(ref.get("name")))]
        return []

    def resync(self) -> None:
        for d in self.store.list(self.deploy_rt)[0]:
            self.queue.add(key_of(d))

    # -----------------------------------------------------------------------------------------
    def reconcile(self, key: Key) -> float | None:
        d = try_get(self.store, self.deploy_rt, key[0], key[1])
        if d is None or meta(d).get("deletionTimestamp"):
            return None
        spec = d.get("spec") or {}
        want = _replicas(d)
        template = spec.get("template") or {}
        phash = stable_hash(template)
        owned = list_owned(self.store, self.rs_rt, d)
        new_rs = next(
            (
                rs
                for rs in owned
                if (
                    (rs.get("spec") or {}).get("template", {}).get("metadata", {}).get("labels")
                    or {}
                ).get("pod-template-hash")
                == phash
            ),
            None,
        )
        olds = [rs for rs in owned if rs is not new_rs]
        olds.sort(key=lambda rs: int(meta(rs).get("annotations", {}).get(REVISION, "0")))
        created = False
        if spec.get("paused"):
            self._status(d, new_rs, owned, created=False)
            return None
        strategy = (spec.get("strategy") or {}).get("type", "RollingUpdate")
        if new_rs is None:
            initial = 0
            if strategy == "RollingUpdate":
                surge = resolve_int_or_percent(
                    (spec.get("strategy") or {}).get("rollingUpdate", {}).get("maxSurge"),
                    want,
                    "25%",
                    round_up=True,
                )
                total = sum(_replicas(rs) for rs in olds)
                initial = want if not olds else max(0, min(want, want + surge - total))
            elif not any(_replicas(rs) or _status_int(rs, "replicas") for rs in olds):
                initial = want
            new_rs = self._create_rs(d, template, phash, olds, initial)
            created = True
        else:
            self._sync_revision(d, new_rs, olds)
        if strategy == "Recreate":
            self._recreate(d, new_rs, olds, want)
        else:
            self._rolling(d, new_rs, olds, want)
        owned = list_owned(self.store, self.rs_rt, d)
        new_rs = next((rs for rs in owned if meta(rs)["uid"] == meta(new_rs)["uid"]), new_rs)
        self._cleanup(d, owned, new_rs)
        return self._status(d, new_rs, owned, created=created)

    def _create_rs(self, d: Obj, template: Obj, phash: str, olds: list[Obj], replicas: int) -> Obj:
        revision = 1 + max(
            (int(meta(rs).get("annotations", {}).get(REVISION, "0")) for rs in olds), default=0
        )
        tmpl = copy.deepcopy(template)
        tmeta = tmpl.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), "pod-template-hash": phash}
        selector = copy.deepcopy((d.get("spec") or {}).get("selector") or {})
        selector["matchLabels"] = {
            **(selector.get("matchLabels") or {}),
            "pod-template-hash": phash,
        }
        want = _replicas(d)
        rs: Obj = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta(d)['name']}-{phash}",
                "namespace": meta(d).get("namespace"),
                "labels": dict(tmeta["labels"]),
                "annotations": {
                    REVISION: str(revision),
                    "deployment.kubernetes.io/desired-replicas": str(want),
                    "deployment.kubernetes.io/max-replicas": str(want + 1),
                },
                "ownerReferences": [owner_ref(d)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": int((d.get("spec") or {}).get("minReadySeconds", 0)),
                "selector": selector,
                "template": tmpl,
            },
        }
        created = self.store.create(rs)
        self._annotate_revision(d, str(revision))
        if replicas:
            self._event(d, f"Scaled up replica set {meta(created)['name']} from 0 to {replicas}")
        return created

    def _sync_revision(self, d: Obj, new_rs: Obj, olds: list[Obj]) -> None:
        """A rollback to an older template makes its ReplicaSet the newest revision again."""
        top = max(
            (int(meta(rs).get("annotations", {}).get(REVISION, "0")) for rs in olds), default=0
        )
        cur = int(meta(new_rs).get("annotations", {}).get(REVISION, "0"))
        if cur <= top:
            rs = copy.deepcopy(new_rs)
            rs["metadata"].setdefault("annotations", {})[REVISION] = str(top + 1)
            self.store.update(rs)
            cur = top + 1
        self._annotate_revision(d, str(cur))

    def _annotate_revision(self, d: Obj, revision: str) -> None:
        fresh = try_get(self.store, self.deploy_rt, meta(d).get("namespace"), meta(d)["name"])
        if fresh is None or (meta(fresh).get("annotations") or {}).get(REVISION) == revision:
            return
        fresh["metadata"].setdefault("annotations", {})[REVISION] = revision
        self.store.update(fresh)

    def _scale(self, d: Obj, rs: Obj, replicas: int) -> Obj:
        old = _replicas(rs)
        if old == replicas:
            return rs
        fresh = copy.deepcopy(rs)
        fresh["spec"]["replicas"] = replicas
        annotations = fresh["metadata"].setdefault("annotations", {})
        annotations["deployment.kubernetes.io/desired-replicas"] = str(_replicas(d))
        out = self.store.update(fresh)
        verb = "up" if replicas > old else "down"
        self._event(d, f"Scaled {verb} replica set {meta(rs)['name']} from {old} to {replicas}")
        return out

    def _recreate(self, d: Obj, new_rs: Obj, olds: list[Obj], want: int) -> None:
        for rs in olds:
            self._scale(d, rs, 0)
        old_uids = {meta(rs)["uid"] for rs in olds}
        pods = self.store.list(self.pod_rt, meta(d).get("namespace"))[0]
        # Recreate means no old pod may still run when new ones start, terminating ones included.
        if any((controller_ref(p) or {}).get("uid") in old_uids for p in pods):
            return
        self._scale(d, new_rs, want)

    def _rolling(self, d: Obj, new_rs: Obj, olds: list[Obj], want: int) -> None:
        ru = ((d.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
        surge = resolve_int_or_percent(ru.get("maxSurge"), want, "25%", round_up=True)
        unavail = resolve_int_or_percent(ru.get("maxUnavailable"), want, "25%", round_up=False)
        if surge == 0 and unavail == 0:
            unavail = 1
        # Scale up the new ReplicaSet within the surge budget.
        new_spec = _replicas(new_rs)
        if new_spec > want:
            new_rs = self._scale(d, new_rs, want)
        elif new_spec < want:
            total = new_spec + sum(_replicas(rs) for rs in olds)
            allowed = want + surge - total
            if allowed > 0:
                new_rs = self._scale(d, new_rs, min(want, new_spec + allowed))
        if not olds:
            return
        # Scale down old ReplicaSets within the availability budget.
        min_available = want - unavail
        all_pods = _replicas(new_rs) + sum(_replicas(rs) for rs in olds)
        new_unavailable = _replicas(new_rs) - _status_int(new_rs, "availableReplicas")
        budget = all_pods - min_available - new_unavailable
        if budget <= 0:
            return
        remaining = []
        for rs in olds:
            spec_n = _replicas(rs)
            unhealthy = spec_n - min(spec_n, _status_int(rs, "availableReplicas"))
            if unhealthy > 0 and budget > 0:
                cut = min(unhealthy, budget)
                rs = self._scale(d, rs, spec_n - cut)
                budget -= cut
            remaining.append(rs)
        available = sum(
            min(_replicas(rs), _status_int(rs, "availableReplicas")) for rs in [new_rs, *remaining]
        )
        budget = available - min_available
        for rs in remaining:
            if budget <= 0:
                break
            cut = min(_replicas(rs), budget)
            if cut > 0:
                self._scale(d, rs, _replicas(rs) - cut)
                budget -= cut

    def _cleanup(self, d: Obj, owned: list[Obj], new_rs: Obj) -> None:
        limit = int((d.get("spec") or {}).get("revisionHistoryLimit", 10))
        idle = [
            rs
            for rs in owned
            if meta(rs)["uid"] != meta(new_rs)["uid"]
            and _replicas(rs) == 0
            and _status_int(rs, "replicas") == 0
        ]
        idle.sort(key=lambda rs: int(meta(rs).get("annotations", {}).get(REVISION, "0")))
        for rs in idle[: max(0, len(idle) - limit)]:
            self.store.delete(self.rs_rt, meta(rs).get("namespace"), meta(rs)["name"])

    def _event(self, d: Obj, message: str) -> None:
        self.store.emit_event(d, "ScalingReplicaSet", message, "Normal", COMPONENT)

    # ---------------------------------------------------------------------------------- status
    def _status(
        self, d: Obj, new_rs: Obj | None, owned: list[Obj], *, created: bool
    ) -> float | None:
        d = try_get(self.store, self.deploy_rt, meta(d).get("namespace"), meta(d)["name"]) or d
        spec = d.get("spec") or {}
        want = _replicas(d)
        replicas = sum(_status_int(rs, "replicas") for rs in owned)
        ready = sum(_status_int(rs, "readyReplicas") for rs in owned)
        available = sum(_status_int(rs, "availableReplicas") for rs in owned)
        updated = _status_int(new_rs, "replicas") if new_rs else 0
        ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        unavail = 0
        if (spec.get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate":
            unavail = resolve_int_or_percent(ru.get("maxUnavailable"), want, "25%", round_up=False)
        old_status = d.get("status") or {}
        conds = [dict(c) for c in old_status.get("conditions") or []]
        if available >= want - unavail:
            conds = set_condition(
                conds,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                update_time=True,
            )
        else:
            conds = set_condition(
                conds,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                update_time=True,
            )
        rs_name = meta(new_rs)["name"] if new_rs else ""
        complete = (
            updated == want
            and replicas == want
            and available == want
            and all(
                _replicas(rs) == 0
                for rs in owned
                if new_rs is None or meta(rs)["uid"] != meta(new_rs)["uid"]
            )
        )
        counters = ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
        new_counts = dict(zip(counters, (replicas, updated, ready, available), strict=True))
        progressed = (
            created
            or any(new_counts[k] != int(old_status.get(k, 0)) for k in counters)
            or int(old_status.get("observedGeneration", 0)) != int(meta(d).get("generation", 1))
        )
        prog = get_condition(d, "Progressing")
        deadline = float(spec.get("progressDeadlineSeconds", 600)) * self.deadline_scale
        again: float | None = None
        if complete:
            if not prog or prog.get("reason") != "NewReplicaSetAvailable":
                conds = set_condition(
                    conds,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    f'ReplicaSet "{rs_name}" has successfully progressed.',
                    update_time=True,
                )
        elif created:
            conds = set_condition(
                conds,
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                f'Created new replica set "{rs_name}"',
                update_time=True,
            )
            again = deadline
        elif progressed or prog is None or prog.get("reason") == "NewReplicaSetAvailable":
            conds = set_condition(
                conds,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                f'ReplicaSet "{rs_name}" is progressing.',
                update_time=True,
            )
            again = deadline
        elif prog.get("reason") != "ProgressDeadlineExceeded":
            last = parse_iso(prog.get("lastUpdateTime")) or time.time()
            left = last + deadline - time.time()
            if left <= 0:
                conds = set_condition(
                    conds,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{rs_name}" has timed out progressing.',
                    update_time=True,
                )
            else:
                again = left + 0.05
        # set_condition stamps lastUpdateTime; keep the old stamp when nothing else changed.
        for c in conds:
            before = next(
                (o for o in old_status.get("conditions") or [] if o["type"] == c["type"]), None
            )
            if before and all(before.get(k) == c.get(k) for k in ("status", "reason", "message")):
                c["lastUpdateTime"] = before.get("lastUpdateTime", c.get("lastUpdateTime"))
                c["lastTransitionTime"] = before.get(
                    "lastTransitionTime", c.get("lastTransitionTime")
                )
        conds.sort(key=lambda c: 0 if c["type"] == "Available" else 1)
        status: Obj = {
            "observedGeneration": meta(d).get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "conditions": conds,
        }
        if want - available > 0:
            status["unavailableReplicas"] = want - available
        status = {k: v for k, v in status.items() if v or k in ("observedGeneration", "conditions")}
        write_status(self.store, d, status)
        return again
