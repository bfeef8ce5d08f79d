"""Deployment (single-GPU and single-node tensor-parallel shapes) and StatefulSet (only read:
LWS and RBG v0.6 run their pods in StatefulSets)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from llm_rollout.kinds.base import (
    KUBE_CREATE_OUTCOMES,
    ChildKind,
    PodCreator,
    PodFilter,
    WorkloadKind,
    accept_all,
    as_int,
    condition_missing,
    created_at,
    generation_missing,
    name_of,
    register,
    replicas_missing,
    replicas_of,
    uid_of,
)
from llm_rollout.kube.views import ObjectView, mapping_at

# A ReplicaSet of a Deployment is named "<deployment>-<pod-template-hash>" (kubernetes
# pkg/controller/deployment/sync.go generateReplicaSetName; the name is cut only past 253
# characters), the hash a FNV-32 written in these characters (controller_utils.go ComputeHash,
# apimachinery pkg/util/rand/rand.go SafeEncodeString).
POD_TEMPLATE_HASH = "[bcdfghjklmnpqrstvwxz2456789]+"


# The built-in kinds that sit between a custom workload and its pods.
STATEFULSETS = ChildKind("apps/v1", "StatefulSet", "statefulsets")
REPLICASETS = ChildKind("apps/v1", "ReplicaSet", "replicasets")
DEPLOYMENTS = ChildKind("apps/v1", "Deployment", "deployments")


def replica_sets_of(deployment: str) -> str:
    """A pattern of the names of the ReplicaSets the Deployment `deployment` creates."""
    return f"{re.escape(deployment)}-{POD_TEMPLATE_HASH}"


def _selector_string(selector: Mapping[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in sorted(mapping_at(selector, "matchLabels").items())]
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key"), expr.get("operator")
        values = ",".join(expr.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


@register
class Deployment(WorkloadKind):
    kind = "Deployment"
    group = "apps"
    versions = ("v1",)
    plural = "deployments"
    shapes = ("single-gpu", "tensor-parallel")
    templates: ClassVar[Mapping[tuple[str, str], str]] = {
        ("vllm", "single-gpu"): "vllm/single-gpu.yaml.j2",
        ("vllm", "tensor-parallel"): "vllm/tensor-parallel.yaml.j2",
        ("sglang", "single-gpu"): "sglang/single-node.yaml.j2",
        ("sglang", "tensor-parallel"): "sglang/single-node.yaml.j2",
    }
    # The Deployment controller labels its ReplicaSets' pods `pod-template-hash`
    # (kubernetes `pkg/controller/deployment/sync.go`); a new template means new pods.
    revision_labels = ("pod-template-hash",)
    child_kinds = (REPLICASETS,)

    def pod_selector(self, obj: Mapping[str, Any]) -> tuple[str | None, PodFilter]:
        selector = _selector_string(mapping_at(obj, "spec", "selector"))
        return selector or None, accept_all

    def ready_missing(self, obj: Mapping[str, Any]) -> list[str]:
        """Observed generation current, Available=True, every replica updated and ready.

        `updatedReplicas` (pods of the newest ReplicaSet) tells a rolled Deployment from one
        whose old pods are still the ready ones (`pkg/controller/deployment/sync.go`
        calculateStatus)."""
        missing = generation_missing(obj) + condition_missing(obj, "Available")
        missing += replicas_missing(obj)
        view = ObjectView(obj)
        spec, status = view.spec, view.status
        # Zero counters are omitted from the status (omitempty), so once the controller
        # reported at all, an absent updatedReplicas means none.
        if "observedGeneration" in status:
            want, have = replicas_of(spec), as_int(status.get("updatedReplicas"))
            if have < want:
                missing.append(f"updatedReplicas {have}/{want}")
        return missing

    def pod_creators(self, obj: Mapping[str, Any]) -> tuple[PodCreator, ...]:
        """Its ReplicaSets create the pods, followed while the Deployment reports
        `ReplicaFailure`: the ReplicaSet controller sets that condition on a failed sync and
        removes it on the next good one (pkg/controller/replicaset/replica_set_utils.go
        calculateStatus), and the Deployment controller copies it from its ReplicaSets
        (pkg/controller/deployment/progress.go getReplicaFailures). So the last refusal of an
        earlier ReplicaSet, among the events for their TTL (kube-apiserver --event-ttl, 1 h),
        is not read as current. The events, not the condition, give the ReplicaSet and the
        latest cause: the condition keeps the message of its first failure. Only events about a
        ReplicaSet it controls count (`PodCreator.owner`): a ReplicaSet name (the template's
        hash) comes back when a Deployment of the same name and template is created again."""
        failure = ObjectView(obj).condition("ReplicaFailure")
        if failure is None or not failure.is_true:
            return ()
        names = re.compile(replica_sets_of(name_of(obj)))
        creator = PodCreator(
            "ReplicaSet", names, KUBE_CREATE_OUTCOMES, owner=uid_of(obj), since=created_at(obj)
        )
        return (creator,)

    def children(self, obj: Mapping[str, Any]) -> tuple[ChildKind, ...]:
        """Its ReplicaSets, controlled by it (pkg/controller/deployment/sync.go
        getNewReplicaSet: `metav1.NewControllerRef(d, controllerKind)`) and labelled with its
        pod template's labels, which its selector must match (the RS is listed by that
        selector, as kubectl's listReplicaSets does)."""
        selector, _ = self.pod_selector(obj)
        return (REPLICASETS.matching(selector),) if selector else (REPLICASETS,)


@register
class StatefulSet(WorkloadKind):
    kind = "StatefulSet"
    group = "apps"
    versions = ("v1",)
    plural = "statefulsets"
    # StatefulSet pods carry `controller-revision-hash` (kubernetes
    # `pkg/controller/statefulset/stateful_set_utils.go`).
    revision_labels = ("controller-revision-hash",)

    def pod_selector(self, obj: Mapping[str, Any]) -> tuple[str | None, PodFilter]:
        selector = _selector_string(mapping_at(obj, "spec", "selector"))
        return selector or None, accept_all

    def ready_missing(self, obj: Mapping[str, Any]) -> list[str]:
        return generation_missing(obj) + replicas_missing(obj)

    def pod_creators(self, obj: Mapping[str, Any]) -> tuple[PodCreator, ...]:
        names = re.compile(re.escape(name_of(obj)))
        return (PodCreator("StatefulSet", names, KUBE_CREATE_OUTCOMES, uid=uid_of(obj)),)
