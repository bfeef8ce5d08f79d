"""Deployment, StatefulSet, LeaderWorkerSet and garbage collection, through the real client."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from kubernetes import watch

from sandbox.kube.cluster import SandboxCluster

from .conftest import Kube, container, deployment, wait_for

LWS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")


def _deploy_available(kube: Kube, ns: str, name: str, replicas: int) -> Any:
    def check() -> Any:
        d = kube.apps.read_namespaced_deployment(name, ns)
        if d.status is None:
            return None
        conds = {c.type: c for c in d.status.conditions or []}
        ok = (
            d.status.available_replicas == replicas
            and d.status.updated_replicas == replicas
            and d.status.observed_generation == d.metadata.generation
            and conds.get("Available") is not None
            and conds["Available"].status == "True"
        )
        return d if ok else None

    return wait_for(check, 10, f"deployment {name} available")


def test_deployment_becomes_available_with_replicasets_and_pods(kube: Kube, ns: str) -> None:
    kube.apps.create_namespaced_deployment(ns, deployment("web", replicas=2))
    d = _deploy_available(kube, ns, "web", 2)
    conds = {c.type: c for c in d.status.conditions}
    assert conds["Available"].reason == "MinimumReplicasAvailable"
    assert conds["Progressing"].reason == "NewReplicaSetAvailable"
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    rss = kube.apps.list_namespaced_replica_set(ns).items
    assert len(rss) == 1
    rs = rss[0]
    assert rs.metadata.owner_references[0].kind == "Deployment"
    phash = rs.metadata.labels["pod-template-hash"]
    assert rs.metadata.name == f"web-{phash}"
    pods = kube.pods(ns, "app=web")
    assert len(pods) == 2
    for pod in pods:
        assert pod.metadata.labels["pod-template-hash"] == phash
        assert pod.metadata.owner_references[0].name == rs.metadata.name
        assert pod.status.phase == "Running"
        assert pod.spec.node_name in ("gpu-node-a", "gpu-node-b")
        assert pod.status.container_statuses[0].ready is True
    reasons = {e.reason for e in kube.events(ns)}
    assert {"Scheduled", "Pulling", "Pulled", "Created", "Started"} <= reasons
    assert "ScalingReplicaSet" in reasons


def test_deployment_rolling_update_replaces_pods(kube: Kube, ns: str) -> None:
    kube.apps.create_namespaced_deployment(ns, deployment("roll", replicas=2))
    _deploy_available(kube, ns, "roll", 2)
    old = {p.metadata.name for p in kube.pods(ns, "app=roll")}
    kube.apps.patch_namespaced_deployment(
        "roll",
        ns,
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"name": "engine", "image": "vllm/vllm-openai:v0.11.0"}]
                    }
                }
            }
        },
    )

    def rolled() -> bool:
        d = kube.apps.read_namespaced_deployment("roll", ns)
        if d.status is None:
            return False
        pods = [p for p in kube.pods(ns, "app=roll") if p.metadata.deletion_timestamp is None]
        return (
            d.status.observed_generation == 2
            and d.status.updated_replicas == 2
            and d.status.available_replicas == 2
            and (d.status.replicas or 0) == 2
            and not ({p.metadata.name for p in pods} & old)
        )

    wait_for(rolled, 15, "rolling update done")
    assert len(kube.apps.list_namespaced_replica_set(ns).items) == 2
    d = kube.apps.read_namespaced_deployment("roll", ns)
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "2"


def test_service_proxy_reaches_a_ready_pods_backend(
    kube: Kube, ns: str, cluster: SandboxCluster
) -> None:
    args = ["--model", "/models/Qwen3-32B", "--served-model-name", "qwen3"]
    kube.apps.create_namespaced_deployment(ns, deployment("chat", replicas=1, args=args))
    kube.core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "chat"},
            "spec": {"selector": {"app": "chat"}, "ports": [{"port": 80, "targetPort": 8000}]},
        },
    )
    _deploy_available(kube, ns, "chat", 1)
    base = f"{cluster.url}/api/v1/namespaces/{ns}/services/chat:80/proxy"
    models = httpx.get(f"{base}/v1/models", timeout=10).json()
    assert models["data"][0]["id"] == "qwen3"
    assert models["data"][0]["root"] == "/models/Qwen3-32B"
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "hello"}]}
    plain = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10)
    assert plain.status_code == 200
    answer = plain.json()["choices"][0]["message"]["content"]
    assert answer == cluster.scripted.default.answer
    assert plain.json()["usage"]["completion_tokens"] > 0
    chunks: list[str] = []
    events: list[dict[str, Any]] = []
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=stream_body, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    events = [json.loads(c) for c in chunks[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == answer
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    wrong = httpx.post(f"{base}/v1/chat/completions", json={**body, "model": "nope"}, timeout=10)
    assert wrong.status_code == 404
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert "vllm:time_to_first_token_seconds_count" in metrics


def _sts_ready(kube: Kube, ns: str, name: str) -> int:
    status = kube.apps.read_namespaced_stateful_set(name, ns).status
    return int((status.ready_replicas if status else 0) or 0)


def test_statefulset_creates_ordinal_pods_in_order(kube: Kube, ns: str) -> None:
    sts = {
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 3,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [container()]},
            },
        },
    }
    kube.apps.create_namespaced_stateful_set(ns, sts)
    wait_for(
        lambda: _sts_ready(kube, ns, "db") == 3,
        10,
        "statefulset ready",
    )
    pods = sorted(kube.pods(ns, "app=db"), key=lambda p: p.metadata.name)
    assert [p.metadata.name for p in pods] == ["db-0", "db-1", "db-2"]
    assert [p.metadata.labels["apps.kubernetes.io/pod-index"] for p in pods] == ["0", "1", "2"]
    # OrderedReady: each pod was created only after the previous one was Ready.
    created = [p.metadata.creation_timestamp for p in pods]
    ready = [
        next(c.last_transition_time for c in p.status.conditions if c.type == "Ready") for p in pods
    ]
    assert created[1] >= ready[0] and created[2] >= ready[1]
    assert all(p.spec.subdomain == "db" and p.spec.hostname == p.metadata.name for p in pods)


def _lws(
    name: str, *, replicas: int = 1, size: int = 2, startup: str = "LeaderReady"
) -> dict[str, Any]:
    args = [
        "--model",
        "/models/Qwen3-32B",
        "--served-model-name",
        "qwen3",
        "--tensor-parallel-size",
        "2",
    ]
    leader = container("vllm-leader", args=args, gpus=8)
    worker = container("vllm-worker", port=None, gpus=8)
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "startupPolicy": startup,
            "leaderWorkerTemplate": {
                "size": size,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": {"labels": {"role": "leader"}},
                    "spec": {"containers": [leader]},
                },
                "workerTemplate": {"spec": {"containers": [worker]}},
            },
        },
    }


def _lws_available(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kube.custom.get_namespaced_custom_object(*LWS[:2], ns, LWS[2], name)
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        avail = conds.get("Available")
        if avail and avail["status"] == "True":
            return obj
        return None

    return wait_for(check, 10, f"LWS {name} Available")


def test_lws_leader_and_workers_with_env_labels_and_leader_ready_ordering(
    kube: Kube, ns: str
) -> None:
    w = watch.Watch()
    order: list[tuple[str, str]] = []
    kube.custom.create_namespaced_custom_object(*LWS[:2], ns, LWS[2], _lws("qwen", size=2))
    # Watch pods: the worker must be ADDED only after the leader turned Ready.
    for ev in w.stream(kube.core.list_namespaced_pod, ns, timeout_seconds=10):
        pod = ev["object"]
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        order.append((ev["type"], pod.metadata.name + (":ready" if ready else "")))
        if pod.metadata.name == "qwen-0-1" and ready:
            w.stop()
    added_worker = order.index(("ADDED", "qwen-0-1"))
    leader_ready = next(i for i, o in enumerate(order) if o[1] == "qwen-0:ready")
    assert leader_ready < added_worker, order
    obj = _lws_available(kube, ns, "qwen")
    st = obj["status"]
    assert st["replicas"] == 1 and st["readyReplicas"] == 1 and st["updatedReplicas"] == 1
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Available"]["reason"] == "AllGroupsReady"
    leader = kube.core.read_namespaced_pod("qwen-0", ns)
    worker = kube.core.read_namespaced_pod("qwen-0-1", ns)
    assert leader.spec.node_name != worker.spec.node_name  # 8 GPUs each: one node per pod
    for pod, index in ((leader, "0"), (worker, "1")):
        labels = pod.metadata.labels
        assert labels["leaderworkerset.sigs.k8s.io/name"] == "qwen"
        assert labels["leaderworkerset.sigs.k8s.io/group-index"] == "0"
        assert labels["leaderworkerset.sigs.k8s.io/worker-index"] == index
        assert labels["leaderworkerset.sigs.k8s.io/group-key"]
        assert labels["leaderworkerset.sigs.k8s.io/template-revision-hash"]
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["LWS_LEADER_ADDRESS"] == f"qwen-0.qwen.{ns}"
        assert env["LWS_GROUP_SIZE"] == "2"
        assert env["LWS_WORKER_INDEX"] == index
    assert leader.metadata.labels["role"] == "leader"
    assert "role" not in worker.metadata.labels
    svc = kube.core.read_namespaced_service("qwen", ns)
    assert svc.spec.cluster_ip == "None"
    assert svc.spec.selector == {"leaderworkerset.sigs.k8s.io/name": "qwen"}


def test_lws_recreates_the_group_when_a_pod_restarts(
    kube: Kube, ns: str, cluster: SandboxCluster
) -> None:
    kube.custom.create_namespaced_custom_object(
        *LWS[:2], ns, LWS[2], _lws("grp", size=2, startup="LeaderCreated")
    )
    _lws_available(kube, ns, "grp")
    leader_uid = kube.core.read_namespaced_pod("grp-0", ns).metadata.uid
    worker_uid = kube.core.read_namespaced_pod("grp-0-1", ns).metadata.uid
    # The worker crashes once: its restart must take the whole group down.
    rule = cluster.kubelet.inject_crash_loop(
        selector={"leaderworkerset.sigs.k8s.io/worker-index": "1"}
    )

    def recreated() -> bool:
        try:
            pod = kube.core.read_namespaced_pod("grp-0", ns)
        except Exception:
            return False
        return pod.metadata.uid != leader_uid

    wait_for(recreated, 10, "leader pod recreated after a worker restart")
    cluster.kubelet.clear(rule)
    events = kube.events(ns, "RecreateGroupOnPodRestart")
    assert events and events[0].involved_object.kind == "LeaderWorkerSet"
    obj = _lws_available(kube, ns, "grp")
    assert obj["status"]["readyReplicas"] == 1
    new_worker = kube.core.read_namespaced_pod("grp-0-1", ns)
    assert new_worker.metadata.uid != worker_uid
    assert new_worker.status.container_statuses[0].restart_count == 0


def test_delete_propagates_to_dependents(kube: Kube, ns: str) -> None:
    kube.apps.create_namespaced_deployment(ns, deployment("gone", replicas=2))
    _deploy_available(kube, ns, "gone", 2)
    kube.custom.create_namespaced_custom_object(*LWS[:2], ns, LWS[2], _lws("gonelws", size=2))
    _lws_available(kube, ns, "gonelws")
    kube.apps.delete_namespaced_deployment("gone", ns)
    kube.custom.delete_namespaced_custom_object(*LWS[:2], ns, LWS[2], "gonelws")
    wait_for(
        lambda: (
            not kube.pods(ns)
            and not kube.apps.list_namespaced_replica_set(ns).items
            and not kube.apps.list_namespaced_stateful_set(ns).items
        ),
        10,
        "pods, ReplicaSets and StatefulSets garbage-collected",
    )
    assert not [
        s for s in kube.core.list_namespaced_service(ns).items if s.metadata.name == "gonelws"
    ]


def test_a_fresh_cluster_starts_and_a_two_node_lws_becomes_available(
    kube: Kube, shared_crds: Any, tmp_path: Any
) -> None:
    from sandbox.kube.cluster import ClusterConfig

    began = time.perf_counter()
    with SandboxCluster(ClusterConfig(crd_dir=shared_crds), tmp_path) as fresh:
        started = time.perf_counter() - began
        k = Kube(fresh)
        ns = k.new_namespace()
        t0 = time.perf_counter()
        k.custom.create_namespaced_custom_object(*LWS[:2], ns, LWS[2], _lws("timed", size=2))
        lws = _lws_available(k, ns, "timed")
        lws_ready = time.perf_counter() - t0
        pods = k.pods(ns, "leaderworkerset.sigs.k8s.io/name=timed")
    print(
        f"\ncluster start: {started:.2f} s (internal {fresh.start_seconds:.2f} s); "
        f"2-node LWS (LeaderReady) Available: {lws_ready:.2f} s"
    )
    # The figures are printed, not asserted (the wait above is bounded): one group of a
    # leader and its worker, both Ready, on a cluster that started from nothing.
    assert lws["status"]["readyReplicas"] == 1
    assert len(pods) == 2
    assert all(
        any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        for p in pods
    ), [p.metadata.name for p in pods]
