"""Watch semantics through kubernetes.watch.Watch: resourceVersion, bookmarks, timeouts, 410."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException

from sandbox.kube.controlplane import ControlPlane


def _cm(name: str, labels: dict[str, str] | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": {"k": name}}


def test_watch_from_zero_lists_then_streams(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, _cm("before"))
    seen: list[tuple[str, str]] = []
    got_initial = threading.Event()
    w = watch.Watch()

    def writer() -> None:
        got_initial.wait(5)
        core.create_namespaced_config_map(ns, _cm("after"))
        core.patch_namespaced_config_map("after", ns, {"data": {"k": "changed"}})
        core.delete_namespaced_config_map("after", ns)

    t = threading.Thread(target=writer)
    t.start()
    for event in w.stream(
        core.list_namespaced_config_map, ns, resource_version="0", timeout_seconds=5
    ):
        seen.append((event["type"], event["object"].metadata.name))
        got_initial.set()
        if event["type"] == "DELETED":
            w.stop()
    t.join()
    assert seen == [
        ("ADDED", "before"),
        ("ADDED", "after"),
        ("MODIFIED", "after"),
        ("DELETED", "after"),
    ]


def test_watch_from_resource_version_replays_only_newer(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, _cm("one"))
    listed = core.list_namespaced_config_map(ns)
    core.create_namespaced_config_map(ns, _cm("two"))
    core.create_namespaced_config_map(ns, _cm("three"))
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_namespaced_config_map,
            ns,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    ]
    assert events == [("ADDED", "two"), ("ADDED", "three")]


def test_watch_timeout_ends_the_stream(core: client.CoreV1Api, ns: str) -> None:
    started = time.monotonic()
    events = list(watch.Watch().stream(core.list_namespaced_config_map, ns, timeout_seconds=1))
    elapsed = time.monotonic() - started
    assert events == []
    # The server ended the stream (list() returned) once timeoutSeconds had passed, not at
    # once; a stream that never ends is the per-test timeout's to catch.
    assert elapsed >= 0.9


def test_watch_label_selector_and_transitions(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, _cm("x", {"role": "leader"}))
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, _cm("y", {"role": "worker"}))
    core.patch_namespaced_config_map("y", ns, {"metadata": {"labels": {"role": "leader"}}})
    core.patch_namespaced_config_map("x", ns, {"metadata": {"labels": {"role": "worker"}}})
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_namespaced_config_map,
            ns,
            label_selector="role=leader",
            resource_version=rv,
            timeout_seconds=1,
        )
    ]
    # y enters the selection (ADDED), x leaves it (DELETED), as a real server reports.
    assert events == [("ADDED", "y"), ("DELETED", "x")]


def test_bookmarks_carry_the_latest_resource_version(
    core: client.CoreV1Api, plane: ControlPlane, ns: str
) -> None:
    core.create_namespaced_config_map(ns, _cm("b"))
    w = watch.Watch()
    bookmarks: list[str] = []
    for event in w.stream(
        core.list_namespaced_config_map,
        ns,
        allow_watch_bookmarks=True,
        timeout_seconds=2,
    ):
        if event["type"] == "BOOKMARK":
            bookmarks.append(event["raw_object"]["metadata"]["resourceVersion"])
            if len(bookmarks) == 2:
                w.stop()
    assert len(bookmarks) == 2
    assert int(bookmarks[-1]) <= int(plane.store.resource_version)
    assert w.resource_version == bookmarks[-1]


def test_too_old_resource_version_is_410(
    core: client.CoreV1Api, plane: ControlPlane, ns: str
) -> None:
    old_rv = core.list_namespaced_config_map(ns).metadata.resource_version
    plane.store.set_history_size(3)
    try:
        for i in range(6):
            core.create_namespaced_config_map(ns, _cm(f"churn-{i}"))
        with pytest.raises(ApiException) as err:
            list(
                watch.Watch().stream(
                    core.list_namespaced_config_map, ns, resource_version=old_rv, timeout_seconds=1
                )
            )
        assert err.value.status == 410
        assert "too old resource version" in err.value.reason
        # A fresh list gives a resourceVersion that can be watched again.
        fresh = core.list_namespaced_config_map(ns).metadata.resource_version
        assert (
            list(
                watch.Watch().stream(
                    core.list_namespaced_config_map, ns, resource_version=fresh, timeout_seconds=1
                )
            )
            == []
        )
    finally:
        plane.store.set_history_size(10_000)


def test_events_are_listable_and_watchable(
    core: client.CoreV1Api, plane: ControlPlane, ns: str
) -> None:
    pod = core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": "ev"},
            "spec": {"containers": [{"name": "c", "image": "x:1"}]},
        },
    )
    rv = core.list_namespaced_event(ns).metadata.resource_version
    as_dict = plane.store.get(plane.store.resource_type("v1", "Pod"), ns, "ev")
    plane.store.emit_event(
        as_dict,
        "FailedScheduling",
        "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
        "Warning",
        "default-scheduler",
    )
    plane.store.emit_event(
        as_dict,
        "FailedScheduling",
        "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
        "Warning",
        "default-scheduler",
    )
    events = core.list_namespaced_event(
        ns, field_selector=f"involvedObject.name=ev,involvedObject.uid={pod.metadata.uid}"
    ).items
    assert len(events) == 1
    ev = events[0]
    assert ev.reason == "FailedScheduling" and ev.type == "Warning" and ev.count == 2
    assert ev.involved_object.kind == "Pod" and ev.source.component == "default-scheduler"
    assert ev.first_timestamp is not None and ev.last_timestamp is not None
    streamed = [
        (e["type"], e["object"].count)
        for e in watch.Watch().stream(
            core.list_namespaced_event, ns, resource_version=rv, timeout_seconds=1
        )
    ]
    assert streamed == [("ADDED", 1), ("MODIFIED", 2)]
