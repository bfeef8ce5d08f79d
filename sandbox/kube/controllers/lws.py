"""LeaderWorkerSet (leaderworkerset.x-k8s.io/v1), built the way upstream builds it.

- A leader StatefulSet ``<lws>`` (Parallel, one pod per group ``<lws>-<g>``) from the leader
  template (or the worker template when there is none).
- Per leader pod a worker StatefulSet ``<lws>-<g>`` owned by that leader pod, with ordinals
  starting at 1, so workers are ``<lws>-<g>-1 .. <lws>-<g>-(size-1)`` and go away with their
  leader (garbage collection). With ``startupPolicy: LeaderReady`` it is created only once the
  leader pod is Ready.
- A pod "webhook" (``lws_pod_mutator``) adds the labels and env vars upstream injects:
  LWS_LEADER_ADDRESS ``<lws>-<g>.<subdomain>.<ns>``, LWS_GROUP_SIZE, LWS_WORKER_INDEX.
- A headless Service named after the LWS (subdomainPolicy Shared) or one per group
  (UniquePerReplica).
- RecreateGroupOnPodRestart: a container restart or failed pod anywhere in a group deletes the
  leader pod, which takes the whole group with it; the leader StatefulSet then recreates it.
- Status: replicas, readyReplicas (groups whose every pod is Ready), updatedReplicas,
  hpaPodSelector, conditions Available (AllGroupsReady) / Progressing / UpdateInProgress.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterable
from typing import Any

from sandbox.kube.controllers._base import (
    Controller,
    Key,
    controller_ref,
    inject_env,
    is_deleting,
    key_of,
    labels_of,
    meta,
    owner_ref,
    pod_is_ready,
    set_condition,
    stable_hash,
    try_get,
    write_status,
)
from sandbox.kube.controllers.pods import template_with
from sandbox.kube.store import AlreadyExists, NotFound, Store

Obj = dict[str, Any]
P = "leaderworkerset.sigs.k8s.io/"
NAME = P + "name"
GROUP_INDEX = P + "group-index"
WORKER_INDEX = P + "worker-index"
GROUP_KEY = P + "group-key"
REVISION = P + "template-revision-hash"
SIZE = P + "size"
LEADER_NAME = P + "leader-name"
SUBDOMAIN_POLICY = P + "subdomainPolicy"
COMPONENT = "lws-controller"


def group_key(namespace: str, lws: str, group: str) -> str:
    return hashlib.sha1(f"{namespace}/{lws}-{group}".encode(), usedforsecurity=False).hexdigest()


def lws_templates(lws: Obj) -> tuple[Obj, Obj, int]:
    lwt = (lws.get("spec") or {}).get("leaderWorkerTemplate") or {}
    worker = lwt.get("workerTemplate") or {}
    leader = lwt.get("leaderTemplate") or worker
    return leader, worker, int(lwt.get("size", 1))


def lws_revision(lws: Obj) -> str:
    leader, worker, size = lws_templates(lws)
    return stable_hash({"leader": leader, "worker": worker, "size": size})


def lws_pod_mutator(pod: Obj) -> None:
    """What LWS's pod webhook does to every pod it owns at creation."""
    labels = meta(pod).get("labels") or {}
    lws = labels.get(NAME)
    if not lws:
        return
    ns = meta(pod).get("namespace") or "default"
    annotations = meta(pod).get("annotations") or {}
    size = annotations.get(SIZE, "1")
    is_leader = labels.get(WORKER_INDEX) == "0" and LEADER_NAME not in annotations
    if is_leader:
        group = labels.get("apps.kubernetes.io/pod-index", "0")
        worker = "0"
    else:
        group = labels.get(GROUP_INDEX, "0")
        worker = labels.get("apps.kubernetes.io/pod-index", "1")
    labels[GROUP_INDEX] = group
    labels[WORKER_INDEX] = worker
    labels[GROUP_KEY] = group_key(ns, lws, group)
    pod["metadata"]["labels"] = labels
    if annotations.get(SUBDOMAIN_POLICY) == "UniquePerReplica":
        pod["spec"]["subdomain"] = f"{lws}-{group}"
    subdomain = (pod.get("spec") or {}).get("subdomain") or lws
    env = [
        {"name": "LWS_LEADER_ADDRESS", "value": f"{lws}-{group}.{subdomain}.{ns}"},
        {"name": "LWS_GROUP_SIZE", "value": str(size)},
        {"name": "LWS_WORKER_INDEX", "value": worker},
    ]
    inject_env(pod["spec"], env)


class LeaderWorkerSetController(Controller):
    name = "leaderworkerset"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.lws_rt = store.resource_type("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
        self.sts_rt = store.resource_type("apps/v1", "StatefulSet")
        self.pod_rt = store.resource_type("v1", "Pod")
        self.svc_rt = store.resource_type("v1", "Service")

    def keys_for(self, event: str, obj: Obj) -> Iterable[Key]:
        kind = obj.get("kind")
        if kind == "LeaderWorkerSet":
            return [key_of(obj)]
        if kind in ("Pod", "StatefulSet"):
            lws = labels_of(obj).get(NAME)
            if lws:
                return [(meta(obj).get("namespace") or "", lws)]
        return []

    def resync(self) -> None:
        for lws in self.store.list(self.lws_rt)[0]:
            self.queue.add(key_of(lws))

    # -----------------------------------------------------------------------------------------
    def reconcile(self, key: Key) -> float | None:
        lws = try_get(self.store, self.lws_rt, key[0], key[1])
        if lws is None or is_deleting(lws):
            return None
        ns, name = key
        spec = lws.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        leader_tmpl, worker_tmpl, size = lws_templates(lws)
        revision = lws_revision(lws)
        policy = ((spec.get("networkConfig") or {}).get("subdomainPolicy")) or "Shared"
        self._services(lws, replicas, policy)
        leader_sts = self._leader_sts(lws, leader_tmpl, replicas, size, revision, policy)
        pods = [p for p in self.store.list(self.pod_rt, ns, label_selector=f"{NAME}={name}")[0]]
        leaders = {
            meta(p)["name"]: p
            for p in pods
            if labels_of(p).get(WORKER_INDEX) == "0" and owner_uid(p) == meta(leader_sts)["uid"]
        }
        restart_policy = (spec.get("leaderWorkerTemplate") or {}).get(
            "restartPolicy", "RecreateGroupOnPodRestart"
        )
        startup = spec.get("startupPolicy", "LeaderCreated")
        ready_groups = 0
        updated_groups = 0
        for g in range(replicas):
            leader = leaders.get(f"{name}-{g}")
            if leader is None or is_deleting(leader):
                continue
            group_pods = [p for p in pods if labels_of(p).get(GROUP_INDEX) == str(g)]
            workers = [
                p for p in group_pods if p is not leader and labels_of(p).get(WORKER_INDEX) != "0"
            ]
            if restart_policy in (
                "RecreateGroupOnPodRestart",
                "RecreateGroupAfterStart",
            ) and _broken([leader, *workers]):
                self.store.emit_event(
                    lws,
                    "RecreateGroupOnPodRestart",
                    f"Worker group {g} has a restarted or failed pod; recreating the group",
                    "Normal",
                    COMPONENT,
                )
                self.store.delete(self.pod_rt, ns, meta(leader)["name"])
                continue
            if size > 1 and (startup != "LeaderReady" or pod_is_ready(leader)):
                self._worker_sts(lws, leader, worker_tmpl, g, size, revision, policy)
            live_workers = [p for p in workers if not is_deleting(p)]
            group_ready = (
                pod_is_ready(leader)
                and len([p for p in live_workers if pod_is_ready(p)]) == size - 1
            )
            if group_ready:
                ready_groups += 1
                if labels_of(leader).get(REVISION) == revision and all(
                    labels_of(p).get(REVISION) == revision for p in live_workers
                ):
                    updated_groups += 1
        self._status(
            lws,
            replicas,
            len([p for p in leaders.values() if not is_deleting(p)]),
            ready_groups,
            updated_groups,
        )
        return None

    def _services(self, lws: Obj, replicas: int, policy: str) -> None:
        ns, name = meta(lws).get("namespace"), meta(lws)["name"]
        wanted: list[tuple[str, dict[str, str]]] = []
        if policy == "UniquePerReplica":
            wanted = [(f"{name}-{g}", {NAME: name, GROUP_INDEX: str(g)}) for g in range(replicas)]
        else:
            wanted = [(name, {NAME: name})]
        for svc_name, selector in wanted:
            if try_get(self.store, self.svc_rt, ns, svc_name) is not None:
                continue
            svc = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": svc_name,
                    "namespace": ns,
                    "ownerReferences": [owner_ref(lws)],
                },
                "spec": {
                    "clusterIP": "None",
                    "clusterIPs": ["None"],
                    "selector": selector,
                    "publishNotReadyAddresses": True,
                    "type": "ClusterIP",
                },
            }
            try:
                self.store.create(svc)
            except AlreadyExists:
                continue

    def _leader_sts(
        self, lws: Obj, leader_tmpl: Obj, replicas: int, size: int, revision: str, policy: str
    ) -> Obj:
        ns, name = meta(lws).get("namespace"), meta(lws)["name"]
        labels = {NAME: name, WORKER_INDEX: "0", REVISION: revision}
        template = template_with(
            leader_tmpl,
            labels=labels,
            annotations={SIZE: str(size), SUBDOMAIN_POLICY: policy},
        )
        # UniquePerReplica: the pod mutator points each pod at its group's own Service.
        service = name
        sts: Obj = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {NAME: name, REVISION: revision},
                "annotations": {SIZE: str(size)},
                "ownerReferences": [owner_ref(lws)],
            },
            "spec": {
                "replicas": replicas,
                "serviceName": service,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {NAME: name, WORKER_INDEX: "0"}},
                "template": template,
                "updateStrategy": {"type": "RollingUpdate"},
            },
        }
        existing = try_get(self.store, self.sts_rt, ns, name)
        if existing is None:
            try:
                return self.store.create(sts)
            except AlreadyExists:
                return self.store.get(self.sts_rt, ns, name)
        if (existing.get("spec") or {}).get("template") != template or _replicas(
            existing
        ) != replicas:
            updated = copy.deepcopy(existing)
            updated["spec"]["template"] = template
            updated["spec"]["replicas"] = replicas
            updated["metadata"]["labels"] = sts["metadata"]["labels"]
            return self.store.update(updated)
        return existing

    def _worker_sts(
        self,
        lws: Obj,
        leader: Obj,
        worker_tmpl: Obj,
        g: int,
        size: int,
        revision: str,
        policy: str,
    ) -> None:
        ns, name = meta(lws).get("namespace"), meta(lws)["name"]
        sts_name = meta(leader)["name"]
        existing = try_get(self.store, self.sts_rt, ns, sts_name)
        if existing is not None:
            if owner_uid(existing) == meta(leader)["uid"] and not is_deleting(existing):
                return
            if not is_deleting(existing):
                # Left over from a previous leader (GC not done yet): clear it first.
                with contextlib.suppress(NotFound):
                    self.store.delete(self.sts_rt, ns, sts_name)
            return
        leader_rev = labels_of(leader).get(REVISION, revision)
        labels = {
            NAME: name,
            GROUP_INDEX: str(g),
            GROUP_KEY: group_key(ns or "default", name, str(g)),
            REVISION: leader_rev,
        }
        template = template_with(
            worker_tmpl,
            labels=labels,
            annotations={SIZE: str(size), LEADER_NAME: sts_name, SUBDOMAIN_POLICY: policy},
        )
        sts = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {
                "name": sts_name,
                "namespace": ns,
                "labels": dict(labels),
                "ownerReferences": [owner_ref(leader)],
            },
            "spec": {
                "replicas": size - 1,
                "ordinals": {"start": 1},
                "serviceName": name if policy != "UniquePerReplica" else f"{name}-{g}",
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {NAME: name, GROUP_KEY: labels[GROUP_KEY]}},
                "template": template,
            },
        }
        try:
            self.store.create(sts)
        except AlreadyExists:
            return

    def _status(self, lws: Obj, replicas: int, leaders: int, ready: int, updated: int) -> None:
        name = meta(lws)["name"]
        old = lws.get("status") or {}
        conds = [dict(c) for c in old.get("conditions") or []]
        if ready == replicas:
            conds = set_condition(
                conds, "Available", "True", "AllGroupsReady", "All replicas are ready"
            )
            conds = set_condition(conds, "Progressing", "False", "Ready", "Replicas are ready")
        else:
            conds = set_condition(
                conds, "Available", "False", "AllGroupsReady", "Not all replicas are ready"
            )
            conds = set_condition(
                conds, "Progressing", "True", "GroupsProgressing", "Replicas are progressing"
            )
        in_update = updated < replicas and ready > updated
        conds = set_condition(
            conds,
            "UpdateInProgress",
            "True" if in_update else "False",
            "GroupsUpdating" if in_update else "UpdateDone",
            "Rolling Upgrade is in progress" if in_update else "Rolling Upgrade is done",
        )
        status: Obj = {
            "observedGeneration": meta(lws).get("generation", 1),
            "replicas": leaders,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "hpaPodSelector": f"{NAME}={name},{WORKER_INDEX}=0",
            "conditions": conds,
        }
        write_status(self.store, lws, status)


def owner_uid(obj: Obj) -> str | None:
    ref = controller_ref(obj)
    return str(ref.get("uid")) if ref else None


def _replicas(obj: Obj) -> int:
    return int((obj.get("spec") or {}).get("replicas", 1))


def _broken(pods: list[Obj]) -> bool:
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") == "Failed":
            return True
        if any(int(c.get("restartCount", 0)) > 0 for c in status.get("containerStatuses") or []):
            return True
    return False
