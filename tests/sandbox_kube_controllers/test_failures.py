"""Scheduling failures and each pod failure kind, as the real client sees them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.kube.nodes import NodeSpec

from .conftest import Kube, deployment, wait_for


def _one_pod(kube: Kube, ns: str, selector: str) -> Any:
    pods = wait_for(lambda: kube.pods(ns, selector), 10, f"a pod for {selector}")
    return pods[0]


def _container_status(kube: Kube, ns: str, selector: str) -> Any:
    pod = _one_pod(kube, ns, selector)
    statuses = pod.status.container_statuses or []
    return statuses[0] if statuses else None


def test_unschedulable_pod_gets_failed_scheduling_and_binds_once_room_frees(
    kube: Kube, ns: str
) -> None:
    kube.apps.create_namespaced_deployment(ns, deployment("big", gpus=16))
    pod = wait_for(
        lambda: [
            p
            for p in kube.pods(ns, "app=big")
            if any(
                c.type == "PodScheduled" and c.reason == "Unschedulable"
                for c in p.status.conditions or []
            )
        ],
        10,
        "PodScheduled=False/Unschedulable",
    )[0]
    cond = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert cond.status == "False"
    expected = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption:"
    assert cond.message.startswith(expected)
    events = wait_for(lambda: kube.events(ns, "FailedScheduling"), 5, "FailedScheduling event")
    assert events[0].type == "Warning"
    assert events[0].message.startswith(expected)
    assert pod.status.phase == "Pending" and pod.spec.node_name is None
    # Shrink the request: the new pod fits and the deployment becomes available.
    kube.apps.patch_namespaced_deployment(
        "big",
        ns,
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "engine", "resources": {"limits": {"nvidia.com/gpu": "8"}}}
                        ]
                    }
                }
            }
        },
    )
    wait_for(
        lambda: kube.available(ns, "big") == 1,
        10,
        "deployment available after the request shrank",
    )


def test_image_pull_error_then_back_off(kube: Kube, ns: str, cluster: SandboxCluster) -> None:
    cluster.kubelet.inject_image_pull_error(workload="badimg")
    kube.apps.create_namespaced_deployment(
        ns, deployment("badimg", image="registry.example/vllm:nope")
    )
    cs = wait_for(
        lambda: (
            (s := _container_status(kube, ns, "app=badimg"))
            and s.state.waiting
            and s.state.waiting.reason == "ImagePullBackOff"
            and s
        ),
        10,
        "ImagePullBackOff",
    )
    assert (
        cs.ready is False
        and cs.state.waiting.message == 'Back-off pulling image "registry.example/vllm:nope"'
    )
    failed = [e.message for e in kube.events(ns, "Failed")]
    assert any(
        m.startswith('Failed to pull image "registry.example/vllm:nope": rpc error:')
        for m in failed
    )
    assert "Error: ErrImagePull" in failed and "Error: ImagePullBackOff" in failed
    assert any(
        e.message == 'Back-off pulling image "registry.example/vllm:nope"'
        for e in kube.events(ns, "BackOff")
    )
    assert kube.available(ns, "badimg") == 0
    # Fixing the registry lets the next pull succeed.
    cluster.kubelet.clear()
    wait_for(
        lambda: kube.available(ns, "badimg") == 1,
        15,
        "available after the pull fault was cleared",
    )


def test_crash_loop_back_off_with_logs_and_previous_logs(
    kube: Kube, ns: str, cluster: SandboxCluster
) -> None:
    lines = ("Traceback (most recent call last):", "RuntimeError: CUDA error: out of memory")
    cluster.kubelet.inject_crash_loop(workload="crashy", log_lines=lines)
    kube.apps.create_namespaced_deployment(ns, deployment("crashy"))
    cs = wait_for(
        lambda: (
            (s := _container_status(kube, ns, "app=crashy"))
            and s.restart_count >= 2
            and s.state.waiting
            and s.state.waiting.reason == "CrashLoopBackOff"
            and s
        ),
        15,
        "CrashLoopBackOff with restarts",
    )
    assert cs.last_state.terminated.exit_code == 1
    assert cs.last_state.terminated.reason == "Error"
    pod = _one_pod(kube, ns, "app=crashy")
    assert pod.status.phase == "Running"
    assert any(
        "Back-off restarting failed container engine" in e.message
        for e in kube.events(ns, "BackOff")
    )
    previous = kube.core.read_namespaced_pod_log(
        pod.metadata.name, ns, container="engine", previous=True
    )
    assert previous.rstrip("\n").splitlines()[-2:] == list(lines)
    tail = kube.core.read_namespaced_pod_log(pod.metadata.name, ns, previous=True, tail_lines=1)
    assert tail.strip() == lines[-1]
    restarts = cs.restart_count
    wait_for(
        lambda: _container_status(kube, ns, "app=crashy").restart_count > restarts,
        15,
        "restartCount keeps increasing",
    )


def test_oom_killed_then_crash_loop(kube: Kube, ns: str, cluster: SandboxCluster) -> None:
    cluster.kubelet.inject_oom(workload="hungry")
    kube.apps.create_namespaced_deployment(ns, deployment("hungry"))
    cs = wait_for(
        lambda: (
            (s := _container_status(kube, ns, "app=hungry"))
            and s.last_state
            and s.last_state.terminated
            and s.state.waiting
            and s
        ),
        15,
        "OOMKilled in lastState",
    )
    assert cs.last_state.terminated.reason == "OOMKilled"
    assert cs.last_state.terminated.exit_code == 137
    assert cs.state.waiting.reason == "CrashLoopBackOff"
    assert cs.restart_count >= 1


def test_failed_mount_keeps_the_pod_creating(kube: Kube, ns: str, cluster: SandboxCluster) -> None:
    cluster.kubelet.inject_mount_failure(workload="mnt", volume="model")
    dep = deployment("mnt")
    dep["spec"]["template"]["spec"]["volumes"] = [{"name": "model", "emptyDir": {}}]
    kube.apps.create_namespaced_deployment(ns, dep)
    events = wait_for(lambda: kube.events(ns, "FailedMount"), 10, "FailedMount event")
    assert events[0].type == "Warning"
    assert events[0].message.startswith('MountVolume.SetUp failed for volume "model" : ')
    cs = _container_status(kube, ns, "app=mnt")
    assert cs.state.waiting.reason == "ContainerCreating"
    pod = _one_pod(kube, ns, "app=mnt")
    assert pod.status.phase == "Pending"
    cluster.kubelet.clear()
    wait_for(
        lambda: kube.available(ns, "mnt") == 1,
        15,
        "available once the volume mounts",
    )


def test_missing_secret_volume_is_a_failed_mount(kube: Kube, ns: str) -> None:
    dep = deployment("nosecret")
    dep["spec"]["template"]["spec"]["volumes"] = [
        {"name": "creds", "secret": {"secretName": "oss-ak"}}
    ]
    kube.apps.create_namespaced_deployment(ns, dep)
    events = wait_for(lambda: kube.events(ns, "FailedMount"), 10, "FailedMount event")
    assert (
        events[0].message
        == 'MountVolume.SetUp failed for volume "creds" : secret "oss-ak" not found'
    )
    kube.core.create_namespaced_secret(
        ns, {"metadata": {"name": "oss-ak"}, "stringData": {"akId": "x"}}
    )
    wait_for(
        lambda: kube.available(ns, "nosecret") == 1,
        15,
        "available once the secret exists",
    )


def test_node_lost_pods_are_replaced_on_the_healthy_node(shared_crds: Path, tmp_path: Path) -> None:
    config = ClusterConfig(crd_dir=shared_crds, nodes=[NodeSpec("node-a"), NodeSpec("node-b")])
    with SandboxCluster(config, tmp_path) as cluster:
        kube = Kube(cluster)
        ns = kube.new_namespace()
        kube.apps.create_namespaced_deployment(ns, deployment("svc", replicas=2, gpus=4))
        wait_for(
            lambda: kube.available(ns, "svc") == 2,
            10,
            "deployment available",
        )
        victim = kube.pods(ns, "app=svc")[0]
        lost = victim.spec.node_name
        cluster.kubelet.lose_node(lost)
        node = kube.core.read_node(lost)
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "Unknown"
        assert any(t.key == "node.kubernetes.io/unreachable" for t in node.spec.taints)

        def replaced() -> bool:
            pods = [p for p in kube.pods(ns, "app=svc") if p.metadata.deletion_timestamp is None]
            return (
                len(pods) == 2
                and all(p.spec.node_name and p.spec.node_name != lost for p in pods)
                and kube.available(ns, "svc") == 2
            )

        wait_for(replaced, 15, "pods replaced on the healthy node")
        names = {p.metadata.name for p in kube.pods(ns, "app=svc")}
        assert victim.metadata.name not in names
        assert kube.events(ns, "TaintManagerEviction")
        cluster.kubelet.restore_node(lost)
        node = kube.core.read_node(lost)
        assert next(c for c in node.status.conditions if c.type == "Ready").status == "True"
        assert cluster.controller_errors() == []
