"""The real LeaderWorkerSet manager (sigs.k8s.io/lws, the version pinned in
sandbox/cluster/go/lws/go.mod) reconciles LeaderWorkerSets on the real API server, and its pod
webhook, called by that API server, labels the group's pods and injects the LWS_* variables."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from sandbox.cluster.node_agent import NodeSpec
from sandbox.cluster.waits import wait_for, wait_pods_bound

LWS_LABEL = "leaderworkerset.sigs.k8s.io"
# The variables AddLWSVariables (lws pkg/utils/pod/pod_utils.go) puts first in every container,
# in this order (addEnvVarsIfNotExists; the order matters for $(VAR) references, lws PR 152).
LWS_ENV = ["LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX"]


def _leaderworkerset(name: str, size: int) -> dict[str, Any]:
    container = {
        "name": "engine",
        "image": "vllm/vllm-openai:v0.10.0",
        "env": [{"name": "ENGINE_OWN", "value": "kept"}],
        "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "1"}},
    }
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": size,
                "workerTemplate": {"spec": {"containers": [container]}},
            },
        },
    }


def _create(admin: k8s.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    k8s.CustomObjectsApi(admin).create_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", body
    )


def _env(container: Any) -> dict[str, str]:
    return {e.name: e.value for e in container.env or []}


def _wait_group_pods(admin: k8s.ApiClient, namespace: str, name: str, size: int) -> list[Any]:
    return wait_for(
        k8s.CoreV1Api(admin).list_namespaced_pod,
        lambda items: len(items) == size,
        namespace=namespace,
        label_selector=f"{LWS_LABEL}/name={name}",
        timeout_s=60,
        what=f"the {size} pods of LeaderWorkerSet {name}",
    )


def _assert_group_pods(pods: list[Any], *, name: str, namespace: str, size: int) -> None:
    """Labels and variables as lws v0.9.0 sets them for group 0 of ``name``."""
    by_name = {p.metadata.name: p for p in pods}
    # The leader StatefulSet's pod <name>-0; the workers' StatefulSet <name>-0 starts its
    # ordinals at 1 (pod_controller.go constructWorkerStatefulSetApplyConfiguration).
    expected = [f"{name}-0", *(f"{name}-0-{i}" for i in range(1, size))]
    assert sorted(by_name) == sorted(expected)
    # "<lws>-<group index>.<pod subdomain>.<namespace>" (AddLWSVariables); the subdomain is the
    # StatefulSet's serviceName, the LWS's own name under the default SubdomainShared policy.
    leader_address = f"{name}-0.{name}.{namespace}"
    for worker_index, pod_name in enumerate(expected):
        pod = by_name[pod_name]
        labels = pod.metadata.labels
        assert labels[f"{LWS_LABEL}/name"] == name
        assert labels[f"{LWS_LABEL}/group-index"] == "0"
        # The leader's worker-index is the controller's (leaderworkerset_controller.go); the
        # workers' comes from their ordinal in the pod webhook (pod_webhook.go Default).
        assert labels[f"{LWS_LABEL}/worker-index"] == str(worker_index)
        assert labels[f"{LWS_LABEL}/group-key"]
        assert pod.spec.subdomain == name
        for container in pod.spec.containers:
            assert [e.name for e in container.env[:3]] == LWS_ENV
            env = _env(container)
            assert env["LWS_LEADER_ADDRESS"] == leader_address
            assert env["LWS_GROUP_SIZE"] == str(size)
            assert env["LWS_WORKER_INDEX"] == str(worker_index)


def test_leaderworkerset_gets_leader_and_worker_statefulsets_and_injected_pods(
    admin: k8s.ApiClient, namespace: str, gpu_nodes: tuple[NodeSpec, ...]
) -> None:
    _create(admin, namespace, _leaderworkerset("lws", size=2))

    sets = wait_for(
        k8s.AppsV1Api(admin).list_namespaced_stateful_set,
        lambda items: {s.metadata.name for s in items} == {"lws", "lws-0"},
        namespace=namespace,
        timeout_s=60,
        what="the leader StatefulSet lws and the worker StatefulSet lws-0",
    )
    by_name = {s.metadata.name: s for s in sets}
    leader_set, worker_set = by_name["lws"], by_name["lws-0"]
    assert [o.kind for o in leader_set.metadata.owner_references] == ["LeaderWorkerSet"]
    # The worker set belongs to the leader pod, so it goes with its group.
    assert [(o.kind, o.name) for o in worker_set.metadata.owner_references] == [("Pod", "lws-0")]
    assert leader_set.spec.replicas == 1
    assert worker_set.spec.replicas == 1

    pods = wait_pods_bound(
        admin,
        namespace=namespace,
        label_selector=f"{LWS_LABEL}/name=lws",
        count=2,
        node_names={spec.name for spec in gpu_nodes},
        timeout_s=60,
    )
    _assert_group_pods(pods, name="lws", namespace=namespace, size=2)
    for pod in pods:
        # The template's own variable stays, after the injected ones.
        assert _env(pod.spec.containers[0])["ENGINE_OWN"] == "kept"

    # The headless Service the leader address resolves through (reconcileHeadlessServices).
    service = k8s.CoreV1Api(admin).read_namespaced_service("lws", namespace)
    assert service.spec.cluster_ip == "None"
    assert service.spec.selector == {f"{LWS_LABEL}/name": "lws"}


def test_example_vllm_lws_is_admitted_and_its_pods_carry_the_lws_variables(
    admin: k8s.ApiClient, namespace: str, render_example: Callable[[str, str, str], dict[str, Any]]
) -> None:
    body = render_example("seed-vllm-lws.yaml", "leaderworkerset", namespace)
    name = body["metadata"]["name"]
    size = body["spec"]["leaderWorkerTemplate"]["size"]
    _create(admin, namespace, body)

    pods = _wait_group_pods(admin, namespace, name, size)
    _assert_group_pods(pods, name=name, namespace=namespace, size=size)
    # The worker's command joins the Ray head at $(LWS_LEADER_ADDRESS), which the kubelet
    # expands only from variables the container has: the webhook put it there.
    (worker,) = [p for p in pods if p.metadata.name != f"{name}-0"]
    (container,) = worker.spec.containers
    assert "$(LWS_LEADER_ADDRESS)" in container.command[-1]


def test_validating_webhook_refuses_what_the_crd_schema_lets_through(
    admin: k8s.ApiClient, namespace: str
) -> None:
    body = _leaderworkerset("lws-bad", size=2)
    # Each field alone is valid under the CRD schema; together they would stall a rolling
    # update, which only the webhook checks (generalValidate in lws
    # pkg/webhooks/leaderworkerset_webhook.go: "must not be 0 when `maxSurge` is 0").
    body["spec"]["rolloutStrategy"] = {
        "type": "RollingUpdate",
        "rollingUpdateConfiguration": {"maxUnavailable": 0, "maxSurge": 0},
    }
    with pytest.raises(ApiException) as refused:
        k8s.CustomObjectsApi(admin).create_namespaced_custom_object(
            "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", body, dry_run="All"
        )
    # Not the API server's own 422: controller-runtime answers a validator's plain error with
    # admission.Denied, code 403 (controller-runtime v0.24.1, the version lws v0.9.0 builds
    # with: pkg/webhook/admission/validator_custom.go, response.go).
    assert refused.value.status == 403, refused.value.body
    message = json.loads(refused.value.body)["message"]
    assert 'admission webhook "vleaderworkerset.kb.io" denied the request' in message
    assert "maxUnavailable" in message
    assert "must not be 0 when `maxSurge` is 0" in message
