"""Transient signals through `wait_ready` on the sandbox cluster: one that clears inside its
tolerance lets the rollout through, one that persists fails it, and an Unschedulable pod waits
for a scale-up that cluster-autoscaler announced.

The stand-in has no cluster-autoscaler; the test plays its part by recording the Normal pod
events it would (cluster-autoscaler/processors/status/eventing_scale_up_processor.go) and by
adding the node (`SandboxCluster.add_node`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch

from bench.readiness import leaderworkerset
from llm_rollout.kube.objects import apply
from llm_rollout.kube.resources import ObjectRef, list_objects
from llm_rollout.readiness import WorkloadFailed, wait_ready
from llm_rollout.readiness_rules import DEFAULT_TOLERANCES
from tests.kube_edge.conftest import deployment

WAIT_S = 60.0
RATE_LIMITED = (
    "failed to copy: httpReadSeeker: failed open: unexpected status code "
    "https://registry-1.docker.io/v2/vllm/vllm-openai/manifests/v0.10.0: 429 Too Many Requests"
    " - Server message: toomanyrequests: You have reached your pull rate limit."
)


class ClearOnNote:
    """An `on_event` callback that runs `action` once, on the first note starting `prefix`."""

    def __init__(self, prefix: str, action: Any) -> None:
        self.prefix, self.action = prefix, action
        self.notes: list[str] = []
        self.done = False

    def __call__(self, ref: ObjectRef, message: str) -> None:
        self.notes.append(message)
        if not self.done and message.startswith(self.prefix):
            self.done = True
            self.action()


def _deploy(api: k8s_client.ApiClient, namespace: str, name: str, **kw: Any) -> ObjectRef:
    obj = deployment(namespace, name, **kw)
    apply(api, obj)
    return ObjectRef.of(obj)


def test_a_rate_limited_pull_that_clears_inside_the_tolerance_passes(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    rule = cluster.kubelet.inject_image_pull_error(workload="flaky", message=RATE_LIMITED)
    ref = _deploy(api, namespace, "flaky", image="vllm/vllm-openai:v0.10.0")
    clear = ClearOnNote("tolerating ErrImagePull", lambda: cluster.kubelet.clear(rule))
    report = wait_ready(api, ref, timeout_s=WAIT_S, on_event=clear)
    assert clear.done, clear.notes
    assert report.pods


def test_a_rate_limited_pull_that_persists_fails(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    cluster.kubelet.inject_image_pull_error(workload="limited", message=RATE_LIMITED)
    ref = _deploy(api, namespace, "limited", image="vllm/vllm-openai:v0.10.0")
    tolerances = replace(DEFAULT_TOLERANCES, image_pull_s=1.0)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(api, ref, timeout_s=WAIT_S, tolerances=tolerances)
    assert info.value.reason in ("ErrImagePull", "ImagePullBackOff")
    assert "429 Too Many Requests" in str(info.value)
    assert "(persisted " in info.value.detail


def test_a_failed_mount_that_clears_inside_the_tolerance_passes(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    rule = cluster.kubelet.inject_mount_failure(
        workload="slowmount", message="rpc error: code = DeadlineExceeded desc = context deadline"
    )
    obj = deployment(namespace, "slowmount")
    obj["spec"]["template"]["spec"]["volumes"] = [{"name": "shm", "emptyDir": {}}]
    obj["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "shm", "mountPath": "/dev/shm"}
    ]
    apply(api, obj)
    clear = ClearOnNote("tolerating FailedMount", lambda: cluster.kubelet.clear(rule))
    report = wait_ready(api, ObjectRef.of(obj), timeout_s=WAIT_S, on_event=clear)
    assert clear.done, clear.notes
    # The FailedMount events of the recovered attempt are still there; the pod is Ready.
    events, _ = list_objects(api, "v1", "Event", namespace)
    assert any(e.get("reason") == "FailedMount" for e in events)
    assert report.pods


def test_a_tolerated_signal_is_logged_once_while_its_events_keep_coming(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    """The kubelet keeps emitting FailedMount while it retries; the rollout log says once that
    the signal is tolerated (then the verdict), not once per event."""
    cluster.kubelet.inject_mount_failure(
        workload="stuckmount", message="rpc error: code = DeadlineExceeded desc = context deadline"
    )
    obj = deployment(namespace, "stuckmount")
    obj["spec"]["template"]["spec"]["volumes"] = [{"name": "shm", "emptyDir": {}}]
    obj["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "shm", "mountPath": "/dev/shm"}
    ]
    apply(api, obj)
    notes = ClearOnNote("never", lambda: None)
    tolerances = replace(DEFAULT_TOLERANCES, mount_s=6.0)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(api, ObjectRef.of(obj), timeout_s=WAIT_S, tolerances=tolerances, on_event=notes)
    assert info.value.reason == "FailedMount"
    events, _ = list_objects(api, "v1", "Event", namespace)
    warnings = [e for e in events if e.get("reason") == "FailedMount"]
    # The signal's events did keep coming while it was tolerated ...
    assert sum(int(e.get("count") or 1) for e in warnings) >= 2, warnings
    # ... and it was announced once.
    tolerating = [n for n in notes.notes if n.startswith("tolerating FailedMount")]
    assert len(tolerating) == 1, notes.notes


def _unschedulable_pod(api: k8s_client.ApiClient, namespace: str) -> dict[str, Any]:
    """The namespace's pod once the scheduler reported it Unschedulable."""
    stream = k8s_watch.Watch()
    core = k8s_client.CoreV1Api(api)
    for event in stream.stream(core.list_namespaced_pod, namespace, timeout_seconds=30):
        pod = event["object"]
        if any(
            c.type == "PodScheduled" and c.reason == "Unschedulable"
            for c in pod.status.conditions or []
        ):
            stream.stop()
            pods, _ = list_objects(api, "v1", "Pod", namespace)
            found = next(p for p in pods if p["metadata"]["name"] == pod.metadata.name)
            return {"apiVersion": "v1", "kind": "Pod", **found}
    raise AssertionError(f"no pod of {namespace} was reported Unschedulable within 30s")


def test_triggered_scale_up_waits_and_the_added_node_lets_the_pod_through(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    from sandbox.kube.nodes import NodeSpec  # after the cluster module (import order)

    ref = _deploy(api, namespace, "bigger", gpus=16)  # the default nodes have 8 GPUs
    pod = _unschedulable_pod(api, namespace)
    cluster.store.emit_event(
        pod,
        "TriggeredScaleUp",
        "pod triggered scale-up: [{gpu-pool-16 0->1 (max: 2)}]",
        "Normal",
        "cluster-autoscaler",
    )
    scale_up = ClearOnNote(
        "tolerating Unschedulable",
        lambda: cluster.add_node(NodeSpec(f"gpu16-{namespace}"[:60], gpus=16)),
    )
    report = wait_ready(api, ref, timeout_s=WAIT_S, on_event=scale_up)
    assert scale_up.done, scale_up.notes
    assert any("gpu-pool-16 0->1" in note for note in scale_up.notes)
    assert report.pods


def test_not_trigger_scale_up_fails_at_once_with_its_message(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    ref = _deploy(api, namespace, "huge", gpus=64)
    pod = _unschedulable_pod(api, namespace)
    cluster.store.emit_event(
        pod,
        "NotTriggerScaleUp",
        "pod didn't trigger scale-up: 2 Insufficient nvidia.com/gpu",
        "Normal",
        "cluster-autoscaler",
    )
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(api, ref, timeout_s=WAIT_S)
    assert info.value.reason == "Unschedulable"
    assert "pod didn't trigger scale-up: 2 Insufficient nvidia.com/gpu" in str(info.value)


def test_a_crash_looping_lws_group_is_a_crash_loop_with_its_log(
    api: k8s_client.ApiClient, cluster: Any, namespace: str
) -> None:
    """LWS recreates the group on the first restart, so CrashLoopBackOff never shows."""
    lines = ("starting worker", "ConnectionError: Failed to connect to GCS at lws-leader:6379")
    cluster.kubelet.inject_crash_loop(workload="crashgroup", log_lines=lines)
    obj = leaderworkerset(namespace, "crashgroup")
    apply(api, obj)
    tolerances = replace(DEFAULT_TOLERANCES, group_recreations=2)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(api, ObjectRef.of(obj), timeout_s=WAIT_S, tolerances=tolerances)
    failure = info.value
    assert failure.reason == "GroupCrashLoop"
    assert "recreated 2 times" in failure.detail
    assert failure.pod is not None and failure.pod.name.startswith("crashgroup-0")
    assert "ConnectionError: Failed to connect to GCS at lws-leader:6379" in failure.log_lines
