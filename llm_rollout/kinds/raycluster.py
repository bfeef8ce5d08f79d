"""RayCluster (KubeRay's ray-operator): the ray-cluster shape, a head pod plus worker groups.

The operator's port and probe quirks, and how the plan avoids them, are in
`llm_rollout.kuberay`. Pods carry `ray.io/cluster` and `ray.io/node-type` (head / worker);
the head is the entry point. Readiness is `status.state == "ready"`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from llm_rollout import kuberay
from llm_rollout.kinds.base import (
    PodCreator,
    PodDemand,
    PodFilter,
    PodRoll,
    RbgFlavor,
    TemplateChange,
    WorkloadKind,
    accept_all,
    name_of,
    register,
    replicas_of,
    template_demand,
    uid_of,
)
from llm_rollout.kube.views import ObjectView, mapping_at

if TYPE_CHECKING:
    from llm_rollout.crds import CrdCatalog
    from llm_rollout.spec import ServiceSpec

CLUSTER_LABEL = "ray.io/cluster"
NODE_TYPE_LABEL = "ray.io/node-type"
# `spec.upgradeStrategy.type` (KubeRay >= v1.6; ray-operator `apis/ray/v1/raycluster_types.go`
# RayClusterUpgradeStrategy): only `Recreate` makes the operator replace running pods.
RECREATE = "Recreate"
# The feature the template renders `spec.upgradeStrategy: {type: Recreate}` for: the installed
# RayCluster CRD's schema offers Recreate there (absent before KubeRay v1.6: ray-operator
# v1.5.0 `apis/ray/v1/raycluster_types.go` has no UpgradeStrategy). Recreate is what redeploy
# needs, and it touches nothing else the product does: the operator's spec hash leaves out
# replicas, min/max replicas and workersToDelete (autoscaling), and an operator upgrade only
# restamps the head pod (raycluster_controller.go shouldRecreatePodsForUpgrade, v1.6.2); a
# deploy renders a new RayCluster per release, so only redeploy changes a running one's spec.
RECREATE_UPGRADE = "ray-recreate-upgrade"
# KubeRay creates the pods itself and records its own reasons on the RayCluster
# (ray-operator controllers/ray/utils/constant.go K8sEventType; raycluster_controller.go
# createHeadPod / createWorkerPod): head and workers are created, and fail, apart.
CREATE_OUTCOMES = {
    "FailedToCreateHeadPod": "CreatedHeadPod",
    "FailedToCreateWorkerPod": "CreatedWorkerPod",
}


def _upgrade_types(schema: Mapping[str, Any]) -> list[Any]:
    """The enum of `spec.upgradeStrategy.type` in a RayCluster object schema ([] without)."""
    node: Any = schema
    for field in ("spec", "upgradeStrategy", "type"):
        node = mapping_at(node, "properties").get(field)
    enum = node.get("enum") if isinstance(node, Mapping) else None
    return list(enum) if isinstance(enum, list) else []


def head_service(workload: str) -> str:
    """The head Service KubeRay creates, "<cluster>-head-svc" (ray-operator
    `controllers/ray/utils/util.go` GenerateHeadServiceName), which workers join through."""
    return f"{workload}-head-svc"


# --- the pods we declare, shaped so KubeRay adds nothing of its own (see llm_rollout.kuberay) ---


def _metrics_port(spec: ServiceSpec) -> int:
    return kuberay.metrics_port(spec.serving.port)


def head_start_params(spec: ServiceSpec) -> dict[str, str]:
    """`rayStartParams` of the head (values must be strings); GCS on Ray's port, metrics on
    the port we name `metrics`."""
    return {
        "dashboard-host": "0.0.0.0",  # noqa: S104 - workers and the dashboard reach it
        "num-gpus": str(spec.serving.gpus_per_node),
        "port": str(kuberay.GCS_PORT),
        "metrics-export-port": str(_metrics_port(spec)),
    }


def worker_start_params(spec: ServiceSpec) -> dict[str, str]:
    return {
        "num-gpus": str(spec.serving.gpus_per_node),
        "metrics-export-port": str(_metrics_port(spec)),
    }


def head_ports(spec: ServiceSpec) -> list[dict[str, Any]]:
    """Head container ports besides `http`; `metrics` is named so KubeRay adds none."""
    return [
        {"name": "gcs", "port": kuberay.GCS_PORT},
        {"name": "dashboard", "port": kuberay.DASHBOARD_PORT},
        {"name": "client", "port": kuberay.CLIENT_PORT},
        {"name": kuberay.METRICS_PORT_NAME, "port": _metrics_port(spec)},
    ]


def worker_ports(spec: ServiceSpec) -> list[dict[str, Any]]:
    return [{"name": kuberay.METRICS_PORT_NAME, "port": _metrics_port(spec)}]


def worker_probes(spec: ServiceSpec) -> dict[str, Any]:
    """Declared so KubeRay injects no dashboard-agent probes (`kuberay.worker_probes`)."""
    probes = spec.serving.probes
    return kuberay.worker_probes(
        period_s=probes.period_s,
        timeout_s=probes.timeout_s,
        failure_threshold=probes.failure_threshold,
        startup_budget_s=probes.startup_budget_s,
    )


def head_address(workload: str, namespace: str) -> str:
    """The GCS address workers join: the head Service's cluster DNS name."""
    return f"{head_service(workload)}.{namespace}.svc.cluster.local:{kuberay.GCS_PORT}"


@register
class RayCluster(WorkloadKind):
    kind = "RayCluster"
    group = "ray.io"
    versions = ("v1",)
    plural = "rayclusters"
    shapes = ("ray-cluster",)
    templates: ClassVar[Mapping[tuple[str, str], str]] = {
        ("vllm", "ray-cluster"): "vllm/ray-cluster.yaml.j2",
    }
    custom = True
    describe = "ray-cluster (KubeRay)"
    name_is_dns_label = True
    controller_label_prefixes = ("ray.io/",)

    reads_crd_schema = True

    def entry_selector(self, workload: str, rbg_flavor: RbgFlavor) -> dict[str, str]:
        return {CLUSTER_LABEL: workload, NODE_TYPE_LABEL: "head"}

    def crd_features(self, catalog: CrdCatalog | None) -> tuple[frozenset[str], str]:
        without = (
            "so it is rendered without spec.upgradeStrategy and redeploy refuses pod-template "
            "changes (deploy a new release instead)"
        )
        if catalog is None:
            return frozenset(), f"KubeRay upgradeStrategy not checked (no CRD to read), {without}"
        for schema in catalog.for_kind(self.api_versions()[0], self.kind):
            if RECREATE in _upgrade_types(schema.schema):
                return frozenset({RECREATE_UPGRADE}), (
                    f"KubeRay: the RayCluster CRD ({schema.source}) offers "
                    "spec.upgradeStrategy Recreate, rendered so redeploy's template changes "
                    "recreate the pods"
                )
        return frozenset(), (
            f"KubeRay: the RayCluster CRD of {catalog.origin} has no spec.upgradeStrategy "
            f"Recreate (KubeRay before v1.6), {without}"
        )

    def controller_services(self, workload: str, rbg_flavor: RbgFlavor) -> list[str]:
        return [head_service(workload)]

    def plan_checks(self, spec: ServiceSpec) -> list[str]:
        port = spec.serving.port
        return [
            f"KubeRay: server port {port} clear of Ray's ports; a port named "
            f"metrics ({kuberay.metrics_port(port)}) on head and workers, so no "
            "default metrics 8080 is added to the head Service",
            "KubeRay: worker probes declared (raylet process), so no dashboard-agent probes "
            "are injected",
        ]

    def pod_templates(self, obj: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
        spec = ObjectView(obj).spec
        yield "spec.headGroupSpec.template", mapping_at(spec, "headGroupSpec", "template")
        for i, group in enumerate(spec.get("workerGroupSpecs") or []):
            yield f"spec.workerGroupSpecs[{i}].template", mapping_at(group, "template")

    def pod_selector(self, obj: Mapping[str, Any]) -> tuple[str | None, PodFilter]:
        return f"{CLUSTER_LABEL}={name_of(obj)}", accept_all

    def ready_missing(self, obj: Mapping[str, Any]) -> list[str]:
        state = str(ObjectView(obj).status.get("state") or "")
        return [] if state == "ready" else [f"state {state or 'not reported'} (want ready)"]

    def pod_demands(self, obj: Mapping[str, Any]) -> list[PodDemand]:
        spec = ObjectView(obj).spec
        demands = [template_demand(mapping_at(spec, "headGroupSpec").get("template"))]
        for group in spec.get("workerGroupSpecs") or []:
            demands += [template_demand(group.get("template"))] * replicas_of(group)
        return demands

    def pod_creators(self, obj: Mapping[str, Any]) -> tuple[PodCreator, ...]:
        """The RayCluster itself: only its own events count, by uid, not those of an earlier
        RayCluster of the same name."""
        names = re.compile(re.escape(name_of(obj)))
        return (PodCreator("RayCluster", names, CREATE_OUTCOMES, uid=uid_of(obj)),)

    def validation_problems(self, obj: Mapping[str, Any]) -> Iterator[str]:
        for i, group in enumerate(ObjectView(obj).spec.get("workerGroupSpecs") or []):
            low, high = group.get("minReplicas", 0), group.get("maxReplicas", 0)
            want = group.get("replicas", low)
            if not low <= want <= high:
                yield (
                    f"spec.workerGroupSpecs[{i}].replicas: {want} is outside "
                    f"minReplicas..maxReplicas {low}..{high}"
                )

    def pod_roll(self, obj: Mapping[str, Any], change: TemplateChange) -> PodRoll:
        """KubeRay leaves running pods alone when the spec changes: it only creates missing
        pods and deletes surplus or failed ones, unless `spec.upgradeStrategy.type` is
        `Recreate` (KubeRay >= v1.6), which deletes every pod once the spec hash stored on the
        head pod differs (ray-project/kuberay `ray-operator/controllers/ray/
        raycluster_controller.go` shouldRecreatePodsForUpgrade, reconcilePods)."""
        strategy = mapping_at(obj, "spec", "upgradeStrategy")
        if strategy.get("type") == RECREATE:
            return PodRoll("replace")
        return PodRoll(
            "none",
            "KubeRay does not restart a RayCluster's pods when its spec changes (ray-operator "
            "controllers/ray/raycluster_controller.go: pods are recreated only with "
            "spec.upgradeStrategy.type Recreate, KubeRay >= v1.6). Change the spec and run "
            "deploy-model, which starts a new RayCluster as a new release and switches "
            "traffic once it is ready",
        )
