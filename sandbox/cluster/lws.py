"""What the harness gives the real LeaderWorkerSet manager (``sigs.k8s.io/lws``, the version pinned
in ``go/lws/go.mod``) that its in-cluster install would: a configuration file, a serving
certificate for its webhooks, and the webhook registrations pointing at it.

Upstream installs the manager as a Deployment behind a Service and lets it mint its own
certificate and patch the webhooks' caBundle (``pkg/cert``, ``internalCertManagement``). Here it
is a plain process on 127.0.0.1, so internal cert management is off, the serving certificate
comes from the cluster PKI (SAN 127.0.0.1), and the webhook configurations are upstream's
(``config/webhook/manifests.yaml`` with the objectSelector patches its kustomization applies)
with each ``clientConfig.service`` replaced by a URL on the loopback port.
"""

from __future__ import annotations

import base64
import copy
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

LWS_USER = "lws-controller-manager"
# Upstream's config/default/kustomization.yaml installs every object with this name prefix
# (the ClusterRole becomes lws-manager-role).
NAME_PREFIX = "lws-"
# Which kind each of upstream's webhook patches targets (config/webhook/kustomization.yaml).
_PATCH_TARGETS = {
    "mutating-patch.yaml": "MutatingWebhookConfiguration",
    "validating-patch.yaml": "ValidatingWebhookConfiguration",
}


def config_document(
    *, webhook_port: int, cert_dir: Path, metrics_port: int, probe_port: int
) -> dict[str, Any]:
    """The manager's ``--config`` file (lws ``api/config/v1alpha1/configuration_types.go``;
    the defaults it leaves on are in ``defaults.go``)."""
    return {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        # One manager per cluster: RecommendedDefaultLeaderElectionConfiguration would turn it
        # on, and it would then wait for a Lease in lws-system.
        "leaderElection": {"leaderElect": False},
        # Otherwise pkg/cert rotates a certificate into a Secret of lws-system and waits for a
        # Service that does not exist here.
        "internalCertManagement": {"enable": False},
        # controller-runtime's webhook server reads tls.crt and tls.key from certDir.
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
    }


def webhook_configurations(
    webhook_dir: Path, *, webhook_port: int, ca_pem: bytes
) -> list[dict[str, Any]]:
    """Upstream's webhook configurations, patched as its kustomization patches them, each
    webhook called at ``https://127.0.0.1:<webhook_port><its upstream path>``."""
    docs = [d for d in yaml.safe_load_all((webhook_dir / "manifests.yaml").read_text()) if d]
    by_kind = {str(d["kind"]): d for d in docs}
    for patch_name, kind in _PATCH_TARGETS.items():
        for op in yaml.safe_load((webhook_dir / patch_name).read_text()):
            index = _replace_index(op, patch_name)
            by_kind[kind]["webhooks"][index] = op["value"]
    ca_bundle = base64.b64encode(ca_pem).decode()
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        doc["metadata"] = {"name": NAME_PREFIX + str(doc["metadata"]["name"])}
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {
                "url": f"https://127.0.0.1:{webhook_port}{path}",
                "caBundle": ca_bundle,
            }
        out.append(doc)
    return out


def _replace_index(op: dict[str, Any], patch_name: str) -> int:
    # Upstream's patches are single `replace /webhooks/<n>` operations; anything else would
    # mean a new upstream version changed them, which must not be half-applied.
    path = str(op.get("path", ""))
    index = path.removeprefix("/webhooks/")
    if op.get("op") != "replace" or index == path or not index.isdigit():
        raise ValueError(f"{patch_name}: unsupported patch operation {op.get('op')} {path!r}")
    return int(index)


def _probe_leaderworkerset() -> dict[str, Any]:
    container = {"name": "probe", "image": "registry.invalid/probe:0"}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "harness-admission-probe"},
        "spec": {
            "leaderWorkerTemplate": {
                "size": 2,
                "workerTemplate": {"spec": {"containers": [container]}},
            }
        },
    }


def wait_admitted(api: k8s.ApiClient, *, namespace: str, timeout_s: float) -> float:
    """Dry-run create a LeaderWorkerSet until the API server admits it through the manager's
    mutating and validating webhooks (failurePolicy Fail: refused while they are unreachable).
    Returns the seconds waited."""
    custom = k8s.CustomObjectsApi(api)
    started = time.monotonic()
    while True:
        try:
            created = custom.create_namespaced_custom_object(
                "leaderworkerset.x-k8s.io",
                "v1",
                namespace,
                "leaderworkersets",
                _probe_leaderworkerset(),
                dry_run="All",
            )
        except ApiException as exc:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(
                    f"LeaderWorkerSet dry-run still refused after {timeout_s:.0f} s: "
                    f"{exc.status} {exc.reason}"
                ) from exc
            time.sleep(0.2)
            continue
        # Only the mutating webhook sets networkConfig (Default in lws
        # pkg/webhooks/leaderworkerset_webhook.go); the CRD schema has no default for it.
        if "networkConfig" not in created["spec"]:
            raise RuntimeError(
                "LeaderWorkerSet admitted without the LWS mutating webhook's defaults"
            )
        return time.monotonic() - started
