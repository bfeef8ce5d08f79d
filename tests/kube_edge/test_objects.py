"""Generic SSA apply / get / delete and error translation against the sandbox API server."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.kube.client import server_version
from llm_rollout.kube.errors import ConflictError, InvalidObjectError, NotFoundError
from llm_rollout.kube.objects import apply, apply_all, delete, delete_all, get
from llm_rollout.kube.resources import ObjectRef, resolve_resource
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
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    objects = [configmap(namespace, n, {"n": n}) for n in ("first", "second", "third")]
    apply_all(api, objects)
    refs = [ObjectRef.of(o) for o in objects]
    assert delete(api, ObjectRef("v1", "ConfigMap", namespace, "never-existed")) is False
    mark = len(cluster.api.request_log.records())
    deleted = delete_all(api, refs, wait_timeout_s=10)
    assert deleted == list(reversed(refs))
    names = [
        r.path.rsplit("/", 1)[-1]
        for r in cluster.api.request_log.records()[mark:]
        if r.method == "DELETE" and f"/namespaces/{namespace}/configmaps/" in r.path
    ]
    assert [n for n in names if n != "never-existed"] == ["third", "second", "first"]
    assert all(get(api, r) is None for r in refs)
    assert delete_all(api, refs) == []


def test_throttling_is_transient_and_carries_retry_after(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    apply(api, configmap(namespace, "c", {}))
    cluster.api.faults.throttle("GET", f"/namespaces/{namespace}/configmaps/c$", retry_after=7)
    with pytest.raises(TransientError) as info:
        get(api, ObjectRef("v1", "ConfigMap", namespace, "c"))
    assert info.value.retry_after_s == 7
    assert get(api, ObjectRef("v1", "ConfigMap", namespace, "c")) is not None


def test_server_errors_and_resets_are_transient(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    ref = ObjectRef("v1", "ConfigMap", namespace, "c")
    cluster.api.faults.error("GET", f"/namespaces/{namespace}/configmaps/c$", code=503)
    with pytest.raises(TransientError, match="503"):
        get(api, ref)
    cluster.api.faults.reset("GET", f"/namespaces/{namespace}/configmaps/c$", times=10)
    with pytest.raises(TransientError, match="connection failed"):
        get(api, ref)
