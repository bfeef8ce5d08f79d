"""A LeaderWorkerSet's pods run on the node agent: the LWS_* variables the real LWS pod
webhook injected are $(VAR)-expanded by the kubelet's rules in the real command line, and each
pod's hostname and subdomain give it the FQDN its leader address names."""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from sandbox.cluster.waits import wait_for
from tests.cluster.pod_helpers import POD_TIMEOUT_S, is_ready, shell_container, wait_for_log

LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"


def _group(name: str) -> dict[str, Any]:
    container = shell_container(
        "engine",
        # $(LWS_*) are expanded by the kubelet from the webhook's variables; $(hostname -f)
        # names no variable and is left to the shell.
        "echo index=$(LWS_WORKER_INDEX) size=$(LWS_GROUP_SIZE) leader=$(LWS_LEADER_ADDRESS); "
        "echo fqdn=$(hostname -f); exec sleep 3600",
    )
    template = {"spec": {"terminationGracePeriodSeconds": 1, "containers": [container]}}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2, "workerTemplate": template}},
    }


def test_a_groups_pods_run_with_the_webhooks_variables_expanded(
    admin: k8s.ApiClient, namespace: str
) -> None:
    name = "shells"
    k8s.CustomObjectsApi(admin).create_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", _group(name)
    )
    pods = wait_for(
        k8s.CoreV1Api(admin).list_namespaced_pod,
        lambda items: len(items) == 2 and all(is_ready(p) for p in items),
        namespace=namespace,
        label_selector=f"{LWS_NAME_LABEL}={name}",
        timeout_s=POD_TIMEOUT_S,
        what=f"the 2 pods of LeaderWorkerSet {name} Ready",
    )
    core = k8s.CoreV1Api(admin)
    leader = f"{name}-0.{name}.{namespace}"
    logs = {
        p.metadata.name: wait_for_log(core, namespace, p.metadata.name, "engine", "fqdn=")
        for p in pods
    }
    assert logs == {
        f"{name}-0": [
            f"index=0 size=2 leader={leader}",
            f"fqdn={name}-0.{name}.{namespace}.svc.cluster.local",
        ],
        f"{name}-0-1": [
            f"index=1 size=2 leader={leader}",
            f"fqdn={name}-0-1.{name}.{namespace}.svc.cluster.local",
        ],
    }
