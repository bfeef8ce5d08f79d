"""Requests outside the worker's role get the real server's 403; RBAC rule matching details."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException
from typer.testing import CliRunner

from llm_rollout.cli import app
from llm_rollout.errors import RolloutError
from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.objects import apply
from llm_rollout.rbac import worker_user
from llm_rollout.readiness import AUTOSCALER_STATUS, read_autoscaler_status
from tests.sandbox_kube_rbac.conftest import NAMESPACE, OTHER_NAMESPACE, forbidden

USER = worker_user(NAMESPACE)


def test_requests_outside_the_role_areforbidden(worker: k8s_client.ApiClient) -> None:
    core = k8s_client.CoreV1Api(worker)
    body = forbidden(lambda: core.list_namespaced_secret(OTHER_NAMESPACE))
    assert body["message"] == (
        f'secrets is forbidden: User "{USER}" cannot list resource "secrets" in API group "" '
        f'in the namespace "{OTHER_NAMESPACE}"'
    )
    body = forbidden(lambda: core.delete_node("gpu-node-a"))
    assert body["message"] == (
        f'nodes "gpu-node-a" is forbidden: User "{USER}" cannot delete resource "nodes" in API '
        'group "" at the cluster scope'
    )
    assert body["details"] == {"name": "gpu-node-a", "kind": "nodes"}
    rbac = k8s_client.RbacAuthorizationV1Api(worker)
    body = forbidden(
        lambda: rbac.create_cluster_role({"metadata": {"name": "escalate"}, "rules": []})
    )
    assert body["message"] == (
        f'clusterroles.rbac.authorization.k8s.io is forbidden: User "{USER}" cannot create '
        'resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope'
    )
    body = forbidden(lambda: core.read_namespace(OTHER_NAMESPACE))  # resourceNames: own only
    assert body["message"] == (
        f'namespaces "{OTHER_NAMESPACE}" is forbidden: User "{USER}" cannot get resource '
        f'"namespaces" in API group "" in the namespace "{OTHER_NAMESPACE}"'
    )
    assert core.read_namespace(NAMESPACE).metadata.name == NAMESPACE
    body = forbidden(lambda: core.delete_namespace(NAMESPACE))
    assert body["details"]["kind"] == "namespaces"
    body = forbidden(lambda: core.read_namespaced_pod_log("nope", OTHER_NAMESPACE))
    assert (
        f'cannot get resource "pods/log" in API group "" in the namespace "{OTHER_NAMESPACE}"'
        in (body["message"])
    )
    # Discovery and /version stay open to every authenticated user.
    assert k8s_client.VersionApi(worker).get_code().git_version


def test_only_the_autoscaler_status_configmap_is_readable_in_kube_system(
    admin: k8s_client.ApiClient, worker: k8s_client.ApiClient
) -> None:
    for name in (AUTOSCALER_STATUS.name, "other-settings"):
        apply(
            admin,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": AUTOSCALER_STATUS.namespace},
                "data": {"status": "Cluster-wide: Health: Healthy"},
            },
        )
    status = read_autoscaler_status(worker)
    assert status is not None and status["data"]["status"].startswith("Cluster-wide")
    core = k8s_client.CoreV1Api(worker)
    body = forbidden(
        lambda: core.read_namespaced_config_map("other-settings", AUTOSCALER_STATUS.namespace)
    )
    assert f'User "{USER}" cannot get resource "configmaps"' in body["message"]
    forbidden(lambda: core.list_namespaced_config_map(AUTOSCALER_STATUS.namespace))


def test_unknown_token_is_unauthorized(cluster: Any, tmp_path: Path) -> None:
    path = cluster.api.write_kubeconfig(tmp_path / "kc", token="forged", user="admin")
    cluster.api.tokens.pop("forged")
    api = load_api_client(path)
    try:
        with pytest.raises(ApiException) as err:
            k8s_client.CoreV1Api(api).list_namespace()
        assert err.value.status == 401
    finally:
        api.close()  # type: ignore[no-untyped-call]


def test_apply_that_creates_needs_create(
    cluster: Any, admin: k8s_client.ApiClient, tmp_path: Path
) -> None:
    """Server-side apply is a PATCH; creating through it also needs `create` (patch.go)."""
    ns = OTHER_NAMESPACE
    for obj in (
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "patcher"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "patch-only"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "patch-only"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "patch-only",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "patcher"}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "dangling"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gone"},
            "subjects": [{"kind": "ServiceAccount", "name": "patcher"}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "exists"}},
    ):
        apply(admin, {**obj, "metadata": {**obj["metadata"], "namespace": ns}})
    kubeconfig = cluster.api.service_account_kubeconfig(tmp_path / "kc", ns, "patcher")
    api = load_api_client(kubeconfig)
    try:
        existing = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "exists", "namespace": ns},
            "data": {"k": "v"},
        }
        assert apply(api, existing)["data"] == {"k": "v"}
        fresh = {**existing, "metadata": {"name": "fresh", "namespace": ns}}
        with pytest.raises(RolloutError) as err:
            apply(api, fresh, dry_run=True)
        assert (
            'configmaps "fresh" is forbidden: RBAC: role.rbac.authorization.k8s.io "gone" not found'
            in str(err.value)
        )
        core = k8s_client.CoreV1Api(api)
        body = forbidden(lambda: core.list_namespaced_config_map(ns))
        assert body["message"].endswith(
            'in the namespace "other-team": RBAC: role.rbac.authorization.k8s.io "gone" not found'
        )
    finally:
        api.close()  # type: ignore[no-untyped-call]


def test_rbac_command_prints_the_manifests() -> None:
    result = CliRunner().invoke(app, ["rbac", "--namespace", "team-a"])
    assert result.exit_code == 0, result.output
    assert "kind: ClusterRoleBinding" in result.output and "name: llm-rollout-worker-team-a" in (
        result.output
    )
    bad = CliRunner().invoke(app, ["rbac", "--namespace", "x\nkind: ClusterRole"])
    assert bad.exit_code == 2 and "not a valid Kubernetes name" in bad.output
