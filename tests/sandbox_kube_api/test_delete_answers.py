"""What a DELETE answers, per registry, as the typed client deserializes it.

Registries built with ReturnDeletedObject (pods, services, PVs, PVCs, namespaces, service
accounts) and CRDs answer the object; the others (Deployments, ConfigMaps, custom resources,
...) a Status naming it. A delete that leaves the object in place (graceful pod deletion, a
GC finalizer from Foreground/Orphan propagation) answers the object with deletionTimestamp.
"""

from __future__ import annotations

import json

from kubernetes import client

LWS = ("leaderworkerset.x-k8s.io", "v1")


def _deployment(name: str) -> dict[str, object]:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "x:1"}]},
            },
        },
    }


def test_core_deletes_answer_the_object(core: client.CoreV1Api, ns: str) -> None:
    pv = core.create_persistent_volume(
        {
            "metadata": {"name": f"pv-{ns}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "csi": {"driver": "ossplugin.csi.alibabacloud.com", "volumeHandle": f"pv-{ns}"},
            },
        }
    )
    gone = core.delete_persistent_volume(f"pv-{ns}")
    assert isinstance(gone, client.V1PersistentVolume)
    assert gone.metadata.uid == pv.metadata.uid and gone.spec.capacity == {"storage": "1Gi"}

    # Not scheduled, so nothing to wait for: deleted at once, the final object answered.
    core.create_namespaced_pod(
        ns, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}
    )
    pod = core.delete_namespaced_pod("p", ns)
    assert isinstance(pod, client.V1Pod) and pod.metadata.name == "p"
    assert pod.metadata.deletion_timestamp is None

    namespace = core.delete_namespace(ns)  # this client types the answer as a plain dict
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == ns


def test_other_deletes_answer_a_status(
    apps: client.AppsV1Api, custom: client.CustomObjectsApi, ns: str
) -> None:
    created = apps.create_namespaced_deployment(ns, _deployment("d"))
    # This client types these answers as plain dicts.
    dry = apps.delete_namespaced_deployment("d", ns, dry_run="All")
    assert dry["kind"] == "Status" and dry["status"] == "Success"
    assert apps.read_namespaced_deployment("d", ns).metadata.uid == created.metadata.uid
    status = apps.delete_namespaced_deployment("d", ns)
    assert status["kind"] == "Status" and status["status"] == "Success"
    assert status["details"] == {
        "name": "d",
        "group": "apps",
        "kind": "deployments",
        "uid": created.metadata.uid,
    }

    lws = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "l"},
        "spec": {
            "leaderWorkerTemplate": {
                "size": 1,
                "workerTemplate": {"spec": {"containers": [{"name": "c", "image": "x:1"}]}},
            }
        },
    }
    custom.create_namespaced_custom_object(*LWS, ns, "leaderworkersets", lws)
    answer = custom.delete_namespaced_custom_object(*LWS, ns, "leaderworkersets", "l")
    assert answer["kind"] == "Status" and answer["status"] == "Success"
    assert answer["details"]["kind"] == "leaderworkersets" and answer["details"]["name"] == "l"


def test_foreground_delete_answers_the_marked_object(apps: client.AppsV1Api, ns: str) -> None:
    apps.create_namespaced_deployment(ns, _deployment("fg"))
    raw = apps.delete_namespaced_deployment(
        "fg", ns, propagation_policy="Foreground", _preload_content=False
    )
    body = json.loads(raw.data)
    assert body["kind"] == "Deployment" and body["metadata"]["name"] == "fg"
    assert body["metadata"]["deletionTimestamp"]
    assert body["metadata"]["finalizers"] == ["foregroundDeletion"]
