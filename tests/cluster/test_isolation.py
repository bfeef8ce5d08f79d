"""The cluster runs in the test run's own network namespace; the root namespace gains no route."""

from __future__ import annotations

import ipaddress

from sandbox.cluster import netns
from sandbox.cluster.control_plane import Cluster, ClusterConfig

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
