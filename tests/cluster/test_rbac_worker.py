"""The product's Kubernetes work for the RayCluster examples that needs no running pod, the
requests outside the worker's role and an unknown token, on the real cluster with nothing but
the worker ServiceAccount's token (issue 14, item 6; ported from the imitation's
tests/sandbox_kube_rbac). The deploy, redeploy and teardown flows with running pods
(Deployment and LeaderWorkerSet), and the check that every grant is used, are in
tests/real/test_worker_flows.py.

The admin applies what ``llm-rollout rbac`` renders (``llm_rollout/rbac.py``), a TokenRequest
gives the worker's token, and the worker runs preflight's cluster reads, the Lease lock,
server-side apply (dry-run first) of every rendered object under the product's field manager,
promotion of the stable Service and teardown in reverse order. Every worker request goes
through the fault proxy (with no fault set) only so that each one is recorded with its answer:
none may be refused.

The Ray examples serve real vLLM, whose CPU start is too costly to repeat for an RBAC check, so
the namespace carries a ResourceQuota of zero pods: KubeRay creates its Services and is refused
the pods.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from llm_rollout.cli import app
from llm_rollout.crds import crds_from_cluster
from llm_rollout.errors import is_transient
from llm_rollout.kube.errors import UnauthorizedError
from llm_rollout.kube.objects import FIELD_MANAGER, apply, apply_all, get
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.watching import wait_pvc_bound
from llm_rollout.locking import acquire, release
from llm_rollout.preflight import PreflightReport, check_cluster
from llm_rollout.rbac import DEFAULT_SERVICE_ACCOUNT, render_worker_rbac, worker_user
from llm_rollout.readiness import AUTOSCALER_STATUS, read_autoscaler_status
from llm_rollout.release.inventory import find_serving_release
from llm_rollout.release.removal import teardown
from llm_rollout.release.services import point_stable_service
from llm_rollout.release.writing import apply_checked
from llm_rollout.render import render, render_oss_secret
from llm_rollout.retention import revisions_in_use
from llm_rollout.spec import load_spec
from llm_rollout.validation import validate_objects
from sandbox.cluster.api_proxy import ApiFaultProxy, ProxyRecord
from sandbox.cluster.control_plane import Cluster
from tests.cluster.faults_support import product_client, proxy, service_account_token

__all__ = ["proxy"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMESPACE = "llm-serving"  # the namespace every example deploys into
OTHER_NAMESPACE = "other-team"
USER = worker_user(NAMESPACE)
# RoleBasedGroup is left out: its CRDs and reconciler are not part of the real cluster yet
# (sandbox/cluster starts LWS and KubeRay only). Deployment and LeaderWorkerSet examples run
# whole, with pods, in tests/real/test_worker_flows.py.
EXAMPLES_WITHOUT_PODS = (
    ("seed-qwen14b-ray-tp2.yaml", "RayCluster"),
    ("seed-vllm-ray-tp8-pp2.yaml", "RayCluster"),
)
# What a RayCluster deploy needs beyond the other kinds; `get` only readiness of running pods
# sends (no Ray deploy with pods runs on the real cluster yet).
RAY_GRANTS_WITHOUT_PODS = {
    f"Role: {verb} rayclusters" for verb in ("list", "watch", "create", "patch", "delete")
}


@contextmanager
def worker_rbac(
    admin: k8s.ApiClient, namespace: str, *others: str
) -> Iterator[list[dict[str, Any]]]:
    """What a cluster admin does once: the namespaces, then what ``llm-rollout rbac`` renders for
    ``namespace`` (dry-run first); all of it removed again afterwards."""
    for ns in (namespace, *others):
        apply(admin, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    objects = render_worker_rbac(namespace)
    apply_all(admin, objects, dry_run=True)
    apply_all(admin, objects)
    yield objects
    core = k8s.CoreV1Api(admin)
    for ns in (namespace, *others):
        core.delete_namespace(ns)
    rbac = k8s.RbacAuthorizationV1Api(admin)
    for obj in objects:
        if obj["kind"] == "ClusterRole":
            rbac.delete_cluster_role(obj["metadata"]["name"])
        elif obj["kind"] == "ClusterRoleBinding":
            rbac.delete_cluster_role_binding(obj["metadata"]["name"])


@pytest.fixture(scope="module")
def rbac_objects(admin: k8s.ApiClient) -> Iterator[list[dict[str, Any]]]:
    """The worker's RBAC and, for this module only, a zero-pod quota."""
    with worker_rbac(admin, NAMESPACE, OTHER_NAMESPACE) as objects:
        apply(
            admin,
            {
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": "no-pods", "namespace": NAMESPACE},
                "spec": {"hard": {"pods": "0"}},
            },
        )
        yield objects


@pytest.fixture(scope="module")
def worker(
    cluster: Cluster,
    admin: k8s.ApiClient,
    proxy: ApiFaultProxy,
    rbac_objects: list[dict[str, Any]],
) -> Iterator[k8s.ApiClient]:
    token = service_account_token(admin, NAMESPACE, DEFAULT_SERVICE_ACCOUNT)
    path = cluster.token_kubeconfig("llm-rollout-worker", token, server=proxy.url)
    api = product_client(path)
    yield api
    api.close()  # type: ignore[no-untyped-call]


def _forbidden(call: Any) -> dict[str, Any]:
    with pytest.raises(ApiException) as err:
        call()
    assert err.value.status == 403
    body: dict[str, Any] = json.loads(err.value.body)
    assert body["kind"] == "Status" and body["reason"] == "Forbidden" and body["code"] == 403
    return body


def _plan_level_run(
    admin: k8s.ApiClient,
    worker: k8s.ApiClient,
    example: str,
    workload_kind: str,
    *,
    lock_wait_s: float = 0,
) -> None:
    """One example's pod-free Kubernetes work as the worker, from preflight to teardown."""
    spec = load_spec(EXAMPLES / example)
    assert spec.namespace == NAMESPACE
    release_id = "r1"
    if spec.serving.api_key is not None:
        # The operator creates the API key Secret the spec names, never the flow.
        apply(
            admin,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": spec.serving.api_key.secret_name, "namespace": NAMESPACE},
                "stringData": {spec.serving.api_key.key: "sk-test-key"},
            },
        )
    rendered = render(spec, release=release_id)

    report = PreflightReport()
    check_cluster(
        worker,
        spec,
        report,
        render_workloads=lambda _flavor: list(rendered.workload_objects),
        find_serving=lambda a: find_serving_release(a, spec.namespace, spec.name),
    )
    # Capacity findings depend on what else the session cluster holds; a refused read would
    # show here as a problem naming the API server's answer.
    assert not [p for p in report.problems if "403" in p or "forbidden" in p.lower()]
    assert report.namespace_exists and report.nodes

    _state, reentrant = acquire(
        worker, NAMESPACE, spec.name, holder="worker-test", owner=release_id, wait_s=lock_wait_s
    )
    assert not reentrant
    # As the rollout task does under the Lease, before applying (llm_rollout/stages.py): custom
    # resources checked against the CRDs this cluster serves, read with the worker's token.
    assert validate_objects(rendered.all(), crds_from_cluster(worker)) == []
    storage = [
        render_oss_secret(spec, "AKID-test", "secret-test") if o["kind"] == "Secret" else o
        for o in rendered.storage_objects
    ]
    apply_checked(worker, storage)
    # kube-controller-manager's PersistentVolume binder pairs the claim with its volume.
    wait_pvc_bound(worker, NAMESPACE, spec.pvc_name, 60)
    workload_objects = list(rendered.workload_objects)
    dry = apply_all(worker, [*workload_objects, rendered.stable_service], dry_run=True)
    assert [ObjectRef.of(o) for o in dry] == [
        ObjectRef.of(o) for o in [*workload_objects, rendered.stable_service]
    ]
    applied = apply_checked(worker, workload_objects)
    workload = next(o for o in applied if o["kind"] == workload_kind)
    assert FIELD_MANAGER in {m["manager"] for m in workload["metadata"]["managedFields"]}
    point_stable_service(worker, rendered.stable_service, release_id, {})
    assert find_serving_release(worker, NAMESPACE, spec.name).release == release_id
    # Retention's scan of the stable Services (cluster-wide) finds the serving revision.
    source = spec.model.modelscope
    in_use = revisions_in_use(worker, source.model_id) if source else {spec.model_revision}
    assert spec.model_revision in in_use
    assert release(worker, NAMESPACE, spec.name, owner=release_id)

    removed = teardown(worker, NAMESPACE, spec.name, wait_timeout_s=60)
    kinds = [r.kind for r in removed]
    # Reverse order: the workload and Services before the claim, the claim before its volume.
    assert workload_kind in kinds
    assert kinds.index(workload_kind) < kinds.index("PersistentVolumeClaim")
    assert kinds.index("PersistentVolumeClaim") < kinds.index("PersistentVolume")
    for ref in removed:
        assert get(admin, ref) is None, f"{ref} still exists after teardown"


@pytest.mark.parametrize(("example", "workload_kind"), EXAMPLES_WITHOUT_PODS)
def test_plan_level_operations_as_the_worker(
    admin: k8s.ApiClient,
    worker: k8s.ApiClient,
    proxy: ApiFaultProxy,
    rbac_objects: list[dict[str, Any]],
    example: str,
    workload_kind: str,
) -> None:
    proxy.clear()
    _plan_level_run(admin, worker, example, workload_kind)
    records = proxy.records()
    assert records and {r.identity for r in records} == {"token"}
    refused = [(r.method, r.path, r.status) for r in records if r.status in (401, 403)]
    assert refused == []
    # Least privilege from the other side, for the grants only a RayCluster needs.
    assert not RAY_GRANTS_WITHOUT_PODS & unused_grants(rbac_objects, records)


@dataclass(frozen=True)
class _Access:
    """What RBAC judged one recorded request as (k8s.io/apiserver
    pkg/endpoints/request/requestinfo.go, reduced to the paths the product sends)."""

    verb: str
    group: str
    resource: str
    name: str | None
    namespace: str | None


def _access(record: ProxyRecord) -> list[_Access]:
    parts = record.path.strip("/").split("/")
    if parts[0] == "api" and len(parts) > 2:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return []  # discovery and /version: open to every authenticated user
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = "/".join([rest[0], *rest[2:3]])
    name = rest[1] if len(rest) > 1 else None
    if rest[0] == "namespaces" and name:
        namespace = name  # a namespace is read as a request inside itself
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    verb = verbs.get(record.method)
    if verb is None:
        verb = "get" if name else ("watch" if record.watch else "list")
    found = [_Access(verb, group, resource, name, namespace)]
    if verb == "patch" and record.status == 201:
        # An apply that created its object was also authorized as create (handlers/patch.go).
        found.append(_Access("create", group, resource, name, namespace))
    if record.status == 101:
        # A WebSocket upgrade to pods/portforward (a GET) is also authorized as create
        # (feature gate AuthorizePodWebsocketUpgradeCreatePermission, beta and on since 1.35:
        # kubernetes/website .../feature-gates/AuthorizePodWebsocketUpgradeCreatePermission.md).
        found.append(_Access("create", group, resource, name, namespace))
    return found


def unused_grants(rbac_objects: list[dict[str, Any]], records: list[ProxyRecord]) -> set[str]:
    """Each grant (one verb on one resource of one rule) that no allowed request needed."""
    accesses = [a for r in records if r.status not in (401, 403) for a in _access(r)]
    unused: set[str] = set()
    for obj in rbac_objects:
        cluster_wide = obj["kind"] == "ClusterRole"
        for rule in obj.get("rules") or []:
            for verb in rule["verbs"]:
                for resource in rule["resources"]:
                    single = {**rule, "verbs": [verb], "resources": [resource]}
                    # A ClusterRole grant counts only if a cluster-scoped request needed it.
                    if not any(
                        _grants(single, a) and (a.namespace is None) == cluster_wide
                        for a in accesses
                    ):
                        unused.add(f"{obj['kind']}: {verb} {resource}")
    return unused


def _grants(rule: dict[str, Any], access: _Access) -> bool:
    names = rule.get("resourceNames")
    return (
        access.group in rule["apiGroups"]
        and access.resource in rule["resources"]
        and access.verb in rule["verbs"]
        and (not names or access.name in names)
    )


# The session cluster serves RoleBasedGroup (v0.6.0's CRD, sandbox/cluster/rbg.py), so every
# deploy lists the service's groups; the other grants only an RBG example's run needs.
NEEDS_RBG = {
    f"Role: {verb} rolebasedgroups" for verb in ("get", "watch", "create", "patch", "delete")
}


def test_requests_outside_the_role_are_forbidden(worker: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(worker)
    body = _forbidden(lambda: core.list_namespaced_secret(OTHER_NAMESPACE))
    assert body["message"] == (
        f'secrets is forbidden: User "{USER}" cannot list resource "secrets" in API group "" '
        f'in the namespace "{OTHER_NAMESPACE}"'
    )
    body = _forbidden(lambda: core.delete_node("gpu-node-0"))
    assert body["message"] == (
        f'nodes "gpu-node-0" is forbidden: User "{USER}" cannot delete resource "nodes" in API '
        'group "" at the cluster scope'
    )
    assert body["details"] == {"name": "gpu-node-0", "kind": "nodes"}
    rbac = k8s.RbacAuthorizationV1Api(worker)
    body = _forbidden(
        lambda: rbac.create_cluster_role({"metadata": {"name": "escalate"}, "rules": []})
    )
    assert body["message"] == (
        f'clusterroles.rbac.authorization.k8s.io is forbidden: User "{USER}" cannot create '
        'resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope'
    )
    body = _forbidden(lambda: core.read_namespace(OTHER_NAMESPACE))  # resourceNames: own only
    assert body["message"] == (
        f'namespaces "{OTHER_NAMESPACE}" is forbidden: User "{USER}" cannot get resource '
        f'"namespaces" in API group "" in the namespace "{OTHER_NAMESPACE}"'
    )
    assert core.read_namespace(NAMESPACE).metadata.name == NAMESPACE
    assert _forbidden(lambda: core.delete_namespace(NAMESPACE))["details"]["kind"] == "namespaces"
    body = _forbidden(lambda: core.read_namespaced_pod_log("nope", OTHER_NAMESPACE))
    assert (
        f'cannot get resource "pods/log" in API group "" in the namespace "{OTHER_NAMESPACE}"'
        in body["message"]
    )
    # Discovery and /version stay open to every authenticated user (system:discovery).
    assert k8s.VersionApi(worker).get_code().git_version == "v1.36.3"


def test_a_forbidden_product_call_is_a_clear_permanent_error(worker: k8s.ApiClient) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": OTHER_NAMESPACE},
    }
    with pytest.raises(UnauthorizedError) as err:
        apply(worker, cm, dry_run=True)
    assert not is_transient(err.value)
    assert err.value.ref == ObjectRef.of(cm)
    message = str(err.value)
    # Names the object and the server's reason, and what the worker may not do.
    assert message.startswith(f"PATCH ConfigMap {OTHER_NAMESPACE}/x: HTTP 403: ")
    assert f'User "{USER}" cannot patch resource "configmaps"' in message


def test_rbac_command_renders_what_was_applied(rbac_objects: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(app, ["rbac", "--namespace", NAMESPACE])
    assert result.exit_code == 0, result.output
    printed = [d for d in yaml.safe_load_all(result.output) if d]
    assert printed == rbac_objects


def test_the_worker_may_read_the_cluster_autoscaler_status(
    admin: k8s.ApiClient, worker: k8s.ApiClient
) -> None:
    status = get(worker, ObjectRef("v1", "ConfigMap", "kube-system", "cluster-autoscaler-status"))
    assert status is None  # no cluster-autoscaler here: absent, but readable
    # As cluster-autoscaler writes it (its --write-status-configmap): readiness reads it.
    written = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": AUTOSCALER_STATUS.name, "namespace": AUTOSCALER_STATUS.namespace},
        "data": {"status": "Cluster-wide:\n  Health: Healthy"},
    }
    apply(admin, written)
    try:
        read = read_autoscaler_status(worker)
        assert read is not None and read["data"] == written["data"]
    finally:
        k8s.CoreV1Api(admin).delete_namespaced_config_map(
            AUTOSCALER_STATUS.name, AUTOSCALER_STATUS.namespace
        )
    # The grant names that one ConfigMap (resourceNames), not kube-system's others, and no list.
    with pytest.raises(UnauthorizedError):
        get(worker, ObjectRef("v1", "ConfigMap", "kube-system", "kube-root-ca.crt"))
    _forbidden(lambda: k8s.CoreV1Api(worker).list_namespaced_config_map("kube-system"))


def test_an_apply_that_creates_needs_create_and_names_the_servers_reason(
    cluster: Cluster, admin: k8s.ApiClient, rbac_objects: list[dict[str, Any]]
) -> None:
    """Server-side apply is a PATCH; one that creates its object is also authorized as create
    (k8s.io/apiserver pkg/endpoints/handlers/patch.go). A ServiceAccount allowed only to patch
    ConfigMaps updates an existing one and is refused a new one, and the product's error
    carries the server's reason (here the RBAC authorizer's note on a dangling binding,
    plugin/pkg/auth/authorizer/rbac/rbac.go)."""
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
    token = service_account_token(admin, ns, "patcher")
    api = product_client(cluster.token_kubeconfig("patcher", token))
    try:
        existing = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "exists", "namespace": ns},
            "data": {"k": "v"},
        }
        assert apply(api, existing)["data"] == {"k": "v"}
        fresh = {**existing, "metadata": {"name": "fresh", "namespace": ns}}
        with pytest.raises(UnauthorizedError) as err:
            apply(api, fresh, dry_run=True)
        assert 'configmaps "fresh" is forbidden' in str(err.value)
        assert 'RBAC: role.rbac.authorization.k8s.io "gone" not found' in str(err.value)
    finally:
        api.close()  # type: ignore[no-untyped-call]


def test_an_unknown_token_is_unauthorized(cluster: Cluster, admin: k8s.ApiClient) -> None:
    """A token the API server cannot authenticate gets 401 (not 403: no user to authorize),
    and the product reports it as a permanent error naming the request."""
    path = cluster.token_kubeconfig("forged", "forged-token-not-issued-by-this-cluster")
    api = product_client(path)
    try:
        with pytest.raises(ApiException) as raw:
            k8s.CoreV1Api(api).list_namespace()
        assert raw.value.status == 401
        body = json.loads(raw.value.body)
        assert (body["kind"], body["reason"], body["code"]) == ("Status", "Unauthorized", 401)
        with pytest.raises(UnauthorizedError) as err:
            get(api, ObjectRef("v1", "Namespace", None, NAMESPACE))
        assert not is_transient(err.value)
        # The client's first request, API discovery, is the one refused.
        assert str(err.value) == "GET API v1 (discovery): HTTP 401: Unauthorized"
        assert "forged-token" not in str(err.value)  # never echoes the credential
    finally:
        api.close()  # type: ignore[no-untyped-call]
