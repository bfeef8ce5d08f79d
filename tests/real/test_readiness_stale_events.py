"""Events about an earlier object of the same name never fail the current one, on the
session's real cluster (issue 16 point 3): the controllers' FailedCreate of a release
deployed before under the same name stay among the events for their TTL (kube-apiserver
--event-ttl, 1 h), and a release deployed again under that name must not be failed by them,
while its own persisting refusal still fails it within the tolerance.

Each test runs the two releases one after the other in one namespace, the first refused one
pod by a real ResourceQuota (the API server's quota admission), the refusal recorded by the
real controller on its own object:
- LeaderWorkerSet: the real kube-controller-manager's StatefulSet controller on the group's
  worker StatefulSet `<lws>-0` (pkg/controller/statefulset/stateful_pod_control.go
  recordPodEvent); the real LWS operator creates that StatefulSet only once the leader is Ready
  (`startupPolicy: LeaderReady`, lws pkg/controllers/pod_controller.go), so the second release,
  whose leader takes a few seconds to start, has no worker StatefulSet of its own for longer
  than the tolerance: the first release's last refusal is the name's latest outcome all that
  time.
- RayCluster: the real KubeRay operator on the RayCluster itself (ray-operator
  controllers/ray/raycluster_controller.go createWorkerPod, FailedToCreateWorkerPod); the
  second release of the name wants no worker, so nothing ever records a later outcome for it.
A third test leaves an earlier release's child alive: a worker StatefulSet `<lws>-1` of an
earlier two-group LeaderWorkerSet, labelled as LWS labels it but controlled by nothing (orphaned,
or not yet collected: Background propagation removes dependents after their owner), whose pod
creates the real StatefulSet controller keeps failing, the first after the new one-group
LeaderWorkerSet of the name was created. Its name and times are those of the new release's
objects; only its controller references tell it apart (issue 16 point 3).
The pods run the shell image (busybox, host sh under the node agent): what is tested is the
controllers' events, not an engine.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client as k8s

from bench.readiness import IMAGE, lws_group
from llm_rollout.kinds.lws import NAME_LABEL
from llm_rollout.kube.objects import apply, delete, get
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import ReadyReport, WorkloadFailed, wait_ready
from llm_rollout.readiness_rules import DEFAULT_TOLERANCES, timestamp_s
from tests.real_cluster import counted_pod_quota

WAIT_S = 60.0
DELETE_WAIT_S = 60.0
QUOTA = "pods"
# Short enough that the first release fails quickly; the second release's leader starts
# (and so its worker StatefulSet appears) well after it.
TOLERANCES = replace(DEFAULT_TOLERANCES, pod_create_s=1.0)
LEADER_START_S = 4
GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"


def _template(name: str, *, start_s: int = 0, probe: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "command": ["sh", "-c", "exec sleep 3600"],
    }
    if probe:
        # KubeRay injects its own probes into a container that declares none.
        check = {"exec": {"command": ["true"]}, "periodSeconds": 1}
        container |= {"readinessProbe": check, "livenessProbe": check}
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 1, "containers": [container]}
    if start_s:
        spec["initContainers"] = [
            {"name": "start", "image": IMAGE, "command": ["sleep", str(start_s)]}
        ]
    return {"spec": spec}


def _group(namespace: str, name: str, *, leader_start_s: int = 0) -> dict[str, Any]:
    """One leader and one worker; the worker StatefulSet is made once the leader is Ready."""
    leader = _template("leader", start_s=leader_start_s)
    return lws_group(namespace, name, leader, _template("worker"), startup_policy="LeaderReady")


def _ray(namespace: str, name: str, *, workers: int) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {
            "name": name,
            "namespace": namespace,
            # KubeRay runs our command as is instead of wrapping it in `ray start`.
            "annotations": {"ray.io/overwrite-container-cmd": "true"},
        },
        "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": _template("head", probe=True)},
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": workers,
                    "minReplicas": 0,
                    "maxReplicas": 1,
                    "rayStartParams": {},
                    "template": _template("worker", probe=True),
                }
            ],
        },
    }


def _refused_then_redeployed(
    admin: k8s.ApiClient,
    namespace: str,
    first: dict[str, Any],
    second: dict[str, Any],
    refused_on: ObjectRef,
    refused_reason: str,
) -> ReadyReport:
    """Deploy `first` under a quota of one pod, see its refusal fail it, remove it, lift the
    quota and deploy `second` under the same name; the second's readiness report."""
    core = k8s.CoreV1Api(admin)
    counted_pod_quota(core, namespace, QUOTA, 1)
    ref = ObjectRef.of(first)
    apply(admin, first)
    with pytest.raises(WorkloadFailed) as info:
        wait_ready(admin, ref, timeout_s=WAIT_S, tolerances=TOLERANCES)
    # The current, persisting refusal fails the release within the tolerance.
    failure = info.value
    assert failure.reason == refused_reason, failure
    assert failure.pod == refused_on, failure
    assert f"exceeded quota: {QUOTA}" in failure.detail, failure
    # As a rollback removes a release: the workload, its controller's objects and pods gone.
    assert delete(admin, ref, propagation="Foreground", wait_timeout_s=DELETE_WAIT_S)
    core.patch_namespaced_resource_quota(QUOTA, namespace, {"spec": {"hard": {"pods": "2"}}})

    apply(admin, second)
    report = wait_ready(admin, ref, timeout_s=WAIT_S, tolerances=TOLERANCES)
    # The first release's refusal is still among the events, and was there all along.
    refusals = [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.reason == refused_reason and e.involved_object.name == refused_on.name
    ]
    assert refusals, refusals
    assert all(f"exceeded quota: {QUOTA}" in str(e.message) for e in refusals), refusals
    return report


def test_an_lws_deployed_again_is_not_failed_by_the_earlier_groups_refusal(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    name = "stale"
    worker_sts = ObjectRef("apps/v1", "StatefulSet", real_namespace, f"{name}-0")
    report = _refused_then_redeployed(
        real_admin,
        real_namespace,
        _group(real_namespace, name),
        _group(real_namespace, name, leader_start_s=LEADER_START_S),
        worker_sts,
        "FailedCreate",
    )
    assert sorted(p.name for p in report.pods) == [f"{name}-0", f"{name}-0-1"]


def test_a_raycluster_deployed_again_is_not_failed_by_the_earlier_clusters_refusal(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    name = "stale-ray"
    cluster = ObjectRef("ray.io/v1", "RayCluster", real_namespace, name)
    report = _refused_then_redeployed(
        real_admin,
        real_namespace,
        _ray(real_namespace, name, workers=1),
        _ray(real_namespace, name, workers=0),
        cluster,
        "FailedToCreateWorkerPod",
    )
    assert len(report.pods) == 1  # the head


def _left_behind_worker(namespace: str, lws: str, group: int) -> dict[str, Any]:
    """A worker StatefulSet as LWS names and labels it (pkg/controllers/pod_controller.go
    constructWorkerStatefulSetApplyConfiguration), without the controller reference to its
    leader pod; its pods name a ServiceAccount that does not exist, so the ServiceAccount
    admission plugin refuses each one and the StatefulSet controller records FailedCreate."""
    name = f"{lws}-{group}"
    template = _template("worker")
    template["metadata"] = {"labels": {"left-behind": name}}
    template["spec"]["serviceAccountName"] = "absent"
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": name,
            "namespace": namespace,
            # lws api/leaderworkerset/v1 SetNameLabelKey and GroupIndexLabelKey: the leader
            # controller lists StatefulSets by the first and skips indexes past its replicas
            # (pkg/controllers/leaderworkerset_controller.go getReplicaStates, pkg/utils
            # SortByIndex).
            "labels": {NAME_LABEL: lws, GROUP_INDEX_LABEL: str(group)},
        },
        "spec": {
            "replicas": 1,
            "serviceName": lws,
            "selector": {"matchLabels": {"left-behind": name}},
            "template": template,
        },
    }


def test_an_earlier_groups_statefulset_left_alive_does_not_fail_the_current_lws(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    name = "left"
    lws = _group(real_namespace, name, leader_start_s=LEADER_START_S)
    apply(real_admin, lws)
    # Created after the LeaderWorkerSet, so its refusals start after it too.
    apply(real_admin, _left_behind_worker(real_namespace, name, 1))
    report = wait_ready(real_admin, ObjectRef.of(lws), timeout_s=WAIT_S, tolerances=TOLERANCES)
    assert sorted(p.name for p in report.pods) == [f"{name}-0", f"{name}-0-1"]

    core = k8s.CoreV1Api(real_admin)
    current = get(real_admin, ObjectRef.of(lws))
    assert current is not None
    created_s = timestamp_s(current["metadata"]["creationTimestamp"])
    assert created_s is not None
    refusals = [
        e
        for e in core.list_namespaced_event(real_namespace).items
        if e.reason == "FailedCreate" and e.involved_object.name == f"{name}-1"
    ]
    assert refusals, "the left-behind StatefulSet recorded no refusal"
    # By name and time alone it was the current LeaderWorkerSet's: first refused from its
    # creation second on, before readiness ended (the rule before ownership counted it).
    first_s = min(e.first_timestamp.timestamp() for e in refusals)
    assert created_s <= first_s <= report.noticed_at, (created_s, first_s, report.noticed_at)
    assert all('serviceaccount "absent" not found' in str(e.message) for e in refusals)
    # And it is still there, controlled by nothing.
    left = get(real_admin, ObjectRef("apps/v1", "StatefulSet", real_namespace, f"{name}-1"))
    assert left is not None
    assert not left["metadata"].get("ownerReferences")
