"""The real KubeRay operator (github.com/ray-project/kuberay/ray-operator, the version pinned in
sandbox/cluster/go/kuberay/go.mod) reconciles RayClusters on the real API server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s

from sandbox.cluster.node_agent import NodeSpec
from sandbox.cluster.waits import wait_for, wait_pods_bound


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
    # The operator adds a `metrics` port 8080 the spec never asked for (ray-operator v1.6.2
    # controllers/ray/common/service.go getServicePorts: "check if metrics port is defined. If
    # not, add default value for it", utils.DefaultMetricsPort = 8080 in utils/constant.go),
    # beside the container's own.
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


def _head_service_events(admin: k8s.ApiClient, namespace: str, name: str) -> list[Any]:
    # KubeRay records the outcome of creating the head Service as an event on the RayCluster
    # (createService in ray-operator controllers/ray/raycluster_controller.go).
    outcomes = {"CreatedService", "FailedToCreateService"}
    return wait_for(
        k8s.CoreV1Api(admin).list_namespaced_event,
        lambda items: any(e.reason in outcomes for e in items),
        namespace=namespace,
        field_selector=f"involvedObject.name={name}",
        timeout_s=60,
        what=f"KubeRay's head Service event on {name}",
    )


def _head_container(body: dict[str, Any]) -> dict[str, Any]:
    # KubeRay takes the head Service's ports from the first container
    # (getPortsFromCluster, utils.RayContainerIndex).
    container = body["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert isinstance(container, dict)
    return container


def test_example_ray_tp2_gets_its_head_service(
    admin: k8s.ApiClient,
    namespace: str,
    render_example: Callable[[str, str, str], dict[str, Any]],
) -> None:
    body = render_example("seed-qwen14b-ray-tp2.yaml", "raycluster", namespace)
    name = body["metadata"]["name"]
    _create_raycluster(admin, namespace, body)

    events = _head_service_events(admin, namespace, name)
    assert [e.message for e in events if e.reason == "FailedToCreateService"] == []
    head_svc = k8s.CoreV1Api(admin).read_namespaced_service(f"{name}-head-svc", namespace)
    ports = [(p.port, p.protocol) for p in head_svc.spec.ports]
    assert len(ports) == len(set(ports)), ports
    # The example declares its own `metrics` port, so KubeRay adds none: the head Service
    # carries exactly the head container's ports.
    declared = {p["name"]: p["containerPort"] for p in _head_container(body)["ports"]}
    assert "metrics" in declared
    assert {p.name: p.port for p in head_svc.spec.ports} == declared


def test_head_serving_on_8080_without_a_metrics_port_gets_no_head_service(
    admin: k8s.ApiClient,
    namespace: str,
    render_example: Callable[[str, str, str], dict[str, Any]],
) -> None:
    """Issue 16 F1's cause, on the real components: the example as it was before its fix,
    its head serving on 8080 and declaring no port named `metrics`."""
    body = render_example("seed-qwen14b-ray-tp2.yaml", "raycluster", namespace)
    name = body["metadata"]["name"]
    head = _head_container(body)
    head["ports"] = [p for p in head["ports"] if p["name"] != "metrics"]
    assert 8080 in {p["containerPort"] for p in head["ports"]}
    _create_raycluster(admin, namespace, body)

    events = _head_service_events(admin, namespace, name)
    failures = [e.message for e in events if e.reason == "FailedToCreateService"]
    assert failures, [e.reason for e in events]
    # KubeRay adds `metrics` 8080 (getServicePorts), and the API server's Service validation
    # refuses a second port with the same number and protocol (k8s.io/kubernetes
    # pkg/apis/core/validation/validation.go ValidateService: field.Duplicate(spec.ports[i])).
    assert any(
        f"{name}-head-svc" in m and "spec.ports[" in m and "Duplicate value" in m and "8080" in m
        for m in failures
    ), failures
