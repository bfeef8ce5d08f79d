"""Watch-based readiness and failure detection against the sandbox cluster."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client as k8s_client

from llm_rollout.errors import TransientError
from llm_rollout.kube.objects import apply, delete
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import (
    ReadinessTimeout,
    WorkloadFailed,
    wait_deleted,
    wait_pvc_bound,
    wait_ready,
)
from llm_rollout.readiness_rules import DEFAULT_TOLERANCES
from tests.kube_edge.conftest import deployment

WAIT_S = 60.0


def _deploy(api: k8s_client.ApiClient, namespace: str, name: str, **kw: Any) -> ObjectRef:
    obj = deployment(namespace, name, **kw)
    apply(api, obj)
    return ObjectRef.of(obj)


def test_deployment_ready_reports_pods_and_progress(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    ref = _deploy(api, namespace, "qwen", replicas=2)
    notes: list[tuple[ObjectRef, str]] = []
    report = wait_ready(api, ref, timeout_s=WAIT_S, on_event=lambda r, m: notes.append((r, m)))
    assert report.workload == ref
    assert len(report.pods) == 2
    assert all(p.kind == "Pod" and p.namespace == namespace for p in report.pods)
    assert report.status["readyReplicas"] == 2
    assert (ref, "ready") in notes
    assert any(r.kind == "Pod" and m == "Ready" for r, m in notes)


def test_missing_image_is_reported_at_once_with_event(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    # containerd's "not found" (the injected default): retrying cannot help, no tolerance.
    cluster.kubelet.inject_image_pull_error(workload="badimg")
    ref = _deploy(api, namespace, "badimg", image="registry.invalid/vllm:nope")
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(api, ref, timeout_s=WAIT_S)
    failure = info.value
    assert failure.reason in ("ErrImagePull", "ImagePullBackOff")
    assert failure.pod is not None and failure.pod.namespace == namespace
    assert failure.pod.name.startswith("badimg-")
    assert failure.event_message
    assert str(ref) in str(failure)


def test_crash_loop_reports_previous_container_logs(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    lines = ("loading weights", "RuntimeError: CUDA error: no kernel image is available")
    cluster.kubelet.inject_crash_loop(workload="crashy", log_lines=lines)
    ref = _deploy(api, namespace, "crashy")
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(api, ref, timeout_s=WAIT_S)
    assert info.value.reason == "CrashLoopBackOff"
    assert "RuntimeError: CUDA error: no kernel image is available" in info.value.log_lines
    # The kubelet's BackOff event for a crash loop (pkg/kubelet/kuberuntime's
    # "Back-off restarting failed container %s in pod %s"), naming the container.
    assert info.value.event_message.startswith("Back-off restarting failed container ")


def test_oom_killed_is_named(api: k8s_client.ApiClient, cluster: Any, namespace: str) -> None:
    cluster.kubelet.inject_oom(workload="hungry")
    ref = _deploy(api, namespace, "hungry")
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(api, ref, timeout_s=WAIT_S)
    assert info.value.reason == "OOMKilled"
    assert info.value.log_lines


def test_failed_mount_that_persists_is_reported_with_csi_message(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    # A CSI error is retried by the kubelet, so it fails only once it outlasts the tolerance.
    cluster.kubelet.inject_mount_failure(workload="nomount")
    obj = deployment(namespace, "nomount")
    obj["spec"]["template"]["spec"]["volumes"] = [{"name": "shm", "emptyDir": {}}]
    obj["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "shm", "mountPath": "/dev/shm"}
    ]
    apply(api, obj)
    tolerances = replace(DEFAULT_TOLERANCES, mount_s=1.0)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(api, ObjectRef.of(obj), timeout_s=WAIT_S, tolerances=tolerances)
    assert info.value.reason == "FailedMount"
    assert "Ossfs mount failed" in str(info.value)
    assert "(persisted " in info.value.detail


def test_unschedulable_names_the_scheduler_message(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    ref = _deploy(api, namespace, "toobig", gpus=64)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(api, ref, timeout_s=WAIT_S)
    assert info.value.reason == "Unschedulable"
    assert "nvidia.com/gpu" in str(info.value)


def test_timeout_names_what_is_missing(api: k8s_client.ApiClient, namespace: str) -> None:
    obj = deployment(namespace, "slow")
    # A readiness probe on a path the server does not have: the pod runs but never turns Ready.
    obj["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/nope"
    apply(api, obj)
    with pytest.raises(ReadinessTimeout) as info:
        wait_ready(api, ObjectRef.of(obj), timeout_s=3)
    message = str(info.value)
    assert message.startswith(f"Deployment {namespace}/slow not ready after 3s: ")
    assert "readyReplicas 0/1" in message
    assert f"pod {namespace}/slow-" in message and "not Ready" in message


def test_cut_watches_are_resumed(api: k8s_client.ApiClient, cluster: Any, namespace: str) -> None:
    cluster.api.faults.cut_watch(f"/namespaces/{namespace}/pods$", after_events=1, times=3)
    ref = _deploy(api, namespace, "cut")
    report = wait_ready(api, ref, timeout_s=WAIT_S)
    assert report.watch_resyncs >= 1
    assert report.pods


def test_expired_resource_version_410_is_relisted(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    # A watch that reconnects from an expired resourceVersion gets 410 Gone and must re-list.
    cluster.api.faults.error("GET", f"/namespaces/{namespace}/pods$", code=410, times=1)
    ref = _deploy(api, namespace, "gone")
    report = wait_ready(api, ref, timeout_s=WAIT_S)
    assert report.watch_resyncs >= 1


def test_persistent_throttling_ends_the_wait_as_transient(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    ref = _deploy(api, namespace, "throttled")
    cluster.api.faults.throttle(
        "GET", f"/namespaces/{namespace}/events$", times=None, retry_after=0
    )
    with pytest.raises(TransientError, match="429"):
        wait_ready(api, ref, timeout_s=WAIT_S)


def test_pvc_bound_and_deleted_waits(api: k8s_client.ApiClient, namespace: str) -> None:
    pv_name = f"pv-{namespace}"
    apply(
        api,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {"alicloud-pvname": pv_name}},
            "spec": {
                "capacity": {"storage": "30Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "csi": {
                    "driver": "ossplugin.csi.alibabacloud.com",
                    "volumeHandle": pv_name,
                    "volumeAttributes": {"bucket": "b", "url": "oss", "path": "/"},
                },
            },
        },
    )
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "llm-model", "namespace": namespace},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "resources": {"requests": {"storage": "30Gi"}},
            "selector": {"matchLabels": {"alicloud-pvname": pv_name}},
        },
    }
    apply(api, pvc)
    bound = wait_pvc_bound(api, namespace, "llm-model", timeout_s=WAIT_S)
    assert bound["status"]["phase"] == "Bound"
    ref = ObjectRef.of(pvc)
    assert delete(api, ref)
    wait_deleted(api, ref, timeout_s=WAIT_S)
    delete(api, ObjectRef("v1", "PersistentVolume", None, pv_name), wait_timeout_s=WAIT_S)
