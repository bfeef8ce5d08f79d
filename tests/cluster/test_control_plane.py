"""The real control plane acts: TLS and client certificates, ServiceAccount tokens under real
RBAC, the node agent's Nodes judged by the Node authorizer, and a Deployment carried to bound
pods by kube-controller-manager and kube-scheduler."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from sandbox.cluster.control_plane import Cluster
from sandbox.cluster.node_agent import FIELD_MANAGER as NODE_AGENT_MANAGER
from sandbox.cluster.node_agent import LEASE_NAMESPACE, NodeSpec
from sandbox.cluster.waits import wait_for, wait_pods_bound


def _get(url: str, context: ssl.SSLContext) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_api_server_is_the_built_release_serving_tls_with_client_certificates(
    cluster: Cluster, admin: k8s.ApiClient
) -> None:
    version = k8s.VersionApi(admin).get_code()
    assert version.git_version == "v1.36.3"

    # The serving certificate verifies against our CA for 127.0.0.1; a client without a
    # certificate is anonymous and RBAC lets it see nothing.
    verified = ssl.create_default_context(cafile=str(cluster.pki.ca.cert))
    status, body = _get(f"{cluster.api_url}/api/v1/namespaces", verified)
    assert status == 403
    assert "system:anonymous" in body

    unverified_ca = ssl.create_default_context()
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(f"{cluster.api_url}/version", unverified_ca)

    review = k8s.AuthenticationV1Api(admin).create_self_subject_review({})
    assert review.status.user_info.username == "llm-rollout-admin"
    assert "system:masters" in review.status.user_info.groups


def _token_client(cluster: Cluster, namespace: str, admin: k8s.ApiClient) -> k8s.ApiClient:
    core = k8s.CoreV1Api(admin)
    rbac = k8s.RbacAuthorizationV1Api(admin)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "worker"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "worker-reads-configmaps"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "read-configmaps",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "worker", "namespace": namespace}],
        },
    )
    token = core.create_namespaced_service_account_token(
        "worker", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    kubeconfig = cluster.token_kubeconfig(f"worker-{namespace}", token)
    return k8s_config.new_client_from_config(config_file=str(kubeconfig))


def test_service_account_token_is_held_to_its_role(
    cluster: Cluster, admin: k8s.ApiClient, namespace: str
) -> None:
    worker = _token_client(cluster, namespace, admin)
    review = k8s.AuthenticationV1Api(worker).create_self_subject_review({})
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:worker"

    core = k8s.CoreV1Api(worker)
    assert core.list_namespaced_config_map(namespace).items is not None

    def forbidden(call: Any) -> str:
        with pytest.raises(ApiException) as caught:
            call()
        assert caught.value.status == 403
        return str(caught.value.body)

    assert "secrets" in forbidden(lambda: core.list_namespaced_secret(namespace))
    assert "kube-system" in forbidden(lambda: core.list_namespaced_config_map("kube-system"))
    assert "create" in forbidden(
        lambda: core.create_namespaced_config_map(namespace, {"metadata": {"name": "x"}})
    )


def test_node_agent_keeps_gpu_nodes_ready_under_their_own_identities(
    cluster: Cluster, admin: k8s.ApiClient, gpu_nodes: tuple[NodeSpec, ...]
) -> None:
    core = k8s.CoreV1Api(admin)
    for spec in gpu_nodes:
        node = core.read_node(spec.name)
        assert node.status.capacity["nvidia.com/gpu"] == str(spec.gpus)
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert [c.status for c in ready] == ["True"]
        # kube-controller-manager's nodeipam gave the node a range of the private prefix.
        assert node.spec.pod_cidr is not None
        assert node.spec.pod_cidr.startswith("10.244.")
        managers = {entry.manager for entry in node.metadata.managed_fields}
        assert NODE_AGENT_MANAGER in managers

    # The Lease is renewed: watch its renewTime move.
    leases = k8s.CoordinationV1Api(admin)
    first = leases.read_namespaced_lease(gpu_nodes[0].name, LEASE_NAMESPACE).spec.renew_time
    wait_for(
        leases.list_namespaced_lease,
        lambda items: any(
            i.metadata.name == gpu_nodes[0].name and i.spec.renew_time > first for i in items
        ),
        namespace=LEASE_NAMESPACE,
        timeout_s=30,
        what=f"a renewal of {gpu_nodes[0].name}'s Lease",
    )

    # NodeRestriction (plugin/pkg/admission/noderestriction/admission.go) lets a node modify
    # only its own Node object: node 0's identity may not touch node 1.
    node0 = k8s_config.new_client_from_config(
        config_file=str(cluster.run_dir / "kubeconfigs" / f"node-{gpu_nodes[0].name}.yaml")
    )
    with pytest.raises(ApiException) as caught:
        k8s.CoreV1Api(node0).patch_node(gpu_nodes[1].name, {"metadata": {"labels": {"x": "y"}}})
    assert caught.value.status == 403


def _deployment(name: str, gpus: int, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "engine",
                            "image": "vllm/vllm-openai:v0.11.0",
                            "resources": {
                                "limits": {"nvidia.com/gpu": str(gpus)},
                                "requests": {"cpu": "1", "memory": "1Gi"},
                            },
                        }
                    ]
                },
            },
        },
    }


def _managers(obj: Any) -> set[str]:
    return {entry.manager for entry in obj.metadata.managed_fields or []}


def test_deployment_becomes_pods_bound_by_the_real_scheduler(
    admin: k8s.ApiClient, namespace: str, gpu_nodes: tuple[NodeSpec, ...]
) -> None:
    apps = k8s.AppsV1Api(admin)
    core = k8s.CoreV1Api(admin)
    apps.create_namespaced_deployment(namespace, _deployment("engine", gpus=4, replicas=3))

    pods = wait_pods_bound(
        admin,
        namespace=namespace,
        label_selector="app=engine",
        count=3,
        node_names={spec.name for spec in gpu_nodes},
        timeout_s=60,
    )
    replica_sets = apps.list_namespaced_replica_set(namespace).items
    assert len(replica_sets) == 1
    rs = replica_sets[0]
    assert [o.kind for o in rs.metadata.owner_references] == ["Deployment"]
    # Written by the real controllers, each as its own ServiceAccount identity in audit but
    # under kube-controller-manager's field manager name.
    assert "kube-controller-manager" in _managers(rs)
    # The binding subresource leaves no managedFields entry on the pod; the scheduler's own
    # record of each binding is its "Scheduled" event (pkg/scheduler/schedule_one.go), written
    # by the kube-scheduler client (read here through the core/v1 view of events).
    events = core.list_namespaced_event(namespace).items
    scheduled_events = {
        e.involved_object.name: e
        for e in events
        if e.reason == "Scheduled" and e.reporting_component == "default-scheduler"
    }
    for pod in pods:
        assert [o.name for o in pod.metadata.owner_references] == [rs.metadata.name]
        assert "kube-controller-manager" in _managers(pod)
        scheduled = [c for c in pod.status.conditions if c.type == "PodScheduled"]
        assert [c.status for c in scheduled] == ["True"]
        event = scheduled_events[pod.metadata.name]
        assert pod.spec.node_name in event.message
        assert "kube-scheduler" in _managers(event)
    # 8 GPUs a node, 4 a pod: the scheduler cannot put all three on one node.
    assert len({p.spec.node_name for p in pods}) == 2


def test_pod_asking_more_gpus_than_any_node_has_stays_unschedulable(
    admin: k8s.ApiClient, namespace: str
) -> None:
    apps = k8s.AppsV1Api(admin)
    core = k8s.CoreV1Api(admin)
    apps.create_namespaced_deployment(namespace, _deployment("too-big", gpus=16, replicas=1))

    def unschedulable(items: list[Any]) -> bool:
        return any(
            c.type == "PodScheduled" and c.reason == "Unschedulable"
            for pod in items
            for c in pod.status.conditions or []
        )

    pods = wait_for(
        core.list_namespaced_pod,
        unschedulable,
        namespace=namespace,
        label_selector="app=too-big",
        timeout_s=60,
        what="the 16-GPU pod marked Unschedulable",
    )
    message = next(c.message for c in pods[0].status.conditions if c.type == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in message
    assert pods[0].spec.node_name is None
