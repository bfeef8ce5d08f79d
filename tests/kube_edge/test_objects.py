"""Generic SSA apply / get / delete and error translation against the sandbox API server."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError
from llm_rollout.kube.client import new_api_client, server_version
from llm_rollout.kube.errors import ConflictError, InvalidObjectError, NotFoundError
from llm_rollout.kube.objects import apply, apply_all, delete, delete_all, get
from llm_rollout.kube.resources import ObjectRef, resolve_resource
from sandbox.cluster.api_proxy import running_proxy
from sandbox.cluster.control_plane import Cluster
from tests.kube_edge.conftest import configmap, deployment


def test_server_version_and_discovery(api: k8s_client.ApiClient) -> None:
    major, minor = server_version(api)
    assert major == 1 and minor >= 28
    lws = resolve_resource(api, "leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    assert (lws.plural, lws.namespaced) == ("leaderworkersets", True)
    pv = resolve_resource(api, "v1", "PersistentVolume")
    assert (pv.plural, pv.namespaced) == ("persistentvolumes", False)
    with pytest.raises(NotFoundError, match=r"does not serve API example\.com/v9"):
        resolve_resource(api, "example.com/v9", "Widget")


def test_dry_run_persists_nothing_then_apply_records_field_manager(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    obj = deployment(namespace, "qwen")
    ref = ObjectRef.of(obj)
    preview = apply(api, obj, dry_run=True)
    assert preview["spec"]["replicas"] == 1
    assert get(api, ref) is None
    stored = apply(api, obj)
    managers = {m["manager"] for m in stored["metadata"].get("managedFields") or []}
    assert "llm-rollout" in managers
    assert get(api, ref) is not None


def test_conflicting_field_owner_is_a_conflict_until_forced(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    apply(api, configmap(namespace, "c", {"k": "one"}), field_manager="someone-else")
    with pytest.raises(ConflictError) as info:
        apply(api, configmap(namespace, "c", {"k": "two"}))
    assert f"ConfigMap {namespace}/c" in str(info.value)
    assert info.value.status == 409 and info.value.server_message
    forced = apply(api, configmap(namespace, "c", {"k": "two"}), force=True)
    assert forced["data"] == {"k": "two"}


def test_invalid_object_is_422_with_server_message(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    bad = deployment(namespace, "Not_A_DNS_Name")
    with pytest.raises(InvalidObjectError) as info:
        apply(api, bad)
    assert info.value.status == 422
    assert f"Deployment {namespace}/Not_A_DNS_Name" in str(info.value)


def test_secret_values_never_reach_error_messages(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "OSS_Keys", "namespace": namespace},
        "stringData": {"akId": "TOPSECRET-ID", "akSecret": "TOPSECRET-VALUE"},
    }
    with pytest.raises(InvalidObjectError) as info:
        apply(api, secret)
    assert "TOPSECRET" not in str(info.value)


def test_namespaced_kind_without_namespace_is_refused(api: k8s_client.ApiClient) -> None:
    obj = configmap("x", "c", {})
    del obj["metadata"]["namespace"]
    with pytest.raises(PermanentError, match="namespace is required"):
        apply(api, obj)


def test_delete_all_goes_in_reverse_order_and_tolerates_missing(
    real_cluster: Cluster, api: k8s_client.ApiClient, namespace: str
) -> None:
    objects = [configmap(namespace, n, {"n": n}) for n in ("first", "second", "third")]
    apply_all(api, objects)
    refs = [ObjectRef.of(o) for o in objects]
    # The deletes as the API server receives them: through the recording proxy, the admin's
    # identity kept (sandbox/cluster/api_proxy.py).
    with running_proxy(real_cluster.pki, real_cluster.api_url) as proxy:
        via = real_cluster.kubeconfig_for(
            "admin-via-proxy", real_cluster.pki.admin, server=proxy.url
        )
        recorded = new_api_client(via)
        try:
            assert (
                delete(recorded, ObjectRef("v1", "ConfigMap", namespace, "never-existed")) is False
            )
            deleted = delete_all(recorded, refs, wait_timeout_s=10)
        finally:
            recorded.close()  # type: ignore[no-untyped-call]
        names = [
            r.path.rsplit("/", 1)[-1]
            for r in proxy.records()
            if r.method == "DELETE" and f"/namespaces/{namespace}/configmaps/" in r.path
        ]
    assert deleted == list(reversed(refs))
    assert names == ["never-existed", "third", "second", "first"]
    assert all(get(api, r) is None for r in refs)
    assert delete_all(api, refs) == []


# Throttling (429 with Retry-After), server errors and resets as transient errors are tested
# through the fault proxy in tests/cluster/test_api_faults.py.
