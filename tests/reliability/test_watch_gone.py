"""The sandbox's `gone_watch` fault: a watch answers an ERROR event with Status 410, as a real
API server does for a compacted resourceVersion, and the product's watch machinery re-lists."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.watching import WatchSpec, watching
from sandbox.kube.cluster import ClusterConfig, SandboxCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> SandboxCluster:
    with SandboxCluster(ClusterConfig(), tmp_path_factory.mktemp("gone")) as cluster:
        yield cluster  # type: ignore[misc]


def _api(kubeconfig: Path) -> k8s_client.ApiClient:
    return load_api_client(kubeconfig)


def test_watch_gets_an_error_event_with_status_410_and_lists_are_untouched(
    cluster: SandboxCluster,
) -> None:
    faults = cluster.api.faults
    faults.clear()
    rule = faults.gone_watch(r"/namespaces/default/configmaps$", times=None)
    api = _api(cluster.kubeconfig)
    try:
        core = k8s_client.CoreV1Api(api)
        # A plain list of the same path is answered normally: the rule matches watches only.
        listing = core.list_namespaced_config_map("default")
        assert rule.hits == 0
        events = list(
            k8s_watch.Watch().stream(
                core.list_namespaced_config_map,
                "default",
                resource_version=listing.metadata.resource_version,
                timeout_seconds=5,
                _request_timeout=10,
            )
        )
        raise AssertionError(f"the watch ended without an error: {events}")
    except ApiException as exc:
        # kubernetes' Watch raises the ERROR event's Status (it does not retry when a
        # timeout is given, as the product's watches do).
        assert exc.status == 410 and "Expired" in str(exc.reason), exc
    finally:
        api.close()  # type: ignore[no-untyped-call]
        faults.clear()
    assert rule.hits == 1
    record = [r for r in cluster.api.request_log.records() if "watch=true" in r.query][-1]
    assert record.status == 200  # the stream opened; the 410 came inside it


def test_product_watch_relists_after_410_and_still_sees_changes(cluster: SandboxCluster) -> None:
    faults = cluster.api.faults
    faults.clear()
    rule = faults.gone_watch(r"/namespaces/default/configmaps$", times=2)
    api = _api(cluster.kubeconfig)
    spec = WatchSpec("v1", "ConfigMap", "default")
    lists_before = sum(
        1
        for r in cluster.api.request_log.records()
        if r.path.endswith("/configmaps") and r.verb == "list"
    )
    try:
        with watching(api, [spec]) as group:
            notes: list[str] = []
            while len(notes) < 2:
                message = group.next(10.0)
                assert message is not None, f"no re-list after 410 (notes {notes})"
                if message.kind == "resync":
                    notes.append(message.note)
            k8s_client.CoreV1Api(api).create_namespaced_config_map(
                "default", {"metadata": {"name": "after-gone"}, "data": {"a": "b"}}
            )
            while "after-gone" not in group.cache[spec]:
                assert group.next(10.0) is not None, "the change after the re-list never arrived"
    finally:
        api.close()  # type: ignore[no-untyped-call]
        faults.clear()
    assert notes == ["410 Gone; re-listing"] * 2
    assert rule.hits == 2
    lists_after = sum(
        1
        for r in cluster.api.request_log.records()
        if r.path.endswith("/configmaps") and r.verb == "list"
    )
    assert lists_after - lists_before == 3  # the first list and one per 410
