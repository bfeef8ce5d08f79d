"""LeaderWorkerSet (kubernetes-sigs/lws): the multi-node shape, one group of pods per replica.

Facts from kubernetes-sigs/lws (and the CRDs in ../shared/crds, v0.6.0 and v0.10.0):
- pods carry `leaderworkerset.sigs.k8s.io/{name,group-index,worker-index,group-key,
  template-revision-hash}`; LWS sets no `role` label, our leader template adds `role: leader`;
- status: `readyReplicas` counts ready groups, `updatedReplicas` groups on the newest
  template, condition `Available`; `observedGeneration` exists from v0.10 only;
- leader StatefulSet `<lws>`, one worker StatefulSet per group named after its leader pod
  `<lws>-<group index>` (`pkg/controllers/pod_controller.go`
  constructWorkerStatefulSetApplyConfiguration);
- a template change rolls the groups: new leader and worker pods
  (`pkg/controllers/leaderworkerset_controller.go` rollingUpdateParameters).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from llm_rollout.kinds.base import (
    KUBE_CREATE_OUTCOMES,
    ChildKind,
    PodCreator,
    PodDemand,
    PodFilter,
    RbgFlavor,
    WorkloadKind,
    accept_all,
    as_int,
    condition_missing,
    created_at,
    generation_missing,
    name_of,
    names_matching,
    register,
    replicas_missing,
    replicas_of,
    template_demand,
    uid_of,
)
from llm_rollout.kinds.deployment import STATEFULSETS
from llm_rollout.kube.views import ObjectView, mapping_at

if TYPE_CHECKING:
    from llm_rollout.spec import ServiceSpec

NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
REVISION_LABEL = "leaderworkerset.sigs.k8s.io/template-revision-hash"


def group_statefulsets(name: str) -> str:
    """A pattern of the names of the StatefulSets a LeaderWorkerSet `name` creates: its leader
    StatefulSet `<name>` and one worker StatefulSet per group `<name>-<group index>`."""
    return f"{re.escape(name)}(?:-[0-9]+)?"


def group_demands(replicas: int, lws: Mapping[str, Any]) -> list[PodDemand]:
    """Pods of `replicas` leader/worker groups: a leader (its own template or the worker's)
    and size-1 workers each. RoleBasedGroup's leader/worker roles share this layout."""
    size = int(lws.get("size", 1) or 1)
    worker = template_demand(lws.get("workerTemplate"))
    leader_tpl = lws.get("leaderTemplate")
    leader = template_demand(leader_tpl) if leader_tpl else worker
    return [leader, *([worker] * (size - 1))] * replicas


@register
class LeaderWorkerSet(WorkloadKind):
    kind = "LeaderWorkerSet"
    group = "leaderworkerset.x-k8s.io"
    versions = ("v1",)
    plural = "leaderworkersets"
    shapes = ("multi-node",)
    templates: ClassVar[Mapping[tuple[str, str], str]] = {
        ("vllm", "multi-node"): "vllm/multi-node-lws.yaml.j2",
        ("sglang", "multi-node"): "sglang/multi-node-lws.yaml.j2",
    }
    custom = True
    describe = "multi-node (LWS)"
    name_is_dns_label = True
    controller_label_prefixes = ("leaderworkerset.sigs.k8s.io/",)
    revision_labels = (REVISION_LABEL,)
    child_kinds = (STATEFULSETS,)

    def entry_selector(self, workload: str, rbg_flavor: RbgFlavor) -> dict[str, str]:
        return {NAME_LABEL: workload, "role": "leader"}

    def derived_statefulsets(
        self, spec: ServiceSpec, workload: str, rbg_flavor: RbgFlavor
    ) -> list[tuple[str, str]]:
        last_group = spec.serving.replicas - 1
        return [(f"{workload}-{last_group}", "the LeaderWorkerSet's worker StatefulSet")]

    def controller_services(self, workload: str, rbg_flavor: RbgFlavor) -> list[str]:
        # The headless Service of the groups' pods, named after the LeaderWorkerSet
        # (`pkg/controllers/leaderworkerset_controller.go`, SubdomainShared policy).
        return [workload]

    def plan_checks(self, spec: ServiceSpec) -> list[str]:
        if spec.serving.engine == "vllm":
            return ["LWS: workers retry joining the Ray head within the startup budget"]
        return []

    def pod_templates(self, obj: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
        lwt = mapping_at(obj, "spec", "leaderWorkerTemplate")
        if "leaderTemplate" in lwt:
            yield "spec.leaderWorkerTemplate.leaderTemplate", lwt["leaderTemplate"]
        yield "spec.leaderWorkerTemplate.workerTemplate", mapping_at(lwt, "workerTemplate")

    def pod_selector(self, obj: Mapping[str, Any]) -> tuple[str | None, PodFilter]:
        return f"{NAME_LABEL}={name_of(obj)}", accept_all

    def ready_missing(self, obj: Mapping[str, Any]) -> list[str]:
        """Available=True, readyReplicas (ready groups) == replicas; and, where this LWS
        version reports them, the generation observed and every group updated."""
        view = ObjectView(obj)
        status = view.status
        missing = generation_missing(obj) if "observedGeneration" in status else []
        missing += condition_missing(obj, "Available")
        missing += replicas_missing(obj, "readyReplicas (groups)")
        if "updatedReplicas" in status:
            want = replicas_of(view.spec)
            have = as_int(status.get("updatedReplicas"))
            if have < want:
                missing.append(f"updatedReplicas (groups) {have}/{want}")
        return missing

    def pod_demands(self, obj: Mapping[str, Any]) -> list[PodDemand]:
        spec = ObjectView(obj).spec
        return group_demands(replicas_of(spec), mapping_at(spec, "leaderWorkerTemplate"))

    def pod_creators(self, obj: Mapping[str, Any]) -> tuple[PodCreator, ...]:
        """The StatefulSets create the pods (the LWS controller creates none itself): a
        StatefulSet that cannot create a pod says so in its own events. Their names come back
        with every LeaderWorkerSet of the same name and every recreated group, so only those
        the LeaderWorkerSet controls count (`PodCreator.owner`, through `children`)."""
        names = names_matching(group_statefulsets(name_of(obj)))
        creator = PodCreator(
            "StatefulSet", names, KUBE_CREATE_OUTCOMES, owner=uid_of(obj), since=created_at(obj)
        )
        return (creator,)

    def children(self, obj: Mapping[str, Any]) -> tuple[ChildKind, ...]:
        """Its StatefulSets, both labelled `leaderworkerset.sigs.k8s.io/name: <lws>`: the
        leader StatefulSet, controlled by the LeaderWorkerSet
        (pkg/controllers/leaderworkerset_controller.go SSAWithStatefulset,
        constructLeaderStatefulSetApplyConfiguration), and each group's worker StatefulSet,
        controlled by the group's leader pod (pkg/controllers/pod_controller.go Reconcile,
        setControllerReferenceWithStatefulSet(&pod, ...);
        constructWorkerStatefulSetApplyConfiguration), which its leader StatefulSet controls
        (kubernetes pkg/controller/statefulset/stateful_set_utils.go newStatefulSetPod). The
        leader pods are among the pods readiness watches."""
        return (STATEFULSETS.matching(f"{NAME_LABEL}={name_of(obj)}"),)

    def validation_problems(self, obj: Mapping[str, Any]) -> Iterator[str]:
        size = mapping_at(obj, "spec", "leaderWorkerTemplate").get("size", 1)
        if not isinstance(size, int) or size < 1:
            yield f"spec.leaderWorkerTemplate.size: must be >= 1, got {size!r}"
