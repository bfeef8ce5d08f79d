"""RoleBasedGroup (sgl-project/rbg): the prefill/decode-disaggregated shape, one role each for
prefill, decode and the router.

Two conventions are served, told apart by API discovery (`flavor_from_versions`):
- v0.6 (`workloads.x-k8s.io/v1alpha1` only): pods labelled
  `rolebasedgroup.workloads.x-k8s.io/{name,role}`, env `GROUP_NAME`/`ROLE_NAME`, each role run
  as StatefulSet `<rbg>-<role>` (`pkg/reconciler/sts_reconciler.go`);
- v0.7+ (serves `v1alpha2` and keeps `v1alpha1`): `rbg.workloads.x-k8s.io/{group-name,
  role-name}`, env `RBG_*`, `standalonePattern` / `leaderWorkerPattern` roles run as
  RoleInstanceSets, whose default update is in place (see `pod_roll`).
The headless Service of a role is read late from the pods the controller created
(`role_services_from_pods`), since its name changed across versions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from llm_rollout.errors import PermanentError
from llm_rollout.kinds.base import (
    KUBE_CREATE_OUTCOMES,
    ChildKind,
    JsonDict,
    PodCreator,
    PodDemand,
    PodFilter,
    PodRoll,
    RbgFlavor,
    TemplateChange,
    WorkloadKind,
    accept_all,
    as_int,
    condition_missing,
    created_at,
    generation_missing,
    name_of,
    names_matching,
    register,
    replicas_of,
    template_demand,
    uid_of,
)
from llm_rollout.kinds.deployment import DEPLOYMENTS, REPLICASETS, STATEFULSETS, replica_sets_of
from llm_rollout.kinds.lws import NAME_LABEL as LWS_NAME_LABEL
from llm_rollout.kinds.lws import LeaderWorkerSet, group_demands, group_statefulsets
from llm_rollout.kube.views import ObjectView, mapping_at

if TYPE_CHECKING:
    from llm_rollout.spec import ServiceSpec

GROUP = "workloads.x-k8s.io"
V06_NAME_LABEL = "rolebasedgroup.workloads.x-k8s.io/name"
V06_ROLE_LABEL = "rolebasedgroup.workloads.x-k8s.io/role"
V07_NAME_LABEL = "rbg.workloads.x-k8s.io/group-name"
V07_ROLE_LABEL = "rbg.workloads.x-k8s.io/role-name"
PD_ROLES = ("prefill", "decode", "router")
# The roles the PD router addresses, whose Services it is bound to late.
PD_BACKEND_ROLES = ("prefill", "decode")
# v0.7's chain below a v1alpha2 group: RoleInstanceSets, then RoleInstances.
ROLE_INSTANCE_SETS = ChildKind(f"{GROUP}/v1alpha2", "RoleInstanceSet", "roleinstancesets")
ROLE_INSTANCES = ChildKind(f"{GROUP}/v1alpha2", "RoleInstance", "roleinstances")
LEADERWORKERSETS = ChildKind(
    LeaderWorkerSet.api_versions()[0], LeaderWorkerSet.kind, LeaderWorkerSet.plural
)


def role_labels(workload: str, role: str, rbg_flavor: RbgFlavor) -> dict[str, str]:
    """Labels the RBG controller puts on a role's pods (v0.6 v1alpha1 / v0.7+ v1alpha2)."""
    if rbg_flavor == "v0.6":
        return {V06_NAME_LABEL: workload, V06_ROLE_LABEL: role}
    return {V07_NAME_LABEL: workload, V07_ROLE_LABEL: role}


def default_role_service(workload: str, role: str) -> str:
    """RBG's current headless Service name of a role, "s-<rbg>-<role>" (sgl-project/rbg since
    v0.5; older controllers, such as the ack-rbgs of the seeds, name it "<rbg>-<role>", and
    v0.7 keeps an existing one: `pkg/utils/service_utils.go` GetCompatibleHeadlessServiceName).
    """
    return f"s-{workload}-{role}"


def role_pod_host(workload: str, role: str, index: int, service: str) -> str:
    """A role pod's stable DNS name below its namespace: pods are named "<rbg>-<role>-<i>"
    with the role's headless Service as subdomain."""
    return f"{workload}-{role}-{index}.{service}"


class RoleServiceError(PermanentError):
    """The pods of an RBG role do not name one headless Service."""


def role_services_from_pods(
    pods: Iterable[Mapping[str, Any]],
    workload: str,
    rbg_flavor: RbgFlavor,
    roles: Iterable[str] = PD_BACKEND_ROLES,
) -> dict[str, str]:
    """The headless Service of each role, read from the pods the controller created.

    A pod's DNS name is `<hostname>.<subdomain>.<namespace>.svc`; the StatefulSet controller
    sets `spec.subdomain` to the set's `serviceName` (kubernetes
    `pkg/controller/statefulset/stateful_set_utils.go` initIdentity, RBG v0.6) and RBG v0.7
    sets it on RoleInstance pods itself (`pkg/reconciler/roleinstance/core/instance_core.go`).
    This is what `render(..., rbg_role_services=...)` binds the router's backends to, whatever
    naming convention the installed controller follows. Roles without pods yet are left out.
    """
    found: dict[str, set[str]] = {}
    for pod in pods:
        view = ObjectView(pod)
        labels = view.metadata.labels
        for role in roles:
            wanted = role_labels(workload, role, rbg_flavor)
            if all(labels.get(key) == value for key, value in wanted.items()):
                subdomain = view.spec.get("subdomain")
                found.setdefault(role, set()).add(subdomain or "")
    services: dict[str, str] = {}
    for role, names in found.items():
        if len(names) != 1 or "" in names:
            listed = ", ".join(sorted(repr(n) for n in names))
            raise RoleServiceError(
                f"RoleBasedGroup {workload}: pods of role {role} do not share one "
                f"spec.subdomain (found {listed}); cannot address them by DNS"
            )
        services[role] = names.pop()
    return services


def _has_cycle(graph: dict[Any, list[Any]]) -> bool:
    state: dict[Any, int] = {}

    def visit(node: Any) -> bool:
        if state.get(node) == 1:
            return True
        if state.get(node) == 2 or node not in graph:
            return False
        state[node] = 1
        found = any(visit(dep) for dep in graph[node] if dep != node)
        state[node] = 2
        return found

    return any(visit(node) for node in graph)


def _is_v1alpha2(obj: Mapping[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).endswith("/v1alpha2")


@register
class RoleBasedGroup(WorkloadKind):
    kind = "RoleBasedGroup"
    group = GROUP
    versions = ("v1alpha2", "v1alpha1")
    plural = "rolebasedgroups"
    shapes = ("pd-disaggregated",)
    templates: ClassVar[Mapping[tuple[str, str], str]] = {
        ("sglang", "pd-disaggregated"): "sglang/pd-rbg.yaml.j2",
    }
    custom = True
    describe = "pd-disaggregated (RBG)"
    name_is_dns_label = True
    controller_label_prefixes = ("rolebasedgroup.", "rbg.")
    child_kinds = (
        STATEFULSETS,
        DEPLOYMENTS,
        REPLICASETS,
        LEADERWORKERSETS,
        ROLE_INSTANCE_SETS,
        ROLE_INSTANCES,
    )

    def flavor_from_versions(self, versions: Iterable[str]) -> RbgFlavor | None:
        """v0.7+ serves v1alpha2 (and keeps v1alpha1); v0.6 serves v1alpha1 only.

        The flavor decides label and env conventions, so it must follow what the cluster
        runs, not what the user guesses.
        """
        served = set(versions)
        if "v1alpha2" in served:
            return "v0.7"
        if "v1alpha1" in served:
            return "v0.6"
        return None

    def entry_selector(self, workload: str, rbg_flavor: RbgFlavor) -> dict[str, str]:
        return role_labels(workload, "router", rbg_flavor)

    def derived_statefulsets(
        self, spec: ServiceSpec, workload: str, rbg_flavor: RbgFlavor
    ) -> list[tuple[str, str]]:
        if rbg_flavor != "v0.6":
            return []  # v0.7 RoleInstanceSets write a short hash
        return [
            (f"{workload}-{role}", f"the RoleBasedGroup's {role} StatefulSet") for role in PD_ROLES
        ]

    def controller_services(self, workload: str, rbg_flavor: RbgFlavor) -> list[str]:
        return [default_role_service(workload, role) for role in PD_ROLES]

    def pod_templates(self, obj: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for i, role in enumerate(ObjectView(obj).spec.get("roles") or []):
            if "template" in role:
                yield f"spec.roles[{i}].template", role["template"]
            for pattern in ("standalonePattern", "leaderWorkerPattern"):
                if "template" in mapping_at(role, pattern):
                    yield f"spec.roles[{i}].{pattern}.template", role[pattern]["template"]

    def pod_selector(self, obj: Mapping[str, Any]) -> tuple[str | None, PodFilter]:
        """v1alpha2 is served by v0.7+ only; v1alpha1 by both v0.6 and v0.7+, so for it pods
        are matched on either convention's label."""
        name = name_of(obj)
        if _is_v1alpha2(obj):
            return f"{V07_NAME_LABEL}={name}", accept_all

        def either_label(pod: JsonDict) -> bool:
            labels = ObjectView(pod).metadata.labels
            return bool(labels.get(V06_NAME_LABEL) == name or labels.get(V07_NAME_LABEL) == name)

        return None, either_label

    def ready_missing(self, obj: Mapping[str, Any]) -> list[str]:
        """Ready=True and every role's readyReplicas == its replicas; where reported, the
        generation observed and every role's replicas updated."""
        view = ObjectView(obj)
        status = view.status
        missing = generation_missing(obj) if "observedGeneration" in status else []
        missing += condition_missing(obj, "Ready")
        spec_roles = [str(r.get("name")) for r in view.spec.get("roles") or []]
        statuses = {str(s.get("name")): s for s in status.get("roleStatuses") or []}
        for role in spec_roles:
            role_status = statuses.get(role)
            if role_status is None:
                missing.append(f"role {role}: no status yet")
                continue
            want = as_int(role_status.get("replicas"), 1)
            have = as_int(role_status.get("readyReplicas"))
            if have < want:
                missing.append(f"role {role}: readyReplicas {have}/{want}")
            if "updatedReplicas" in role_status:
                updated = as_int(role_status.get("updatedReplicas"))
                if updated < want:
                    missing.append(f"role {role}: updatedReplicas {updated}/{want}")
        return missing

    def pod_demands(self, obj: Mapping[str, Any]) -> list[PodDemand]:
        demands: list[PodDemand] = []
        for role in ObjectView(obj).spec.get("roles") or []:
            replicas = replicas_of(role)
            lws = role.get("leaderWorkerSet") or (role.get("leaderWorkerPattern") or None)
            if lws:
                merged = dict(lws)
                merged.setdefault("workerTemplate", role.get("template"))
                demands += group_demands(replicas, merged)
            else:
                pattern = mapping_at(role, "standalonePattern")
                template = role.get("template") or pattern.get("template")
                demands += [template_demand(template)] * replicas
        return demands

    def pod_creators(self, obj: Mapping[str, Any]) -> tuple[PodCreator, ...]:
        """v1alpha1 (RBG v0.6): each role's workload is `<rbg>-<role>`
        (api/workloads/v1alpha1/helper.go GetWorkloadName), a StatefulSet, a Deployment (whose
        ReplicaSets create the pods) or a LeaderWorkerSet (whose StatefulSets do).

        v1alpha2 (RBG v0.7+): a role's RoleInstanceSet `<rbg>-<role>` makes RoleInstances
        `<rbg>-<role>-<i>` (pkg/reconciler/roleinstanceset/statefulmode
        stateful_instance_set_utils.go getInstanceName), and each RoleInstance creates its pods
        itself, recording `FailedCreate` "failed to create pod: <error>, pod: <the pod's
        JSON>" on itself when the API server refuses one and `SuccessfulCreate` "succeed to
        create pod <name>" when one is created (pkg/reconciler/roleinstance/sync/
        instance_scale.go createOnePod); neither the set nor the group carries the refusal.
        """
        roles = [str(role.get("name")) for role in ObjectView(obj).spec.get("roles") or []]
        if not roles:
            return ()
        workloads = [f"{name_of(obj)}-{role}" for role in roles]
        # A group created again under its name has its roles' objects under the old names:
        # only the objects it controls count (`PodCreator.owner`, through `children`).
        owner, since = uid_of(obj), created_at(obj)

        def creator(kind: str, names: re.Pattern[str]) -> PodCreator:
            return PodCreator(kind, names, KUBE_CREATE_OUTCOMES, owner=owner, since=since)

        if _is_v1alpha2(obj):
            instances = names_matching(*(f"{re.escape(w)}-[0-9]+" for w in workloads))
            return (creator(ROLE_INSTANCES.kind, instances),)
        statefulsets = names_matching(*(group_statefulsets(w) for w in workloads))
        replica_sets = names_matching(*(replica_sets_of(w) for w in workloads))
        return (
            creator(STATEFULSETS.kind, statefulsets),
            creator(REPLICASETS.kind, replica_sets),
        )

    def children(self, obj: Mapping[str, Any]) -> tuple[ChildKind, ...]:
        """The chain from the group to its pods, every link a controller reference.

        v1alpha2 (RBG v0.7+): each role's RoleInstanceSet, controlled by the group
        (pkg/reconciler/roleinstanceset_reconciler.go constructRoleInstanceSetApplyConfiguration,
        labelled with GetCommonLabelsFromRole's group name), and its RoleInstances, controlled
        by the set and carrying its labels (pkg/reconciler/roleinstanceset/statefulmode/
        stateful_instance_set_utils.go newVersionedInstance).

        v1alpha1 (RBG v0.6): each role's workload `<rbg>-<role>`, controlled by the group and
        labelled with its name (pkg/reconciler/sts_reconciler.go, deploy_reconciler.go,
        lws_reconciler.go construct*ApplyConfiguration), of the role's `workload` kind
        (StatefulSet by default): a Deployment's ReplicaSets carry its pod labels, the group's
        too; a LeaderWorkerSet's StatefulSets carry only LWS's name label (see
        `LeaderWorkerSet.children`).
        """
        name = name_of(obj)
        if _is_v1alpha2(obj):
            group = f"{V07_NAME_LABEL}={name}"
            return (ROLE_INSTANCE_SETS.matching(group), ROLE_INSTANCES.matching(group))
        group = f"{V06_NAME_LABEL}={name}"
        found = [STATEFULSETS.matching(group)]
        roles = ObjectView(obj).spec.get("roles") or []
        kinds = {str(mapping_at(role, "workload").get("kind") or "StatefulSet") for role in roles}
        if DEPLOYMENTS.kind in kinds:
            found += [DEPLOYMENTS.matching(group), REPLICASETS.matching(group)]
        lws_roles = sorted(
            f"{name}-{role.get('name')}"
            for role in roles
            if mapping_at(role, "workload").get("kind") == LeaderWorkerSet.kind
        )
        if lws_roles:
            found.append(LEADERWORKERSETS.matching(group))
            found.append(STATEFULSETS.matching(f"{LWS_NAME_LABEL} in ({','.join(lws_roles)})"))
        return tuple(found)

    def validation_problems(self, obj: Mapping[str, Any]) -> Iterator[str]:
        roles = ObjectView(obj).spec.get("roles") or []
        seen: set[Any] = set()
        for i, role in enumerate(roles):
            if role.get("name") in seen:
                yield f"spec.roles[{i}].name: duplicate role name {role.get('name')!r}"
            seen.add(role.get("name"))
        graph = {role.get("name"): list(role.get("dependencies") or []) for role in roles}
        for i, role in enumerate(roles):
            for dep in role.get("dependencies") or []:
                if dep not in graph:
                    yield f"spec.roles[{i}].dependencies: {dep!r} is not a role of this group"
                elif dep == role.get("name"):
                    yield f"spec.roles[{i}].dependencies: a role cannot depend on itself"
        if _has_cycle(graph):
            yield "spec.roles: dependencies form a cycle"

    def pod_roll(self, obj: Mapping[str, Any], change: TemplateChange) -> PodRoll:
        """v1alpha1 roles are StatefulSets (or LWS): a template change replaces the pods.

        v1alpha2 (RBG v0.7+) RoleInstanceSets update `InPlaceIfPossible` by default (the CRD's
        `rolloutStrategy.rollingUpdate.type`): when the revisions differ only in pod metadata
        and container images, the metadata is patched into the running pods and only the
        containers whose image changed are restarted (sgl-project/rbg
        `pkg/inplace/pod/inplaceupdate/inplace_update_defaults.go`
        defaultCalculateInPlaceUpdateSpec / defaultPatchUpdateSpecToPod); any other pod-spec
        change falls back to new pods.
        """
        if not _is_v1alpha2(obj) or change == "spec":
            return PodRoll("replace")
        if change == "image":
            return PodRoll("in-place")
        return PodRoll(
            "none",
            "RoleBasedGroup v1alpha2 (RBG >= v0.7) updates pods in place: a changed "
            "annotation is patched into the running pods and no container restarts "
            "(sgl-project/rbg pkg/inplace/pod/inplaceupdate/inplace_update_defaults.go). "
            "To restart the engines, delete the role's pods (the controller recreates them) "
            "or run deploy-model, which starts a new release",
        )
