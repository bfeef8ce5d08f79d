"""The cluster runs in the test run's own network namespace; the root namespace gains no route."""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path

import psutil
import pytest
from kubernetes import client as k8s

from sandbox.cluster import netns
from sandbox.cluster.control_plane import (
    Cluster,
    ClusterConfig,
    ClusterPorts,
    start_cluster,
    stop_cluster,
)
from sandbox.cluster.node_agent import NodeSpec
from sandbox.cluster.pods.memory import memory_controller_unavailable, own_memory_cgroup
from sandbox.cluster.pods.sandbox import veth_name
from tests.cluster.pod_helpers import (
    interfaces,
    is_ready,
    make_pod,
    marked_processes,
    shell_container,
    wait_pod,
)

OUR_PREFIXES = [
    ipaddress.ip_network(netns.POD_PREFIX),
    ipaddress.ip_network(ClusterConfig(nodes=()).service_cidr),
]


def test_cluster_runs_in_a_namespace_of_its_own_without_a_way_out(cluster: Cluster) -> None:
    assert netns.in_own_namespace()
    own_routes = netns.ipv4_routes("self")
    assert ipaddress.ip_network("0.0.0.0/0") not in [dest for _, dest in own_routes]
    # The API server advertises an address of the private prefix, not a loopback one: the real
    # API server refuses to proxy to 127.0.0.0/8 (IsProxyableIP, k8s.io/kubernetes pkg/proxy/util).
    assert ipaddress.ip_address(cluster.advertise_ip) in ipaddress.ip_network(netns.POD_PREFIX)


def test_root_namespace_gains_no_route_to_our_private_ranges(
    cluster: Cluster, root_routes_before: tuple[list[tuple[str, str]], list[str]]
) -> None:
    # PID 1 lives in the root network namespace; its routing table is the host's.
    root_v4 = netns.ipv4_routes("1")
    for iface, dest in root_v4:
        for prefix in OUR_PREFIXES:
            assert not dest.overlaps(prefix) or dest.prefixlen == 0, (
                f"root namespace routes {dest} via {iface}, inside our {prefix}"
            )
    before_v4, before_v6 = root_routes_before
    assert [(iface, str(dest)) for iface, dest in root_v4] == before_v4
    assert netns.ipv6_route_lines("1") == before_v6


# A start of its own inside the test (11 s on an idle machine, several times that under load).
@pytest.mark.timeout(240, func_only=True)
def test_a_short_lived_cluster_runs_beside_the_session_one_and_leaves_nothing(
    cluster: Cluster, gpu_nodes: tuple[NodeSpec, ...]
) -> None:
    solo = NodeSpec(name="solo-node", internal_ip="10.244.254.9", gpus=1)
    # The node agents' memory cgroups, under ours (sandbox/cluster/pods/memory.py).
    own_cgroup = own_memory_cgroup(Path("/proc/self/cgroup").read_text())
    cgroups_before = set(own_cgroup.glob("llm-rollout-*")) if own_cgroup else set()
    limited = own_cgroup is not None and not memory_controller_unavailable()
    extra = start_cluster(
        ClusterConfig(
            nodes=(solo,),
            with_kuberay=False,
            with_lws=False,
            ports=ClusterPorts().shifted(100),
            # Pod ranges of its own, apart from the session cluster's 10.244.0.0/17.
            cluster_cidr="10.244.64.0/18",
            # The DNS address and kube-proxy's nftables table belong to the namespace, which
            # the session cluster's own already hold.
            with_dns=False,
            with_kube_proxy=False,
        )
    )
    marker = uuid.uuid4().hex
    try:
        extra_admin = extra.api_client()
        extra_nodes = k8s.CoreV1Api(extra_admin).list_node().items
        assert [n.metadata.name for n in extra_nodes] == [solo.name]
        # A pod left running when the cluster stops: the node agent's stop takes it down.
        k8s.CoreV1Api(extra_admin).create_namespaced_pod(
            "default",
            make_pod(
                "left-running",
                [
                    shell_container(
                        "main",
                        f"exec sleep 3600 # {marker}",
                        env=[{"name": "MARKER", "value": marker}],
                        resources={"limits": {"memory": "64Mi"}},
                    )
                ],
            ),
        )
        running = wait_pod(extra_admin, "default", "left-running", "Ready", is_ready)
        assert marked_processes(marker)
        veth = veth_name(running.metadata.uid)
        assert veth in interfaces()
        pod_cgroups = f"llm-rollout-*/{running.metadata.uid}/main-0"
        memory_cgroups = set(own_cgroup.glob(pod_cgroups)) if own_cgroup and limited else set()
        assert memory_cgroups or not limited
    finally:
        stop_cluster(extra)
    assert not marked_processes(marker)
    assert veth not in interfaces()
    assert not [p for p in memory_cgroups if p.exists()]
    assert (set(own_cgroup.glob("llm-rollout-*")) if own_cgroup else set()) == cgroups_before
    pids = [c.process.pid for c in extra.supervisor.components]
    assert all(c.process.returncode is not None for c in extra.supervisor.components)
    assert not [pid for pid in pids if psutil.pid_exists(pid)]
    assert not extra.run_dir.exists()
    # The session cluster, on its own etcd, still has only its own nodes.
    session_nodes = k8s.CoreV1Api(cluster.api_client()).list_node().items
    assert sorted(n.metadata.name for n in session_nodes) == sorted(n.name for n in gpu_nodes)
