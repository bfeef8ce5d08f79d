"""PersistentVolume binder: a claim binds to a volume named by ``spec.volumeName`` or chosen by
``spec.selector`` with matching storageClassName, accessModes and enough capacity; both sides
go Bound (``PV.spec.claimRef``, ``PVC.spec.volumeName``), as the upstream pv-controller does."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from sandbox.kube.controllers._base import Controller, Key, key_of, meta, try_get, write_status
from sandbox.kube.nodes import parse_quantity
from sandbox.kube.selectors import labels_match, selector_from_match
from sandbox.kube.store import Store

Obj = dict[str, Any]
COMPONENT = "persistentvolume-controller"


class VolumeBinder(Controller):
    name = "pv-binder"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.pv_rt = store.resource_type("v1", "PersistentVolume")
        self.pvc_rt = store.resource_type("v1", "PersistentVolumeClaim")

    def keys_for(self, event: str, obj: Obj) -> Iterable[Key]:
        if obj.get("kind") == "PersistentVolumeClaim":
            return [key_of(obj)]
        if obj.get("kind") == "PersistentVolume":
            return [("", meta(obj)["name"])] + [
                key_of(c)
                for c in self.store.list(self.pvc_rt)[0]
                if (c.get("status") or {}).get("phase") != "Bound"
            ]
        return []

    def resync(self) -> None:
        for pv in self.store.list(self.pv_rt)[0]:
            self.queue.add(("", meta(pv)["name"]))
        for pvc in self.store.list(self.pvc_rt)[0]:
            self.queue.add(key_of(pvc))

    def reconcile(self, key: Key) -> float | None:
        if key[0] == "":
            self._sync_pv(key[1])
            return None
        pvc = try_get(self.store, self.pvc_rt, key[0], key[1])
        if pvc is None or meta(pvc).get("deletionTimestamp"):
            return None
        spec = pvc.get("spec") or {}
        if (pvc.get("status") or {}).get("phase") == "Bound":
            return None
        pv = self._find_volume(pvc)
        if pv is None:
            if not (pvc.get("status") or {}).get("phase"):
                write_status(self.store, pvc, {"phase": "Pending"})
            msg = (
                f'volume "{spec["volumeName"]}" not found'
                if spec.get("volumeName")
                else "no persistent volumes available for this claim and no storage class is set"
            )
            self.store.emit_event(
                pvc,
                "FailedBinding",
                msg,
                "Warning" if spec.get("volumeName") else "Normal",
                COMPONENT,
            )
            return None
        self._bind(pvc, pv)
        return None

    def _matches(self, pvc: Obj, pv: Obj) -> bool:
        spec, pv_spec = pvc.get("spec") or {}, pv.get("spec") or {}
        claim_ref = pv_spec.get("claimRef")
        if claim_ref and (
            claim_ref.get("name") != meta(pvc)["name"]
            or claim_ref.get("namespace") != meta(pvc).get("namespace")
        ):
            return False
        if (pv.get("status") or {}).get("phase") in ("Released", "Failed"):
            return False
        if (spec.get("storageClassName") or "") != (pv_spec.get("storageClassName") or ""):
            return False
        if not set(spec.get("accessModes") or []) <= set(pv_spec.get("accessModes") or []):
            return False
        want = parse_quantity(
            ((spec.get("resources") or {}).get("requests") or {}).get("storage", 0)
        )
        have = parse_quantity((pv_spec.get("capacity") or {}).get("storage", 0))
        if have < want:
            return False
        if spec.get("volumeMode", "Filesystem") != pv_spec.get("volumeMode", "Filesystem"):
            return False
        return labels_match(selector_from_match(spec.get("selector")), meta(pv).get("labels"))

    def _find_volume(self, pvc: Obj) -> Obj | None:
        name = (pvc.get("spec") or {}).get("volumeName")
        if name:
            pv = try_get(self.store, self.pv_rt, None, name)
            return pv if pv is not None and self._matches(pvc, pv) else None
        candidates = [
            pv
            for pv in self.store.list(self.pv_rt)[0]
            if (pv.get("status") or {}).get("phase") in (None, "", "Available", "Pending")
            and not (pv.get("spec") or {}).get("claimRef", {}).get("uid")
            and self._matches(pvc, pv)
        ]
        candidates.sort(
            key=lambda pv: parse_quantity(
                ((pv.get("spec") or {}).get("capacity") or {}).get("storage", 0)
            )
        )
        return candidates[0] if candidates else None

    def _bind(self, pvc: Obj, pv: Obj) -> None:
        pv = copy.deepcopy(pv)
        pv["spec"]["claimRef"] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "name": meta(pvc)["name"],
            "namespace": meta(pvc).get("namespace"),
            "uid": meta(pvc)["uid"],
            "resourceVersion": meta(pvc)["resourceVersion"],
        }
        pv["metadata"].setdefault("annotations", {})["pv.kubernetes.io/bound-by-controller"] = "yes"
        pv = self.store.update(pv)
        write_status(self.store, pv, {"phase": "Bound"})
        pvc = copy.deepcopy(pvc)
        pvc["spec"]["volumeName"] = meta(pv)["name"]
        annotations = pvc["metadata"].setdefault("annotations", {})
        annotations["pv.kubernetes.io/bind-completed"] = "yes"
        annotations["pv.kubernetes.io/bound-by-controller"] = "yes"
        pvc = self.store.update(pvc)
        write_status(
            self.store,
            pvc,
            {
                "phase": "Bound",
                "accessModes": list((pv.get("spec") or {}).get("accessModes") or []),
                "capacity": dict((pv.get("spec") or {}).get("capacity") or {}),
            },
        )

    def _sync_pv(self, name: str) -> None:
        pv = try_get(self.store, self.pv_rt, None, name)
        if pv is None:
            return
        ref = (pv.get("spec") or {}).get("claimRef")
        phase = (pv.get("status") or {}).get("phase")
        if not ref or not ref.get("uid"):
            if phase not in ("Available",):
                write_status(self.store, pv, {"phase": "Available"})
            return
        claim = try_get(self.store, self.pvc_rt, ref.get("namespace"), ref.get("name", ""))
        # The claim is gone: a Retain volume is Released and never rebinds on its own.
        if (claim is None or meta(claim)["uid"] != ref.get("uid")) and phase != "Released":
            write_status(self.store, pv, {"phase": "Released"})
