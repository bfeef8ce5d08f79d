"""Cluster DNS and Service routing inside the harness (issue 15, item 5): CoreDNS's kubernetes
plugin answers the names pods look up through their resolv.conf (search list and ndots as the
kubelet writes them), and kube-proxy (nftables mode) DNATs a ClusterIP to ready endpoints only.

Name forms as CoreDNS's plugin/kubernetes README specifies them: ``<svc>.<ns>.svc.<zone>`` for
a Service, ``<hostname>.<subdomain>.<ns>.svc.<zone>`` for a pod behind a headless Service whose
EndpointSlice carries its hostname (what LWS's leader address relies on).
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.stream import stream

from sandbox.cluster.control_plane import COREDNS_USER, KUBE_PROXY_USER
from sandbox.cluster.waits import wait_for
from tests.cluster.pod_helpers import (
    POD_TIMEOUT_S,
    SHELL_IMAGE,
    is_ready,
    shell_container,
    wait_pod,
)

# The client offers v5 first by default; the node agent speaks v4 only (see test_pods_run.py).
V4_ONLY = {"sec-websocket-protocol": "v4.channel.k8s.io"}
# A name's answer may lag its object by CoreDNS's watch and its 5 s cache (the Corefile in
# sandbox/cluster/control_plane.py), a rule change by kube-proxy's sync: polled within this.
SETTLE_TIMEOUT_S = 45.0


def _pod(
    name: str, containers: list[dict[str, Any]], *, labels: dict[str, str], **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": containers, **spec},
    }


def _shell_pod(admin: k8s.ApiClient, namespace: str) -> None:
    """A pod to run lookups and clients in, through the API server's exec."""
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_pod(
        namespace,
        _pod("shell", [shell_container("main", "exec sleep 3600")], labels={"app": "shell"}),
    )
    wait_pod(admin, namespace, "shell", "Ready", is_ready)


def _run_in_shell(admin: k8s.ApiClient, namespace: str, argv: list[str]) -> tuple[int, str]:
    """``argv`` in pod ``shell``; its exit code and stdout."""
    response = stream(
        k8s.CoreV1Api(admin).connect_get_namespaced_pod_exec,
        "shell",
        namespace,
        container="main",
        command=argv,
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
        _headers=V4_ONLY,
        _preload_content=False,
    )
    response.run_forever(timeout=POD_TIMEOUT_S)
    return int(response.returncode), str(response.read_stdout())


def _poll_shell(admin: k8s.ApiClient, namespace: str, argv: list[str], done: Any, what: str) -> str:
    """Run ``argv`` until ``done(stdout)``; fail naming ``what`` and the last output."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        _, out = _run_in_shell(admin, namespace, argv)
        if done(out):
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {out!r} after {SETTLE_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


def _resolve(admin: k8s.ApiClient, namespace: str, name: str, expected: str) -> str:
    """The first IPv4 address glibc (through the pod's resolv.conf) gives for ``name``."""
    out = _poll_shell(
        admin,
        namespace,
        ["getent", "ahostsv4", name],
        lambda text: text.split()[:1] == [expected],
        f"{name} resolving to {expected}",
    )
    return out.split()[0]


def test_a_service_resolves_by_short_name_and_fqdn_to_its_cluster_ip(
    admin: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(admin)
    service = core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]},
        },
    )
    cluster_ip = service.spec.cluster_ip
    _shell_pod(admin, namespace)
    # The search list (<ns>.svc.cluster.local, svc.cluster.local, cluster.local) completes
    # every shorter form; the FQDN needs none.
    for name in (
        "web",
        f"web.{namespace}",
        f"web.{namespace}.svc",
        f"web.{namespace}.svc.cluster.local",
    ):
        assert _resolve(admin, namespace, name, cluster_ip) == cluster_ip
    # The API server's own Service, from another namespace, by its search-list form.
    kubernetes_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    assert _resolve(admin, namespace, "kubernetes.default", kubernetes_ip) == kubernetes_ip
    # A name that no Service has gets no address (and no upstream is asked: there is none).
    code, out = _run_in_shell(admin, namespace, ["getent", "ahostsv4", f"nothing.{namespace}"])
    assert (code, out) == (2, "")


def test_a_headless_services_pod_resolves_by_hostname_and_subdomain(
    admin: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "workers"},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "worker"},
                "ports": [{"port": 6379}],
            },
        },
    )
    worker = _pod(
        "worker-0",
        [shell_container("main", "exec sleep 3600")],
        labels={"app": "worker"},
        hostname="leader",
        subdomain="workers",
    )
    core.create_namespaced_pod(namespace, worker)
    pod_ip = wait_pod(admin, namespace, "worker-0", "Ready", is_ready).status.pod_ip
    _shell_pod(admin, namespace)
    for name in ("leader.workers", f"leader.workers.{namespace}.svc.cluster.local"):
        assert _resolve(admin, namespace, name, pod_ip) == pod_ip
    # The headless Service's own name answers with its ready pods' addresses.
    assert _resolve(admin, namespace, "workers", pod_ip) == pod_ip


def test_a_not_ready_pod_resolves_only_where_not_ready_addresses_are_published(
    admin: k8s.ApiClient, namespace: str
) -> None:
    # LWS's headless Service sets publishNotReadyAddresses, so that workers find the leader
    # before it is Ready; the EndpointSlice controller then marks such endpoints ready, and
    # CoreDNS answers only for endpoints marked ready (plugin/kubernetes/object/endpoint.go).
    core = k8s.CoreV1Api(admin)
    never_ready = {"exec": {"command": ["false"]}, "periodSeconds": 1}
    for service, publish in (("published", True), ("unpublished", False)):
        core.create_namespaced_service(
            namespace,
            {
                "metadata": {"name": service},
                "spec": {
                    "clusterIP": "None",
                    "selector": {"group": service},
                    "ports": [{"port": 6379}],
                    "publishNotReadyAddresses": publish,
                },
            },
        )
        pod = _pod(
            f"{service}-0",
            [shell_container("main", "exec sleep 3600", readinessProbe=never_ready)],
            labels={"group": service},
            hostname="leader",
            subdomain=service,
        )
        core.create_namespaced_pod(namespace, pod)
    running = {
        service: wait_pod(
            admin, namespace, f"{service}-0", "Running", lambda p: p.status.pod_ip is not None
        )
        for service in ("published", "unpublished")
    }
    _shell_pod(admin, namespace)
    published_ip = running["published"].status.pod_ip
    assert _resolve(admin, namespace, "leader.published", published_ip) == published_ip
    # The other pod is in its Service's EndpointSlice, marked not ready, and has no name.
    wait_for(
        k8s.DiscoveryV1Api(admin).list_namespaced_endpoint_slice,
        lambda items: any(e.conditions.ready is False for s in items for e in s.endpoints or []),
        namespace=namespace,
        label_selector="kubernetes.io/service-name=unpublished",
        timeout_s=SETTLE_TIMEOUT_S,
        what="the unpublished pod's endpoint, not ready",
    )
    code, out = _run_in_shell(admin, namespace, ["getent", "ahostsv4", "leader.unpublished"])
    assert (code, out) == (2, "")
    assert not is_ready(core.read_namespaced_pod("unpublished-0", namespace))


GET = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)\n"
    "except OSError as exc:\n"
    "    print(type(getattr(exc, 'reason', exc)).__name__)\n"
)


def test_a_cluster_ip_reaches_only_ready_endpoints(
    admin: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    gate = tmp_path / "ready"
    gate.write_text("yes")
    server = {
        "name": "http",
        "image": SHELL_IMAGE,
        "command": ["/usr/bin/python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"],
        # Ready while the gate file exists (the pods see the host's files).
        "readinessProbe": {"exec": {"command": ["cat", str(gate)]}, "periodSeconds": 1},
    }
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, _pod("web", [server], labels={"app": "web"}))
    service = core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]},
        },
    )
    pod_ip = wait_pod(admin, namespace, "web", "Ready", is_ready).status.pod_ip
    _shell_pod(admin, namespace)
    via_service = f"http://{service.spec.cluster_ip}:80/"
    direct = f"http://{pod_ip}:8000/"
    get = ["/usr/bin/python3", "-c", GET]
    # Port 80 of the ClusterIP is DNAT'ed by kube-proxy to the pod's 8000: nothing listens on
    # the ClusterIP itself.
    _poll_shell(
        admin, namespace, [*get, via_service], lambda out: out == "200\n", "via the Service"
    )
    # And by its name, as a rendered client would dial it: CoreDNS, then kube-proxy.
    _poll_shell(admin, namespace, [*get, "http://web/"], lambda out: out == "200\n", "via web")
    # From the harness namespace itself too (where the product under test runs): kube-proxy's
    # output hook DNATs local traffic as well.
    with urllib.request.urlopen(via_service, timeout=POD_TIMEOUT_S) as response:
        assert response.status == 200
    gate.unlink()
    wait_pod(admin, namespace, "web", "not Ready", lambda p: not is_ready(p))
    # With no ready endpoint, kube-proxy rejects the Service's traffic (its no-endpoint
    # services map in pkg/proxy/nftables/proxier.go): refused, not a timeout.
    refused = _poll_shell(
        admin,
        namespace,
        [*get, via_service],
        lambda out: out != "200\n",
        "the Service refusing once its only endpoint is not Ready",
    )
    assert refused == "ConnectionRefusedError\n"
    # The server itself still answers at its own address: only the Service's routing changed.
    code, out = _run_in_shell(admin, namespace, [*get, direct])
    assert (code, out) == (0, "200\n")


def test_coredns_and_kube_proxy_have_only_their_read_access(admin: k8s.ApiClient) -> None:
    """Their identities' rights as the API server's authorizer judges them: what CoreDNS's
    kubernetes plugin and kube-proxy's informers need (list/watch), nothing they could change
    or read secrets with."""

    def allowed(user: str, verb: str, resource: str, group: str = "") -> bool:
        review = k8s.AuthorizationV1Api(admin).create_subject_access_review(
            {
                "spec": {
                    "user": user,
                    "resourceAttributes": {"verb": verb, "resource": resource, "group": group},
                }
            }
        )
        return bool(review.status.allowed)

    for user in (COREDNS_USER, KUBE_PROXY_USER):
        assert allowed(user, "watch", "services")
        assert allowed(user, "list", "endpointslices", "discovery.k8s.io")
        assert not allowed(user, "get", "secrets")
        assert not allowed(user, "update", "services")
        assert not allowed(user, "delete", "endpointslices", "discovery.k8s.io")
    assert not allowed(COREDNS_USER, "list", "pods")
    # kube-proxy reads its Node for its addresses (system:node-proxier).
    assert allowed(KUBE_PROXY_USER, "get", "nodes")
