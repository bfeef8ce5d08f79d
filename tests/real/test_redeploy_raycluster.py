"""What redeploy decides for a RayCluster, checked against the REAL KubeRay operator
(github.com/ray-project/kuberay/ray-operator v1.6.2, sandbox/cluster/build.py) (issue 16 B7,
issue 19 point 1).

The product's rule (llm_rollout/kinds/raycluster.py ``RayCluster.pod_roll``): a pod-template
change reaches the running pods only when ``spec.upgradeStrategy.type`` is ``Recreate``;
otherwise redeploy refuses the change, nothing applied, and says to deploy a new release
(``NoEffectError``; on this cluster the product's own vLLM RayCluster carries Recreate, see
tests/real/test_deploy_kuberay.py). The operator's source says why
(ray-operator/controllers/ray/raycluster_controller.go, v1.6.2):
- ``reconcilePods`` computes the spec hash (utils/util.go
  GenerateHashWithoutReplicasAndWorkersToDelete: the spec without replicas, min/max replicas,
  workersToDelete, tolerations, scheduling gates and upgradeStrategy) and deletes every pod
  only when ``shouldRecreatePodsForUpgrade`` holds: upgradeStrategy ``Recreate`` and a head pod
  whose ``ray.io/upgrade-strategy-recreate-hash`` annotation differs from it
  (``createHeadPod`` stamps it on every head pod); otherwise it only creates missing pods and
  deletes surplus or failed ones, so a changed template leaves the running pods alone.
- the status, ``observedGeneration`` included, is written only when
  utils/consistency.go InconsistentRayClusterStatus sees a change (state, worker replica
  counts, endpoints, head, conditions); changing a worker group's maxReplicas is such a change,
  which is how the test knows the operator reconciled the changed spec.

The product renders ``upgradeStrategy: {type: Recreate}`` where the installed RayCluster CRD
offers it (``RayCluster.crd_features``, read here from this cluster's CRDs as deploy's
preflight reads them), so redeploy on its own RayCluster rolls the pods; the Recreate applied
below is that rendering's.

The engine plays no part in either decision, so the RayCluster here is a head pod running
busybox's ``sleep`` (``ray.io/overwrite-container-cmd``: KubeRay leaves our command alone) with
its probes declared (so KubeRay injects none): seconds instead of the two minutes a vLLM
RayCluster takes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from llm_rollout.crds import crds_from_cluster
from llm_rollout.kinds import PodRoll
from llm_rollout.kinds.raycluster import RayCluster
from llm_rollout.kube.objects import FIELD_MANAGER, apply, get
from llm_rollout.kube.resources import JsonDict, ObjectRef
from llm_rollout.kube.watching import Selector, watching
from llm_rollout.redeploy import (
    Action,
    NoEffectError,
    RedeployRequest,
    changed_workload,
    expected_roll,
    not_rolled,
    wait_rolled,
    workload_incarnations,
)
from llm_rollout.render import render
from llm_rollout.spec import load_spec
from llm_rollout.vocabulary import RESTARTED_AT_ANNOTATION
from tests.real.ray_support import CLUSTER_LABEL

NAME = "ray-roll"
# KubeRay v1.6.2 controllers/ray/utils/constant.go UpgradeStrategyRecreateHashKey.
HASH_ANNOTATION = "ray.io/upgrade-strategy-recreate-hash"
WAIT_S = 120.0
RAY_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "seed-qwen14b-ray-tp2.yaml"


def _container(name: str) -> dict[str, Any]:
    probe = {"exec": {"command": ["true"]}, "periodSeconds": 1}
    return {
        "name": name,
        "image": "busybox:1.36",
        "command": ["sh", "-c", "exec sleep 3600"],
        "resources": {"requests": {"cpu": "10m"}},
        "readinessProbe": probe,
        "livenessProbe": probe,
    }


def _raycluster(namespace: str) -> JsonDict:
    def template(name: str) -> dict[str, Any]:
        return {"spec": {"terminationGracePeriodSeconds": 1, "containers": [_container(name)]}}

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {
            "name": NAME,
            "namespace": namespace,
            "annotations": {"ray.io/overwrite-container-cmd": "true"},
        },
        "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": template("ray-head")},
            "workerGroupSpecs": [
                {
                    "groupName": "idle",
                    "replicas": 0,
                    "minReplicas": 0,
                    "maxReplicas": 1,
                    "rayStartParams": {},
                    "template": template("ray-worker"),
                }
            ],
        },
    }


def _wait_cluster(
    api: k8s.ApiClient, namespace: str, what: str, done: Any
) -> tuple[JsonDict, list[JsonDict]]:
    """Watch the RayCluster and its pods until ``done(cluster, live_pods)`` holds (bounded)."""
    cluster_spec = Selector("ray.io/v1", "RayCluster", namespace, name=NAME)
    pod_spec = Selector("v1", "Pod", namespace, label_selector=f"{CLUSTER_LABEL}={NAME}")
    deadline = time.monotonic() + WAIT_S
    with watching(api, [cluster_spec, pod_spec]) as group:
        while True:
            cluster = group.cache[cluster_spec].get(NAME)
            pods = [
                p
                for p in group.cache[pod_spec].values()
                if not p["metadata"].get("deletionTimestamp")
            ]
            if group.all_synced and cluster is not None and done(cluster, pods):
                return cluster, pods
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what}: not seen within {WAIT_S:.0f} s; pods {pods}"
            group.next(remaining)


def _running(pods: list[JsonDict]) -> bool:
    return len(pods) == 1 and (pods[0].get("status") or {}).get("phase") == "Running"


def _events(admin: k8s.ApiClient, namespace: str) -> list[str]:
    items = (
        k8s.CoreV1Api(admin)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}")
        .items
    )
    return [str(e.message) for e in items]


def _request(action: Action) -> RedeployRequest:
    return RedeployRequest(service="svc", namespace="unused", action=action)


@pytest.mark.timeout(300, func_only=True)
def test_kuberay_rolls_pods_only_with_recreate_as_redeploy_decides(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    api, namespace = real_admin, real_namespace
    ref = ObjectRef("ray.io/v1", "RayCluster", namespace, NAME)
    apply(api, _raycluster(namespace), field_manager=FIELD_MANAGER)
    _, pods = _wait_cluster(api, namespace, "the head pod Running", lambda c, p: _running(p))
    (head,) = pods
    assert head["metadata"]["annotations"][HASH_ANNOTATION]  # createHeadPod stamps the hash

    # Without an upgrade strategy the product refuses a restart, nothing applied ...
    stored = get(api, ref)
    assert stored is not None
    with pytest.raises(NoEffectError) as refused:
        expected_roll(stored, _request("restart"))
    assert "spec.upgradeStrategy.type Recreate" in str(refused.value)
    assert "deploy-model" in str(refused.value)

    # ... because the operator would leave the pod running: the same template change applied
    # anyway (with maxReplicas moved, so the status records the generation it reconciled).
    before = workload_incarnations(api, stored)
    # A fixed past stamp, so the later restart's stamp (now) differs at the annotation's
    # one-second resolution.
    changed = changed_workload(stored, _request("restart"), datetime(2026, 1, 1, tzinfo=UTC))
    changed["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 2
    applied = apply(api, changed, field_manager=FIELD_MANAGER, force=True)
    generation = applied["metadata"]["generation"]
    assert generation > stored["metadata"]["generation"]
    cluster, pods = _wait_cluster(
        api,
        namespace,
        f"the operator's status for generation {generation}",
        lambda c, p: (c.get("status") or {}).get("observedGeneration") == generation,
    )
    assert cluster["status"]["maxWorkerReplicas"] == 2
    assert not_rolled(before, pods, PodRoll("replace")) == [
        f"pod {head['metadata']['name']} (uid {head['metadata']['uid']}) is still the one "
        "from before the change"
    ]
    assert not any("Recreate" in m for m in _events(api, namespace))

    # With Recreate (KubeRay >= 1.6) the pending change reaches the pods at once: the head
    # pod's hash is the one from its creation, before the change above. The strategy is the
    # one the product renders for this cluster, from the RayCluster CRD it serves.
    features, note = RayCluster().crd_features(crds_from_cluster(api))
    assert "offers spec.upgradeStrategy Recreate" in note
    product = render(load_spec(RAY_EXAMPLE), release="r1", crd_features=features).workload
    assert product["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    apply(
        api,
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": {"upgradeStrategy": product["spec"]["upgradeStrategy"]},
        },
        field_manager="test-operator",
    )
    old_uid = head["metadata"]["uid"]
    _, pods = _wait_cluster(
        api,
        namespace,
        "the head pod recreated for the pending change",
        lambda c, p: _running(p) and p[0]["metadata"]["uid"] != old_uid,
    )
    (head,) = pods
    assert head["metadata"]["annotations"][RESTARTED_AT_ANNOTATION] == "2026-01-01T00:00:00Z"

    # And the product applies a restart and proves it reached the pods: the operator deleted
    # the head pod and made a new one.
    stored = get(api, ref)
    assert stored is not None
    roll = expected_roll(stored, _request("restart"))
    assert roll == PodRoll("replace")
    before = workload_incarnations(api, stored)
    assert set(before) == {head["metadata"]["uid"]}
    apply(
        api,
        changed_workload(stored, _request("restart"), datetime.now(UTC)),
        field_manager=FIELD_MANAGER,
        force=True,
    )
    names = wait_rolled(api, stored, before, roll, timeout_s=WAIT_S)
    _, pods = _wait_cluster(api, namespace, "the new head pod Running", lambda c, p: _running(p))
    (new_head,) = pods
    assert names == [new_head["metadata"]["name"]]
    assert new_head["metadata"]["uid"] not in (old_uid, head["metadata"]["uid"])
    assert new_head["metadata"]["annotations"][RESTARTED_AT_ANNOTATION] != "2026-01-01T00:00:00Z"
    recreated = [m for m in _events(api, namespace) if "Deleted all Pods" in m and "Recreate" in m]
    assert recreated, _events(api, namespace)
