"""Our RoleBasedGroup reconciler (sandbox/cluster/rbg.py, standing in for sgl-project/rbg v0.6.0)
against the real API server: the children it creates, their names, owners and labels as
upstream's controller makes them (files cited in that module), roles started in dependency
order, the group's status from its workloads; and who wrote what, by managedFields: the
reconciler (field manager ``rbg``, upstream's) the group's status and the children,
kube-controller-manager the StatefulSet and Deployment status, kube-scheduler the pods'
binding (the ``Scheduled`` event: the binding leaves no managedFields entry, see
test_managed_fields.py), the node agent the pods' status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import watch

from llm_rollout.release.services import wait_rbg_role_services
from sandbox.cluster import rbg
from sandbox.cluster.control_plane import Cluster, ensure_rbg_crd
from sandbox.cluster.node_agent import FIELD_MANAGER as NODE_AGENT_MANAGER
from sandbox.cluster.node_agent import NodeSpec
from sandbox.cluster.waits import WaitTimeout, wait_for
from tests.cluster.pod_helpers import SHELL_IMAGE, is_ready

WAIT_S = 60.0
V1 = f"{rbg.GROUP}/{rbg.VERSION}"
# A swap back from v0.7.0's CRD (tests/real/test_rbg_v07.py) took 68 s at load 16.
SWAP_TIMEOUT_S = 240.0


@pytest.fixture(autouse=True)
def rbg_v06(cluster: Cluster) -> None:
    """The session cluster's RBG release, v0.6.0, with our reconciler (swapped back only if a
    v0.7.0 test ran before)."""
    ensure_rbg_crd(cluster, rbg.CRD_V06, timeout_s=SWAP_TIMEOUT_S)


def _template(role: str) -> dict[str, Any]:
    # sh as PID 1 ignores SIGTERM: a short grace period keeps the namespace's deletion quick.
    container = {
        "name": role,
        "image": SHELL_IMAGE,
        "command": ["sh", "-c", "sleep 3600"],
        "env": [{"name": "ROLE_NAME", "value": "overwritten by the controller"}],
        "resources": {"requests": {"cpu": "10m"}},
    }
    return {
        "metadata": {"labels": {"app": "pd"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
    }


def _group(name: str) -> dict[str, Any]:
    return {
        "apiVersion": V1,
        "kind": "RoleBasedGroup",
        "metadata": {"name": name},
        "spec": {
            "roles": [
                {
                    "name": "router",
                    "replicas": 1,
                    "dependencies": ["prefill", "decode"],
                    "template": _template("router"),
                },
                {"name": "prefill", "replicas": 2, "template": _template("prefill")},
                {
                    "name": "decode",
                    "replicas": 1,
                    "workload": {"apiVersion": "apps/v1", "kind": "Deployment"},
                    "template": _template("decode"),
                },
            ]
        },
    }


def wait_group(
    admin: k8s.ApiClient, namespace: str, name: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Watch the group until ``check`` holds for it."""
    custom = k8s.CustomObjectsApi(admin)
    args = (rbg.GROUP, rbg.VERSION, namespace, rbg.PLURAL)
    listed = custom.list_namespaced_custom_object(*args, field_selector=f"metadata.name={name}")
    last: dict[str, Any] | None = next(iter(listed["items"]), None)
    if last is not None and check(last):
        return last
    stream = watch.Watch()
    for event in stream.stream(
        custom.list_namespaced_custom_object,
        *args,
        field_selector=f"metadata.name={name}",
        resource_version=listed["metadata"]["resourceVersion"],
        timeout_seconds=int(WAIT_S),
    ):
        last = event["object"]
        if check(last):
            stream.stop()
            return last
    status = (last or {}).get("status")
    raise WaitTimeout(f"RoleBasedGroup {name}: not as expected in {WAIT_S:.0f} s; status {status}")


def group_ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _entries(obj: Any) -> list[tuple[str, str | None, str]]:
    """(manager, subresource, operation) of each managedFields entry."""
    if isinstance(obj, dict):
        return [
            (e["manager"], e.get("subresource"), e["operation"])
            for e in obj["metadata"].get("managedFields") or []
        ]
    return [(m.manager, m.subresource, m.operation) for m in obj.metadata.managed_fields or []]


def test_v06_children_names_owners_env_and_dependency_order(
    admin: k8s.ApiClient, namespace: str, gpu_nodes: tuple[NodeSpec, ...]
) -> None:
    ns = namespace
    core = k8s.CoreV1Api(admin)
    apps = k8s.AppsV1Api(admin)
    custom = k8s.CustomObjectsApi(admin)
    custom.create_namespaced_custom_object(rbg.GROUP, rbg.VERSION, ns, rbg.PLURAL, _group("pd"))
    group = wait_group(admin, ns, "pd", group_ready)
    uid = group["metadata"]["uid"]

    key = rbg.group_unique_key(ns, "pd")
    statuses = {s["name"]: s for s in group["status"]["roleStatuses"]}
    assert statuses["prefill"] == {
        "name": "prefill",
        "replicas": 2,
        "readyReplicas": 2,
        "updatedReplicas": 2,
    }
    assert statuses["router"]["readyReplicas"] == statuses["decode"]["readyReplicas"] == 1
    ready = next(c for c in group["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["reason"], ready["message"]) == ("AllRolesReady", "All roles are ready")
    assert group["status"]["observedGeneration"] == group["metadata"]["generation"]

    # Workloads <rbg>-<role>, controlled by the group, selecting the three common labels.
    owner = {
        "api_version": V1,
        "kind": "RoleBasedGroup",
        "name": "pd",
        "uid": uid,
        "block_owner_deletion": True,
        "controller": True,
    }
    prefill = apps.read_namespaced_stateful_set("pd-prefill", ns)
    decode = apps.read_namespaced_deployment("pd-decode", ns)
    router = apps.read_namespaced_stateful_set("pd-router", ns)
    selector = {rbg.NAME_LABEL: "pd", rbg.ROLE_LABEL: "prefill", rbg.GROUP_KEY_LABEL: key}
    for workload in (prefill, decode, router):
        assert [r.to_dict() for r in workload.metadata.owner_references] == [owner]
    assert prefill.spec.selector.match_labels == selector
    assert prefill.spec.pod_management_policy == "Parallel"
    assert prefill.spec.service_name == "s-pd-prefill"
    assert prefill.metadata.annotations[rbg.ROLE_SIZE_ANNOTATION] == "2"
    assert rbg.ROLE_REVISION_LABEL.format(role="prefill") in prefill.metadata.labels

    # The headless Service of each StatefulSet role, owned by its StatefulSet; none for the
    # Deployment role (svc_reconciler.go is called from the StatefulSet reconciler only).
    services = {s.metadata.name: s for s in core.list_namespaced_service(ns).items}
    assert set(services) == {"s-pd-prefill", "s-pd-router"}
    svc = services["s-pd-prefill"]
    assert svc.spec.cluster_ip == "None"
    assert svc.spec.publish_not_ready_addresses is True
    assert svc.spec.selector == {rbg.NAME_LABEL: "pd", rbg.ROLE_LABEL: "prefill"}
    (svc_owner,) = svc.metadata.owner_references
    assert (svc_owner.kind, svc_owner.name, svc_owner.uid) == (
        "StatefulSet",
        "pd-prefill",
        prefill.metadata.uid,
    )
    assert not svc_owner.controller

    # The group's config.yaml, one ConfigMap per role, addresses through the role Services.
    config = yaml.safe_load(core.read_namespaced_config_map("pd-router", ns).data["config.yaml"])
    assert config["group"] == {"name": "pd", "size": 3, "roles": ["router", "prefill", "decode"]}
    assert config["roles"]["prefill"]["instances"] == [
        {"address": "pd-prefill-0.s-pd-prefill"},
        {"address": "pd-prefill-1.s-pd-prefill"},
    ]

    # Pods: named by the StatefulSet controller, with the Service as subdomain, the group's env
    # (ROLE_NAME overriding the template's) and the config mounted.
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(ns).items}
    assert {"pd-router-0", "pd-prefill-0", "pd-prefill-1"} <= set(pods)
    assert len([n for n in pods if n.startswith("pd-decode-")]) == 1
    pod = pods["pd-prefill-1"]
    assert (pod.spec.hostname, pod.spec.subdomain) == ("pd-prefill-1", "s-pd-prefill")
    assert {k: pod.metadata.labels[k] for k in selector} == selector
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert [e.name for e in pod.spec.containers[0].env] == ["GROUP_NAME", "ROLE_INDEX", "ROLE_NAME"]
    assert (env["GROUP_NAME"].value, env["ROLE_NAME"].value) == ("pd", "prefill")
    assert env["ROLE_INDEX"].value_from.field_ref.field_path == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    decode_pod = next(p for n, p in pods.items() if n.startswith("pd-decode-"))
    assert "ROLE_INDEX" not in {e.name for e in decode_pod.spec.containers[0].env}
    mount = pod.spec.containers[0].volume_mounts[0]
    assert (mount.name, mount.mount_path, mount.read_only) == (
        "rbg-cluster-config",
        "/etc/rbg",
        True,
    )

    # The router came only after both its dependencies were Ready, and the wait was recorded.
    router_created = pods["pd-router-0"].metadata.creation_timestamp
    for name, dep in pods.items():
        if name.startswith(("pd-prefill-", "pd-decode-")):
            ready_at = next(
                c.last_transition_time for c in dep.status.conditions if c.type == "Ready"
            )
            assert router_created >= ready_at, name
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=pd").items
    waits = [e for e in events if e.reason == "DependencyNotMet"]
    assert waits and waits[0].message == "dependencies not met for role 'router'"
    assert waits[0].source.component == rbg.CONTROLLER_NAME

    # Who wrote what.
    assert _entries(group).count(("rbg", "status", "Apply")) == 1
    assert {m for m, sub, _ in _entries(group) if sub == "status"} == {"rbg"}
    for workload in (prefill, decode, router):
        entries = _entries(workload)
        assert ("rbg", None, "Apply") in entries
        assert {m for m, sub, _ in entries if sub == "status"} == {"kube-controller-manager"}
    for obj in (svc, core.read_namespaced_config_map("pd-prefill", ns)):
        assert _entries(obj) == [("rbg", None, "Apply")]
    node_names = {n.name for n in gpu_nodes}
    scheduled = {
        e.involved_object.name
        for e in core.list_namespaced_event(ns).items
        if e.reason == "Scheduled" and e.reporting_component == "default-scheduler"
    }
    for name, pod in pods.items():
        assert is_ready(pod)
        assert pod.spec.node_name in node_names
        assert name in scheduled
        assert {m for m, sub, _ in _entries(pod) if sub is None} == {"kube-controller-manager"}
        assert {m for m, sub, _ in _entries(pod) if sub == "status"} == {NODE_AGENT_MANAGER}


def test_v06_keeps_a_role_service_of_the_older_name(admin: k8s.ApiClient, namespace: str) -> None:
    """A Service named ``<rbg>-<role>`` (RBG before v0.5) is the role's headless Service:
    the StatefulSet's serviceName and so its pods' subdomain (GetCompatibleHeadlessServiceName),
    which is what the product's router binding reads (kinds/rbg.role_services_from_pods)."""
    ns = namespace
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "old-prefill"},
            "spec": {"clusterIP": "None", "selector": {rbg.NAME_LABEL: "old"}},
        },
    )
    body = _group("old")
    body["spec"]["roles"] = [{"name": "prefill", "replicas": 1, "template": _template("prefill")}]
    k8s.CustomObjectsApi(admin).create_namespaced_custom_object(
        rbg.GROUP, rbg.VERSION, ns, rbg.PLURAL, body
    )
    wait_group(admin, ns, "old", group_ready)
    sts = k8s.AppsV1Api(admin).read_namespaced_stateful_set("old-prefill", ns)
    assert sts.spec.service_name == "old-prefill"
    (pod,) = wait_for(
        core.list_namespaced_pod,
        lambda items: len(items) == 1,
        namespace=ns,
        label_selector=f"{rbg.NAME_LABEL}=old",
        timeout_s=WAIT_S,
        what="the prefill pod",
    )
    assert pod.spec.subdomain == "old-prefill"
    assert {s.metadata.name for s in core.list_namespaced_service(ns).items} == {"old-prefill"}
    # The product's late binding reads that name back (what deploy binds the router to).
    bound = wait_rbg_role_services(admin, ns, "old", "v0.6", ("prefill",), timeout_s=WAIT_S)
    assert bound == {"prefill": "old-prefill"}
