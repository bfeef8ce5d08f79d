"""The test run's own network namespace: what it must look like, and the root one's routes.

``scripts/in-netns`` creates it (``unshare --net``) before pytest starts: loopback up with one
address of ``POD_PREFIX`` as a /32, and no other interface, so no uplink and no default route.
The API server advertises that address; pods get theirs from the same prefix, each routed to
its pod's veth by the node agent (``pods/sandbox.py``), which is why no wider prefix may be
local here; the node agent adds each node's InternalIP as a /32 of its own. Nothing of the
prefix is ever routed in the root namespace, which the tests check by reading PID 1's routing
table.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

POD_PREFIX = "10.244.0.0/16"
ADVERTISE_IP = "10.244.255.254"
# An address pods are given (the first node range of ClusterConfig.cluster_cidr): it must not
# be local to the namespace, or traffic to the pod would never reach its veth.
POD_ADDRESS_SAMPLE = "10.244.0.2"
OUTER_NETNS_ENV = "LLM_ROLLOUT_OUTER_NETNS"
ENTER_HINT = (
    "run it under ./scripts/in-netns (./scripts/test does), e.g. "
    "`./scripts/in-netns uv run pytest tests/cluster`"
)


class NotInPrivateNamespace(RuntimeError):
    """The harness refuses to start a cluster in a network namespace it did not make."""


def first_service_ip(service_cidr: str) -> str:
    """The ``kubernetes`` Service's ClusterIP: the first address of the service range."""
    return str(ipaddress.ip_network(service_cidr)[1])


def cluster_dns_ip(service_cidr: str) -> str:
    """The cluster DNS Service's address by kubeadm's convention (the tenth of the range), which
    pods' resolv.conf names and where the harness's CoreDNS answers (control_plane.py)."""
    return str(ipaddress.ip_network(service_cidr)[10])


def in_own_namespace() -> bool:
    """True when this process runs in the namespace ``scripts/in-netns`` made.

    That script records the namespace it started in (``OUTER_NETNS_ENV``) before unsharing;
    PID 1's own ``/proc/1/ns/net`` cannot be read here (EACCES even as root), its routing
    table can.
    """
    outer = os.environ.get(OUTER_NETNS_ENV)
    return bool(outer) and str(Path("/proc/self/ns/net").readlink()) != outer


def ipv4_routes(pid: str) -> list[tuple[str, ipaddress.IPv4Network]]:
    """``(interface, destination)`` of every IPv4 route in ``pid``'s main routing table."""
    routes = []
    lines = Path(f"/proc/{pid}/net/route").read_text().splitlines()[1:]
    for line in lines:
        fields = line.split()
        iface, dest_hex, mask_hex = fields[0], fields[1], fields[7]
        # The kernel prints each address as a little-endian 32-bit hex number.
        dest = socket.inet_ntoa(int(dest_hex, 16).to_bytes(4, "little"))
        mask = socket.inet_ntoa(int(mask_hex, 16).to_bytes(4, "little"))
        routes.append((iface, ipaddress.IPv4Network(f"{dest}/{mask}")))
    return routes


def ipv6_route_lines(pid: str) -> list[str]:
    return Path(f"/proc/{pid}/net/ipv6_route").read_text().splitlines()


def require_private_namespace() -> None:
    """Fail with a clear message unless we run inside the namespace ``scripts/in-netns`` makes."""
    if not in_own_namespace():
        raise NotInPrivateNamespace(
            f"the test cluster must run in a network namespace of its own; {ENTER_HINT}"
        )
    default = ipaddress.IPv4Network("0.0.0.0/0")
    if any(dest == default for _, dest in ipv4_routes("self")):
        raise NotInPrivateNamespace(
            f"this network namespace has a default route, so it is not the isolated one; "
            f"{ENTER_HINT}"
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ADVERTISE_IP, 0))
        except OSError as exc:
            raise NotInPrivateNamespace(
                f"{ADVERTISE_IP} is not an address of this namespace; {ENTER_HINT}"
            ) from exc
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((POD_ADDRESS_SAMPLE, 0))
        except OSError:
            return
    raise NotInPrivateNamespace(
        f"pod addresses such as {POD_ADDRESS_SAMPLE} are local to this namespace (a prefix wider "
        f"than /32 on lo?), so they cannot be routed to pods; {ENTER_HINT}"
    )
