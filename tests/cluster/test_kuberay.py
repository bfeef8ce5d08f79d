"""The real KubeRay operator (github.com/ray-project/kuberay/ray-operator, the version pinned in
sandbox/cluster/go/kuberay/go.mod) reconciles RayClusters on the real API server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from sandbox.cluster.node_agent import NodeSpec
from sandbox.cluster.waits import wait_for, wait_pods_bound

REPO_ROOT = Path(__file__).resolve().parents[2]


def _container(name: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "image": "rayproject/ray:2.46.0",
        "ports": ports,
        "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "1"}},
    }


def _raycluster(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name},
        "spec": {
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {
                    "spec": {
                        "containers": [
                            _container("ray-head", [{"name": "serve", "containerPort": 8000}])
                        ]
                    }
                },
            },
            "workerGroupSpecs": [
                {
                    "groupName": "gpu",
                    "replicas": 1,
                    "minReplicas": 1,
                    "maxReplicas": 1,
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [_container("ray-worker", [])]}},
                }
            ],
        },
    }


def _create_raycluster(admin: k8s.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    k8s.CustomObjectsApi(admin).create_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayclusters", body
    )


def test_raycluster_gets_head_service_with_kuberay_metrics_port_and_bound_pods(
    admin: k8s.ApiClient, namespace: str, gpu_nodes: tuple[NodeSpec, ...]
) -> None:
    _create_raycluster(admin, namespace, _raycluster("rc"))
    core = k8s.CoreV1Api(admin)
    services = wait_for(
        core.list_namespaced_service,
        lambda items: any(s.metadata.name == "rc-head-svc" for s in items),
        namespace=namespace,
        timeout_s=60,
        what="KubeRay's head Service rc-head-svc",
    )
    head_svc = next(s for s in services if s.metadata.name == "rc-head-svc")
    ports = {p.name: p.port for p in head_svc.spec.ports}
    # The operator adds a `metrics` port 8080 the spec never asked for
    # (ray-operator controllers/ray/common/service.go: "check if metrics port is defined. If
    # not, add default value for it", utils.DefaultMetricsPort), beside the container's own.
    assert ports["metrics"] == 8080
    assert ports["serve"] == 8000
    assert [o.kind for o in head_svc.metadata.owner_references] == ["RayCluster"]

    pods = wait_pods_bound(
        admin,
        namespace=namespace,
        label_selector="ray.io/cluster=rc",
        count=2,
        node_names={spec.name for spec in gpu_nodes},
        timeout_s=60,
    )
    assert sorted(p.metadata.labels["ray.io/node-type"] for p in pods) == ["head", "worker"]


def _rendered_raycluster(example: str, out_dir: Path) -> dict[str, Any]:
    cli = Path(sys.executable).parent / "llm-rollout"
    subprocess.run(
        [str(cli), "plan", str(REPO_ROOT / "examples" / example), "--out", str(out_dir)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    (path,) = out_dir.glob("raycluster-*.yaml")
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


class HeadServiceRejectedForDuplicatePort(AssertionError):
    """Issue 16 F1 as the real API server reports it, and nothing else."""


@pytest.mark.xfail(
    strict=True,
    raises=HeadServiceRejectedForDuplicatePort,
    reason=(
        "issue 16 F1: the example's head serves on 8080 and KubeRay adds its own `metrics` port "
        "8080 to the head Service, which the API server rejects as a duplicate; the product fix "
        "is in progress elsewhere"
    ),
)
def test_example_ray_tp2_gets_its_head_service(
    admin: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    body = _rendered_raycluster("seed-qwen14b-ray-tp2.yaml", tmp_path)
    name = body["metadata"]["name"]
    body["metadata"]["namespace"] = namespace
    _create_raycluster(admin, namespace, body)

    # KubeRay records the outcome of creating the head Service as an event on the RayCluster
    # (createService in ray-operator controllers/ray/raycluster_controller.go).
    outcomes = {"CreatedService", "FailedToCreateService"}
    events = wait_for(
        k8s.CoreV1Api(admin).list_namespaced_event,
        lambda items: any(e.reason in outcomes for e in items),
        namespace=namespace,
        field_selector=f"involvedObject.name={name}",
        timeout_s=60,
        what=f"KubeRay's head Service event on {name}",
    )
    failures = [e.message for e in events if e.reason == "FailedToCreateService"]
    for message in failures:
        # Service validation (k8s.io/kubernetes pkg/apis/core/validation: ValidateService)
        # refuses two ports with one number and protocol.
        if "Duplicate value" in message and "8080" in message:
            raise HeadServiceRejectedForDuplicatePort(message)
    assert failures == [], failures
