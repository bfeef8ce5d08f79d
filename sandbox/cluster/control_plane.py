"""Start a real Kubernetes control plane as plain processes: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, the KubeRay operator, the LeaderWorkerSet manager
with its webhooks, our node agent, the cluster DNS (CoreDNS) and kube-proxy.

The binaries come from ``build.py``. Everything listens inside the test run's own network
namespace (``netns.py``): the API server advertises an address of the namespace's private
prefix, so that the real API server later proxies to pods whose IPs are in that prefix
(it refuses 127.0.0.0/8: ``IsProxyableIP`` in k8s.io/kubernetes ``pkg/proxy/util``).

Flags follow what kubeadm and kwokctl's binary runtime pass (kwok
``pkg/kwokctl/components/{etcd,kube_apiserver,kube_controller_manager,kube_scheduler}.go``),
trimmed to what a test run needs: no leader election, etcd without fsync on tmpfs, node
lifecycle timings shortened by flags, not by code.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from sandbox.cluster import build, lws, netns, rbg, rbg_v07
from sandbox.cluster.node_agent import NodeSpec, agent_argv, write_agent_config
from sandbox.cluster.pki import CertPair, ClusterPki, make_pki
from sandbox.cluster.pods.containers import BACKOFF_BASE_S
from sandbox.cluster.pods.node import PodsConfig
from sandbox.cluster.processes import Component, Supervisor, http_ok, tls_accepts

HARNESS_MANAGER = "llm-rollout-harness"
KUBERAY_USER = "kuberay-operator"
RBG_RECONCILER = "rbg-reconciler"


@dataclass(frozen=True)
class ClusterPorts:
    """Where a cluster's components listen on 127.0.0.1 inside the namespace; a second
    cluster in the same namespace (the short-lived variants of issue 14, item 5) takes
    ``shifted(n)``."""

    apiserver: int = 6443
    etcd_client: int = 2379
    etcd_peer: int = 2380
    controller_manager: int = 10257
    scheduler: int = 10259
    kuberay_metrics: int = 18080
    kuberay_probe: int = 18082
    lws_webhook: int = 19443
    lws_metrics: int = 18443
    lws_probe: int = 18081
    coredns_health: int = 18180
    coredns_ready: int = 18181
    kube_proxy_healthz: int = 10256
    kube_proxy_metrics: int = 10249

    def shifted(self, offset: int) -> ClusterPorts:
        return ClusterPorts(*(getattr(self, f.name) + offset for f in fields(self)))


@dataclass(frozen=True)
class ClusterConfig:
    """What varies between the session cluster and the few short-lived ones."""

    nodes: tuple[NodeSpec, ...]
    service_cidr: str = "10.96.0.0/16"
    # Node CIDRs are carved from here (kube-controller-manager's nodeipam); pods will take
    # their IPs from their node's range.
    cluster_cidr: str = "10.244.0.0/17"
    # kube-controller-manager's defaults are 5 s and 50 s; a lost node is noticed in seconds.
    node_monitor_period_s: int = 2
    node_monitor_grace_period_s: int = 16
    # The PV controller matches a new claim against the PVs in its informer cache when the
    # claim's add event comes; a PV created just before it (the product applies PV then PVC)
    # and not yet in that cache leaves the claim Pending until the controller's own resync,
    # every --pvclaimbinder-sync-period, 15 s by default (k8s.io/kubernetes
    # pkg/controller/volume/persistentvolume/pv_controller.go syncUnboundClaim "no volume
    # found", pv_controller_base.go resync; config/v1alpha1/defaults.go). Deploys waited 1-14 s
    # for it in about half the runs; 1 s makes that wait a second at most. No test studies it.
    pv_binder_sync_period_s: int = 1
    # The API server's DefaultTolerationSeconds admission: upstream's 300 s unless a test
    # asks for a shorter eviction of a lost node's pods.
    not_ready_toleration_s: int = 300
    # The kubelet's container restart back-off starts at 10 s (pods/containers.py); the
    # session cluster's tests shorten it, through the node agent's configuration only.
    container_backoff_base_s: float = BACKOFF_BASE_S
    with_kuberay: bool = True
    with_lws: bool = True
    # The RoleBasedGroup CRD to install (upstream's, from ../shared/crds) and our reconciler
    # standing in for RBG's controller (sandbox/cluster/rbg.py); None leaves RBG out.
    rbg_crd: Path | None = rbg.CRD_V06
    # The cluster DNS (CoreDNS at the kube-dns Service's ClusterIP) and kube-proxy (nftables
    # mode). Both are per network namespace, not per port: a second cluster in the same
    # namespace must leave them off.
    with_dns: bool = True
    with_kube_proxy: bool = True
    ports: ClusterPorts = ClusterPorts()
    # Per component. The whole start took 11-115 s on the shared 2-core machine depending on its
    # load (tests/cluster/conftest.py); a bound, not an expectation.
    ready_timeout_s: float = 240.0


@dataclass
class Cluster:
    """A running cluster and how to reach it as an administrator."""

    run_dir: Path
    pki: ClusterPki
    admin_kubeconfig: Path
    supervisor: Supervisor
    advertise_ip: str
    binaries: Path
    api_url: str
    ready_s: dict[str, float] = field(default_factory=dict)

    def api_client(self) -> k8s.ApiClient:
        return k8s_config.new_client_from_config(config_file=str(self.admin_kubeconfig))

    def rss_mb(self) -> dict[str, float]:
        return {c.name: round(c.rss_mb(), 1) for c in self.supervisor.components}

    def tails(self) -> str:
        return self.supervisor.tails()

    def kubeconfig_for(self, name: str, pair: CertPair, *, server: str | None = None) -> Path:
        """A kubeconfig presenting ``pair`` (a client certificate from ``self.pki``) to the API
        server, or to ``server`` (the fault proxy, ``api_proxy.py``) when given."""
        return _cert_kubeconfig(self.run_dir, self.pki, server or self.api_url, name, pair)

    def token_kubeconfig(self, name: str, token: str, *, server: str | None = None) -> Path:
        """A kubeconfig presenting a bearer token (a ServiceAccount's)."""
        path = _write_kubeconfig(
            self.run_dir / "kubeconfigs" / f"{name}.yaml",
            self.pki,
            server or self.api_url,
            {"token": token},
        )
        path.chmod(0o600)
        return path


def _cert_kubeconfig(
    run_dir: Path, pki: ClusterPki, api_url: str, name: str, pair: CertPair
) -> Path:
    return _write_kubeconfig(
        run_dir / "kubeconfigs" / f"{name}.yaml",
        pki,
        api_url,
        {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
    )


def _write_kubeconfig(path: Path, pki: ClusterPki, server: str, user: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": server, "certificate-authority": str(pki.ca.cert)},
            }
        ],
        "users": [{"name": path.stem, "user": user}],
        "contexts": [{"name": path.stem, "context": {"cluster": "test", "user": path.stem}}],
        "current-context": path.stem,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _run_dir_parent() -> Path:
    # etcd's data and the logs on tmpfs when there is one: --unsafe-no-fsync already skips
    # the syncs, tmpfs also spares the shared disk.
    shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp inside it, not a fixed name
    return shm if shm.is_dir() else Path(tempfile.gettempdir())


def _client_tls(pki: ClusterPki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
    return context


def _insecure_tls() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve /healthz with a self-signed certificate
    # they make at start; only reachability is probed there.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


APPLY = "application/apply-patch+yaml"
COREDNS_USER = "coredns"
KUBE_PROXY_USER = "system:kube-proxy"
DNS_DOMAIN = "cluster.local"


def coredns_cluster_role() -> dict[str, Any]:
    """What CoreDNS's kubernetes plugin reads, and nothing more: it lists and watches Services,
    EndpointSlices and Namespaces (plugin/kubernetes/controller.go of the pinned module; the
    README's "Monitoring Kubernetes Endpoints": EndpointSlices only). Pods are watched only
    with `pods verified` and ServiceImports only with `multicluster`; the Corefile uses
    neither."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "llm-rollout:coredns"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["services", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }


def corefile(
    *, listen_ips: tuple[str, ...], kubeconfig: Path, health_port: int, ready_port: int
) -> str:
    """The Corefile: only ``cluster.local`` and the reverse zones, answered from the API server;
    no ``forward`` (the harness has no uplink), so names outside the cluster get REFUSED."""
    return (
        ".:53 {\n"
        f"    bind {' '.join(listen_ips)}\n"
        "    errors\n"
        f"    health 127.0.0.1:{health_port}\n"
        f"    ready 127.0.0.1:{ready_port}\n"
        f"    kubernetes {DNS_DOMAIN} in-addr.arpa ip6.arpa {{\n"
        f"        kubeconfig {kubeconfig}\n"
        "        pods disabled\n"
        "        ttl 5\n"
        "    }\n"
        "    cache 5\n"
        "}\n"
    )


def kube_proxy_config(
    *, kubeconfig: Path, cluster_cidr: str, node_name: str, ports: ClusterPorts
) -> dict[str, Any]:
    """kube-proxy's KubeProxyConfiguration (k8s.io/kube-proxy config/v1alpha1).

    nftables mode (k8s.io/kubernetes pkg/proxy/nftables/proxier.go) needs the `nft` command
    (Debian's nftables, scripts/setup) and the kernel's nf_tables, conntrack and NAT, which this
    kernel has built in. The conntrack sysctls are left alone (0 = do not set): in a network
    namespace other than the initial one nf_conntrack_max is read-only.
    """
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clusterCIDR": cluster_cidr,
        "hostnameOverride": node_name,
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "healthzBindAddress": f"127.0.0.1:{ports.kube_proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{ports.kube_proxy_metrics}",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
    }


def _ip(args: list[str]) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def apply_documents(api: k8s.ApiClient, docs: list[dict[str, Any]]) -> None:
    """Server-side apply (large CRDs would overflow client-side apply's annotation)."""
    ext = k8s.ApiextensionsV1Api(api)
    rbac = k8s.RbacAuthorizationV1Api(api)
    admission = k8s.AdmissionregistrationV1Api(api)
    appliers = {
        "CustomResourceDefinition": ext.patch_custom_resource_definition,
        "ClusterRole": rbac.patch_cluster_role,
        "ClusterRoleBinding": rbac.patch_cluster_role_binding,
        "MutatingWebhookConfiguration": admission.patch_mutating_webhook_configuration,
        "ValidatingWebhookConfiguration": admission.patch_validating_webhook_configuration,
    }
    for doc in docs:
        kind = doc["kind"]
        if kind not in appliers:
            raise ValueError(f"the harness does not apply kind {kind!r}")
        appliers[kind](
            doc["metadata"]["name"],
            doc,
            field_manager=HARNESS_MANAGER,
            force=True,
            _content_type=APPLY,
        )


def _bind_user(user: str, cluster_role: str) -> dict[str, Any]:
    """A ClusterRoleBinding of an operator's upstream ClusterRole to the user its client
    certificate names."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{user}-{cluster_role}"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role,
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def _wait_crds_established(api: k8s.ApiClient, names: list[str], timeout_s: float) -> None:
    ext = k8s.ApiextensionsV1Api(api)
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        for name in sorted(pending):
            crd = ext.read_custom_resource_definition(name)
            conditions = crd.status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not Established after {timeout_s:.0f} s: {sorted(pending)}")
        if pending:
            time.sleep(0.2)


# libyaml's loader when PyYAML was built with it: the operators' CRDs are megabytes.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml_docs(paths: list[Path]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        text = rbg.require_crd_file(path).read_text()
        docs += [d for d in yaml.load_all(text, Loader=_YAML_LOADER) if d]
    return docs


class _Starter:
    """The start sequence: each step launches a component and waits on its real endpoint
    (steps returning a callable leave that wait to the caller, to overlap starts)."""

    def __init__(self, config: ClusterConfig, binaries: Path, run_dir: Path) -> None:
        self.config = config
        self.binaries = binaries
        self.run_dir = run_dir
        self.supervisor = Supervisor(log_dir=run_dir / "logs")
        self.advertise_ip = netns.ADVERTISE_IP
        service_ip = netns.first_service_ip(config.service_cidr)
        self.pki = make_pki(run_dir / "pki", advertise_ip=self.advertise_ip, service_ip=service_ip)
        self.kube = binaries / "bin" / "kube"
        self.ports = config.ports
        self.api_url = f"https://127.0.0.1:{self.ports.apiserver}"
        self.ready_s: dict[str, float] = {}

    def _kubeconfig(self, name: str, pair: CertPair) -> Path:
        return _cert_kubeconfig(self.run_dir, self.pki, self.api_url, name, pair)

    def _wait_later(self, component: Component, probe: Callable[[], bool]) -> Callable[[], None]:
        """The wait on ``component``'s readiness, for the caller to run once all have started."""

        def wait() -> None:
            self.ready_s[component.name] = self.supervisor.wait_ready(
                component, probe, timeout_s=self.config.ready_timeout_s
            )

        return wait

    @staticmethod
    def _kube_argv(command: str) -> list[str]:
        # The one `kube` binary dispatches on its first argument; argv[0] is the command's own
        # name too, because client-go derives the user agent, and so the field manager that
        # managedFields record, from argv[0] (rest.DefaultUserAgent): "kube-scheduler", not
        # "kube".
        return [command, command]

    def etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        component = self.supervisor.start(
            "etcd",
            [
                str(self.binaries / "bin" / "etcd"),
                "--name=node0",
                f"--data-dir={self.run_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=node0={peer}",
                "--unsafe-no-fsync=true",
                "--auto-compaction-retention=1",
                "--log-level=warn",
            ],
        )
        self.ready_s["etcd"] = self.supervisor.wait_ready(
            component,
            lambda: http_ok(f"{client}/readyz"),
            timeout_s=self.config.ready_timeout_s,
        )

    def apiserver(self) -> None:
        pki = self.pki
        component = self.supervisor.start(
            "kube-apiserver",
            [
                *self._kube_argv("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
                "--bind-address=0.0.0.0",
                f"--secure-port={self.ports.apiserver}",
                f"--advertise-address={self.advertise_ip}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-cluster-ip-range={self.config.service_cidr}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_public_key}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--default-not-ready-toleration-seconds={self.config.not_ready_toleration_s}",
                f"--default-unreachable-toleration-seconds={self.config.not_ready_toleration_s}",
                f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
                f"--proxy-client-key-file={pki.front_proxy_client.key}",
                "--allow-privileged=true",
                # The node agent's kubelet endpoints (pods/server.py): dialled at the node's
                # InternalIP (the default order tries the Hostname first, which no DNS here
                # resolves), verified against the cluster CA, with a client certificate.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={pki.ca.cert}",
                f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
                f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
                "--profiling=false",
            ],
            executable=self.kube,
        )
        context = _client_tls(pki)
        self.ready_s["kube-apiserver"] = self.supervisor.wait_ready(
            component,
            lambda: http_ok(f"{self.api_url}/readyz", context=context),
            timeout_s=self.config.ready_timeout_s,
        )

    def _secure_component(
        self, name: str, port: int, kubeconfig: Path, extra: list[str]
    ) -> Callable[[], None]:
        component = self.supervisor.start(
            name,
            [
                *self._kube_argv(name),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--leader-elect=false",
                *extra,
            ],
            executable=self.kube,
        )
        context = _insecure_tls()

        def wait() -> None:
            self.ready_s[name] = self.supervisor.wait_ready(
                component,
                lambda: http_ok(f"https://127.0.0.1:{port}/healthz", context=context),
                timeout_s=self.config.ready_timeout_s,
            )

        return wait

    def controller_manager(self) -> Callable[[], None]:
        kubeconfig = self._kubeconfig("controller-manager", self.pki.controller_manager)
        return self._secure_component(
            "kube-controller-manager",
            self.ports.controller_manager,
            kubeconfig,
            [
                # Each controller acts as its own ServiceAccount, as on a kubeadm cluster,
                # so managedFields and audit name it.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.pki.service_account_key}",
                f"--root-ca-file={self.pki.ca.cert}",
                "--allocate-node-cidrs=true",
                f"--cluster-cidr={self.config.cluster_cidr}",
                "--node-cidr-mask-size=24",
                f"--service-cluster-ip-range={self.config.service_cidr}",
                f"--node-monitor-period={self.config.node_monitor_period_s}s",
                f"--node-monitor-grace-period={self.config.node_monitor_grace_period_s}s",
                f"--pvclaimbinder-sync-period={self.config.pv_binder_sync_period_s}s",
            ],
        )

    def scheduler(self) -> Callable[[], None]:
        kubeconfig = self._kubeconfig("scheduler", self.pki.scheduler)
        return self._secure_component("kube-scheduler", self.ports.scheduler, kubeconfig, [])

    def kuberay_objects(self, api: k8s.ApiClient) -> list[str]:
        """Apply KubeRay's CRDs and its ClusterRole; return the CRDs' names."""
        started = time.monotonic()
        crds = sorted((self.binaries / "crds" / "ray-operator").glob("*.yaml"))
        crd_docs = _load_yaml_docs(crds)
        apply_documents(api, crd_docs)
        # Upstream's ClusterRole for the operator (config/rbac/role.yaml of the pinned module),
        # bound to the identity of its client certificate.
        role_docs = _load_yaml_docs(sorted((self.binaries / "rbac" / "ray-operator").glob("*")))
        apply_documents(api, role_docs)
        role_names = [str(d["metadata"]["name"]) for d in role_docs]
        apply_documents(api, [_bind_user(KUBERAY_USER, role) for role in role_names])
        self.ready_s["kuberay-crds-applied"] = time.monotonic() - started
        return [str(d["metadata"]["name"]) for d in crd_docs]

    def kuberay_operator(self) -> Callable[[], None]:
        kubeconfig = self._kubeconfig(KUBERAY_USER, self.pki.client(KUBERAY_USER))
        component = self.supervisor.start(
            "ray-operator",
            [
                str(self.binaries / "bin" / "ray-operator"),
                f"--kubeconfig={kubeconfig}",
                "--enable-leader-election=false",
                f"--metrics-addr=127.0.0.1:{self.ports.kuberay_metrics}",
                f"--health-probe-bind-address=127.0.0.1:{self.ports.kuberay_probe}",
                "--log-stdout-encoder=console",
            ],
        )
        return self._wait_later(
            component, lambda: http_ok(f"http://127.0.0.1:{self.ports.kuberay_probe}/readyz")
        )

    def lws_objects(self, api: k8s.ApiClient) -> list[str]:
        """Apply LWS's CRDs and its ClusterRole bound to its user; return the CRDs' names."""
        started = time.monotonic()
        crd_docs = _load_yaml_docs(sorted((self.binaries / "crds" / "lws").glob("*.yaml")))
        apply_documents(api, crd_docs)
        role_docs = _load_yaml_docs(sorted((self.binaries / "rbac" / "lws").glob("*")))
        for doc in role_docs:
            doc["metadata"]["name"] = lws.NAME_PREFIX + str(doc["metadata"]["name"])
        apply_documents(api, role_docs)
        apply_documents(
            api, [_bind_user(lws.LWS_USER, str(d["metadata"]["name"])) for d in role_docs]
        )
        self.ready_s["lws-crds-applied"] = time.monotonic() - started
        return [str(d["metadata"]["name"]) for d in crd_docs]

    def lws_manager(self) -> Callable[[], None]:
        cert_dir = self.run_dir / "lws-webhook-certs"
        cert_dir.mkdir()
        serving = self.pki.serving("lws-webhook", "lws-webhook", server_ips=("127.0.0.1",))
        shutil.copyfile(serving.cert, cert_dir / "tls.crt")
        shutil.copyfile(serving.key, cert_dir / "tls.key")
        config_path = self.run_dir / "lws-config.yaml"
        config_path.write_text(
            yaml.safe_dump(
                lws.config_document(
                    webhook_port=self.ports.lws_webhook,
                    cert_dir=cert_dir,
                    metrics_port=self.ports.lws_metrics,
                    probe_port=self.ports.lws_probe,
                )
            )
        )
        kubeconfig = self._kubeconfig(lws.LWS_USER, self.pki.client(lws.LWS_USER))
        component = self.supervisor.start(
            "lws",
            [
                str(self.binaries / "bin" / "lws"),
                f"--kubeconfig={kubeconfig}",
                f"--config={config_path}",
            ],
        )
        webhook_tls = ssl.create_default_context(cafile=str(self.pki.ca.cert))

        def wait() -> None:
            self.ready_s["lws"] = self.supervisor.wait_ready(
                component,
                lambda: (
                    http_ok(f"http://127.0.0.1:{self.ports.lws_probe}/readyz")
                    and tls_accepts("127.0.0.1", self.ports.lws_webhook, webhook_tls)
                ),
                timeout_s=self.config.ready_timeout_s,
            )

        return wait

    def lws_webhooks(self, api: k8s.ApiClient) -> None:
        """Register the manager's webhooks once it serves them, then wait until the API server
        admits a LeaderWorkerSet through them (failurePolicy Fail)."""
        apply_documents(
            api,
            lws.webhook_configurations(
                self.binaries / "webhook" / "lws",
                webhook_port=self.ports.lws_webhook,
                ca_pem=self.pki.ca.cert.read_bytes(),
            ),
        )
        # A dry run creates nothing; `default` is only a namespace that always exists.
        self.ready_s["lws-webhooks-admitting-after"] = lws.wait_admitted(
            api, namespace="default", timeout_s=self.config.ready_timeout_s
        )

    def rbg_objects(self, api: k8s.ApiClient, crd: Path) -> list[str]:
        """Apply the RoleBasedGroup CRD and the reconciler's ClusterRole bound to its user;
        return the CRD's name."""
        crd_docs = _load_yaml_docs([crd])
        if crd == rbg.CRD_V07:
            crd_docs += rbg_v07.child_crds()
        apply_documents(api, crd_docs)
        role = rbg.cluster_role()
        apply_documents(api, [role, _bind_user(rbg.USER, role["metadata"]["name"])])
        return [str(d["metadata"]["name"]) for d in crd_docs]

    def rbg_reconciler(self, crd: Path) -> Callable[[], None]:
        kubeconfig = self._kubeconfig(rbg.USER, self.pki.client(rbg.USER))
        ready_file = self.run_dir / "rbg-listed"
        component = self.supervisor.start(
            RBG_RECONCILER, rbg.reconciler_argv(kubeconfig, ready_file=ready_file, crd=crd)
        )
        return self._wait_later(component, ready_file.exists)

    def service_network(self) -> None:
        """Make ClusterIPs reachable from pods in this namespace only: the DNS Service's IP is
        local (on lo) so CoreDNS can bind it, and the service range is routed to lo, so that
        the pods' veths answer ARP for ClusterIPs by proxy (proxy ARP needs a route) and the
        packets reach kube-proxy's DNAT here. Replace, not add: idempotent."""
        _ip(
            ["addr", "replace", f"{netns.cluster_dns_ip(self.config.service_cidr)}/32", "dev", "lo"]
        )
        _ip(["route", "replace", self.config.service_cidr, "dev", "lo"])

    def dns_objects(self, api: k8s.ApiClient) -> None:
        """The kube-dns Service at the cluster DNS IP (before anything else can take it), an
        EndpointSlice naming this namespace's advertise address (CoreDNS is a process here, not
        a pod; without an endpoint kube-proxy would reject the Service's traffic), and
        CoreDNS's ClusterRole bound to its certificate's user."""
        core = k8s.CoreV1Api(api)
        deadline = time.monotonic() + self.config.ready_timeout_s
        # The API server creates kube-system just after it reports ready.
        while not any(n.metadata.name == "kube-system" for n in core.list_namespace().items):
            if time.monotonic() > deadline:
                raise TimeoutError("namespace kube-system never appeared")
            time.sleep(0.2)
        ports = [
            {"name": "dns", "protocol": "UDP", "port": 53},
            {"name": "dns-tcp", "protocol": "TCP", "port": 53},
        ]
        core.create_namespaced_service(
            "kube-system",
            {
                "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
                "spec": {
                    "clusterIP": netns.cluster_dns_ip(self.config.service_cidr),
                    "ports": [{**p, "targetPort": 53} for p in ports],
                },
            },
        )
        k8s.DiscoveryV1Api(api).create_namespaced_endpoint_slice(
            "kube-system",
            {
                "metadata": {
                    "name": "kube-dns-harness",
                    "labels": {
                        "kubernetes.io/service-name": "kube-dns",
                        "endpointslice.kubernetes.io/managed-by": HARNESS_MANAGER,
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [self.advertise_ip], "conditions": {"ready": True}}],
                "ports": ports,
            },
        )
        role = coredns_cluster_role()
        apply_documents(api, [role, _bind_user(COREDNS_USER, role["metadata"]["name"])])

    def coredns(self) -> Callable[[], None]:
        kubeconfig = self._kubeconfig(COREDNS_USER, self.pki.client(COREDNS_USER))
        path = self.run_dir / "Corefile"
        path.write_text(
            corefile(
                listen_ips=(netns.cluster_dns_ip(self.config.service_cidr), self.advertise_ip),
                kubeconfig=kubeconfig,
                health_port=self.ports.coredns_health,
                ready_port=self.ports.coredns_ready,
            )
        )
        component = self.supervisor.start(
            "coredns", [str(self.binaries / "bin" / "coredns"), "-conf", str(path)]
        )
        # The ready plugin answers 200 once the kubernetes plugin has synced its informers.
        return self._wait_later(
            component, lambda: http_ok(f"http://127.0.0.1:{self.ports.coredns_ready}/ready")
        )

    def kube_proxy(self) -> Callable[[], None]:
        # system:kube-proxy is the user the bootstrap policy binds to system:node-proxier
        # (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go).
        kubeconfig = self._kubeconfig("kube-proxy", self.pki.client(KUBE_PROXY_USER))
        path = self.run_dir / "kube-proxy.yaml"
        path.write_text(
            yaml.safe_dump(
                kube_proxy_config(
                    kubeconfig=kubeconfig,
                    cluster_cidr=self.config.cluster_cidr,
                    # One kube-proxy serves every node: all pods' traffic crosses this one
                    # namespace. It speaks as the first node, so only Services with
                    # internalTrafficPolicy Local would see the difference (none here).
                    node_name=self.config.nodes[0].name,
                    ports=self.ports,
                )
            )
        )
        component = self.supervisor.start(
            "kube-proxy", [*self._kube_argv("kube-proxy"), f"--config={path}"], executable=self.kube
        )
        # /healthz answers 200 once the proxier has synced the rules at least once.
        return self._wait_later(
            component, lambda: http_ok(f"http://127.0.0.1:{self.ports.kube_proxy_healthz}/healthz")
        )

    def node_agent(self, api: k8s.ApiClient) -> Callable[[], None]:
        kubeconfigs = {
            node.name: self._kubeconfig(f"node-{node.name}", self.pki.node_client(node.name))
            for node in self.config.nodes
        }
        serving = {
            node.name: self.pki.serving(
                f"kubelet-{node.name}", f"system:node:{node.name}", server_ips=(node.internal_ip,)
            )
            for node in self.config.nodes
        }
        pods = PodsConfig(
            pods_dir=str(self.run_dir / "pods"),
            client_ca=str(self.pki.ca.cert),
            serving={name: [str(p.cert), str(p.key)] for name, p in serving.items()},
            nameserver=netns.cluster_dns_ip(self.config.service_cidr),
            backoff_base_s=self.config.container_backoff_base_s,
        )
        config_path = write_agent_config(
            self.run_dir / "node-agent.json", self.config.nodes, kubeconfigs, pods=pods
        )
        component = self.supervisor.start("node-agent", agent_argv(config_path))
        core = k8s.CoreV1Api(api)
        names = {node.name for node in self.config.nodes}

        def all_ready() -> bool:
            ready = set()
            for node in core.list_node().items:
                conditions = node.status.conditions or []
                if any(c.type == "Ready" and c.status == "True" for c in conditions):
                    # Schedulable only once the node-lifecycle controller has lifted the
                    # not-ready taint that admission put on the new Node.
                    taints = node.spec.taints or []
                    if not any(t.key == "node.kubernetes.io/not-ready" for t in taints):
                        ready.add(node.metadata.name)
            return names <= ready

        def wait() -> None:
            self.ready_s["node-agent"] = self.supervisor.wait_ready(
                component, all_ready, timeout_s=self.config.ready_timeout_s
            )

        return wait


def start_cluster(config: ClusterConfig, *, binaries: Path | None = None) -> Cluster:
    """Start every component in order and return once each answers on its real endpoint."""
    netns.require_private_namespace()
    if config.with_kube_proxy and shutil.which("nft") is None:
        raise FileNotFoundError(
            "kube-proxy's nftables mode needs the `nft` command (Debian's nftables package), "
            "which is not on PATH; run ./scripts/setup"
        )
    binaries = build.binaries_dir() if binaries is None else binaries
    run_dir = Path(tempfile.mkdtemp(prefix="llm-rollout-cluster-", dir=_run_dir_parent()))
    starter = _Starter(config, binaries, run_dir)
    admin_kubeconfig = starter._kubeconfig("admin", starter.pki.admin)
    cluster = Cluster(
        run_dir=run_dir,
        pki=starter.pki,
        admin_kubeconfig=admin_kubeconfig,
        supervisor=starter.supervisor,
        advertise_ip=starter.advertise_ip,
        binaries=binaries,
        api_url=starter.api_url,
        ready_s=starter.ready_s,
    )
    started = time.monotonic()
    try:
        starter.etcd()
        starter.apiserver()
        api = cluster.api_client()
        # The rest start side by side: the operators' CRDs (about 1 MB each, the slowest step)
        # are applied on threads, one per operator, while the other components come up, and
        # the operators start once the API server has established them. No process is started
        # while those threads run (the children's pre-exec hook must not fork beside a busy
        # thread).
        if config.with_dns or config.with_kube_proxy:
            starter.service_network()
        if config.with_dns:
            starter.dns_objects(api)
        waits = [starter.controller_manager(), starter.scheduler(), starter.node_agent(api)]
        if config.with_dns:
            waits.append(starter.coredns())
        if config.with_kube_proxy:
            waits.append(starter.kube_proxy())
        crd_names: list[str] = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            applied = []
            if config.with_kuberay:
                applied.append(pool.submit(starter.kuberay_objects, api))
            if config.with_lws:
                applied.append(pool.submit(starter.lws_objects, api))
            if config.rbg_crd is not None:
                applied.append(pool.submit(starter.rbg_objects, api, config.rbg_crd))
            for wait in waits:
                wait()
            for future in applied:
                crd_names += future.result()
        established_from = time.monotonic()
        _wait_crds_established(api, crd_names, config.ready_timeout_s)
        starter.ready_s["crds-established-after"] = time.monotonic() - established_from
        operator_waits = []
        if config.with_kuberay:
            operator_waits.append(starter.kuberay_operator())
        if config.with_lws:
            operator_waits.append(starter.lws_manager())
        if config.rbg_crd is not None:
            operator_waits.append(starter.rbg_reconciler(config.rbg_crd))
        for wait in operator_waits:
            wait()
        if config.with_lws:
            starter.lws_webhooks(api)
    except BaseException:
        # A component's failure carries its log's tail in the exception; nothing else in the
        # run directory is worth keeping on the shared tmpfs.
        stop_cluster(cluster)
        raise
    starter.ready_s["total"] = time.monotonic() - started
    return cluster


def _served_rbg_versions(api: k8s.ApiClient) -> list[str]:
    """The versions the installed RoleBasedGroup CRD serves, sorted; [] when there is none.
    Read raw: the client's models would take seconds over its megabyte of schema."""
    ext = k8s.ApiextensionsV1Api(api)
    try:
        raw = ext.read_custom_resource_definition(rbg.CRD_NAME, _preload_content=False)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return []
        raise
    crd = json.loads(raw.data)
    return sorted(str(v["name"]) for v in crd["spec"]["versions"] if v.get("served"))


def _wait_kind_discovered(
    api: k8s.ApiClient, group: str, kind: str, versions: list[str], deadline: float
) -> None:
    """Wait until the API server's discovery serves `kind` at exactly `versions` of `group`.

    Established is not enough after a swap: discovery is rebuilt by the apiextensions
    server's DiscoveryController from its own queue of CRD changes
    (k8s.io/apiextensions-apiserver pkg/apiserver/customresource_discovery_controller.go), so
    for a moment it can still list the deleted CRD's versions, and a client reading what is
    served then (the product's preflight, `kube.resources.versions_serving_kind`) would render
    for a release the cluster no longer runs. The group's own version list is not the test:
    v0.7's RoleInstanceSet and RoleInstance CRDs, left installed, keep v1alpha2 in it.
    """
    listed: list[str] = []
    while True:
        groups = k8s.ApisApi(api).get_api_versions().groups or []
        group_versions = [str(v.version) for g in groups if g.name == group for v in g.versions]
        custom = k8s.CustomObjectsApi(api)
        listed = sorted(
            version
            for version in group_versions
            if any(
                r.kind == kind and "/" not in r.name
                for r in custom.get_api_resources(group, version).resources or []
            )
        )
        if listed == versions:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"discovery serves {kind}.{group} at {listed}, not {versions}")
        time.sleep(0.2)


def ensure_rbg_crd(cluster: Cluster, crd: Path, *, timeout_s: float) -> float:
    """Make the running cluster serve the RoleBasedGroup CRD of ``crd`` (upstream's of one
    release; v0.6.0's and v0.7.0's share one name, so a cluster serves one), swapping it in
    when another is installed (issue 14, item 5: a swap fixture rather than an extra
    cluster). Returns the seconds a swap took, 0 when ``crd`` was already installed.

    The reconciler of the release restarts with it (``rbg.py`` for v0.6.0's v1alpha1 roles,
    ``rbg_v07.py`` for v0.7.0's RoleInstanceSet chain). The old CRD is deleted, with every
    group in it, rather than edited: the API server refuses to drop a version objects were stored at
    (``status.storedVersions``). A swap is slow (v0.7.0's CRD is 2.9 MB): test modules that
    need one release ask for it, and the swap back happens only when a later test needs it.
    """
    wanted = _load_yaml_docs([crd])
    (doc,) = wanted
    api = cluster.api_client()
    ext = k8s.ApiextensionsV1Api(api)
    installed = _served_rbg_versions(api)
    if installed == sorted(v["name"] for v in doc["spec"]["versions"] if v.get("served")):
        return 0.0
    started = time.monotonic()
    supervisor = cluster.supervisor
    for component in [c for c in supervisor.components if c.name == RBG_RECONCILER]:
        component.stop(grace_s=5.0)
        supervisor.components.remove(component)
    if installed:
        ext.delete_custom_resource_definition(rbg.CRD_NAME)
    deadline = time.monotonic() + timeout_s
    while _served_rbg_versions(api):
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {rbg.CRD_NAME} still present after {timeout_s:.0f} s")
        time.sleep(0.2)
    # v0.7's RoleInstanceSet and RoleInstance kinds come with its CRD (rbg_v07.child_crds);
    # left installed after a swap back, where nothing creates them.
    children = rbg_v07.child_crds() if crd == rbg.CRD_V07 else []
    apply_documents(api, [*wanted, *children])
    _wait_crds_established(
        api, [rbg.CRD_NAME, *(c["metadata"]["name"] for c in children)], timeout_s
    )
    served = sorted(v["name"] for v in doc["spec"]["versions"] if v.get("served"))
    _wait_kind_discovered(
        api, str(doc["spec"]["group"]), str(doc["spec"]["names"]["kind"]), served, deadline
    )
    kubeconfig = cluster.run_dir / "kubeconfigs" / f"{rbg.USER}.yaml"
    ready_file = cluster.run_dir / "rbg-listed"
    ready_file.unlink(missing_ok=True)
    component = supervisor.start(
        RBG_RECONCILER, rbg.reconciler_argv(kubeconfig, ready_file=ready_file, crd=crd)
    )
    supervisor.wait_ready(component, ready_file.exists, timeout_s=timeout_s)
    return time.monotonic() - started


def stop_cluster(cluster: Cluster, *, keep_run_dir: bool = False) -> None:
    cluster.supervisor.stop_all()
    if not keep_run_dir:
        shutil.rmtree(cluster.run_dir, ignore_errors=True)
