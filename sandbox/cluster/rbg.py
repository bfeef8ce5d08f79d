"""A RoleBasedGroup reconciler of our own, a client of the real API server: a stand-in for
sgl-project/rbg's controller, whose Go module (``sigs.k8s.io/rbgs``) cannot be fetched here
(issue 14; ``../shared/research/real-control-plane.md`` §5.3).

It creates only the child objects upstream's v0.6.0 controller creates for a group of
``workloads.x-k8s.io/v1alpha1`` roles, named, labelled and owned as upstream does, written by
server-side apply with upstream's field manager ``rbg`` (``pkg/utils/utils.go``
PatchObjectApplyConfiguration); the real kube-controller-manager then runs them:

- per role a ConfigMap ``<rbg>-<role>`` with the group's ``config.yaml``, mounted read-only at
  ``/etc/rbg`` in every container (``pkg/discovery/injector.go`` InjectConfig,
  ``config_builder.go``);
- per role its workload ``<rbg>-<role>`` (``api/workloads/v1alpha1/helper.go``
  GetWorkloadName): a StatefulSet (``pkg/reconciler/sts_reconciler.go``: Parallel pods,
  ``serviceName`` the role's headless Service) or a Deployment (``deploy_reconciler.go``),
  controlled by the group; pods labelled ``rolebasedgroup.workloads.x-k8s.io/{name,role,
  group-unique-key}`` and given ``GROUP_NAME``, ``ROLE_NAME`` and, on StatefulSets,
  ``ROLE_INDEX`` (``pkg/discovery/env_builder.go``);
- per StatefulSet role a headless Service ``s-<rbg>-<role>``, or ``<rbg>-<role>`` when a
  Service of that older name already exists (``pkg/utils/service_utils.go``
  GetCompatibleHeadlessServiceName), owned by the StatefulSet, not by the group
  (``svc_reconciler.go``);
- a role is created only once every role it depends on is ready (``pkg/dependency``
  CheckDependencyReady; event ``DependencyNotMet`` otherwise);
- the group's status: ``roleStatuses`` from each workload's spec.replicas and status
  (skipped while a workload's status lags its generation), ``observedGeneration`` and the
  ``Ready`` condition (``AllRolesReady`` / ``RoleNotReady``), applied to the status
  subresource (``internal/controller/workloads/rolebasedgroup_controller.go`` updateRBGStatus,
  ``pkg/reconciler/common.go`` ConstructRoleStatue).

Left out, and so never created: the ControllerRevision upstream keeps per group (the role
revision label is a hash of the role here), scaling adapters, pod groups, LeaderWorkerSet and
InstanceSet roles (refused with a ``FailedReconcileWorkload`` event), and the partition steps of
upstream's rolling update (the StatefulSet controller's own RollingUpdate replaces pods one at a
time from the highest ordinal, which is where upstream's partition with maxUnavailable 1 and
maxSurge 0 ends up too).

Run as its own process (``python -m sandbox.cluster.rbg KUBECONFIG``) with its own client
certificate, bound to :func:`cluster_role` (the part of upstream's
``config/rbac/rbgs_controller_role.yaml`` this reconciler uses).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]

GROUP = "workloads.x-k8s.io"
VERSION = "v1alpha1"
PLURAL = "rolebasedgroups"
CRD_NAME = f"{PLURAL}.{GROUP}"
USER = "rbg-controller-manager"
# Upstream's CRD at the two releases (../shared/crds/SOURCES.md): v0.6.0 serves v1alpha1 only;
# v0.7.0 stores v1alpha2 and still serves v1alpha1. They share one name, so a cluster has one.
CRD_DIR_ENV = "LLM_ROLLOUT_CRD_DIR"


def upstream_crd_dir() -> Path:
    """Where upstream's CRD files are read from: `$LLM_ROLLOUT_CRD_DIR` (the product's own
    setting for offline validation, `llm_rollout/crds.py`) when set, else the checkout's
    sibling `shared/crds`. A clone placed elsewhere names the directory through the variable."""
    explicit = os.environ.get(CRD_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    return Path(__file__).resolve().parents[3] / "shared" / "crds"


def require_crd_file(path: Path) -> Path:
    """`path`, or a clear error naming it and how to point at the directory that holds it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"upstream CRD file {path} not found: the sandbox reads upstream's CRDs from "
            f"{path.parent}; set {CRD_DIR_ENV} to the directory that holds them"
        )
    return path


SHARED_CRDS = upstream_crd_dir()
CRD_V06 = SHARED_CRDS / "workloads.x-k8s.io_rolebasedgroups.v0.6.0.yaml"
CRD_V07 = SHARED_CRDS / "workloads.x-k8s.io_rolebasedgroups.v0.7.0.yaml"
# pkg/utils/utils.go FieldManager; api/workloads/v1alpha1/constant.go ControllerName.
FIELD_MANAGER = "rbg"
CONTROLLER_NAME = "rolebasedgroup-controller"
PREFIX = "rolebasedgroup.workloads.x-k8s.io/"
NAME_LABEL = PREFIX + "name"
ROLE_LABEL = PREFIX + "role"
GROUP_KEY_LABEL = PREFIX + "group-unique-key"
ROLE_REVISION_LABEL = PREFIX + "role-revision-hash-{role}"
ROLE_SIZE_ANNOTATION = PREFIX + "role-size"
CONFIG_VOLUME = "rbg-cluster-config"
CONFIG_MOUNT = "/etc/rbg"
CONFIG_KEY = "config.yaml"
APPLY = "application/apply-patch+yaml"
# After a failed reconcile (a dependency not ready, a conflict): controller-runtime requeues
# with back-off; the watches on the children bring most changes sooner.
REQUEUE_S = 1.0

log = logging.getLogger("rbg")


class RoleError(RuntimeError):
    """A role cannot be reconciled now; the group is requeued."""


def cluster_role() -> Obj:
    """The rules of upstream's ``rbgs-controller-role`` (v0.6.0
    ``config/rbac/rbgs_controller_role.yaml``) for the objects this reconciler touches."""
    rw = ["get", "list", "watch", "create", "update", "patch", "delete"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "rbgs-controller-role"},
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [PLURAL],
                "verbs": ["get", "list", "watch", "create", "delete", "update", "patch"],
            },
            {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": rw},
            {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": rw},
            {
                "apiGroups": [""],
                "resources": ["events"],
                "verbs": ["create", "get", "list", "patch", "update", "watch"],
            },
            {"apiGroups": ["apps"], "resources": ["statefulsets", "deployments"], "verbs": rw},
            # v0.7.0 (config/rbac/role.yaml): its RoleInstanceSets, RoleInstances and the
            # pods these create, whose gate conditions it writes (rbg_v07.py).
            {
                "apiGroups": [GROUP],
                "resources": [
                    "roleinstancesets",
                    "roleinstancesets/status",
                    "roleinstances",
                    "roleinstances/status",
                ],
                "verbs": rw,
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": rw},
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get", "patch", "update"]},
        ],
    }


def workload_name(rbg: str, role: str) -> str:
    """``<rbg>-<role>``, cut to 63 characters without a trailing hyphen (GetWorkloadName)."""
    return f"{rbg}-{role}"[:63].rstrip("-")


def service_name(rbg: str, role: str) -> str:
    """``s-<rbg>-<role>``, cut the same way (GetServiceName, since v0.5.0)."""
    return f"s-{rbg}-{role}"[:63].rstrip("-")


def group_unique_key(namespace: str, name: str) -> str:
    """SHA-1 of ``<namespace>/<name>`` (helper.go GenGroupUniqueKey)."""
    return hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()  # noqa: S324 - upstream's


def common_labels(rbg: Obj, role: str) -> dict[str, str]:
    meta = rbg["metadata"]
    return {
        NAME_LABEL: meta["name"],
        ROLE_LABEL: role,
        GROUP_KEY_LABEL: group_unique_key(meta["namespace"], meta["name"]),
    }


def workload_kind(role: Obj) -> str:
    """The role's workload kind; v1alpha1 defaults to StatefulSet (the CRD's default)."""
    workload = role.get("workload") or {}
    api = workload.get("apiVersion", "apps/v1")
    kind = workload.get("kind", "StatefulSet")
    return f"{api}/{kind}"


STATEFULSET = "apps/v1/StatefulSet"
DEPLOYMENT = "apps/v1/Deployment"


def role_env(rbg: Obj, role: Obj) -> list[Obj]:
    """EnvBuilder.buildLocalRoleVars: name and role, the pod index on StatefulSets."""
    env: list[Obj] = [
        {"name": "GROUP_NAME", "value": rbg["metadata"]["name"]},
        {"name": "ROLE_NAME", "value": role["name"]},
    ]
    if workload_kind(role) == STATEFULSET:
        env.append(
            {
                "name": "ROLE_INDEX",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
                },
            }
        )
    return env


def mount_group_config(spec: Obj, configmap: str) -> None:
    """InjectConfig: the group's ``config.yaml`` from ``configmap`` as volume
    ``rbg-cluster-config``, mounted read-only at ``/etc/rbg`` in every container (v0.6 names
    the ConfigMap ``<rbg>-<role>``, v0.7 ``<rbg>``)."""
    volumes = spec.setdefault("volumes", [])
    if not any(v.get("name") == CONFIG_VOLUME for v in volumes):
        volumes.append(
            {
                "name": CONFIG_VOLUME,
                "configMap": {
                    "name": configmap,
                    "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
                },
            }
        )
    for container in spec.get("containers") or []:
        mounts = container.setdefault("volumeMounts", [])
        if not any(
            m.get("name") == CONFIG_VOLUME and m.get("mountPath") == CONFIG_MOUNT for m in mounts
        ):
            mounts.append({"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT, "readOnly": True})


def pod_template(rbg: Obj, role: Obj, labels: dict[str, str]) -> Obj:
    """The role's template with the config volume, the env (merged by name, sorted) and the
    common labels (PodReconciler.ConstructPodTemplateSpecApplyConfiguration)."""
    template = copy.deepcopy(role.get("template") or {})
    spec = template.setdefault("spec", {})
    mount_group_config(spec, workload_name(rbg["metadata"]["name"], role["name"]))
    injected = role_env(rbg, role)
    for container in spec.get("containers") or []:
        merged = {e["name"]: e for e in container.get("env") or []}
        merged.update({e["name"]: e for e in injected})
        container["env"] = [merged[name] for name in sorted(merged)]
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    return template


def group_config(rbg: Obj, services: dict[str, str]) -> str:
    """``config.yaml`` of the group (ConfigBuilder.Build): its roles and each role's pod
    addresses ``<workload>-<i>.<headless Service>``."""
    name = rbg["metadata"]["name"]
    roles = (rbg.get("spec") or {}).get("roles") or []
    doc: Obj = {
        "group": {"name": name, "size": len(roles), "roles": [r["name"] for r in roles]},
        "roles": {},
    }
    for role in roles:
        replicas = int(role.get("replicas", 1))
        ports = {
            str(p.get("name") or f"port{p['port']}").replace("-", "_").lower(): p["port"]
            for p in role.get("servicePorts") or []
        }
        instances = []
        for i in range(replicas):
            address = f"{workload_name(name, role['name'])}-{i}.{services[role['name']]}"
            instances.append({"address": address, **({"ports": ports} if ports else {})})
        doc["roles"][role["name"]] = {"size": replicas, "instances": instances}
    return yaml.safe_dump(doc, sort_keys=True)


def role_revision(role: Obj) -> str:
    """A stand-in for upstream's per-role revision hash (kept in a ControllerRevision there):
    it changes exactly when the role's spec does."""
    text = json.dumps(role, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def dependency_levels(roles: list[Obj]) -> list[list[Obj]]:
    """Roles in levels, each depending only on earlier ones (pkg/dependency dependencyOrder);
    a cycle or an unknown dependency is an error."""
    by_name = {r["name"]: r for r in roles}
    placed: set[str] = set()
    levels: list[list[Obj]] = []
    while len(placed) < len(roles):
        level = [
            r
            for r in roles
            if r["name"] not in placed and all(d in placed for d in r.get("dependencies") or [])
        ]
        if not level:
            unknown = sorted(
                {d for r in roles for d in r.get("dependencies") or [] if d not in by_name}
            )
            raise RoleError(
                f"dependencies name unknown roles {unknown}"
                if unknown
                else "role dependencies form a cycle"
            )
        levels.append(level)
        placed |= {r["name"] for r in level}
    return levels


def ready_condition(ready: bool, previous: list[Obj], now: str) -> Obj:
    """Upstream's Ready condition; its transition time moves only when its status does."""
    status = "True" if ready else "False"
    old = next((c for c in previous if c.get("type") == "Ready"), None)
    return {
        "type": "Ready",
        "status": status,
        "reason": "AllRolesReady" if ready else "RoleNotReady",
        "message": "All roles are ready" if ready else "Not all role ready",
        "lastTransitionTime": old["lastTransitionTime"]
        if old and old.get("status") == status and old.get("lastTransitionTime")
        else now,
    }


def roles_ready(roles: list[Obj], current: list[Obj]) -> bool:
    """updateRBGStatus: every role has a status whose replicas are the role's and all ready."""
    by_name = {c["name"]: c for c in current}
    return all(
        r["name"] in by_name
        and by_name[r["name"]]["replicas"] == int(r.get("replicas", 1))
        and by_name[r["name"]]["replicas"] == by_name[r["name"]]["readyReplicas"]
        for r in roles
    )


def merge_role_statuses(previous: list[Obj], current: list[Obj]) -> list[Obj]:
    """updateRBGStatus keeps an existing entry unless its replicas or readyReplicas moved,
    and appends the new ones (v0.6.0 and v0.7.0 alike)."""
    merged = list(previous)
    for entry in current:
        index = next((i for i, s in enumerate(merged) if s["name"] == entry["name"]), None)
        if index is None:
            merged.append(entry)
        elif (merged[index].get("replicas"), merged[index].get("readyReplicas")) != (
            entry["replicas"],
            entry["readyReplicas"],
        ):
            merged[index] = entry
    return merged


@dataclass
class _Workload:
    kind: str
    read: Callable[[str, str], Any]
    apply: Callable[..., Any]


class Reconciler:
    """One worker over a queue of groups, fed by watches of the groups and their workloads."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        self.apps = k8s.AppsV1Api(api)
        self.queue: queue.Queue[tuple[str, ...]] = queue.Queue()
        self.events: dict[tuple[str, str, str, str], tuple[str, int]] = {}
        self.workloads = {
            STATEFULSET: _Workload(
                "StatefulSet",
                self.apps.read_namespaced_stateful_set,
                self.apps.patch_namespaced_stateful_set,
            ),
            DEPLOYMENT: _Workload(
                "Deployment",
                self.apps.read_namespaced_deployment,
                self.apps.patch_namespaced_deployment,
            ),
        }

    # ------------------------------------------------------------------------------ plumbing
    def _raw(self, obj: Any) -> Obj:
        raw = self.api.sanitize_for_serialization(obj)
        assert isinstance(raw, dict)
        return raw

    def _read(self, read: Callable[[str, str], Any], name: str, ns: str) -> Obj | None:
        try:
            return self._raw(read(name, ns))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _apply(self, patch: Callable[..., Any], obj: Obj) -> Obj:
        meta = obj["metadata"]
        return self._raw(
            patch(
                meta["name"],
                meta["namespace"],
                obj,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY,
            )
        )

    def event(
        self,
        obj: Obj,
        kind: str,
        reason: str,
        message: str,
        component: str = CONTROLLER_NAME,
    ) -> None:
        """Record an Event on ``obj`` (the group unless a v0.7 controller names its own object)
        as ``component``; a repeat of the same one raises its count, as client-go's event
        correlator does (tools/record/events_cache.go), instead of adding one per requeue."""
        meta = obj["metadata"]
        now = datetime.datetime.now(datetime.UTC).isoformat()
        key = (meta["uid"], kind, reason, message)
        seen = self.events.get(key)
        if seen is not None:
            name, count = seen
            try:
                self.core.patch_namespaced_event(
                    name, meta["namespace"], {"count": count + 1, "lastTimestamp": now}
                )
                self.events[key] = (name, count + 1)
                return
            except ApiException as exc:
                if exc.status != 404:
                    raise
        created = self.core.create_namespaced_event(
            meta["namespace"],
            {
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": obj["apiVersion"],
                    "kind": obj["kind"],
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
                "reason": reason,
                "message": message,
                "type": kind,
                "source": {"component": component},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )
        self.events[key] = (created.metadata.name, 1)

    # ------------------------------------------------------------------------------ reconcile
    def reconcile(self, namespace: str, name: str) -> None:
        try:
            rbg = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        if rbg["metadata"].get("deletionTimestamp"):
            return
        roles = (rbg.get("spec") or {}).get("roles") or []
        for role in roles:
            if workload_kind(role) not in self.workloads:
                message = (
                    f"Failed to validate role {role['name']} declaration, err: workload "
                    f"{workload_kind(role)} is not supported by this stand-in"
                )
                self.event(rbg, "Warning", "FailedReconcileWorkload", message)
                raise RoleError(message)
        self._update_status(rbg, roles)
        try:
            levels = dependency_levels(roles)
        except RoleError as exc:
            self.event(rbg, "Warning", "InvalidRoleDependency", str(exc))
            raise
        services = {r["name"]: self._service_name(rbg, r) for r in roles}
        for level in levels:
            for role in level:
                unready = [d for d in role.get("dependencies") or [] if not self._ready(rbg, d)]
                if unready:
                    message = f"dependencies not met for role '{role['name']}'"
                    self.event(rbg, "Warning", "DependencyNotMet", message)
                    raise RoleError(message)
                self._reconcile_role(rbg, role, services)

    def _service_name(self, rbg: Obj, role: Obj) -> str:
        meta = rbg["metadata"]
        legacy = workload_name(meta["name"], role["name"])
        if self._read(self.core.read_namespaced_service, legacy, meta["namespace"]) is not None:
            return legacy
        return service_name(meta["name"], role["name"])

    def _workload(self, rbg: Obj, role: Obj) -> Obj | None:
        meta = rbg["metadata"]
        kind = self.workloads[workload_kind(role)]
        return self._read(kind.read, workload_name(meta["name"], role["name"]), meta["namespace"])

    def _ready(self, rbg: Obj, role_name: str) -> bool:
        role = next(r for r in rbg["spec"]["roles"] if r["name"] == role_name)
        workload = self._workload(rbg, role)
        if workload is None:
            return False
        return int((workload.get("status") or {}).get("readyReplicas") or 0) == int(
            workload["spec"].get("replicas") or 0
        )

    def _owner(self, rbg: Obj) -> Obj:
        return {
            "apiVersion": rbg["apiVersion"],
            "kind": "RoleBasedGroup",
            "name": rbg["metadata"]["name"],
            "uid": rbg["metadata"]["uid"],
            "blockOwnerDeletion": True,
            "controller": True,
        }

    def _reconcile_role(self, rbg: Obj, role: Obj, services: dict[str, str]) -> None:
        meta = rbg["metadata"]
        ns, name, role_name = meta["namespace"], meta["name"], role["name"]
        wname = workload_name(name, role_name)
        self._apply(
            self.core.patch_namespaced_config_map,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": wname,
                    "namespace": ns,
                    "ownerReferences": [self._owner(rbg)],
                },
                "data": {CONFIG_KEY: group_config(rbg, services)},
            },
        )
        kind = workload_kind(role)
        existing = self._workload(rbg, role)
        selector = (
            existing["spec"]["selector"]["matchLabels"]
            if existing is not None
            else common_labels(rbg, role_name)
        )
        replicas = int(role.get("replicas", 1))
        spec: Obj = {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": pod_template(rbg, role, dict(selector)),
        }
        if kind == STATEFULSET:
            spec |= {
                "serviceName": services[role_name],
                "minReadySeconds": int(role.get("minReadySeconds") or 0),
                "podManagementPolicy": "Parallel",
                "updateStrategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"partition": 0, "maxUnavailable": 1},
                },
            }
        workload = self.workloads[kind]
        applied = self._apply(
            workload.apply,
            {
                "apiVersion": "apps/v1",
                "kind": workload.kind,
                "metadata": {
                    "name": wname,
                    "namespace": ns,
                    "labels": {
                        **(role.get("labels") or {}),
                        **selector,
                        ROLE_REVISION_LABEL.format(role=role_name): role_revision(role),
                    },
                    "annotations": {
                        **(role.get("annotations") or {}),
                        ROLE_SIZE_ANNOTATION: str(replicas),
                    },
                    "ownerReferences": [self._owner(rbg)],
                },
                "spec": spec,
            },
        )
        if kind == STATEFULSET:
            self._headless_service(rbg, role, services[role_name], applied)

    def _headless_service(self, rbg: Obj, role: Obj, name: str, sts: Obj) -> None:
        meta = rbg["metadata"]
        labels = common_labels(rbg, role["name"])
        self._apply(
            self.core.patch_namespaced_service,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": meta["namespace"],
                    "labels": labels,
                    "annotations": {ROLE_SIZE_ANNOTATION: str(int(role.get("replicas", 1)))},
                    # svc_reconciler.go: owned by the workload, without the controller flag.
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "StatefulSet",
                            "name": sts["metadata"]["name"],
                            "uid": sts["metadata"]["uid"],
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": {
                    "clusterIP": "None",
                    "selector": {NAME_LABEL: labels[NAME_LABEL], ROLE_LABEL: labels[ROLE_LABEL]},
                    "publishNotReadyAddresses": True,
                },
            },
        )

    def _update_status(self, rbg: Obj, roles: list[Obj]) -> None:
        status = rbg.get("status") or {}
        old = {s["name"]: s for s in status.get("roleStatuses") or []}
        changed = False
        current: list[Obj] = []
        for role in roles:
            workload = self._workload(rbg, role)
            if workload is None:
                # RoleStatus{Name: role} with its zero-valued counts (all required fields).
                current.append(
                    {"name": role["name"], "replicas": 0, "readyReplicas": 0, "updatedReplicas": 0}
                )
                continue
            observed = (workload.get("status") or {}).get("observedGeneration") or 0
            if observed < workload["metadata"].get("generation", 0):
                # ConstructRoleStatus refuses a status that lags its workload's spec.
                raise RoleError(f"{workload['metadata']['name']}: status not yet observed")
            wstatus = workload.get("status") or {}
            entry = {
                "name": role["name"],
                "replicas": int(workload["spec"].get("replicas") or 0),
                "readyReplicas": int(wstatus.get("readyReplicas") or 0),
                "updatedReplicas": int(wstatus.get("updatedReplicas") or 0),
            }
            before = old.get(role["name"])
            if before is None or any(
                before.get(k, 0) != v for k, v in entry.items() if k != "name"
            ):
                changed = True
            current.append(entry)
        if not changed:
            return
        ready = roles_ready(roles, current)
        merged = merge_role_statuses(status.get("roleStatuses") or [], current)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta = rbg["metadata"]
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            meta["namespace"],
            PLURAL,
            meta["name"],
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RoleBasedGroup",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "status": {
                    "observedGeneration": meta.get("generation", 1),
                    "conditions": [ready_condition(ready, status.get("conditions") or [], now)],
                    "roleStatuses": merged,
                },
            },
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
        )

    # -------------------------------------------------------------------------------- running
    def _watch(
        self,
        lister: Callable[..., Any],
        args: tuple[str, ...],
        stop: threading.Event,
        listed_once: threading.Event,
    ) -> None:
        """List then watch ``lister``; queue each group an event concerns."""
        version: str | None = None
        while not stop.is_set():
            try:
                if version is None:
                    listed = self._raw(lister(*args))
                    for item in listed["items"]:
                        self._enqueue(item)
                    version = str(listed["metadata"]["resourceVersion"])
                    listed_once.set()
                for event in watch.Watch().stream(
                    lister, *args, resource_version=version, timeout_seconds=5
                ):
                    raw = event["raw_object"]
                    if event["type"] == "ERROR":
                        version = None
                        break
                    version = str(raw["metadata"]["resourceVersion"])
                    self._enqueue(raw)
                    if stop.is_set():
                        break
            except ApiException as exc:
                log.warning("watch %s: %s %s", args, exc.status, exc.reason)
                version = None
                stop.wait(REQUEUE_S)
            except (ConnectionError, OSError, json.JSONDecodeError) as exc:
                log.warning("watch %s: %s", args, exc)
                version = None
                stop.wait(REQUEUE_S)

    def handle(self, key: tuple[str, ...]) -> None:
        """Reconcile what ``key`` names (here a group's namespace and name)."""
        self.reconcile(*key)

    def watches(self) -> list[tuple[Callable[..., Any], tuple[str, ...]]]:
        return [
            (self.custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)),
            (self.apps.list_stateful_set_for_all_namespaces, ()),
            (self.apps.list_deployment_for_all_namespaces, ()),
        ]

    def _enqueue(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        if obj.get("kind") == "RoleBasedGroup":
            self.queue.put((meta["namespace"], meta["name"]))
            return
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == "RoleBasedGroup" and ref.get("controller"):
                self.queue.put((meta["namespace"], ref["name"]))

    def run(self, stop: threading.Event, ready_file: Path | None = None) -> None:
        """Reconcile until ``stop``; ``ready_file`` is created once every watch has listed."""
        listed = []
        for lister, args in self.watches():
            listed.append(threading.Event())
            threading.Thread(
                target=self._watch,
                args=(lister, args, stop, listed[-1]),
                daemon=True,
                name=f"watch{args}",
            ).start()
        retry: set[tuple[str, ...]] = set()
        while not stop.is_set():
            if ready_file is not None and all(e.is_set() for e in listed):
                ready_file.touch()
                ready_file = None
            try:
                key = self.queue.get(timeout=REQUEUE_S)
            except queue.Empty:
                # Groups whose last reconcile failed, as controller-runtime's rate-limited
                # requeue would bring them back.
                for failed in list(retry):
                    self.queue.put(failed)
                retry.clear()
                continue
            try:
                self.handle(key)
                retry.discard(key)
            except RoleError as exc:
                log.info("%s requeued: %s", "/".join(key), exc)
                retry.add(key)
            except ApiException as exc:
                # The API server's Status message names the refused field.
                log.warning("%s: %s %s %s", "/".join(key), exc.status, exc.reason, exc.body)
                retry.add(key)


def reconciler_argv(kubeconfig: Path, *, ready_file: Path, crd: Path = CRD_V06) -> list[str]:
    """The reconciler of the release whose CRD is ``crd``: v0.7.0's chain lives in
    ``rbg_v07``."""
    module = "sandbox.cluster.rbg_v07" if crd == CRD_V07 else "sandbox.cluster.rbg"
    return [sys.executable, "-m", module, str(kubeconfig), f"--ready-file={ready_file}"]


def main(argv: list[str] | None = None, reconciler: type[Reconciler] = Reconciler) -> int:
    parser = argparse.ArgumentParser(description="RoleBasedGroup reconciler (stand-in)")
    parser.add_argument("kubeconfig")
    parser.add_argument("--ready-file", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    api = k8s_config.new_client_from_config(config_file=args.kubeconfig)
    reconciler(api).run(stop, args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
