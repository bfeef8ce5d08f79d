"""StatefulSet: ordinal pods ``<name>-<i>`` (``spec.ordinals.start`` honoured, which is how LWS
names its workers ``<lws>-<g>-1..``), OrderedReady vs Parallel, failed pods replaced, rolling
update from the highest ordinal, volumeClaimTemplates, and the status counters."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any

from sandbox.kube.controllers._base import (
    Controller,
    Key,
    controller_ref,
    key_of,
    meta,
    owner_ref,
    pod_available,
    pod_is_ready,
    stable_hash,
    try_get,
    write_status,
)
from sandbox.kube.controllers.pods import PodMutator, apply_mutators, pod_from_template
from sandbox.kube.store import AlreadyExists, Store

Obj = dict[str, Any]
REVISION_LABEL = "controller-revision-hash"


class StatefulSetController(Controller):
    name = "statefulset"

    def __init__(self, store: Store, mutators: list[PodMutator]) -> None:
        super().__init__(store)
        self.sts_rt = store.resource_type("apps/v1", "StatefulSet")
        self.pod_rt = store.resource_type("v1", "Pod")
        self.pvc_rt = store.resource_type("v1", "PersistentVolumeClaim")
        self.mutators = mutators

    def keys_for(self, event: str, obj: Obj) -> Iterable[Key]:
        if obj.get("kind") == "StatefulSet":
            return [key_of(obj)]
        if obj.get("kind") == "Pod":
            ref = controller_ref(obj)
            if ref and ref.get("kind") == "StatefulSet":
                return [(meta(obj).get("namespace") or "", str(ref.get("name")))]
        return []

    def resync(self) -> None:
        for sts in self.store.list(self.sts_rt)[0]:
            self.queue.add(key_of(sts))

    def reconcile(self, key: Key) -> float | None:
        sts = try_get(self.store, self.sts_rt, key[0], key[1])
        if sts is None or meta(sts).get("deletionTimestamp"):
            return None
        spec = sts.get("spec") or {}
        name = meta(sts)["name"]
        want = int(spec.get("replicas", 1))
        start = int((spec.get("ordinals") or {}).get("start", 0))
        template = spec.get("template") or {}
        revision = f"{name}-{stable_hash(template)}"
        parallel = spec.get("podManagementPolicy", "OrderedReady") == "Parallel"
        pods_by_ord: dict[int, Obj] = {}
        for pod in self.store.list(self.pod_rt, key[0])[0]:
            if controller_ref(pod) and (controller_ref(pod) or {}).get("uid") == meta(sts)["uid"]:
                suffix = meta(pod)["name"][len(name) + 1 :]
                if suffix.isdigit():
                    pods_by_ord[int(suffix)] = pod
        wanted = list(range(start, start + want))
        # Replace failed pods; wait for terminating ones to go before reusing their name.
        for ordinal in wanted:
            pod = pods_by_ord.get(ordinal)
            if pod is None or meta(pod).get("deletionTimestamp"):
                continue
            if (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                self.store.delete(self.pod_rt, key[0], meta(pod)["name"])
                del pods_by_ord[ordinal]
        blocked = False
        for ordinal in wanted:
            pod = pods_by_ord.get(ordinal)
            if pod is None:
                if blocked:
                    break
                self._create_pod(sts, ordinal, template, revision)
                if not parallel:
                    blocked = True
                continue
            if not parallel and (meta(pod).get("deletionTimestamp") or not pod_is_ready(pod)):
                blocked = True
        # Scale down from the highest ordinal (one at a time when ordered).
        extra = sorted((o for o in pods_by_ord if o not in wanted), reverse=True)
        for ordinal in extra:
            pod = pods_by_ord[ordinal]
            if not meta(pod).get("deletionTimestamp"):
                self.store.delete(self.pod_rt, key[0], meta(pod)["name"])
            if not parallel:
                break
        self._rolling_update(sts, pods_by_ord, wanted, revision)
        # Status.
        current = [pods_by_ord[o] for o in wanted if o in pods_by_ord]
        live = [p for p in current if not meta(p).get("deletionTimestamp")]
        ready = [p for p in live if pod_is_ready(p)]
        min_ready = int(spec.get("minReadySeconds", 0))
        now = time.time()
        updated = [p for p in live if (meta(p).get("labels") or {}).get(REVISION_LABEL) == revision]
        status: Obj = {
            "observedGeneration": meta(sts).get("generation", 1),
            "replicas": len(current),
            "readyReplicas": len(ready),
            "currentReplicas": len(updated),
            "updatedReplicas": len(updated),
            "availableReplicas": len([p for p in ready if pod_available(p, min_ready, now)]),
            "currentRevision": revision,
            "updateRevision": revision,
            "collisionCount": 0,
        }
        write_status(self.store, sts, status)
        return 0.2 if min_ready and len(ready) > status["availableReplicas"] else None

    def _rolling_update(
        self, sts: Obj, pods_by_ord: dict[int, Obj], wanted: list[int], revision: str
    ) -> None:
        strategy = (sts.get("spec") or {}).get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return
        partition = int((strategy.get("rollingUpdate") or {}).get("partition", 0))
        pods = [pods_by_ord.get(o) for o in wanted]
        if any(p is None or meta(p).get("deletionTimestamp") or not pod_is_ready(p) for p in pods):
            # Upstream waits for every pod to be Running and Ready before updating the next one,
            # but a broken old pod is replaced rather than waited on forever.
            stale_broken = [
                p
                for p in pods
                if p is not None
                and not meta(p).get("deletionTimestamp")
                and not pod_is_ready(p)
                and (meta(p).get("labels") or {}).get(REVISION_LABEL) != revision
            ]
            if stale_broken:
                last = stale_broken[-1]
                self.store.delete(self.pod_rt, meta(last).get("namespace"), meta(last)["name"])
            return
        for ordinal in reversed(wanted):
            pod = pods_by_ord[ordinal]
            if ordinal < partition:
                break
            if (meta(pod).get("labels") or {}).get(REVISION_LABEL) != revision:
                self.store.delete(self.pod_rt, meta(pod).get("namespace"), meta(pod)["name"])
                return

    def _create_pod(self, sts: Obj, ordinal: int, template: Obj, revision: str) -> None:
        spec = sts.get("spec") or {}
        name = f"{meta(sts)['name']}-{ordinal}"
        pod = pod_from_template(
            template,
            sts,
            name=name,
            extra_labels={
                REVISION_LABEL: revision,
                "statefulset.kubernetes.io/pod-name": name,
                "apps.kubernetes.io/pod-index": str(ordinal),
            },
        )
        pod["spec"]["hostname"] = name
        if spec.get("serviceName"):
            pod["spec"]["subdomain"] = spec["serviceName"]
        for claim in spec.get("volumeClaimTemplates") or []:
            cname = f"{meta(claim)['name']}-{name}"
            self._ensure_pvc(sts, claim, cname)
            volumes = pod["spec"].setdefault("volumes", [])
            if not any(v.get("name") == meta(claim)["name"] for v in volumes):
                volumes.append(
                    {"name": meta(claim)["name"], "persistentVolumeClaim": {"claimName": cname}}
                )
        apply_mutators(pod, self.mutators)
        try:
            self.store.create(pod)
        except AlreadyExists:
            return

    def _ensure_pvc(self, sts: Obj, claim: Obj, name: str) -> None:
        ns = meta(sts).get("namespace")
        if try_get(self.store, self.pvc_rt, ns, name) is not None:
            return
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": dict(meta(claim).get("labels") or {}),
            },
            "spec": copy.deepcopy(claim.get("spec") or {}),
        }
        policy = (sts.get("spec") or {}).get("persistentVolumeClaimRetentionPolicy") or {}
        if policy.get("whenDeleted") == "Delete":
            pvc["metadata"]["ownerReferences"] = [owner_ref(sts, controller=False)]
        try:
            self.store.create(pvc)
        except AlreadyExists:
            return
