"""A pod's sandbox: network, UTS and mount namespaces of its own inside the harness namespace.

What a CRI runtime and a point-to-point CNI plugin do for a pod, with ``unshare``/``nsenter``/
``ip``: a holder process owns the namespaces (the pause container's role); a veth pair joins
the pod (``eth0``, the pod's IP) to the harness namespace, where a /32 route leads to it and
proxy ARP answers for everything else (as routed CNIs such as Calico do: no bridge); the pod's
hostname is set in its UTS namespace; kubelet-style ``/etc/hosts`` and ``/etc/resolv.conf``
(``pkg/kubelet/kubelet_pods.go`` managedHostsFileContent, ``pkg/kubelet/network/dns/dns.go``)
are bind-mounted over the host's in its mount namespace.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"
_HOLDER_SCRIPT = (
    'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && '
    'printf %s "$3" > /proc/sys/kernel/hostname && echo ready && exec sleep infinity'
)


class SandboxError(RuntimeError):
    """The sandbox could not be made; the message names the step and the tool's output."""


def _run(argv: list[str], step: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise SandboxError(
            f"{step}: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}"
        )


class PodIpAllocator:
    """Pod IPs from the node's ``spec.podCIDR``, the first host address kept for the node
    (as host-local IPAM keeps the range's gateway)."""

    def __init__(self, pod_cidr: str) -> None:
        self._network = ipaddress.ip_network(pod_cidr)
        self._used: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self._lock = threading.Lock()

    def allocate(self) -> str:
        with self._lock:
            hosts = self._network.hosts()
            next(hosts)
            for address in hosts:
                if address not in self._used:
                    self._used.add(address)
                    return str(address)
        raise SandboxError(f"no free pod IP left in {self._network}")

    def release(self, address: str) -> None:
        with self._lock:
            self._used.discard(ipaddress.ip_address(address))


def hosts_file(pod_ip: str, hostname: str, subdomain: str, namespace: str) -> str:
    """The pod's /etc/hosts as the kubelet writes it (managedHostsFileContent)."""
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if subdomain:
        fqdn = f"{hostname}.{subdomain}.{namespace}.svc.{CLUSTER_DOMAIN}"
        lines.append(f"{pod_ip}\t{fqdn}\t{hostname}")
    else:
        lines.append(f"{pod_ip}\t{hostname}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str, nameserver: str) -> str:
    """ClusterFirst DNS (dns.go): the cluster DNS address and the cluster search list."""
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"search {search}\nnameserver {nameserver}\noptions ndots:5\n"


@dataclass
class Sandbox:
    """A running pod sandbox; :meth:`teardown` removes everything it made."""

    pod_uid: str
    pod_ip: str
    hostname: str
    host_veth: str
    holder: subprocess.Popen[str]
    directory: Path

    @property
    def pid(self) -> int:
        return self.holder.pid

    def enter(self, workdir: str | None = None) -> list[str]:
        """The argv prefix that runs a command inside the pod's namespaces."""
        prefix = ["nsenter", f"--target={self.pid}", "--net", "--uts", "--mount"]
        if workdir:
            prefix.append(f"--wd={workdir}")
        return [*prefix, "--"]

    def teardown(self) -> None:
        # Killing the holder ends its namespaces once no container is left in them; the veth
        # pair goes with the pod's network namespace, and its /32 route with the veth.
        if self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(timeout=10)
        subprocess.run(
            ["ip", "link", "del", self.host_veth], capture_output=True, timeout=30, check=False
        )


def veth_name(pod_uid: str) -> str:
    # Interface names are at most 15 bytes.
    return "pod" + hashlib.sha256(pod_uid.encode()).hexdigest()[:11]


def create_sandbox(
    *,
    pod_uid: str,
    namespace: str,
    hostname: str,
    subdomain: str,
    pod_ip: str,
    nameserver: str,
    directory: Path,
) -> Sandbox:
    directory.mkdir(parents=True, exist_ok=True)
    hosts = directory / "hosts"
    hosts.write_text(hosts_file(pod_ip, hostname, subdomain, namespace))
    resolv = directory / "resolv.conf"
    resolv.write_text(resolv_conf(namespace, nameserver))
    holder = subprocess.Popen(
        [
            "unshare",
            "--net",
            "--uts",
            "--mount",
            "--propagation=private",
            "--",
            "sh",
            "-c",
            _HOLDER_SCRIPT,
            "holder",
            str(hosts),
            str(resolv),
            hostname,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    host_veth = veth_name(pod_uid)
    sandbox = Sandbox(pod_uid, pod_ip, hostname, host_veth, holder, directory)
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "ready":
        holder.wait(timeout=10)
        stderr = holder.stderr.read() if holder.stderr else ""
        raise SandboxError(f"pod namespaces for {pod_uid}: holder exited: {stderr.strip()}")
    try:
        _wire(sandbox)
    except (SandboxError, subprocess.TimeoutExpired):
        sandbox.teardown()
        raise
    return sandbox


def _wire(sandbox: Sandbox) -> None:
    veth, pid, ip = sandbox.host_veth, str(sandbox.pid), sandbox.pod_ip
    inside = ["nsenter", f"--target={pid}", "--net", "--"]
    _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pid], "veth")
    # Proxy ARP without delay: the pod's default route is on-link, the host side answers.
    Path(f"/proc/sys/net/ipv4/conf/{veth}/proxy_arp").write_text("1")
    Path(f"/proc/sys/net/ipv4/neigh/{veth}/proxy_delay").write_text("0")
    _run(["ip", "link", "set", veth, "up"], "host veth up")
    _run(["ip", "route", "add", f"{ip}/32", "dev", veth], "route to the pod")
    _run([*inside, "ip", "link", "set", "lo", "up"], "pod loopback")
    _run([*inside, "ip", "addr", "add", f"{ip}/32", "dev", "eth0"], "pod address")
    _run([*inside, "ip", "link", "set", "eth0", "up"], "pod eth0 up")
    _run([*inside, "ip", "route", "add", "default", "dev", "eth0"], "pod default route")


_CLONE_NEWNET = 0x40000000


def dial_in_pod(holder_pid: int, port: int, timeout_s: float) -> socket.socket:
    """A TCP connection to ``127.0.0.1:port`` inside the pod's network namespace, as the CRI
    runtime's port-forward dials it. The socket is made on a thread that first joins the
    pod's namespace (setns changes only the calling thread's), then used from anywhere."""
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def dial() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/proc/{holder_pid}/ns/net", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                failed.append(OSError(errno, f"setns into pod netns: {os.strerror(errno)}"))
                return
            made.append(socket.create_connection(("127.0.0.1", port), timeout=timeout_s))
        except OSError as exc:
            failed.append(exc)
        finally:
            os.close(fd)

    # A thread of its own, ended at once: it stays in the pod's namespace until then.
    worker = threading.Thread(target=dial, name=f"dial-{holder_pid}-{port}", daemon=True)
    worker.start()
    worker.join()
    if failed:
        raise failed[0]
    made[0].settimeout(None)
    return made[0]


def enable_forwarding() -> None:
    """Pod-to-pod traffic crosses the harness namespace (its own sysctl, not the host's)."""
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
