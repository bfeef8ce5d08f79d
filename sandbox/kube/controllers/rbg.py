"""RoleBasedGroup (workloads.x-k8s.io), in the flavour of the installed release.

v0.6 (v1alpha1): roles carry ``template``, ``workload`` {apiVersion, kind} (StatefulSet by
default, Deployment, or LeaderWorkerSet with ``leaderWorkerSet.size`` and template patches);
pods are labelled ``rolebasedgroup.workloads.x-k8s.io/{name,role}`` and get GROUP_NAME,
ROLE_NAME, ROLE_INDEX.
v0.7 (v1alpha2 stored, v1alpha1 still served): roles carry ``standalonePattern`` or
``leaderWorkerPattern`` (templates inline or via ``roleTemplates`` + patch); labels become
``rbg.workloads.x-k8s.io/{group-name,role-name}`` and env RBG_GROUP_NAME, RBG_ROLE_NAME,
RBG_ROLE_INDEX (+ RBG_LWP_* for leader/worker roles). Upstream v0.7 runs roles on its own
RoleInstanceSet; this sandbox has no such CRD and uses StatefulSet / LeaderWorkerSet instead,
which gives the same pod names (``<rbg>-<role>-<i>``).

Either way: a role's workload is created only after every role it depends on is Ready; each
role gets a headless Service ``s-<rbg>-<role>``; status has roleStatuses and condition Ready.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from sandbox.kube.controllers._base import (
    Controller,
    Key,
    controller_ref,
    deep_merge,
    inject_env,
    is_deleting,
    key_of,
    meta,
    owner_ref,
    set_condition,
    try_get,
    write_status,
)
from sandbox.kube.controllers.pods import template_with
from sandbox.kube.store import AlreadyExists, NotFound, Store

Obj = dict[str, Any]
COMPONENT = "rbg-controller"
LWS_API = "leaderworkerset.x-k8s.io/v1"


class RoleBasedGroupController(Controller):
    name = "rolebasedgroup"

    def __init__(self, store: Store, version: str = "v0.6") -> None:
        super().__init__(store)
        self.version = version
        rts = [rt for rt in store.resource_types() if rt.kind == "RoleBasedGroup"]
        if not rts:
            raise NotFound("RoleBasedGroup CRD is not installed")
        stored = [
            rt for rt in rts if rt.version == ("v1alpha2" if version == "v0.7" else "v1alpha1")
        ]
        self.rbg_rt = (stored or rts)[0]
        self.sts_rt = store.resource_type("apps/v1", "StatefulSet")
        self.deploy_rt = store.resource_type("apps/v1", "Deployment")
        self.svc_rt = store.resource_type("v1", "Service")
        try:
            self.lws_rt = store.resource_type(LWS_API, "LeaderWorkerSet")
        except NotFound:
            self.lws_rt = None
        if version == "v0.7":
            self.name_label = "rbg.workloads.x-k8s.io/group-name"
            self.role_label = "rbg.workloads.x-k8s.io/role-name"
            self.env_prefix = "RBG_"
        else:
            self.name_label = "rolebasedgroup.workloads.x-k8s.io/name"
            self.role_label = "rolebasedgroup.workloads.x-k8s.io/role"
            self.env_prefix = ""

    def keys_for(self, event: str, obj: Obj) -> Iterable[Key]:
        if obj.get("kind") == "RoleBasedGroup":
            return [key_of(obj)]
        if obj.get("kind") in ("StatefulSet", "Deployment", "LeaderWorkerSet"):
            ref = controller_ref(obj)
            if ref and ref.get("kind") == "RoleBasedGroup":
                return [(meta(obj).get("namespace") or "", str(ref.get("name")))]
        return []

    def resync(self) -> None:
        for rbg in self.store.list(self.rbg_rt)[0]:
            self.queue.add(key_of(rbg))

    # -----------------------------------------------------------------------------------------
    def reconcile(self, key: Key) -> float | None:
        rbg = try_get(self.store, self.rbg_rt, key[0], key[1])
        if rbg is None or is_deleting(rbg):
            return None
        roles = (rbg.get("spec") or {}).get("roles") or []
        by_name = {r["name"]: r for r in roles}
        ready: dict[str, bool] = {}
        statuses: list[Obj] = []
        waiting: list[str] = []
        for role in self._ordered(roles):
            deps = role.get("dependencies") or []
            missing = [d for d in deps if d in by_name and not ready.get(d)]
            workload = self._workload_of(rbg, role)
            if workload is None and missing:
                waiting.append(role["name"])
                self.store.emit_event(
                    rbg,
                    "DependencyNotMet",
                    f"role {role['name']} waits for dependencies to be ready: {missing}",
                    "Warning",
                    COMPONENT,
                )
                ready[role["name"]] = False
                statuses.append(self._role_status(role, None))
                continue
            self._service(rbg, role)
            workload = self._apply_workload(rbg, role)
            st = self._role_status(role, workload)
            statuses.append(st)
            ready[role["name"]] = st["readyReplicas"] >= st["replicas"] and workload is not None
        self._status(rbg, roles, statuses, ready)
        return None

    @staticmethod
    def _ordered(roles: list[Obj]) -> list[Obj]:
        """Topological order (dependencies first); cycles fall back to spec order."""
        by_name = {r["name"]: r for r in roles}
        out: list[Obj] = []
        seen: set[str] = set()

        def visit(role: Obj, stack: set[str]) -> None:
            if role["name"] in seen or role["name"] in stack:
                return
            for dep in role.get("dependencies") or []:
                if dep in by_name:
                    visit(by_name[dep], stack | {role["name"]})
            seen.add(role["name"])
            out.append(role)

        for role in roles:
            visit(role, set())
        return out

    # ------------------------------------------------------------------------ role shapes
    def _shape(self, rbg: Obj, role: Obj) -> tuple[str, Obj, Obj | None, int]:
        """(kind, pod template, worker template or None, group size) of a role."""
        spec = rbg.get("spec") or {}
        templates = {
            t.get("name"): t.get("template") or {} for t in spec.get("roleTemplates") or []
        }

        def resolve(holder: Obj) -> Obj:
            if holder.get("template"):
                return copy.deepcopy(holder["template"])
            ref = holder.get("templateRef") or {}
            base = copy.deepcopy(templates.get(ref.get("name"), {}))
            return deep_merge(base, ref.get("patch") or {}) if ref.get("patch") else base

        if role.get("leaderWorkerPattern"):
            lwp = role["leaderWorkerPattern"]
            base = resolve(lwp)
            leader = deep_merge(base, lwp.get("leaderTemplatePatch") or {})
            worker = deep_merge(base, lwp.get("workerTemplatePatch") or {})
            return "LeaderWorkerSet", leader, worker, int(lwp.get("size", 1))
        if role.get("standalonePattern"):
            return "StatefulSet", resolve(role["standalonePattern"]), None, 1
        kind = (role.get("workload") or {}).get("kind", "StatefulSet")
        template = copy.deepcopy(role.get("template") or {})
        if kind == "LeaderWorkerSet":
            lw = role.get("leaderWorkerSet") or {}
            leader = deep_merge(template, lw.get("patchLeaderTemplate") or {})
            worker = deep_merge(template, lw.get("patchWorkerTemplate") or {})
            return kind, leader, worker, int(lw.get("size", 1))
        return kind, template, None, 1

    def _decorate(self, rbg: Obj, role: Obj, template: Obj, kind: str) -> Obj:
        name, rname = meta(rbg)["name"], role["name"]
        labels = {self.name_label: name, self.role_label: rname}
        labels.update(role.get("labels") or {})
        out = template_with(template, labels=labels, annotations=role.get("annotations") or None)
        index_label = (
            "leaderworkerset.sigs.k8s.io/group-index"
            if kind == "LeaderWorkerSet"
            else "apps.kubernetes.io/pod-index"
        )
        p = self.env_prefix
        env: list[Obj] = [
            {"name": f"{p}GROUP_NAME", "value": name},
            {"name": f"{p}ROLE_NAME", "value": rname},
        ]
        if kind != "Deployment":
            env.append(
                {
                    "name": f"{p}ROLE_INDEX",
                    "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{index_label}']"}},
                }
            )
        if p and kind == "LeaderWorkerSet":
            # Defined after the LWS_* vars the LWS webhook prepends, so $(...) expands.
            env += [
                {"name": "RBG_LWP_LEADER_ADDRESS", "value": "$(LWS_LEADER_ADDRESS)"},
                {"name": "RBG_LWP_GROUP_SIZE", "value": "$(LWS_GROUP_SIZE)"},
                {"name": "RBG_LWP_WORKER_INDEX", "value": "$(LWS_WORKER_INDEX)"},
            ]
        spec = out.setdefault("spec", {})
        inject_env(spec, env)
        return out

    def _workload_name(self, rbg: Obj, role: Obj) -> str:
        return f"{meta(rbg)['name']}-{role['name']}"

    def _workload_of(self, rbg: Obj, role: Obj) -> Obj | None:
        kind = self._shape(rbg, role)[0]
        rt = self._rt(kind)
        if rt is None:
            return None
        return try_get(self.store, rt, meta(rbg).get("namespace"), self._workload_name(rbg, role))

    def _rt(self, kind: str) -> Any:
        return {"StatefulSet": self.sts_rt, "Deployment": self.deploy_rt}.get(kind, self.lws_rt)

    def _apply_workload(self, rbg: Obj, role: Obj) -> Obj | None:
        kind, template, worker, size = self._shape(rbg, role)
        rt = self._rt(kind)
        if rt is None:
            self.store.emit_event(
                rbg,
                "FailedCreate",
                f"role {role['name']}: LeaderWorkerSet CRD is not installed",
                "Warning",
                COMPONENT,
            )
            return None
        ns, wname = meta(rbg).get("namespace"), self._workload_name(rbg, role)
        selector = {self.name_label: meta(rbg)["name"], self.role_label: role["name"]}
        replicas = int(role.get("replicas", 1))
        tmpl = self._decorate(rbg, role, template, kind)
        spec: Obj
        if kind == "LeaderWorkerSet":
            spec = {
                "replicas": replicas,
                "startupPolicy": "LeaderCreated",
                "leaderWorkerTemplate": {
                    "size": size,
                    "leaderTemplate": tmpl,
                    "workerTemplate": self._decorate(rbg, role, worker or template, kind),
                    "restartPolicy": "RecreateGroupOnPodRestart",
                },
            }
            api = LWS_API
        elif kind == "Deployment":
            spec = {"replicas": replicas, "selector": {"matchLabels": selector}, "template": tmpl}
            api = "apps/v1"
        else:
            spec = {
                "replicas": replicas,
                "selector": {"matchLabels": selector},
                "serviceName": f"s-{meta(rbg)['name']}-{role['name']}",
                "podManagementPolicy": "Parallel",
                "template": tmpl,
            }
            api = "apps/v1"
        obj: Obj = {
            "apiVersion": api,
            "kind": kind,
            "metadata": {
                "name": wname,
                "namespace": ns,
                "labels": dict(selector),
                "ownerReferences": [owner_ref(rbg)],
            },
            "spec": spec,
        }
        existing = try_get(self.store, rt, ns, wname)
        if existing is None:
            try:
                return self.store.create(obj)
            except AlreadyExists:
                return self.store.get(rt, ns, wname)
        if any((existing.get("spec") or {}).get(k) != v for k, v in spec.items()):
            updated = copy.deepcopy(existing)
            updated["spec"] = {**(existing.get("spec") or {}), **spec}
            return self.store.update(updated)
        return existing

    def _service(self, rbg: Obj, role: Obj) -> None:
        ns = meta(rbg).get("namespace")
        name = f"s-{meta(rbg)['name']}-{role['name']}"
        if try_get(self.store, self.svc_rt, ns, name) is not None:
            return
        ports = [
            {k: v for k, v in p.items() if k in ("name", "port", "protocol", "targetPort")}
            for p in role.get("servicePorts") or []
        ]
        svc_spec: Obj = {
            "clusterIP": "None",
            "clusterIPs": ["None"],
            "selector": {self.name_label: meta(rbg)["name"], self.role_label: role["name"]},
            "publishNotReadyAddresses": True,
            "type": "ClusterIP",
        }
        if ports:
            svc_spec["ports"] = ports
        svc = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {self.name_label: meta(rbg)["name"], self.role_label: role["name"]},
                "ownerReferences": [owner_ref(rbg)],
            },
            "spec": svc_spec,
        }
        try:
            self.store.create(svc)
        except AlreadyExists:
            return

    # ---------------------------------------------------------------------------------- status
    def _role_status(self, role: Obj, workload: Obj | None) -> Obj:
        want = int(role.get("replicas", 1))
        st = (workload or {}).get("status") or {}
        return {
            "name": role["name"],
            "replicas": want,
            "readyReplicas": int(st.get("readyReplicas", 0)),
            "updatedReplicas": int(st.get("updatedReplicas", 0)),
        }

    def _status(
        self, rbg: Obj, roles: list[Obj], statuses: list[Obj], ready: dict[str, bool]
    ) -> None:
        order = {r["name"]: i for i, r in enumerate(roles)}
        statuses.sort(key=lambda s: order[s["name"]])
        conds = [dict(c) for c in (rbg.get("status") or {}).get("conditions") or []]
        not_ready = [r["name"] for r in roles if not ready.get(r["name"])]
        if not not_ready:
            conds = set_condition(conds, "Ready", "True", "AllRolesReady", "All roles are ready")
        else:
            conds = set_condition(
                conds, "Ready", "False", "RoleNotReady", f"roles not ready: {', '.join(not_ready)}"
            )
        status = {
            "observedGeneration": meta(rbg).get("generation", 1),
            "roleStatuses": statuses,
            "conditions": conds,
        }
        write_status(self.store, rbg, status)
