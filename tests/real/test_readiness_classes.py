"""Watch-based readiness and its failure classes on the session's real cluster: the pods run on
the node agent, the Deployment controller and scheduler are the real ones, and API faults go
through the identity-keeping proxy (``sandbox/cluster/api_proxy.py``). OOMKilled is a real kill
of the node agent's memory cgroup (sandbox/cluster/pods/memory.py), skipped where the agent has
no memory controller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from bench.readiness import IMAGE, NOT_FOUND, shell_deployment
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
from sandbox.cluster.api_proxy import ApiFaultProxy, FaultRule, running_proxy
from sandbox.cluster.control_plane import Cluster
from sandbox.cluster.pods.memory import memory_controller_unavailable
from tests.cluster.faults_support import admin_via, seen

WAIT_S = 60.0


def _deploy(api: k8s.ApiClient, namespace: str, name: str, **changes: Any) -> ObjectRef:
    obj = shell_deployment(namespace, name, **changes)
    apply(api, obj)
    return ObjectRef.of(obj)


def test_deployment_ready_reports_pods_and_progress(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    obj = shell_deployment(real_namespace, "qwen")
    obj["spec"]["replicas"] = 2
    apply(real_admin, obj)
    ref = ObjectRef.of(obj)
    notes: list[tuple[ObjectRef, str]] = []
    report = wait_ready(
        real_admin, ref, timeout_s=WAIT_S, on_event=lambda r, m: notes.append((r, m))
    )
    assert report.workload == ref
    assert len(report.pods) == 2
    assert all(p.kind == "Pod" and p.namespace == real_namespace for p in report.pods)
    assert report.status["readyReplicas"] == 2
    assert (ref, "ready") in notes
    assert any(r.kind == "Pod" and m == "Ready" for r, m in notes)


def test_missing_image_is_reported_at_once_with_event(
    real_admin: k8s.ApiClient,
    real_namespace: str,
    registry: Callable[[dict[str, str]], None],
) -> None:
    # containerd's "not found": retrying cannot help, so no tolerance applies.
    registry({IMAGE: NOT_FOUND})
    ref = _deploy(real_admin, real_namespace, "badimg")
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, ref, timeout_s=WAIT_S)
    failure = info.value
    assert failure.reason in ("ErrImagePull", "ImagePullBackOff")
    assert failure.pod is not None and failure.pod.namespace == real_namespace
    assert failure.pod.name.startswith("badimg-")
    assert ": not found" in str(failure)
    assert failure.event_message
    assert str(ref) in str(failure)


def test_crash_loop_reports_previous_container_logs(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    lines = ("loading weights", "RuntimeError: CUDA error: no kernel image is available")
    script = "; ".join(f"echo '{line}'" for line in lines) + "; exit 1"
    # An engine crashing while it loads never answers its probe: a container that runs for a
    # moment is not Ready (without a probe it would be, and the Deployment with it).
    probe = {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 1}
    container = {"command": ["sh", "-c", script], "readinessProbe": probe}
    ref = _deploy(real_admin, real_namespace, "crashy", container=container)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, ref, timeout_s=WAIT_S)
    assert info.value.reason == "CrashLoopBackOff"
    assert lines[1] in info.value.log_lines
    # The kubelet's BackOff event for a crash loop (pkg/kubelet/kuberuntime's
    # "Back-off restarting failed container %s in pod %s"), naming the container.
    assert info.value.event_message.startswith("Back-off restarting failed container ")


NO_MEMORY_CGROUP = memory_controller_unavailable()


@pytest.mark.skipif(bool(NO_MEMORY_CGROUP), reason=f"memory cgroup unavailable: {NO_MEMORY_CGROUP}")
def test_oom_killed_names_the_container(real_admin: k8s.ApiClient, real_namespace: str) -> None:
    # tail holds the newline-less stream in memory: 300 MiB against a 64 MiB limit. As an
    # engine that runs out of memory while it loads, it never answers its probe.
    container = {
        "command": ["sh", "-c", "echo loading; head -c 300m /dev/zero | tail"],
        "resources": {"limits": {"memory": "64Mi"}},
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 1},
    }
    ref = _deploy(real_admin, real_namespace, "hungry", container=container)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, ref, timeout_s=WAIT_S)
    failure = info.value
    assert failure.reason == "OOMKilled"
    assert failure.detail == "container engine OOMKilled (exit 137)"
    assert failure.pod is not None and failure.pod.name.startswith("hungry-")
    assert "loading" in failure.log_lines


def test_unschedulable_names_the_scheduler_message(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    # No cluster-autoscaler event and no autoscaler status: nothing will add a node.
    ref = _deploy(
        real_admin,
        real_namespace,
        "toobig",
        container={"resources": {"limits": {"nvidia.com/gpu": "64"}}},
    )
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, ref, timeout_s=WAIT_S)
    assert info.value.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in str(info.value)


def test_timeout_names_what_is_missing(real_admin: k8s.ApiClient, real_namespace: str) -> None:
    # A readiness probe nothing answers: the pod runs but never turns Ready.
    probe = {"httpGet": {"path": "/nope", "port": 8000}, "periodSeconds": 1}
    ref = _deploy(real_admin, real_namespace, "slow", container={"readinessProbe": probe})
    with pytest.raises(ReadinessTimeout) as info:
        wait_ready(real_admin, ref, timeout_s=3)
    message = str(info.value)
    assert message.startswith(f"Deployment {real_namespace}/slow not ready after 3s: ")
    assert "readyReplicas 0/1" in message
    assert f"pod {real_namespace}/slow-" in message and "not Ready" in message


# --- API faults through the proxy ---------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(real_cluster: Cluster) -> Iterator[ApiFaultProxy]:
    with running_proxy(real_cluster.pki, real_cluster.api_url) as running:
        yield running


@pytest.fixture
def via_proxy(real_cluster: Cluster, proxy: ApiFaultProxy) -> Iterator[k8s.ApiClient]:
    proxy.clear()
    api = admin_via(real_cluster, proxy)
    yield api
    api.close()  # type: ignore[no-untyped-call]
    proxy.clear()


# Ready a few seconds after its start, so that the faults below (on the pods watch's first
# events) come before the verdict and the re-list is part of the wait.
SLOW_READY = {
    "container": {
        "readinessProbe": {
            "exec": {"command": ["true"]},
            "initialDelaySeconds": 3,
            "periodSeconds": 1,
        }
    }
}


def test_cut_watches_are_resumed(
    via_proxy: k8s.ApiClient, proxy: ApiFaultProxy, real_namespace: str
) -> None:
    rule = proxy.plan.add(
        FaultRule(
            "cut", rf"/namespaces/{real_namespace}/pods$", watch=True, events_before_cut=0, times=2
        )
    )
    ref = _deploy(via_proxy, real_namespace, "cut", **SLOW_READY)
    report = wait_ready(via_proxy, ref, timeout_s=WAIT_S)
    assert report.pods
    # The pods watch was cut as it opened, twice, before the pod could turn Ready: the verdict
    # needed the third, and the re-lists came first.
    assert rule.hits == 2
    watches = seen(proxy, path_suffix=f"/namespaces/{real_namespace}/pods", watch=True)
    assert [r.fault for r in watches][:3] == ["cut", "cut", ""]
    assert report.watch_resyncs >= 2


def test_expired_resource_version_410_is_relisted(
    via_proxy: k8s.ApiClient, proxy: ApiFaultProxy, real_namespace: str
) -> None:
    rule = proxy.plan.add(
        FaultRule("gone", rf"/namespaces/{real_namespace}/pods$", watch=True, times=1)
    )
    ref = _deploy(via_proxy, real_namespace, "gone", **SLOW_READY)
    report = wait_ready(via_proxy, ref, timeout_s=WAIT_S)
    assert rule.hits == 1
    assert report.watch_resyncs >= 1
    assert report.pods


def test_persistent_throttling_ends_the_wait_as_transient(
    via_proxy: k8s.ApiClient, proxy: ApiFaultProxy, real_namespace: str
) -> None:
    ref = _deploy(via_proxy, real_namespace, "throttled")
    proxy.plan.add(
        FaultRule(
            "throttle",
            rf"/namespaces/{real_namespace}/events$",
            method="GET",
            times=None,
            retry_after_s=0,
        )
    )
    with pytest.raises(TransientError, match="429"):
        wait_ready(via_proxy, ref, timeout_s=WAIT_S)


# --- claims -------------------------------------------------------------------------------------


def test_pvc_bound_and_deleted_waits(real_admin: k8s.ApiClient, real_namespace: str) -> None:
    """The real PV controller binds the claim to the PV its selector names."""
    pv_name = f"pv-{real_namespace}"
    apply(
        real_admin,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {"alicloud-pvname": pv_name}},
            "spec": {
                "capacity": {"storage": "30Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
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
        "metadata": {"name": "llm-model", "namespace": real_namespace},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "resources": {"requests": {"storage": "30Gi"}},
            "selector": {"matchLabels": {"alicloud-pvname": pv_name}},
        },
    }
    try:
        apply(real_admin, pvc)
        bound = wait_pvc_bound(real_admin, real_namespace, "llm-model", timeout_s=WAIT_S)
        assert bound["status"]["phase"] == "Bound"
        assert bound["spec"]["volumeName"] == pv_name
        ref = ObjectRef.of(pvc)
        assert delete(real_admin, ref)
        wait_deleted(real_admin, ref, timeout_s=WAIT_S)
    finally:
        delete(
            real_admin, ObjectRef("v1", "PersistentVolume", None, pv_name), wait_timeout_s=WAIT_S
        )
