"""RBG v0.7.0's chain for ``workloads.x-k8s.io/v1alpha2`` groups: a stand-in for three of
upstream's controllers (sgl-project/rbg at tag v0.7.0), run as one process beside v0.7.0's CRD
(``rbg.reconciler_argv`` with ``crd=rbg.CRD_V07``), a client of the real API server with the
identity and ClusterRole of ``rbg.py``.

What each level creates, as upstream does it for a ``standalonePattern`` role (the default
workload of a v1alpha2 role is a RoleInstanceSet: ``api/workloads/v1alpha2/
rolebasedgroup_types.go`` GetWorkloadType):

- the group (``internal/controller/workloads/rolebasedgroup_controller.go``, events from
  ``RoleBasedGroup``): annotation ``rbg.workloads.x-k8s.io/discovery-config-mode`` (``refine``
  for a new group, ``legacy`` once it has status or a per-role ConfigMap:
  ensureDiscoveryConfigMode); one ConfigMap ``<rbg>`` with ``config.yaml`` of its stateful
  roles (reconcileRefinedDiscoveryConfigMap, ``pkg/discovery/config_builder.go``); per role,
  in dependency order (``DependencyNotMet`` until every dependency's RoleInstanceSet has all
  replicas ready, ``pkg/dependency/dependency.go`` CheckDependencyReady), a RoleInstanceSet
  ``<rbg>-<role>`` and the role's headless Service (``pkg/reconciler/
  roleinstanceset_reconciler.go``, ``svc_reconciler.go``); its status from the sets
  (``ConstructWorkloadRoleStatus`` keeps a role's last status while its set's status lags,
  updateRBGStatus writes ``Ready`` with the group's generation); a Normal ``Succeed`` event
  per reconcile that got through;
- a RoleInstanceSet (stateful mode, ``pkg/reconciler/roleinstanceset/statefulmode``, events
  from ``stateful-instanceset-controller``): RoleInstances ``<set>-<i>``
  (``stateful_instance_set_utils.go`` newVersionedInstance: the set's labels and selector,
  ``controller-revision-hash``, ``statefulset.kubernetes.io/pod-name`` and
  ``rbg.workloads.x-k8s.io/role-instance-index``, also on the components' templates), all at
  once for ``Parallel``, one at a time after the previous is ready for ``OrderedReady``;
  ``SuccessfulCreate`` / ``FailedCreate`` on the set (``stateful_instance_control.go``
  recordInstanceEvent); its status counts of instances, ready ones (``RoleInstanceReady``),
  updated ones;
- a RoleInstance (``pkg/reconciler/roleinstance``, events from ``instance-controller``): per
  component one pod per index, named ``<instance>`` for a standalone role
  (``utils/instance_utils.go`` FormatComponentPodName), labelled
  ``rbg.workloads.x-k8s.io/{role-instance-name,component-name,component-id}`` and
  ``controller-revision-hash``, hostname = its name, subdomain = the component's Service, the
  readiness gates ``InPlaceUpdateReady`` and ``InstancePodReady`` (``core/instance_core.go``
  NewUpdatePods); a refused create records ``FailedCreate`` "failed to create pod: <err>,
  pod: <json>" on the RoleInstance and sets its condition ``FailedScale`` with the error
  (``sync/instance_scale.go`` createOnePod, ``instance_reconciler.go`` syncInstance); Failed
  pods are deleted to be created again; the pods' gate conditions (``InPlaceUpdateReady``
  True once created, ``pkg/inplace/pod/inplaceupdate`` refreshCondition; ``InstancePodReady``
  False with the key ``InstanceReady`` until every pod of the instance runs with its
  containers ready, ``lifecycle/lifecycle_utils.go``); its status: ``componentStatuses``,
  ``RoleInstanceReady`` (reason ``Ready`` / ``PodsNotReady``, ``instance_status.go``).

Left out, and so never created or done: ControllerRevisions (revision names here are
``<object>-<hash of its spec>``), template updates of existing sets and instances (in-place
or by recreation), the ``legacy`` discovery mode's per-role ConfigMaps, leaderWorkerPattern and
customComponentsPattern roles and other workload types (refused with a
``FailedReconcileWorkload`` event), stateless sets, scaling adapters, pod groups, port
allocation, sidecar injection and the mutating webhook. The node agent does not read
readiness gates, so a pod's Ready follows its containers; the gate conditions are written as
upstream writes them and Ready is left to the node agent, as upstream leaves it to the kubelet.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import sys
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from sandbox.cluster import rbg
from sandbox.cluster.rbg import GROUP, Obj, RoleError

V2 = "v1alpha2"
API_VERSION = f"{GROUP}/{V2}"
RBG_PLURAL = "rolebasedgroups"
RIS_PLURAL = "roleinstancesets"
RI_PLURAL = "roleinstances"
# api/workloads/constants: label.go, annotation.go, env.go, external.go.
PREFIX = "rbg.workloads.x-k8s.io/"
GROUP_NAME_LABEL = PREFIX + "group-name"
ROLE_NAME_LABEL = PREFIX + "role-name"
GROUP_UID_LABEL = PREFIX + "group-uid"
ROLE_TYPE_LABEL = PREFIX + "role-type"
ROLE_REVISION_LABEL = PREFIX + "role-revision-{role}"
INSTANCE_NAME_LABEL = PREFIX + "role-instance-name"
INSTANCE_INDEX_LABEL = PREFIX + "role-instance-index"
COMPONENT_NAME_LABEL = PREFIX + "component-name"
COMPONENT_ID_LABEL = PREFIX + "component-id"
COMPONENT_SIZE_LABEL = PREFIX + "component-size"
ROLE_SIZE_ANNOTATION = PREFIX + "role-size"
WORKLOAD_TYPE_ANNOTATION = PREFIX + "role-workload-type"
INSTANCE_PATTERN_ANNOTATION = PREFIX + "role-instance-pattern"
DISCOVERY_MODE_ANNOTATION = PREFIX + "discovery-config-mode"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
REVISION_LABEL = "controller-revision-hash"
ROLE_INSTANCE_SET = f"{API_VERSION}/RoleInstanceSet"
IN_PLACE_READY = "InPlaceUpdateReady"
INSTANCE_POD_READY = "InstancePodReady"
# pkg/inplace/pod/readiness: the message of InstancePodReady lists who holds it False.
LIFECYCLE_KEY = [{"userAgent": "Lifecycle", "key": "InstanceReady"}]
# Recorders' names (mgr.GetEventRecorderFor) of the three controllers.
RBG_COMPONENT = "RoleBasedGroup"
RIS_COMPONENT = "stateful-instanceset-controller"
RI_COMPONENT = "instance-controller"


def child_crds() -> list[Obj]:
    """RoleInstanceSet and RoleInstance as upstream names them (``config/crd/bases/
    workloads.x-k8s.io_roleinstance{set,}s.yaml``: v1alpha2 served and stored, namespaced,
    short names ``ris`` / ``rins``, the status subresource and the set's scale subresource);
    their schemas are not imitated (fields are kept as written)."""

    def crd(kind: str, plural: str, short: str, scale: bool) -> Obj:
        subresources: Obj = {"status": {}}
        if scale:
            subresources["scale"] = {
                "labelSelectorPath": ".status.labelSelector",
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
            }
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{GROUP}"},
            "spec": {
                "group": GROUP,
                "names": {
                    "kind": kind,
                    "listKind": f"{kind}List",
                    "plural": plural,
                    "singular": kind.lower(),
                    "shortNames": [short],
                },
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": V2,
                        "served": True,
                        "storage": True,
                        "subresources": subresources,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }

    return [
        crd("RoleInstanceSet", RIS_PLURAL, "ris", True),
        crd("RoleInstance", RI_PLURAL, "rins", False),
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def spec_hash(spec: Any) -> str:
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def workload_type(role: Obj) -> str:
    """GetWorkloadType: the role's annotation, else RoleInstanceSet."""
    return str((role.get("annotations") or {}).get(WORKLOAD_TYPE_ANNOTATION) or ROLE_INSTANCE_SET)


def common_labels(group: Obj, role: str) -> dict[str, str]:
    """GetCommonLabelsFromRole: the selector of the role's set, its pods and its Service."""
    meta = group["metadata"]
    return {
        GROUP_NAME_LABEL: meta["name"],
        ROLE_NAME_LABEL: role,
        GROUP_UID_LABEL: rbg.group_unique_key(meta["namespace"], meta["name"]),
    }


def common_annotations(role: Obj) -> dict[str, str]:
    """GetCommonAnnotationsFromRole: the role's size and its own annotations but the
    system-managed ones."""
    out = {ROLE_SIZE_ANNOTATION: str(int(role.get("replicas", 1)))}
    for key, value in (role.get("annotations") or {}).items():
        if key not in (ROLE_SIZE_ANNOTATION, WORKLOAD_TYPE_ANNOTATION):
            out[key] = value
    return out


def role_env(group: Obj, role: Obj) -> list[Obj]:
    """EnvBuilder.buildLocalRoleVars for a stateful RoleInstanceSet role."""

    def label(key: str) -> Obj:
        return {"fieldRef": {"fieldPath": f"metadata.labels['{key}']"}}

    return [
        {"name": "RBG_GROUP_NAME", "value": group["metadata"]["name"]},
        {"name": "RBG_ROLE_NAME", "value": role["name"]},
        {"name": "RBG_ROLE_INDEX", "valueFrom": label(INSTANCE_INDEX_LABEL)},
        {"name": "RBG_ROLE_INSTANCE_NAME", "valueFrom": label(INSTANCE_NAME_LABEL)},
        {"name": "RBG_COMPONENT_NAME", "valueFrom": label(COMPONENT_NAME_LABEL)},
        {"name": "RBG_COMPONENT_INDEX", "valueFrom": label(COMPONENT_ID_LABEL)},
    ]


def merge_env(existing: list[Obj], injected: list[Obj]) -> list[Obj]:
    """``pkg/discovery/injector.go`` mergeEnvVars: earlier ``RBG_*`` variables, the injected
    ones (sorted by name, EnvBuilder.Build), earlier ``RBG_LWP_*`` ones, then the rest."""
    names = {e["name"] for e in injected}
    kept = [e for e in existing if e["name"] not in names]
    base = [
        e for e in kept if e["name"].startswith("RBG_") and not e["name"].startswith("RBG_LWP_")
    ]
    derived = [e for e in kept if e["name"].startswith("RBG_LWP_")]
    other = [e for e in kept if not e["name"].startswith("RBG_")]
    return [*base, *sorted(injected, key=lambda e: e["name"]), *derived, *other]


def pod_template(group: Obj, role: Obj, labels: dict[str, str]) -> Obj:
    """PodReconciler.ConstructPodTemplateSpecApplyConfiguration with the default injectors
    (config, common env): the group's ConfigMap ``<rbg>`` at ``/etc/rbg`` and the env."""
    template = copy.deepcopy((role.get("standalonePattern") or {}).get("template") or {})
    spec = template.setdefault("spec", {})
    rbg.mount_group_config(spec, group["metadata"]["name"])
    for container in spec.get("containers") or []:
        container["env"] = merge_env(container.get("env") or [], role_env(group, role))
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels, COMPONENT_SIZE_LABEL: "1"}
    return template


def owner(obj: Obj, *, controller: bool = True) -> Obj:
    ref = {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "blockOwnerDeletion": True,
    }
    if controller:
        ref["controller"] = True
    return ref


def controlled_by(obj: Obj, parent: Obj) -> bool:
    return any(
        r.get("uid") == parent["metadata"]["uid"] and r.get("controller")
        for r in obj["metadata"].get("ownerReferences") or []
    )


def condition(conditions: list[Obj], kind: str) -> Obj | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def is_true(conditions: list[Obj], kind: str) -> bool:
    found = condition(conditions, kind)
    return found is not None and found.get("status") == "True"


def instance_ready(instance: Obj) -> bool:
    """statefulmode isHealthy: ``RoleInstanceReady`` is True."""
    return is_true((instance.get("status") or {}).get("conditions") or [], "RoleInstanceReady")


def pod_update_ready(pod: Obj) -> bool:
    """commonControl.IsPodUpdateReady: Running and Ready (minReadySeconds 0), and no
    ``InPlaceUpdateReady`` condition other than True."""
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    gate = condition(conditions, IN_PLACE_READY)
    return (
        status.get("phase") == "Running"
        and is_true(conditions, "Ready")
        and (gate is None or gate.get("status") == "True")
    )


def pod_runtime_ready(pod: Obj) -> bool:
    """instanceutils.IsPodRuntimeReady: Running, not deleting, ContainersReady and
    InPlaceUpdateReady both True."""
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return (
        not pod["metadata"].get("deletionTimestamp")
        and status.get("phase") == "Running"
        and is_true(conditions, "ContainersReady")
        and is_true(conditions, IN_PLACE_READY)
    )


def api_error(exc: ApiException) -> str:
    """What client-go's StatusError prints: the Status message of the refusal."""
    try:
        body = json.loads(exc.body or "{}")
    except json.JSONDecodeError:
        return f"{exc.status} {exc.reason}"
    return str(body.get("message") or f"{exc.status} {exc.reason}")


class ReconcilerV07(rbg.Reconciler):
    """The group, RoleInstanceSet and RoleInstance controllers on one work queue, keyed by
    ``(kind, namespace, name)``, fed by watches of the three kinds and of pods."""

    # ------------------------------------------------------------------------ plumbing
    def watches(self) -> list[tuple[Callable[..., Any], tuple[str, ...]]]:
        listed = self.custom.list_cluster_custom_object
        return [
            (listed, (GROUP, V2, RBG_PLURAL)),
            (listed, (GROUP, V2, RIS_PLURAL)),
            (listed, (GROUP, V2, RI_PLURAL)),
            (self.core.list_pod_for_all_namespaces, ()),
        ]

    def _enqueue(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        # Items of a typed list (pods) carry no kind.
        kind = str(obj.get("kind") or "Pod")
        if kind in ("RoleBasedGroup", "RoleInstanceSet", "RoleInstance"):
            self.queue.put((kind, ns, name))
        parents = {
            "RoleInstanceSet": "RoleBasedGroup",
            "RoleInstance": "RoleInstanceSet",
            "Pod": "RoleInstance",
        }
        parent = parents.get(kind)
        for ref in meta.get("ownerReferences") or []:
            if parent is not None and ref.get("controller") and ref.get("kind") == parent:
                self.queue.put((parent, ns, str(ref["name"])))

    def handle(self, key: tuple[str, ...]) -> None:
        kind, ns, name = key
        if kind == "RoleBasedGroup":
            self.reconcile(ns, name)
        elif kind == "RoleInstanceSet":
            self.reconcile_set(ns, name)
        else:
            self.reconcile_instance(ns, name)

    def _get(self, plural: str, ns: str, name: str) -> Obj | None:
        try:
            obj = self.custom.get_namespaced_custom_object(GROUP, V2, ns, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        assert isinstance(obj, dict)
        return obj

    def _list(self, plural: str, ns: str, selector: dict[str, str]) -> list[Obj]:
        found = self.custom.list_namespaced_custom_object(
            GROUP,
            V2,
            ns,
            plural,
            label_selector=",".join(f"{k}={v}" for k, v in selector.items()),
        )
        assert isinstance(found, dict)
        return list(found["items"])

    def _apply_custom(self, plural: str, obj: Obj) -> Obj:
        """Server-side apply; the object as stored is read back (the client does not decode
        an apply's answer into a mapping)."""
        meta = obj["metadata"]
        self.custom.patch_namespaced_custom_object(
            GROUP,
            V2,
            meta["namespace"],
            plural,
            meta["name"],
            obj,
            field_manager=rbg.FIELD_MANAGER,
            force=True,
            _content_type=rbg.APPLY,
        )
        applied = self._get(plural, meta["namespace"], meta["name"])
        if applied is None:
            raise RoleError(f"{obj['kind']} {meta['namespace']}/{meta['name']} gone after apply")
        return applied

    def _write_status(self, plural: str, obj: Obj, status: Obj) -> None:
        meta = obj["metadata"]
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            V2,
            meta["namespace"],
            plural,
            meta["name"],
            {"status": status},
            _content_type="application/merge-patch+json",
        )

    # ------------------------------------------------------------------------ the group
    def reconcile(self, namespace: str, name: str) -> None:
        group = self._get(RBG_PLURAL, namespace, name)
        if group is None or group["metadata"].get("deletionTimestamp"):
            return
        roles = (group.get("spec") or {}).get("roles") or []
        for role in roles:
            problem = None
            if workload_type(role) != ROLE_INSTANCE_SET:
                problem = f"workload {workload_type(role)} is not supported by this stand-in"
            elif "standalonePattern" not in role:
                problem = "only standalonePattern roles are supported by this stand-in"
            if problem:
                message = f"Failed to validate role {role['name']} declaration, err: {problem}"
                self.event(group, "Warning", "FailedReconcileWorkload", message, RBG_COMPONENT)
                raise RoleError(message)
        mode = self._discovery_mode(group, roles)
        services = {r["name"]: self._service_name(group, r) for r in roles}
        if mode == "refine":
            self._apply(
                self.core.patch_namespaced_config_map,
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "ownerReferences": [owner(group)],
                    },
                    # ConfigBuilder.Build as in v0.6.0, over the stateful roles: all of a
                    # group of standalone roles of the default Stateful pattern.
                    "data": {rbg.CONFIG_KEY: rbg.group_config(group, services)},
                },
            )
        self._update_group_status(group, roles)
        try:
            levels = rbg.dependency_levels(roles)
        except RoleError as exc:
            self.event(group, "Warning", "InvalidRoleDependency", str(exc), RBG_COMPONENT)
            raise
        for level in levels:
            for role in level:
                unready = [
                    d
                    for d in role.get("dependencies") or []
                    if not self._set_ready(namespace, rbg.workload_name(name, d))
                ]
                if unready:
                    message = f"dependencies not met for role '{role['name']}'"
                    self.event(group, "Warning", "DependencyNotMet", message, RBG_COMPONENT)
                    raise RoleError(message)
                self._reconcile_set_of(group, role, services[role["name"]])
        self.event(group, "Normal", "Succeed", "ReconcileSucceed", RBG_COMPONENT)

    def _discovery_mode(self, group: Obj, roles: list[Obj]) -> str:
        """ensureDiscoveryConfigMode: decided once and kept in an annotation of the group."""
        meta = group["metadata"]
        mode = (meta.get("annotations") or {}).get(DISCOVERY_MODE_ANNOTATION)
        if mode in ("legacy", "refine"):
            return str(mode)
        status = group.get("status") or {}
        legacy = bool(status.get("observedGeneration") or status.get("roleStatuses")) or any(
            self._read(
                self.core.read_namespaced_config_map,
                rbg.workload_name(meta["name"], r["name"]),
                meta["namespace"],
            )
            is not None
            for r in roles
        )
        mode = "legacy" if legacy else "refine"
        self.custom.patch_namespaced_custom_object(
            GROUP,
            V2,
            meta["namespace"],
            RBG_PLURAL,
            meta["name"],
            {"metadata": {"annotations": {DISCOVERY_MODE_ANNOTATION: mode}}},
            _content_type="application/merge-patch+json",
        )
        return mode

    def _set_ready(self, namespace: str, name: str) -> bool:
        """RoleInstanceSetReconciler.CheckWorkloadReady: ready replicas == spec replicas."""
        found = self._get(RIS_PLURAL, namespace, name)
        if found is None:
            return False
        ready = int((found.get("status") or {}).get("readyReplicas") or 0)
        return ready == int(found["spec"].get("replicas") or 0)

    def _reconcile_set_of(self, group: Obj, role: Obj, service: str) -> None:
        meta = group["metadata"]
        ns, role_name = meta["namespace"], role["name"]
        selector = common_labels(group, role_name)
        labels = {
            **(role.get("labels") or {}),
            **selector,
            ROLE_REVISION_LABEL.format(role=role_name): rbg.role_revision(role),
            ROLE_TYPE_LABEL: "PodTemplate",
        }
        annotations = {**(role.get("annotations") or {}), **common_annotations(role)}
        annotations.setdefault(INSTANCE_PATTERN_ANNOTATION, "Stateful")
        spec: Obj = {
            "selector": {"matchLabels": selector},
            "replicas": int(role.get("replicas", 1)),
            "roleInstanceTemplate": {
                "restartPolicy": "None",  # GetRestartPolicy of a standalone role
                "components": [
                    {
                        "name": role_name,
                        "serviceName": service,
                        "size": 1,
                        "template": pod_template(group, role, dict(selector)),
                    }
                ],
            },
            "minReadySeconds": int(role.get("minReadySeconds") or 0),
            "podManagementPolicy": role.get("podManagementPolicy") or "Parallel",
        }
        rolling = (role.get("rolloutStrategy") or {}).get("rollingUpdate")
        if rolling is not None:
            strategy = {"type": rolling.get("type") or "InPlaceIfPossible"}
            strategy |= {
                k: rolling[k]
                for k in ("paused", "partition", "maxUnavailable", "maxSurge")
                if k in rolling
            }
            spec["updateStrategy"] = strategy
        applied = self._apply_custom(
            RIS_PLURAL,
            {
                "apiVersion": API_VERSION,
                "kind": "RoleInstanceSet",
                "metadata": {
                    "name": rbg.workload_name(meta["name"], role_name),
                    "namespace": ns,
                    "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": [owner(group)],
                },
                "spec": spec,
            },
        )
        self._apply(
            self.core.patch_namespaced_service,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": service,
                    "namespace": ns,
                    "labels": selector,
                    "annotations": common_annotations(role),
                    # svc_reconciler.go: owned by the role's set, without the controller flag.
                    "ownerReferences": [owner(applied, controller=False)],
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": "None",
                    "selector": {
                        GROUP_NAME_LABEL: meta["name"],
                        ROLE_NAME_LABEL: role_name,
                    },
                    "publishNotReadyAddresses": True,
                },
            },
        )

    def _update_group_status(self, group: Obj, roles: list[Obj]) -> None:
        meta = group["metadata"]
        status = group.get("status") or {}
        old = {s["name"]: s for s in status.get("roleStatuses") or []}
        current: list[Obj] = []
        for role in roles:
            found = self._get(
                RIS_PLURAL, meta["namespace"], rbg.workload_name(meta["name"], role["name"])
            )
            zero = {"name": role["name"], "replicas": 0, "readyReplicas": 0, "updatedReplicas": 0}
            if found is None:
                current.append(zero)
                continue
            observed = int((found.get("status") or {}).get("observedGeneration") or 0)
            if observed < int(found["metadata"].get("generation") or 0):
                # ConstructWorkloadRoleStatus keeps the last status while the set's lags.
                current.append(old.get(role["name"], zero))
                continue
            fstatus = found.get("status") or {}
            current.append(
                {
                    "name": role["name"],
                    "replicas": int(fstatus.get("replicas") or 0),
                    "readyReplicas": int(fstatus.get("readyReplicas") or 0),
                    "updatedReplicas": int(fstatus.get("updatedReplicas") or 0),
                }
            )
        ready = rbg.roles_ready(roles, current)
        merged = rbg.merge_role_statuses(status.get("roleStatuses") or [], current)
        ready_condition = rbg.ready_condition(ready, status.get("conditions") or [], _now())
        ready_condition["observedGeneration"] = meta.get("generation", 1)
        others = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
        new = {
            "observedGeneration": meta.get("generation", 1),
            "conditions": [*others, ready_condition],
            "roleStatuses": merged,
        }
        if all(status.get(k) == v for k, v in new.items()):
            return
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            V2,
            meta["namespace"],
            RBG_PLURAL,
            meta["name"],
            {
                "apiVersion": API_VERSION,
                "kind": "RoleBasedGroup",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "status": new,
            },
            field_manager=rbg.FIELD_MANAGER,
            force=True,
            _content_type=rbg.APPLY,
        )

    # ------------------------------------------------------------------------ the sets
    def reconcile_set(self, namespace: str, name: str) -> None:
        rset = self._get(RIS_PLURAL, namespace, name)
        if rset is None or rset["metadata"].get("deletionTimestamp"):
            return
        spec = rset["spec"]
        replicas = int(spec.get("replicas") or 0)
        revision = f"{name}-{spec_hash(spec.get('roleInstanceTemplate'))}"
        owned = {
            i["metadata"]["name"]: i
            for i in self._list(RI_PLURAL, namespace, spec["selector"]["matchLabels"])
            if controlled_by(i, rset)
        }
        ordered = spec.get("podManagementPolicy") == "OrderedReady"
        for ordinal in range(replicas):
            instance_name = f"{name}-{ordinal}"
            if instance_name in owned:
                if ordered and not instance_ready(owned[instance_name]):
                    break  # monotonic: wait for this one before the next
                continue
            created = self._create_instance(rset, ordinal, revision)
            if created is not None:
                owned[instance_name] = created
            if ordered:
                break
        for instance_name in list(owned):
            ordinal = int(instance_name.rsplit("-", 1)[1])
            if ordinal >= replicas:
                self.custom.delete_namespaced_custom_object(
                    GROUP, V2, namespace, RI_PLURAL, instance_name
                )
                message = (
                    f"delete RoleInstance {instance_name} in RoleInstanceSet {name} successful"
                )
                self.event(rset, "Normal", "SuccessfulDelete", message, RIS_COMPONENT)
                del owned[instance_name]
        live = list(owned.values())
        ready = [i for i in live if instance_ready(i)]
        updated = [i for i in live if i["metadata"]["labels"].get(REVISION_LABEL) == revision]
        status = {
            "observedGeneration": rset["metadata"].get("generation", 1),
            "replicas": len(live),
            "readyReplicas": len(ready),
            "availableReplicas": len(ready),
            "currentReplicas": len(updated),
            "updatedReplicas": len(updated),
            "updatedReadyReplicas": len([i for i in updated if instance_ready(i)]),
            "currentRevision": revision,
            "updateRevision": revision,
            "collisionCount": 0,
            "labelSelector": ",".join(
                f"{k}={v}" for k, v in sorted(spec["selector"]["matchLabels"].items())
            ),
        }
        old = rset.get("status") or {}
        if any(old.get(k) != v for k, v in status.items()):
            self._write_status(RIS_PLURAL, rset, status)

    def _create_instance(self, rset: Obj, ordinal: int, revision: str) -> Obj | None:
        meta = rset["metadata"]
        name = f"{meta['name']}-{ordinal}"
        identity = {POD_NAME_LABEL: name, INSTANCE_INDEX_LABEL: str(ordinal)}
        spec = copy.deepcopy(rset["spec"]["roleInstanceTemplate"])
        for component in spec.get("components") or []:
            template = component.setdefault("template", {})
            template.setdefault("metadata", {})
            template["metadata"]["labels"] = {
                **(template["metadata"].get("labels") or {}),
                **identity,
            }
        labels = {
            **(meta.get("labels") or {}),
            **rset["spec"]["selector"]["matchLabels"],
            REVISION_LABEL: revision,
            **identity,
        }
        body = {
            "apiVersion": API_VERSION,
            "kind": "RoleInstance",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": labels,
                "ownerReferences": [owner(rset)],
            },
            "spec": spec,
        }
        try:
            created = self.custom.create_namespaced_custom_object(
                GROUP, V2, meta["namespace"], RI_PLURAL, body
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            message = (
                f"create RoleInstance {name} in RoleInstanceSet {meta['name']} failed "
                f"error: {api_error(exc)}"
            )
            self.event(rset, "Warning", "FailedCreate", message, RIS_COMPONENT)
            raise
        message = f"create RoleInstance {name} in RoleInstanceSet {meta['name']} successful"
        self.event(rset, "Normal", "SuccessfulCreate", message, RIS_COMPONENT)
        return (
            created if isinstance(created, dict) else self._get(RI_PLURAL, meta["namespace"], name)
        )

    # ------------------------------------------------------------------------ the instances
    def _owned_pods(self, instance: Obj) -> list[Obj]:
        meta = instance["metadata"]
        listed = self._raw(
            self.core.list_namespaced_pod(
                meta["namespace"], label_selector=f"{INSTANCE_NAME_LABEL}={meta['name']}"
            )
        )
        return [p for p in listed["items"] if controlled_by(p, instance)]

    def reconcile_instance(self, namespace: str, name: str) -> None:
        instance = self._get(RI_PLURAL, namespace, name)
        if instance is None or instance["metadata"].get("deletionTimestamp"):
            return
        revision = f"{name}-{spec_hash(instance['spec'])}"
        pods = self._owned_pods(instance)
        conditions: list[Obj] = []
        failed: ApiException | None = None
        active = []
        for pod in pods:
            if pod.get("status", {}).get("phase") == "Failed" and not pod["metadata"].get(
                "deletionTimestamp"
            ):
                # calculateDiffsWithExpectation: a Failed pod is deleted, then replaced.
                self.core.delete_namespaced_pod(pod["metadata"]["name"], namespace)
                pod_name = pod["metadata"]["name"]
                self.event(
                    instance,
                    "Normal",
                    "SuccessfulDelete",
                    f"succeed to delete pod {pod_name}",
                    RI_COMPONENT,
                )
            elif pod.get("status", {}).get("phase") not in ("Failed", "Succeeded"):
                active.append(pod)
        existing = {p["metadata"]["name"] for p in pods}
        for component in instance["spec"].get("components") or []:
            for index in range(int(component.get("size") or 0)):
                pod = self._new_pod(instance, component, index, revision)
                if pod["metadata"]["name"] in existing:
                    continue
                try:
                    self.core.create_namespaced_pod(namespace, pod)  # type: ignore[arg-type]
                except ApiException as exc:
                    failed = exc
                    message = (
                        f"failed to create pod: {api_error(exc)}, pod: "
                        f"{json.dumps(pod, separators=(',', ':'))}"
                    )
                    self.event(instance, "Warning", "FailedCreate", message, RI_COMPONENT)
                    # syncInstance: FailedScale with the error of the scale step.
                    conditions.append(
                        {
                            "type": "FailedScale",
                            "status": "True",
                            "lastTransitionTime": _now(),
                            "message": api_error(exc),
                        }
                    )
                    break
                self.event(
                    instance,
                    "Normal",
                    "SuccessfulCreate",
                    f"succeed to create pod {pod['metadata']['name']}",
                    RI_COMPONENT,
                )
            if failed is not None:
                break
        if failed is None:
            self._refresh_pod_conditions(active)
        self._update_instance_status(instance, revision, active, conditions)
        if failed is not None:
            raise RoleError(f"RoleInstance {namespace}/{name}: {api_error(failed)}")

    def _new_pod(self, instance: Obj, component: Obj, index: int, revision: str) -> Obj:
        """NewUpdatePods for a PodTemplate-type instance: one pod named as the instance."""
        meta = instance["metadata"]
        template = copy.deepcopy(component.get("template") or {})
        tmeta = template.get("metadata") or {}
        spec = template.get("spec") or {}
        name = meta["name"]
        if component.get("serviceName"):
            spec["hostname"] = name
            spec["subdomain"] = component["serviceName"]
        gates = spec.setdefault("readinessGates", [])
        for gate in (IN_PLACE_READY, INSTANCE_POD_READY):
            if not any(g.get("conditionType") == gate for g in gates):
                gates.append({"conditionType": gate})
        labels = {
            **(tmeta.get("labels") or {}),
            # WriteRevisionHash writes the short hash, the revision name's last segment.
            REVISION_LABEL: revision.rsplit("-", 1)[-1],
            INSTANCE_NAME_LABEL: name,
            COMPONENT_NAME_LABEL: component["name"],
            COMPONENT_ID_LABEL: str(index),
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "generateName": f"{name}-",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [owner(instance)],
            },
            "spec": spec,
        }

    def _refresh_pod_conditions(self, pods: list[Obj]) -> None:
        """The pods' gate conditions as the instance controller writes them: InPlaceUpdateReady
        True once there is no update in flight, InstancePodReady False with the lifecycle key
        until every pod of the instance is runtime-ready, True after."""
        for pod in pods:
            conditions = (pod.get("status") or {}).get("conditions") or []
            if condition(conditions, IN_PLACE_READY) is None:
                self._set_pod_condition(pod, {"type": IN_PLACE_READY, "status": "True"})
                conditions = [*conditions, {"type": IN_PLACE_READY, "status": "True"}]
                pod.setdefault("status", {})["conditions"] = conditions
        all_ready = all(pod_runtime_ready(p) for p in pods)
        for pod in pods:
            current = condition(
                (pod.get("status") or {}).get("conditions") or [], INSTANCE_POD_READY
            )
            want = "True" if all_ready else "False"
            if current is not None and current.get("status") == want:
                continue
            self._set_pod_condition(
                pod,
                {
                    "type": INSTANCE_POD_READY,
                    "status": want,
                    "message": "" if all_ready else json.dumps(LIFECYCLE_KEY),
                },
            )

    def _set_pod_condition(self, pod: Obj, wanted: Obj) -> None:
        meta = pod["metadata"]
        self.core.patch_namespaced_pod_status(
            meta["name"],
            meta["namespace"],
            {"status": {"conditions": [{**wanted, "lastTransitionTime": _now()}]}},
            _content_type="application/strategic-merge-patch+json",
        )

    def _update_instance_status(
        self, instance: Obj, revision: str, pods: list[Obj], conditions: list[Obj]
    ) -> None:
        meta = instance["metadata"]
        short = revision.rsplit("-", 1)[-1]
        statuses = []
        all_ready = True
        for component in instance["spec"].get("components") or []:
            mine = [
                p
                for p in pods
                if p["metadata"]["labels"].get(COMPONENT_NAME_LABEL) == component["name"]
            ]
            ready = [p for p in mine if pod_update_ready(p)]
            updated = [p for p in mine if p["metadata"]["labels"].get(REVISION_LABEL) == short]
            scheduled = [
                p
                for p in mine
                if is_true((p.get("status") or {}).get("conditions") or [], "PodScheduled")
            ]
            statuses.append(
                {
                    "name": component["name"],
                    "size": len(mine),
                    "readyReplicas": len(ready),
                    "availableReplicas": len(ready),
                    "updatedReplicas": len(updated),
                    "scheduledReplicas": len(scheduled),
                    "updatedReadyReplicas": len([p for p in updated if pod_update_ready(p)]),
                }
            )
            all_ready = all_ready and len(ready) == int(component.get("size") or 0)
        old = instance.get("status") or {}
        previous = condition(old.get("conditions") or [], "RoleInstanceReady")
        state = "True" if all_ready else "False"
        ready_condition = {
            "type": "RoleInstanceReady",
            "status": state,
            "reason": "Ready" if all_ready else "PodsNotReady",
            "lastTransitionTime": previous["lastTransitionTime"]
            if previous and previous.get("status") == state
            else _now(),
        }
        if not all_ready:
            ready_condition["message"] = "NotReady"
        status = {
            "observedGeneration": meta.get("generation", 1),
            "currentRevision": revision,
            "updateRevision": revision,
            "collisionCount": 0,
            "labelSelector": f"{INSTANCE_NAME_LABEL}={meta['name']}",
            "componentStatuses": statuses,
            "conditions": [*conditions, ready_condition],
        }

        def same(a: list[Obj], b: list[Obj]) -> bool:
            keys = ("type", "status", "reason", "message")
            return sorted(tuple(c.get(k) for k in keys) for c in a) == sorted(
                tuple(c.get(k) for k in keys) for c in b
            )

        if all(old.get(k) == v for k, v in status.items() if k != "conditions") and same(
            old.get("conditions") or [], status["conditions"]
        ):
            return
        self._write_status(RI_PLURAL, instance, status)


if __name__ == "__main__":
    sys.exit(rbg.main(reconciler=ReconcilerV07))
