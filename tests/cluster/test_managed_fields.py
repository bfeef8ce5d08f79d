"""Who wrote what, by the real API server's managedFields (issue 14, item 8), for the objects
that exist without running pods: a Deployment carried to ReplicaSet and Pods by
kube-controller-manager and bound by kube-scheduler, a LeaderWorkerSet carried to
StatefulSets and a Service by the LWS manager, a RayCluster carried to its head Service and
Pod by the KubeRay operator, each writing its workload's status, kube-controller-manager the
EndpointSlices; and the node agent's identity wrote nothing but Nodes and Leases.

Field manager names come from each client's user agent (client-go ``rest.DefaultUserAgent``:
the binary's name, which the harness sets as argv[0]; controller-runtime's default field
owner is the same). The API server records them in managedFields
(k8s.io/apiserver ``pkg/endpoints/handlers/fieldmanager``).

The pods never run, and without a kubelet a deleted bound pod would never go away: they are
removed at the end with a zero grace period, which the API server honours at once.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client as k8s

from sandbox.cluster.node_agent import FIELD_MANAGER as NODE_AGENT_MANAGER
from sandbox.cluster.node_agent import NodeSpec
from sandbox.cluster.waits import wait_for

WAIT_S = 60.0
IMAGE = "vllm/vllm-openai:v0.11.0"
CONTAINER = {"name": "engine", "image": IMAGE, "resources": {"requests": {"cpu": "100m"}}}


def _managers(obj: Any) -> set[str]:
    return {m.manager for m in obj.metadata.managed_fields or []}


def _object_managers(obj: Any) -> set[str]:
    """Managers of everything but the status subresource."""
    return {m.manager for m in obj.metadata.managed_fields or [] if m.subresource != "status"}


def _status_writers(obj: Any) -> set[str]:
    """Managers of the status subresource, of a typed object or a custom object's dict."""
    if isinstance(obj, dict):
        entries = obj["metadata"].get("managedFields") or []
        return {e["manager"] for e in entries if e.get("subresource") == "status"}
    return {m.manager for m in obj.metadata.managed_fields or [] if m.subresource == "status"}


def _deployment() -> dict[str, Any]:
    labels = {"app": "mf"}
    return {
        "metadata": {"name": "mf"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [CONTAINER]}},
        },
    }


def _lws() -> dict[str, Any]:
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "mf-lws"},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "workerTemplate": {"spec": {"containers": [CONTAINER]}},
            },
        },
    }


def _raycluster() -> dict[str, Any]:
    head = {
        "name": "ray-head",
        "image": "rayproject/ray:2.46.0",
        "resources": {"requests": {"cpu": "100m"}},
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "mf-ray"},
        "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [head]}}}
        },
    }


def _pods_bound(admin: k8s.ApiClient, namespace: str, selector: str, count: int) -> list[Any]:
    return wait_for(
        k8s.CoreV1Api(admin).list_namespaced_pod,
        lambda items: len(items) == count and all(p.spec.node_name for p in items),
        namespace=namespace,
        label_selector=selector,
        timeout_s=WAIT_S,
        what=f"{count} pods {selector} bound",
    )


def test_controllers_scheduler_and_operators_are_the_writers_of_record(
    admin: k8s.ApiClient, namespace: str, gpu_nodes: tuple[NodeSpec, ...]
) -> None:
    ns = namespace
    core = k8s.CoreV1Api(admin)
    apps = k8s.AppsV1Api(admin)
    custom = k8s.CustomObjectsApi(admin)
    apps.create_namespaced_deployment(ns, _deployment())
    custom.create_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", ns, "leaderworkersets", _lws()
    )
    custom.create_namespaced_custom_object("ray.io", "v1", ns, "rayclusters", _raycluster())

    deployment_pods = _pods_bound(admin, ns, "app=mf", 2)
    lws_pods = _pods_bound(admin, ns, "leaderworkerset.sigs.k8s.io/name=mf-lws", 2)
    ray_pods = _pods_bound(admin, ns, "ray.io/cluster=mf-ray", 1)
    node_names = {n.name for n in gpu_nodes}

    (rs,) = apps.list_namespaced_replica_set(ns, label_selector="app=mf").items
    # Pods are bound before kube-controller-manager's statefulset controller writes the
    # StatefulSets' status (its sync follows the pod events), so that write is waited for.
    statefulsets = wait_for(
        apps.list_namespaced_stateful_set,
        lambda items: bool(items) and all(_status_writers(s) for s in items),
        namespace=ns,
        timeout_s=WAIT_S,
        what="the LWS StatefulSets' status written",
    )
    services = {s.metadata.name: s for s in core.list_namespaced_service(ns).items}

    assert "kube-controller-manager" in _managers(rs)
    workload_status = {
        "Deployment": apps.read_namespaced_deployment("mf", ns),
        "LeaderWorkerSet": custom.get_namespaced_custom_object(
            "leaderworkerset.x-k8s.io", "v1", ns, "leaderworkersets", "mf-lws"
        ),
        "RayCluster": custom.get_namespaced_custom_object(
            "ray.io", "v1", ns, "rayclusters", "mf-ray"
        ),
    }
    status_writers = {kind: _status_writers(obj) for kind, obj in workload_status.items()}
    slices = k8s.DiscoveryV1Api(admin).list_namespaced_endpoint_slice(ns).items
    slice_writers = {
        (s.metadata.labels["kubernetes.io/service-name"], m) for s in slices for m in _managers(s)
    }
    assert status_writers == {
        "Deployment": {"kube-controller-manager"},
        "LeaderWorkerSet": {"lws"},
        "RayCluster": {"kuberay-operator"},
    }
    # The EndpointSlices of the operators' Services are kube-controller-manager's
    # (its endpointslice controller), even with no ready endpoint in them.
    assert slice_writers == {
        ("mf-lws", "kube-controller-manager"),
        ("mf-ray-head-svc", "kube-controller-manager"),
    }
    # Pods: their spec is their controller's; the status subresource is the node agent's once
    # it runs them (test_the_node_agent_identity_... below), so only the rest is compared.
    for pod in [*deployment_pods, *lws_pods, *ray_pods]:
        assert _status_writers(pod) <= {NODE_AGENT_MANAGER}
    for pod in deployment_pods:
        assert _object_managers(pod) == {"kube-controller-manager"}
    # The LWS leader StatefulSet is applied (server-side) by the manager, the worker one
    # updated; kube-controller-manager writes both their status.
    assert {s.metadata.name for s in statefulsets} >= {"mf-lws"}
    for sts in statefulsets:
        assert _managers(sts) == {"lws", "kube-controller-manager"}
        status_writers = {
            m.manager for m in sts.metadata.managed_fields if m.subresource == "status"
        }
        assert status_writers == {"kube-controller-manager"}
    for pod in lws_pods:
        # The leader pod is the leader StatefulSet's (kube-controller-manager), a worker pod
        # the worker StatefulSet's; the LWS pod webhook's mutations carry no manager of
        # their own (they are part of the create).
        assert _object_managers(pod) == {"kube-controller-manager"}
    assert _managers(services["mf-lws"]) == {"lws"}
    head_services = [s for n, s in services.items() if n.startswith("mf-ray-head")]
    # KubeRay's client names itself "kuberay-operator" (its user agent), not the binary.
    assert head_services and all(_managers(s) == {"kuberay-operator"} for s in head_services)
    assert _object_managers(ray_pods[0]) == {"kuberay-operator"}
    # kube-scheduler's binding leaves no trace in managedFields: spec.nodeName is set through
    # the pods/binding subresource, whose storage (k8s.io/kubernetes
    # pkg/registry/core/pod/storage/storage.go, BindingREST.setPodNodeAndMetadata) updates
    # the pod outside field management. test_control_plane.py checks the scheduler's own
    # record of it, the "Scheduled" event.
    for pod in [*deployment_pods, *lws_pods, *ray_pods]:
        assert pod.spec.node_name in node_names
        assert "kube-scheduler" not in _managers(pod)
        assert all("f:nodeName" not in json.dumps(m.fields_v1) for m in pod.metadata.managed_fields)


def test_the_node_agent_identity_wrote_only_nodes_leases_pod_status_and_events(
    admin: k8s.ApiClient, gpu_nodes: tuple[NodeSpec, ...]
) -> None:
    """Every object of the kinds anything here writes, across the cluster: the node agent's
    field manager appears on its Nodes and their kube-node-lease Leases, on pods only through
    the status subresource, and on the Events it records as the kubelet (issue 14, item 8)."""
    core = k8s.CoreV1Api(admin)
    apps = k8s.AppsV1Api(admin)
    # The test before only waits for its pods to be bound; the node agent records their
    # first Events (Pulled, Created, Started) as it starts them, a moment later on a loaded
    # machine (a CI run listed pod statuses written and no Event yet).
    wait_for(
        core.list_event_for_all_namespaces,
        lambda items: any(NODE_AGENT_MANAGER in _managers(e) for e in items),
        timeout_s=WAIT_S,
        what="an Event recorded by the node agent",
    )
    listings: dict[str, list[Any]] = {
        "Node": core.list_node().items,
        "Lease": k8s.CoordinationV1Api(admin).list_lease_for_all_namespaces().items,
        "Pod": core.list_pod_for_all_namespaces().items,
        "Service": core.list_service_for_all_namespaces().items,
        "ConfigMap": core.list_config_map_for_all_namespaces().items,
        "Event": core.list_event_for_all_namespaces().items,
        "Namespace": core.list_namespace().items,
        "ServiceAccount": core.list_service_account_for_all_namespaces().items,
        "EndpointSlice": k8s.DiscoveryV1Api(admin).list_endpoint_slice_for_all_namespaces().items,
        "Deployment": apps.list_deployment_for_all_namespaces().items,
        "ReplicaSet": apps.list_replica_set_for_all_namespaces().items,
        "StatefulSet": apps.list_stateful_set_for_all_namespaces().items,
    }
    written = {
        (kind, obj.metadata.namespace or "", obj.metadata.name): obj
        for kind, items in listings.items()
        for obj in items
        if NODE_AGENT_MANAGER in _managers(obj)
    }
    assert {k for k in written if k[0] in ("Node", "Lease")} == {
        *(("Node", "", n.name) for n in gpu_nodes),
        *(("Lease", "kube-node-lease", n.name) for n in gpu_nodes),
    }
    assert {kind for kind, _, _ in written} == {"Node", "Lease", "Pod", "Event"}
    for (kind, _, _), obj in written.items():
        entries = [m for m in obj.metadata.managed_fields if m.manager == NODE_AGENT_MANAGER]
        if kind == "Pod":
            # The pod's spec is the user's and the controllers'; the node writes its status.
            assert {m.subresource for m in entries} == {"status"}
        if kind == "Event":
            assert obj.reporting_component == "kubelet"
