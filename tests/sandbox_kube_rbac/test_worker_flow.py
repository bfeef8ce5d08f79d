"""The deploy flow's Kubernetes work, done with nothing but the worker's ServiceAccount token.

Each step calls the same product functions the flow's tasks call (preflight's cluster check,
the lease lock, offline validation against the cluster's CRDs, apply with dry-run, PVC
binding, readiness, pod logs, the smoke test through the service proxy or, for a server with
an API key, a port-forward, promote, retention's scan of stable Services, teardown). Then the
request log proves that every request the worker sent was allowed and that every grant of the
Role/ClusterRole was used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from llm_rollout.crds import crds_from_cluster
from llm_rollout.kube.objects import (
    APPLY_CONTENT_TYPE,
    Propagation,
    apply,
    apply_all,
    delete_all,
    secret_value,
)
from llm_rollout.kube.resources import ObjectRef, read_pod_log
from llm_rollout.kube.watching import wait_pvc_bound
from llm_rollout.locking import acquire, release
from llm_rollout.preflight import PreflightReport, check_cluster
from llm_rollout.rbac import worker_user
from llm_rollout.readiness import read_autoscaler_status, wait_ready
from llm_rollout.release import (
    apply_checked,
    find_serving_release,
    point_stable_service,
    release_pods,
    service_objects,
    teardown,
)
from llm_rollout.render import render, render_oss_secret
from llm_rollout.retention import revisions_in_use
from llm_rollout.smoke import run_smoke, smoke_endpoint
from llm_rollout.spec import ServiceSpec, load_spec
from llm_rollout.validation import validate_objects
from sandbox.kube.rbac import request_info, rule_allows
from tests.sandbox_kube_rbac.conftest import NAMESPACE

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORKLOAD_KINDS = ("Deployment", "LeaderWorkerSet", "RoleBasedGroup", "RayCluster")


def _spec(example: str) -> ServiceSpec:
    spec = load_spec(EXAMPLES / example)
    assert spec.namespace == NAMESPACE  # the examples deploy into the namespace bound here
    return spec


def _deploy_and_remove(
    worker: k8s_client.ApiClient,
    admin: k8s_client.ApiClient,
    spec: ServiceSpec,
    release_id: str,
    *,
    lock_wait_s: float = 0,
    propagation: Propagation = "Foreground",
) -> dict[str, Any]:
    """One deploy of `spec` as the worker, then its teardown; returns what it observed."""
    api_key = spec.serving.api_key
    if api_key is not None:
        # The spec references the API key Secret; the operator creates it, never the flow.
        apply(
            admin,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": api_key.secret_name, "namespace": NAMESPACE},
                "stringData": {api_key.key: "sk-test-key"},
            },
        )
    rendered = render(spec, release=release_id, rbg_flavor="v0.6")

    report = PreflightReport()
    check_cluster(
        worker,
        spec,
        report,
        render_workloads=lambda _flavor: list(rendered.workload_objects),
        find_serving=lambda a: find_serving_release(a, spec.namespace, spec.name),
    )
    assert not report.problems, report.problems
    assert report.namespace_exists and report.nodes and report.strategy

    _state, reentrant = acquire(
        worker, NAMESPACE, spec.name, holder="worker-test", owner=release_id, wait_s=lock_wait_s
    )
    assert not reentrant

    storage = [
        render_oss_secret(spec, "AKID-test", "secret-test") if o["kind"] == "Secret" else o
        for o in rendered.storage_objects
    ]
    apply_checked(worker, storage)
    wait_pvc_bound(worker, NAMESPACE, spec.pvc_name, 30)

    workload_objects = list(rendered.workload_objects)
    # The rollout task's offline validation, against the CRDs the cluster serves.
    assert validate_objects(rendered.all(), crds_from_cluster(worker)) == []
    apply_all(worker, [*workload_objects, rendered.stable_service], dry_run=True)
    apply_checked(worker, workload_objects)
    workload = next(ObjectRef.of(o) for o in workload_objects if o["kind"] in WORKLOAD_KINDS)
    ready = wait_ready(worker, workload, timeout_s=60)
    assert ready.pods
    # Readiness reads cluster-autoscaler's status ConfigMap only while a pod is Unschedulable,
    # which none is here; the same call, made as the worker.
    read_autoscaler_status(worker)

    pod = release_pods(worker, NAMESPACE, spec.name, release_id)[0]
    container = pod["spec"]["containers"][0]["name"]
    lines = read_pod_log(
        worker,
        NAMESPACE,
        pod["metadata"]["name"],
        container=container,
        previous=False,
        tail_lines=5,
    )

    release_service = next(o for o in workload_objects if o["kind"] == "Service")
    port = int(release_service["spec"]["ports"][0]["port"])
    key = None
    if api_key is not None:
        # The smoke task reads the key like this and, since the service proxy cannot carry
        # it, takes a port-forward to one of the release's pods.
        key = secret_value(worker, NAMESPACE, api_key.secret_name, api_key.key)
        assert key == "sk-test-key"
    with smoke_endpoint(
        worker,
        namespace=NAMESPACE,
        service=release_service["metadata"]["name"],
        port=port,
        route=spec.smoke.route(api_key=key is not None),
        base_url=None,
        timeout_s=10,
    ) as endpoint:
        smoke = run_smoke(
            endpoint.client,
            endpoint.base_url,
            model=spec.served_model_name,
            messages=[{"role": "user", "content": "Say hello"}],
            max_tokens=8,
            api_key=key,
            timeout_s=10,
        )
    # Through the proxy or the port-forward as the worker: every call reached the backend.
    assert smoke.calls and smoke.calls[0].status == 200, smoke.calls
    assert all(c.status not in (401, 403) for c in smoke.calls), smoke.calls

    point_stable_service(worker, rendered.stable_service, release_id, {})
    serving = find_serving_release(worker, NAMESPACE, spec.name)
    assert serving.release == release_id
    source = spec.model.modelscope
    in_use = revisions_in_use(worker, source.model_id) if source else {spec.model_revision}
    assert spec.model_revision in in_use

    assert release(worker, NAMESPACE, spec.name, owner=release_id)
    if propagation == "Foreground":
        removed = teardown(worker, NAMESPACE, spec.name, wait_timeout_s=60)
    else:
        refs = list(reversed(service_objects(worker, NAMESPACE, spec.name)))
        removed = delete_all(worker, refs, propagation=propagation, wait_timeout_s=60)
    return {"log": lines, "smoke": smoke, "removed": [r.kind for r in removed]}


@pytest.mark.parametrize(
    ("example", "workload_kind", "propagation"),
    [
        ("seed-vllm-single-gpu.yaml", "Deployment", "Foreground"),
        ("seed-vllm-lws.yaml", "LeaderWorkerSet", "Foreground"),
        ("seed-vllm-lws.yaml", "LeaderWorkerSet", "Background"),
    ],
)
def test_deploy_and_teardown_as_the_worker(
    cluster: Any,
    admin: k8s_client.ApiClient,
    worker: k8s_client.ApiClient,
    example: str,
    workload_kind: str,
    propagation: Propagation,
) -> None:
    spec = _spec(example)
    cluster.api.request_log.clear()
    seen = _deploy_and_remove(worker, admin, spec, f"r{len(example)}", propagation=propagation)
    assert all(c.status == 200 and not c.error for c in seen["smoke"].calls), seen["smoke"]
    assert seen["smoke"].answer
    assert workload_kind in seen["removed"]
    assert {"PersistentVolume", "PersistentVolumeClaim", "Secret", "Service"} <= set(
        seen["removed"]
    )

    user = worker_user(NAMESPACE)
    mine = [r for r in cluster.api.request_log.records() if r.user == user]
    assert mine, "the steps did not run as the worker"
    denied = [(r.method, r.path, r.query) for r in mine if r.status in (401, 403)]
    assert denied == []


def test_every_grant_is_used(
    cluster: Any,
    admin: k8s_client.ApiClient,
    worker: k8s_client.ApiClient,
    rbac_objects: list[dict[str, Any]],
) -> None:
    """Least privilege, checked from the other side: no rule grants a verb the flow never sent.

    One deploy per workload kind the product renders. The lease `watch` only happens while
    waiting for another run's lock, so for the first one another holder takes the lock and
    lets it expire while the worker waits; the others find no lease and create theirs.
    """
    for lease in admin_leases(admin):
        delete_lease(admin, lease)
    cluster.api.request_log.clear()
    first = _spec("seed-vllm-single-gpu.yaml")
    acquire(admin, NAMESPACE, first.name, holder="other-run", owner="other", wait_s=0, duration_s=1)
    _deploy_and_remove(worker, admin, first, "rgrants", lock_wait_s=10)
    for example in ("seed-vllm-lws.yaml", "seed-sglang-pd-rbg.yaml", "seed-qwen14b-ray-tp2.yaml"):
        _deploy_and_remove(worker, admin, _spec(example), "rgrants")

    user = worker_user(NAMESPACE)
    infos = []
    for record in cluster.api.request_log.records():
        if record.user != user or record.status in (401, 403):
            continue
        info = request_info(record.method, record.path, record.query)
        infos.append(info)
        if record.content_type.startswith(APPLY_CONTENT_TYPE) and record.status == 201:
            infos.append(info.with_verb("create"))  # an apply that created its object
        if info.subresource == "portforward" and record.status == 101:
            infos.append(info.with_verb("create"))  # the WebSocket upgrade's second check
    unused: list[str] = []
    for obj in rbac_objects:
        for rule in obj.get("rules") or []:
            for verb in rule["verbs"]:
                for resource in rule["resources"]:
                    single = {**rule, "verbs": [verb], "resources": [resource]}
                    # A ClusterRole grant counts only if a cluster-scoped request needed it.
                    cluster_wide = obj["kind"] == "ClusterRole"
                    if not any(
                        rule_allows(single, info) and not (cluster_wide and info.namespace)
                        for info in infos
                    ):
                        unused.append(f"{obj['kind']}: {verb} {resource}")
    assert unused == [], json.dumps(unused, indent=1)


def admin_leases(admin: k8s_client.ApiClient) -> list[str]:
    leases = k8s_client.CoordinationV1Api(admin).list_namespaced_lease(NAMESPACE)
    return [lease.metadata.name for lease in leases.items]


def delete_lease(admin: k8s_client.ApiClient, name: str) -> None:
    k8s_client.CoordinationV1Api(admin).delete_namespaced_lease(name, NAMESPACE)
