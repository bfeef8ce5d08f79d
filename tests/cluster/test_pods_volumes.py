"""Volumes of pods on the real cluster: emptyDir (and a memory one of its sizeLimit), configMap and
secret files, and the model claim: a PV of the OSS CSI driver (bound by the real
kube-controller-manager) whose objects the node agent's CSI stand-in copies from the sandbox OSS
and binds read-only into the pod (sandbox/cluster/pods/volumes.py). Mount failures show as the
kubelet shows them: the pod stays ContainerCreating with FailedMount events, and mounts once
the cause is gone."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import oss2
import pytest
from kubernetes import client as k8s

from sandbox.cluster.control_plane import Cluster
from sandbox.cluster.waits import wait_for
from sandbox.oss import OssServer
from tests.cluster.pod_helpers import (
    POD_TIMEOUT_S,
    is_ready,
    make_pod,
    shell_container,
    wait_for_log,
    wait_pod,
)

AK_ID, AK_SECRET = "LTAI-node-test", "node-test-secret"
BUCKET = "models"
PREFIX = "llm/tiny/v1"
MODEL_FILES = {"config.json": b'{"num_attention_heads": 4}', "sub/weights.bin": b"\x00\x01w"}


@pytest.fixture
def oss(tmp_path: Path) -> Iterator[OssServer]:
    # The node agent (the CSI stand-in) runs in the harness namespace, as the CSI node plugin
    # runs on the host network: the harness's loopback reaches it.
    with OssServer(tmp_path / "oss", credentials={AK_ID: AK_SECRET}, buckets=[BUCKET]) as server:
        bucket = oss2.Bucket(oss2.Auth(AK_ID, AK_SECRET), server.endpoint, BUCKET)
        for rel, data in MODEL_FILES.items():
            bucket.put_object(f"{PREFIX}/{rel}", data)
        bucket.put_object("llm/other/ignored.txt", b"not under the PV's path")
        yield server


def _secret(name: str, key_id: str, secret: str) -> dict[str, Any]:
    data = {"akId": key_id, "akSecret": secret}
    return {
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _storage(admin: k8s.ApiClient, namespace: str, url: str, secret_name: str) -> str:
    """A static OSS PV and its claim "model", shaped as manifests/storage.yaml.j2 renders
    them; returns the PV's name."""
    pv_name = f"{namespace}-model"
    core = k8s.CoreV1Api(admin)
    core.create_persistent_volume(
        {
            "metadata": {"name": pv_name, "labels": {"alicloud-pvname": pv_name}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "csi": {
                    "driver": "ossplugin.csi.alibabacloud.com",
                    "volumeHandle": pv_name,
                    "readOnly": True,
                    "nodePublishSecretRef": {"name": secret_name, "namespace": namespace},
                    "volumeAttributes": {
                        "bucket": BUCKET,
                        "url": url,
                        "path": f"/{PREFIX}",
                    },
                },
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "model"},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "resources": {"requests": {"storage": "1Gi"}},
                "selector": {"matchLabels": {"alicloud-pvname": pv_name}},
            },
        },
    )
    wait_for(
        core.list_namespaced_persistent_volume_claim,
        lambda items: len(items) == 1 and items[0].status.phase == "Bound",
        namespace=namespace,
        timeout_s=POD_TIMEOUT_S,
        what="the model claim bound by the PV controller",
    )
    return pv_name


@pytest.fixture
def model_pv(admin: k8s.ApiClient, namespace: str, oss: OssServer) -> Iterator[str]:
    """The model PV (its Secret "oss-keys" left to the test) and its bound claim "model"."""
    pv_name = _storage(admin, namespace, oss.endpoint, "oss-keys")
    yield pv_name
    k8s.CoreV1Api(admin).delete_persistent_volume(pv_name)


def _model_pod(name: str, script: str) -> dict[str, Any]:
    container = shell_container(
        "main",
        script,
        volumeMounts=[
            {"name": "model", "mountPath": "/models/tiny", "readOnly": True},
            {"name": "model", "mountPath": "/models/tiny-sub", "subPath": "sub"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    )
    return make_pod(
        name,
        [container],
        volumes=[
            {"name": "model", "persistentVolumeClaim": {"claimName": "model", "readOnly": True}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        ],
    )


def test_emptydir_configmap_and_secret_volumes(
    cluster: Cluster, admin: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cfg"}, "data": {"a.txt": "alpha", "b.txt": "beta"}}
    )
    core.create_namespaced_secret(namespace, _secret("creds", "id-1", "s-1"))
    writer = shell_container(
        "writer",
        "echo shared-by-writer > /scratch/note; exec sleep 3600",
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    reader = shell_container(
        "reader",
        "while [ ! -f /scratch/note ]; do sleep 0.1; done; echo note=$(cat /scratch/note); "
        "echo cfg=$(cat /etc/cfg/renamed) mode=$(stat -c %a /etc/cfg/renamed); "
        "ls /etc/cfg | tr '\\n' ' ' | sed 's/^/cfg-files=/'; echo; "
        "echo id=$(cat /etc/creds/akId) mode=$(stat -c %a /etc/creds/akId); "
        "echo shm_kb=$(df -k /dev/shm | tail -1 | awk '{print $2}'); "
        "touch /etc/cfg/x 2>/dev/null || echo cfg-readonly; echo done; exec sleep 3600",
        volumeMounts=[
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "cfg", "mountPath": "/etc/cfg"},
            {"name": "creds", "mountPath": "/etc/creds"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    )
    pod = make_pod(
        "vols",
        [writer, reader],
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {
                "name": "cfg",
                "configMap": {
                    "name": "cfg",
                    "items": [{"key": "a.txt", "path": "renamed", "mode": 0o600}],
                },
            },
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o440}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Mi"}},
        ],
    )
    core.create_namespaced_pod(namespace, pod)
    wait_pod(admin, namespace, "vols", "Ready", is_ready)
    lines = wait_for_log(core, namespace, "vols", "reader", "done")
    assert "note=shared-by-writer" in lines
    assert "cfg=alpha mode=600" in lines
    assert "cfg-files=renamed " in lines
    assert "id=id-1 mode=440" in lines
    assert "shm_kb=32768" in lines
    assert "cfg-readonly" in lines


def test_the_model_claim_mounts_the_oss_objects_read_only(
    admin: k8s.ApiClient, namespace: str, oss: OssServer, model_pv: str
) -> None:
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_secret(namespace, _secret("oss-keys", AK_ID, AK_SECRET))
    script = (
        "echo config=$(cat /models/tiny/config.json); echo weights=$(od -An -tx1 "
        "/models/tiny/sub/weights.bin | tr -d ' '); ls -R /models/tiny | tr '\\n' ' ' | "
        "sed 's/^/tree=/'; echo; touch /models/tiny/x 2>/dev/null || echo model-readonly; "
        "echo shm_kb=$(df -k /dev/shm | tail -1 | awk '{print $2}'); "
        "echo sub=$(ls /models/tiny-sub); echo done; exec sleep 3600"
    )
    core.create_namespaced_pod(namespace, _model_pod("reader", script))
    wait_pod(admin, namespace, "reader", "Ready", is_ready)
    lines = wait_for_log(core, namespace, "reader", "main", "done")
    assert 'config={"num_attention_heads": 4}' in lines
    assert "weights=000177" in lines
    tree = next(line for line in lines if line.startswith("tree="))
    assert "ignored.txt" not in tree and "config.json" in tree and "weights.bin" in tree
    assert "model-readonly" in lines
    assert "shm_kb=65536" in lines
    assert "sub=weights.bin" in lines  # subPath: the claim's sub/ directory alone
    gets = [r for r in oss.request_log.snapshot() if r.op == "GetObject"]
    assert sorted(r.key for r in gets) == sorted(f"{PREFIX}/{k}" for k in MODEL_FILES)


def _failed_mounts(admin: k8s.ApiClient, namespace: str, pod: str) -> list[str]:
    events = k8s.CoreV1Api(admin).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={pod}"
    )
    return [e.message for e in events.items if e.reason == "FailedMount"]


def _wait_failed_mount(admin: k8s.ApiClient, namespace: str, pod: str, text: str) -> None:
    wait_for(
        k8s.CoreV1Api(admin).list_namespaced_event,
        lambda items: any(e.reason == "FailedMount" and text in e.message for e in items),
        namespace=namespace,
        field_selector=f"involvedObject.name={pod}",
        timeout_s=POD_TIMEOUT_S,
        what=f"a FailedMount event of {pod} with {text!r}",
    )


def _wait_container_status(core: k8s.CoreV1Api, namespace: str, name: str) -> Any:
    """The pod once the node agent has posted its container statuses: the FailedMount event is
    recorded before the agent's next status post, so a read right after the event can see
    none yet."""
    (pod,) = wait_for(
        core.list_namespaced_pod,
        lambda items: bool(items and items[0].status.container_statuses),
        namespace=namespace,
        field_selector=f"metadata.name={name}",
        timeout_s=60,
        what=f"pod {namespace}/{name}'s container status",
    )
    return pod


def test_mount_failures_are_failedmount_events_and_retried(
    admin: k8s.ApiClient, namespace: str, model_pv: str
) -> None:
    core = k8s.CoreV1Api(admin)
    pv_name = model_pv
    core.create_namespaced_pod(namespace, _model_pod("waiter", "echo mounted; exec sleep 3600"))
    _wait_failed_mount(
        admin,
        namespace,
        "waiter",
        f'MountVolume.SetUp failed for volume "{pv_name}" : fetching NodePublishSecretRef '
        f"{namespace}/oss-keys failed",
    )
    pod = _wait_container_status(core, namespace, "waiter")
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.reason == "ContainerCreating"

    core.create_namespaced_secret(namespace, _secret("oss-keys", AK_ID, "wrong-secret"))
    _wait_failed_mount(admin, namespace, "waiter", "403 SignatureDoesNotMatch")
    assert all("wrong-secret" not in m for m in _failed_mounts(admin, namespace, "waiter"))

    core.replace_namespaced_secret("oss-keys", namespace, _secret("oss-keys", AK_ID, AK_SECRET))
    wait_pod(admin, namespace, "waiter", "Ready once the keys are right", is_ready)


def test_an_unreachable_oss_endpoint_fails_the_mount(admin: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_secret(namespace, _secret("oss-keys", AK_ID, AK_SECRET))
    # Port 9 (discard) of the harness's loopback: nothing listens there.
    pv_name = _storage(admin, namespace, "http://127.0.0.1:9", "oss-keys")
    try:
        core.create_namespaced_pod(namespace, _model_pod("stuck", "exec sleep 3600"))
        _wait_failed_mount(
            admin,
            namespace,
            "stuck",
            f'MountVolume.SetUp failed for volume "{pv_name}" : rpc error: code = Internal '
            "desc = ossfs stand-in: oss endpoint http://127.0.0.1:9 unreachable",
        )
        pod = _wait_container_status(core, namespace, "stuck")
        assert pod.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    finally:
        core.delete_persistent_volume(pv_name)
