"""Transient signals through `wait_ready` on the session's real cluster (issue 16 points 3-4):
one that clears inside its tolerance lets the rollout through, one that persists fails it, an
Unschedulable pod waits for a scale-up cluster-autoscaler announced, and a crash-looping LWS
group, recreated by the real LWS operator, is reported as a crash loop with its log.

What stands in for what:
- a rate-limited registry: the node agent's registry faults (``node_agent.registry_faults_file``),
  the kubelet's pull, back-off and events unchanged (``sandbox/cluster/pods/runner.py``);
- a failed mount: the OSS CSI stand-in refusing a wrong AccessKey secret with OSS's own 403
  (``sandbox/cluster/pods/volumes.py``), until the Secret is corrected;
- a namespace out of quota: a real ResourceQuota of pods, enforced by the API server's quota
  admission, the ReplicaSet controller of the real kube-controller-manager recording its
  FailedCreate;
- cluster-autoscaler: the test records the Normal pod events it records, as its
  ``processors/status/eventing_scale_up_processor.go`` words them ("pod triggered scale-up: %v"
  of its ScaleUpInfos; "pod didn't trigger scale-up (it wouldn't fit if a new node is added):
  %s"), from its recorder's source component "cluster-autoscaler"
  (``utils/kubernetes/events.go`` CreateEventRecorder). The node agent registers its nodes at
  start only, so the node the scale-up adds is stood for by an existing node taking the new
  pool's label: from that moment the real scheduler finds a node that fits.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import oss2
import pytest
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from bench.readiness import IMAGE, RATE_LIMITED, crash_looping_group, shell_deployment
from llm_rollout.kube.objects import apply
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.watching import wait_pvc_bound
from llm_rollout.readiness import WorkloadFailed, wait_ready
from llm_rollout.readiness_rules import DEFAULT_TOLERANCES
from sandbox.cluster.node_agent import NodeSpec
from sandbox.oss import OssServer
from tests.real_cluster import counted_pod_quota

WAIT_S = 60.0
AK_ID, AK_SECRET = "LTAI-tolerance-test", "tolerance-test-secret"
BUCKET, PREFIX = "tolerance-models", "tiny"
POOL_LABEL = "llm-rollout.test/pool"


class ClearOnNote:
    """An `on_event` callback that runs `action` once, on the first note starting `prefix`."""

    def __init__(self, prefix: str, action: Callable[[], object]) -> None:
        self.prefix, self.action = prefix, action
        self.notes: list[str] = []
        self.done = False

    def __call__(self, ref: ObjectRef, message: str) -> None:
        self.notes.append(message)
        if not self.done and message.startswith(self.prefix):
            self.done = True
            self.action()


def _deployment(
    namespace: str, name: str, *, spec: dict[str, Any] | None = None, **container: Any
) -> dict[str, Any]:
    return shell_deployment(namespace, name, pod_spec=spec, container=container)


# --- image pulls --------------------------------------------------------------------------------


def test_a_rate_limited_pull_that_clears_inside_the_tolerance_passes(
    real_admin: k8s.ApiClient,
    real_namespace: str,
    registry: Callable[[dict[str, str]], None],
) -> None:
    registry({IMAGE: RATE_LIMITED})
    obj = _deployment(real_namespace, "flaky")
    apply(real_admin, obj)
    clear = ClearOnNote("tolerating ErrImagePull", lambda: registry({}))
    report = wait_ready(real_admin, ObjectRef.of(obj), timeout_s=WAIT_S, on_event=clear)
    assert clear.done, clear.notes
    assert any("429 Too Many Requests" in note for note in clear.notes), clear.notes
    assert report.pods


def test_a_rate_limited_pull_that_persists_fails(
    real_admin: k8s.ApiClient,
    real_namespace: str,
    registry: Callable[[dict[str, str]], None],
) -> None:
    registry({IMAGE: RATE_LIMITED})
    obj = _deployment(real_namespace, "limited")
    apply(real_admin, obj)
    tolerances = replace(DEFAULT_TOLERANCES, image_pull_s=1.0)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, ObjectRef.of(obj), timeout_s=WAIT_S, tolerances=tolerances)
    assert info.value.reason in ("ErrImagePull", "ImagePullBackOff")
    assert "429 Too Many Requests" in str(info.value)
    assert "(persisted " in info.value.detail


# --- mounts -------------------------------------------------------------------------------------


# The PV controller binds a pre-bound claim on its next sync (seconds; longer under load).
PVC_BOUND_TIMEOUT_S = 60


@pytest.fixture
def model_storage(
    real_admin: k8s.ApiClient, real_namespace: str, tmp_path: Path
) -> Iterator[Callable[[str], None]]:
    """An OSS bucket with a model, a PV/PVC "model" of it (shaped as manifests/storage.yaml.j2
    renders them) whose AccessKey Secret "oss-keys" starts out wrong; yields
    ``set_secret(value)``."""
    core = k8s.CoreV1Api(real_admin)
    with OssServer(tmp_path / "oss", credentials={AK_ID: AK_SECRET}, buckets=[BUCKET]) as oss:
        oss2.Bucket(oss2.Auth(AK_ID, AK_SECRET), oss.endpoint, BUCKET).put_object(
            f"{PREFIX}/config.json", b"{}"
        )

        def secret(value: str) -> dict[str, Any]:
            return {
                "metadata": {"name": "oss-keys"},
                "stringData": {"akId": AK_ID, "akSecret": value},
            }

        core.create_namespaced_secret(real_namespace, secret("wrong-secret"))
        pv_name = f"{real_namespace}-model"
        core.create_persistent_volume(
            {
                "metadata": {"name": pv_name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "csi": {
                        "driver": "ossplugin.csi.alibabacloud.com",
                        "volumeHandle": pv_name,
                        "readOnly": True,
                        "nodePublishSecretRef": {"name": "oss-keys", "namespace": real_namespace},
                        "volumeAttributes": {
                            "bucket": BUCKET,
                            "url": oss.endpoint,
                            "path": f"/{PREFIX}",
                        },
                    },
                },
            }
        )
        core.create_namespaced_persistent_volume_claim(
            real_namespace,
            {
                "metadata": {"name": "model"},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        # As the deploy flow's volumes stage does before any workload: a pod whose claim is not
        # Bound yet is Unschedulable (the scheduler's VolumeBinding plugin), which readiness
        # rightly fails at once; that is not the signal these tests are about.
        wait_pvc_bound(real_admin, real_namespace, "model", PVC_BOUND_TIMEOUT_S)
        try:
            yield lambda value: core.replace_namespaced_secret(
                "oss-keys", real_namespace, secret(value)
            )
        finally:
            core.delete_namespaced_persistent_volume_claim("model", real_namespace)
            core.delete_persistent_volume(pv_name)


def _mounting(namespace: str, name: str) -> dict[str, Any]:
    return _deployment(
        namespace,
        name,
        spec={"volumes": [{"name": "model", "persistentVolumeClaim": {"claimName": "model"}}]},
        volumeMounts=[{"name": "model", "mountPath": "/models/tiny", "readOnly": True}],
    )


def _failed_mounts(api: k8s.ApiClient, namespace: str) -> list[Any]:
    events = k8s.CoreV1Api(api).list_namespaced_event(namespace).items
    return [e for e in events if e.reason == "FailedMount"]


def test_a_failed_mount_that_clears_inside_the_tolerance_passes(
    real_admin: k8s.ApiClient, real_namespace: str, model_storage: Callable[[str], None]
) -> None:
    obj = _mounting(real_namespace, "slowmount")
    apply(real_admin, obj)
    clear = ClearOnNote("tolerating FailedMount", lambda: model_storage(AK_SECRET))
    report = wait_ready(real_admin, ObjectRef.of(obj), timeout_s=WAIT_S, on_event=clear)
    assert clear.done, clear.notes
    # The FailedMount events of the recovered attempts are still there; the pod is Ready.
    warnings = _failed_mounts(real_admin, real_namespace)
    assert any("403 SignatureDoesNotMatch" in e.message for e in warnings), warnings
    assert report.pods


def test_a_tolerated_signal_is_logged_once_while_its_events_keep_coming(
    real_admin: k8s.ApiClient, real_namespace: str, model_storage: Callable[[str], None]
) -> None:
    """The kubelet keeps recording FailedMount while it retries; the rollout log says once that
    the signal is tolerated (then the verdict), not once per event."""
    obj = _mounting(real_namespace, "stuckmount")
    apply(real_admin, obj)
    notes = ClearOnNote("never", lambda: None)
    tolerances = replace(DEFAULT_TOLERANCES, mount_s=6.0)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(
            real_admin, ObjectRef.of(obj), timeout_s=WAIT_S, tolerances=tolerances, on_event=notes
        )
    assert info.value.reason == "FailedMount"
    warnings = _failed_mounts(real_admin, real_namespace)
    # The signal's events did keep coming while it was tolerated ...
    assert sum(int(e.count or 1) for e in warnings) >= 2, warnings
    # ... and it was announced once.
    tolerating = [n for n in notes.notes if n.startswith("tolerating FailedMount")]
    assert len(tolerating) == 1, notes.notes


# --- scheduling and cluster-autoscaler ----------------------------------------------------------


def _unschedulable_pod(api: k8s.ApiClient, namespace: str) -> k8s.V1Pod:
    """The namespace's pod once the real scheduler reported it Unschedulable."""
    stream = k8s_watch.Watch()
    core = k8s.CoreV1Api(api)
    for event in stream.stream(core.list_namespaced_pod, namespace, timeout_seconds=30):
        pod: k8s.V1Pod = event["object"]
        if any(
            c.type == "PodScheduled" and c.reason == "Unschedulable"
            for c in pod.status.conditions or []
        ):
            stream.stop()
            return pod
    raise AssertionError(f"no pod of {namespace} was reported Unschedulable within 30s")


def _autoscaler_event(api: k8s.ApiClient, pod: k8s.V1Pod, reason: str, message: str) -> None:
    """A Normal event on ``pod`` as cluster-autoscaler's client-go recorder writes it."""
    now = datetime.now(UTC)
    k8s.CoreV1Api(api).create_namespaced_event(
        pod.metadata.namespace,
        {
            "metadata": {"name": f"{pod.metadata.name}.{uuid.uuid4().hex[:16]}"},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": pod.metadata.namespace,
                "name": pod.metadata.name,
                "uid": pod.metadata.uid,
                "resourceVersion": pod.metadata.resource_version,
            },
            "reason": reason,
            "message": message,
            "type": "Normal",
            "source": {"component": "cluster-autoscaler"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        },
    )


def test_triggered_scale_up_waits_and_the_added_node_lets_the_pod_through(
    real_admin: k8s.ApiClient, real_namespace: str, real_gpu_nodes: tuple[NodeSpec, ...]
) -> None:
    pool = real_namespace
    obj = _deployment(real_namespace, "bigger", spec={"nodeSelector": {POOL_LABEL: pool}})
    apply(real_admin, obj)
    pod = _unschedulable_pod(real_admin, real_namespace)
    _autoscaler_event(
        real_admin, pod, "TriggeredScaleUp", f"pod triggered scale-up: [{{{pool} 0->1 (max: 2)}}]"
    )
    core = k8s.CoreV1Api(real_admin)
    node = real_gpu_nodes[0].name
    scale_up = ClearOnNote(
        "tolerating Unschedulable",
        lambda: core.patch_node(node, {"metadata": {"labels": {POOL_LABEL: pool}}}),
    )
    try:
        report = wait_ready(real_admin, ObjectRef.of(obj), timeout_s=WAIT_S, on_event=scale_up)
    finally:
        core.patch_node(node, {"metadata": {"labels": {POOL_LABEL: None}}})
    assert scale_up.done, scale_up.notes
    assert any(f"{pool} 0->1" in note for note in scale_up.notes), scale_up.notes
    assert report.pods


def test_not_trigger_scale_up_fails_at_once_with_its_message(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    obj = _deployment(real_namespace, "huge", resources={"limits": {"nvidia.com/gpu": "64"}})
    apply(real_admin, obj)
    pod = _unschedulable_pod(real_admin, real_namespace)
    message = (
        "pod didn't trigger scale-up (it wouldn't fit if a new node is added): "
        "2 Insufficient nvidia.com/gpu"
    )
    _autoscaler_event(real_admin, pod, "NotTriggerScaleUp", message)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, ObjectRef.of(obj), timeout_s=WAIT_S)
    assert info.value.reason == "Unschedulable"
    assert message in str(info.value)
    assert "Insufficient nvidia.com/gpu" in str(info.value)  # the scheduler's own reason


# --- a crash-looping LWS group ------------------------------------------------------------------


def test_a_crash_looping_lws_group_is_a_crash_loop_with_its_log(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    """The real LWS operator deletes the group when any of its containers restarts
    (RecreateGroupOnPodRestart, lws pkg/controllers/pod_controller.go), so CrashLoopBackOff
    never shows; the product counts the recreations."""
    lines = ("starting worker", "ConnectionError: Failed to connect to GCS at lws-leader:6379")
    obj = crash_looping_group(real_namespace, "crashgroup", lines)
    apply(real_admin, obj)
    tolerances = replace(DEFAULT_TOLERANCES, group_recreations=2)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, ObjectRef.of(obj), timeout_s=WAIT_S, tolerances=tolerances)
    failure = info.value
    assert failure.reason == "GroupCrashLoop", failure
    assert "recreated 2 times" in failure.detail
    # The crash is named: the worker's container and its exit, not the leader the group's
    # deletion killed; the run's message carries the worker's last log lines.
    assert failure.pod is not None and failure.pod.name == "crashgroup-0-1", failure
    assert "last crash: container engine of pod crashgroup-0-1 Error with exit code 1" in str(
        failure.detail
    ), failure
    assert lines[1] in failure.log_lines
    assert "last container log lines:" in str(failure) and lines[1] in str(failure)


# --- pod creation refused -----------------------------------------------------------------------


QUOTA = "pods"


@pytest.fixture
def pod_quota(real_admin: k8s.ApiClient, real_namespace: str) -> Callable[[int], None]:
    """A ResourceQuota of 0 pods in the namespace, counted before it is returned (quota
    admission refuses with `status unknown for quota` until the controller has counted it);
    returns ``set_pods(n)``."""
    core = k8s.CoreV1Api(real_admin)
    counted_pod_quota(core, real_namespace, QUOTA, 0)
    return lambda pods: core.patch_namespaced_resource_quota(
        QUOTA, real_namespace, {"spec": {"hard": {"pods": str(pods)}}}
    )


def test_a_pod_quota_that_persists_fails_naming_the_replica_set_and_the_quota(
    real_admin: k8s.ApiClient, real_namespace: str, pod_quota: Callable[[int], None]
) -> None:
    """The Deployment gets no pod at all; before, readiness waited out its whole timeout."""
    obj = _deployment(real_namespace, "noquota")
    apply(real_admin, obj)
    tolerances = replace(DEFAULT_TOLERANCES, pod_create_s=2.0)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(real_admin, ObjectRef.of(obj), timeout_s=WAIT_S, tolerances=tolerances)
    failure = info.value
    assert failure.reason == "FailedCreate", failure
    assert failure.pod is not None and failure.pod.kind == "ReplicaSet", failure
    assert failure.pod.name.startswith("noquota-"), failure
    assert f"exceeded quota: {QUOTA}" in failure.detail, failure
    assert "(persisted " in failure.detail


def test_a_pod_quota_raised_inside_the_tolerance_passes(
    real_admin: k8s.ApiClient, real_namespace: str, pod_quota: Callable[[int], None]
) -> None:
    obj = _deployment(real_namespace, "morequota")
    apply(real_admin, obj)
    raise_quota = ClearOnNote("tolerating FailedCreate", lambda: pod_quota(1))
    report = wait_ready(real_admin, ObjectRef.of(obj), timeout_s=WAIT_S, on_event=raise_quota)
    assert raise_quota.done, raise_quota.notes
    assert any(f"exceeded quota: {QUOTA}" in note for note in raise_quota.notes), raise_quota.notes
    assert report.pods
