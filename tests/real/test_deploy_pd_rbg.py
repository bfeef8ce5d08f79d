"""The deploy flow, unchanged, on the REAL cluster: SGLang prefill/decode disaggregation on a
RoleBasedGroup (examples/seed-sglang-pd-rbg.yaml, adapted to the tiny model), with the real
sglang-router 0.1.8 in front of the prefill and decode servers.

The session cluster serves RBG v0.6.0's CRD (v1alpha1 only), so the product detects flavour
v0.6 by API discovery and renders v1alpha1 roles; our RBG reconciler (sandbox/cluster/rbg.py,
the stand-in for RBG's controller) makes the StatefulSets and headless Services, the real
kube-controller-manager the pods, kube-scheduler binds them, the node agent runs the SGLang
stand-in (sandbox/sglang_standin) for prefill and decode and the real router for the router
role (sandbox/cluster/images.py). The router role waits for both server roles to be Ready
(RBG dependencies), and its backend URLs are bound late, from the Service the created prefill
and decode pods name as subdomain (issue 16 point 2), which the run record states. The smoke
test goes through the stable Service, which selects the router.

Then finding F7 (../shared/research/real-cluster-audit.md) on the same deploy: one prefill
server goes down and stays down (its pod deleted, its re-creation refused by a ResourceQuota,
the real kube-apiserver's quota admission) while the deployed router and a second router pod
built from the template as it stood before commit 818048d (router probed on `/health`) front
the same servers. sglang-router 0.1.8 (the image's, sandbox/runtimes/install.py) checks every
worker's `/health` every 10 s (`src/core/worker.rs` start_health_checker, one failure marks a
worker unhealthy); its `/health` answers 503 "Unhealthy servers: [...]" while any worker is
unhealthy, `/readiness` 200 while one prefill and one decode are healthy, `/liveness` 200
while it serves (`src/routers/pd_router.rs` health / readiness, `src/server.rs` routes; read
in the 0.1.7 and 0.1.9 sdists, which agree; 0.1.8 is published as wheels only and its binary
carries the same strings). So the old router drops out of Ready (and its liveness probe
restarts it), while the deployed one, whose `/health` fails as well, keeps answering its
readiness probes (counted in its request log), stays Ready and serves through the healthy
prefill.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.deploy import DeployResult, deploy
from llm_rollout.kube.proxy import httpx_client_for, service_proxy_url
from llm_rollout.render import render
from llm_rollout.spec import ServiceSpec, load_spec
from sandbox.cluster import rbg
from sandbox.cluster.control_plane import Cluster, ensure_rbg_crd
from sandbox.cluster.waits import wait_for
from sandbox.prefect_stack import poll
from sandbox.runtimes import install as runtimes_install
from tests.real.ray_support import OLD_TEMPLATES, render_old_workload
from tests.real_cluster import counted_pod_quota
from tests.real_deploy import RealStores, write_real_spec

pytestmark = pytest.mark.usefixtures("prefect_server")

EXAMPLE = "seed-sglang-pd-rbg"
V1 = ("workloads.x-k8s.io", "v1alpha1", "rolebasedgroups")
# manifests/sglang/pd-rbg.yaml.j2 at the parent of commit 818048d ("Issue 16: fix in the spec,
# templates and examples ..."), whose F7 fix moved the router's probes off `/health`.
OLD_PD_RBG = OLD_TEMPLATES / "sglang-pd-rbg.before-818048d.yaml.j2"
PROBES = ("readinessProbe", "livenessProbe")
# Readiness failures the kubelet needs before it drops a pod (the old template sets none, so
# the API server's default, 3; the current one renders the spec's failure_threshold, also 3).
READINESS_FAILURES = 3
OUTAGE_TIMEOUT_S = 120
# The router's log is coloured; its request log's completion line for a probe of /readiness.
ANSI = re.compile(r"\x1b\[[0-9;]*m")
READINESS_ANSWERED = re.compile(
    r"uri=/readiness [^\n]*status=200 OK[^\n]*finished processing request"
)


def _summary(key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert found, f"no artifact {key}"
    return str(found[-1].data)


def _events(admin: k8s.ApiClient, namespace: str) -> list[str]:
    items = k8s.CoreV1Api(admin).list_namespaced_event(namespace).items
    return [f"{e.involved_object.name} {e.reason}: {e.message}" for e in items]


def _router_argv(pod: Any) -> list[str]:
    (container,) = pod.spec.containers
    return [*(container.command or []), *(container.args or [])]


@pytest.fixture
def rbg_v06(real_cluster: Cluster) -> None:
    """The session cluster's RBG release, v0.6.0, with our reconciler (swapped back only if a
    v0.7.0 test ran before; a swap took 68 s at load 16)."""
    ensure_rbg_crd(real_cluster, rbg.CRD_V06, timeout_s=240.0)


@pytest.mark.timeout(300, func_only=True)
def deploy_pd_example(
    env: RealStores,
    admin: k8s.ApiClient,
    cleanup: Callable[[str, str], None],
    tmp_path: Path,
    namespace: str,
) -> tuple[Path, dict[str, Any], DeployResult]:
    """Deploy the PD example with the real router into `namespace` (whichever RBG release the
    cluster runs); the smoke answer is checked. Returns the spec's path and data, and the
    run's result."""
    if not runtimes_install.is_router_installed():
        pytest.fail("sglang-router is not installed: run scripts/install-runtimes", pytrace=False)
    path, data = write_real_spec(
        env,
        EXAMPLE,
        tmp_path,
        namespace=namespace,
        # The real router; the session's nodes offer no aliyun/erdma devices (KV transfer
        # between stand-ins needs none).
        serving={"pd": {"router": "sglang_router"}, "resources": {"erdma": 0}},
        rollout={"smoke_timeout_s": 120},
    )
    cleanup(namespace, data["name"])
    try:
        result = deploy(load_spec(path))
    finally:
        print("events:\n" + "\n".join(_events(admin, namespace)))
    assert isinstance(result, DeployResult)
    assert result.answer == env.tiny.answer
    return path, data, result


@pytest.mark.usefixtures("rbg_v06")
def test_pd_on_rbg_v06_serves_through_the_real_router_bound_to_the_created_services(
    real_deploy_env: RealStores,
    real_admin: k8s.ApiClient,
    real_cleanup: Callable[[str, str], None],
    tmp_path: Path,
    render_calls: list[str],
) -> None:
    namespace = "real-pd-rbg06"
    path, data, result = deploy_pd_example(
        real_deploy_env, real_admin, real_cleanup, tmp_path, namespace
    )

    core = k8s.CoreV1Api(real_admin)
    (group,) = k8s.CustomObjectsApi(real_admin).list_namespaced_custom_object(
        V1[0], V1[1], namespace, V1[2]
    )["items"]
    name = group["metadata"]["name"]
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
    port = data["serving"].get("port", 8000)
    # The router addresses each server pod through the Service its pods name (v0.6 and later:
    # s-<rbg>-<role>), as read back from the created pods.
    for role in ("prefill", "decode"):
        assert pods[f"{name}-{role}-0"].spec.subdomain == f"s-{name}-{role}"
    argv = _router_argv(pods[f"{name}-router-0"])
    assert argv[:4] == ["python3", "-m", "sglang_router.launch_router", "--pd-disaggregation"]
    prefill = [argv[i + 1] for i, a in enumerate(argv) if a == "--prefill"]
    decode = [argv[i + 1] for i, a in enumerate(argv) if a == "--decode"]
    assert prefill == [
        f"http://{name}-prefill-{i}.s-{name}-prefill.{namespace}.svc:{port}" for i in range(2)
    ]
    assert decode == [f"http://{name}-decode-0.s-{name}-decode.{namespace}.svc:{port}"]
    summary = _summary(result.summary_markdown_key)
    assert (
        f"router backends bound to the role Services read back (decode: s-{name}-decode, "
        f"prefill: s-{name}-prefill)" in summary
    )
    # Planned once (issue 17 point 1): the late binding renders the RoleBasedGroup's template
    # again (llm_rollout/render.py bind_role_services), never the whole release.
    assert render_calls == [result.release]
    # The smoke test's requests reached the decode server and a prefill server from the router
    # pod (the PD router sends each request to both, sgl-router src/routers/pd_router.rs).
    router_ip = pods[f"{name}-router-0"].status.pod_ip
    request = f'[standin] {router_ip} "POST /v1/chat/completions HTTP/1.1" 200'
    assert request in core.read_namespaced_pod_log(f"{name}-decode-0", namespace)
    prefill_logs = [
        core.read_namespaced_pod_log(f"{name}-prefill-{i}", namespace) for i in range(2)
    ]
    assert any(request in log for log in prefill_logs)
    conditions = {c["type"]: c["status"] for c in group["status"]["conditions"]}
    assert conditions == {"Ready": "True"}

    _a_prefill_down_keeps_the_router_ready_and_drops_the_old_one(
        real_admin, load_spec(path), result.release, name, real_deploy_env.tiny.answer
    )


def _role_container(group: dict[str, Any], role: str) -> dict[str, Any]:
    (found,) = [r for r in group["spec"]["roles"] if r["name"] == role]
    (container,) = found["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _ready(pod: k8s.V1Pod) -> k8s.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == "Ready"), None)


def _is_ready(pods: list[k8s.V1Pod]) -> bool:
    ready = _ready(pods[0]) if len(pods) == 1 else None
    return ready is not None and ready.status == "True"


def _dropped(pods: list[k8s.V1Pod]) -> bool:
    ready = _ready(pods[0]) if len(pods) == 1 else None
    return ready is not None and ready.status == "False"


def _restarts(pod: k8s.V1Pod) -> int:
    return sum(c.restart_count for c in pod.status.container_statuses or [])


def _pod_get(
    admin: k8s.ApiClient, namespace: str, pod: str, port: int, path: str
) -> httpx.Response:
    """GET ``path`` on the pod through the API server's pod proxy."""
    host = str(admin.configuration.host).rstrip("/")
    with httpx_client_for(admin, timeout_s=10) as client:
        return client.get(f"{host}/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}")


def _a_prefill_down_keeps_the_router_ready_and_drops_the_old_one(
    admin: k8s.ApiClient, spec: ServiceSpec, release: str, name: str, answer: str
) -> None:
    """F7 on the deployed group (see the module docstring)."""
    t0 = time.monotonic()
    core = k8s.CoreV1Api(admin)
    namespace, port = spec.namespace, spec.serving.port
    # Commit 818048d changed the router's probes and nothing else of its container; the
    # startup probe came later (render.py `router_probes`: the router waits for its servers
    # before it listens), so the old router runs without one.
    current = _role_container(render(spec, release=release, rbg_flavor="v0.6").workload, "router")
    old_group = render_old_workload(spec, release, OLD_PD_RBG)
    old = _role_container(old_group, "router")
    assert {k: v for k, v in old.items() if k not in PROBES} == {
        k: v for k, v in current.items() if k not in (*PROBES, "startupProbe")
    }
    assert current["startupProbe"]["httpGet"]["path"] == "/liveness"
    assert [old[p]["httpGet"]["path"] for p in PROBES] == ["/health", "/health"]
    assert [current[p]["httpGet"]["path"] for p in PROBES] == ["/readiness", "/liveness"]
    router = f"{name}-router-0"
    (deployed,) = core.read_namespaced_pod(router, namespace).spec.containers
    assert deployed.readiness_probe.http_get.path == "/readiness"
    assert deployed.liveness_probe.http_get.path == "/liveness"

    # The old template's router pod beside the deployed one, fronting the same servers; its
    # labels are the test's, so neither the stable Service nor the group selects it.
    (old_role,) = [r for r in old_group["spec"]["roles"] if r["name"] == "router"]
    before_fix = f"{name}-router-before-fix"
    created = core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": before_fix, "labels": {"llm-rollout-test": "f7-before-fix"}},
            "spec": copy.deepcopy(old_role["template"]["spec"]),
        },
    )
    by_name = f"metadata.name={before_fix}"
    wait_for(
        core.list_namespaced_pod,
        _is_ready,
        namespace=namespace,
        field_selector=by_name,
        timeout_s=OUTAGE_TIMEOUT_S,
        what=f"{before_fix} Ready",
    )
    marks = {"old router Ready": time.monotonic() - t0}

    # prefill-1 down for good: deleted, and its StatefulSet's re-creation refused by a pod
    # quota below the namespace's count (quota admission needs the quota's status first).
    pods_now = len(core.list_namespaced_pod(namespace).items)
    quota = "no-new-pods"
    counted_pod_quota(core, namespace, quota, pods_now - 1)
    marks["quota counted"] = time.monotonic() - t0
    down = f"{name}-prefill-1"
    t_down = time.monotonic()
    core.delete_namespaced_pod(down, namespace, grace_period_seconds=0)
    wait_for(
        core.list_namespaced_event,
        lambda items: any(
            e.reason == "FailedCreate" and "exceeded quota" in (e.message or "") for e in items
        ),
        namespace=namespace,
        field_selector=f"involvedObject.name={name}-prefill",
        timeout_s=60,
        what=f"the StatefulSet's FailedCreate for {down}",
    )
    marks["re-creation refused"] = time.monotonic() - t0

    # The router as the old template probes it drops out of Ready ...
    wait_for(
        core.list_namespaced_pod,
        _dropped,
        namespace=namespace,
        field_selector=by_name,
        timeout_s=OUTAGE_TIMEOUT_S,
        what=f"{before_fix} dropped from Ready",
    )
    dropped_after_s = time.monotonic() - t_down
    marks["old router dropped"] = time.monotonic() - t0
    old_events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={before_fix}"
    ).items
    assert any(
        e.message == "Readiness probe failed: HTTP probe failed with statuscode: 503"
        for e in old_events
    ), [e.message for e in old_events]

    # ... and is restarted by its liveness probe on the same `/health` ...
    wait_for(
        core.list_namespaced_pod,
        lambda items: len(items) == 1 and _restarts(items[0]) >= 1,
        namespace=namespace,
        field_selector=by_name,
        timeout_s=OUTAGE_TIMEOUT_S,
        what=f"{before_fix} restarted by its liveness probe",
    )
    marks["old router restarted"] = time.monotonic() - t0

    # ... while the deployed router, whose own health checker marks the server down too, keeps
    # answering its readiness probes: its log (sglang-router's request log, src/middleware.rs)
    # shows more 200 answers to `/readiness` after the checker's failure line than a drop
    # takes.
    down_url = f"http://{down}.s-{name}-prefill.{namespace}.svc:{port}"

    def probes_answered_after_the_loss() -> int | None:
        log = ANSI.sub("", core.read_namespaced_pod_log(router, namespace))
        lost = log.find(f"Worker {down_url} health check failed")
        answered = READINESS_ANSWERED.findall(log[lost:]) if lost >= 0 else []
        return len(answered) if len(answered) > READINESS_FAILURES else None

    answered = poll(
        probes_answered_after_the_loss,
        timeout_s=OUTAGE_TIMEOUT_S,
        interval_s=1,
        what=f"{router}'s readiness probes answered after it lost {down}",
    )
    marks["deployed router's probes counted"] = time.monotonic() - t0
    health = _pod_get(admin, namespace, router, port, "/health")
    assert health.status_code == 503, health.text
    assert health.text.startswith("Unhealthy servers:"), health.text
    assert f"Prefill: {down_url}" in health.text
    readiness = _pod_get(admin, namespace, router, port, "/readiness")
    assert readiness.status_code == 200, readiness.text
    assert readiness.json()["prefill"] == {"healthy": 1, "total": 2}
    pod = core.read_namespaced_pod(router, namespace)
    ready = _ready(pod)
    # Ready, and not since a flap: it turned Ready no later than the old router pod was
    # created. Both are whole seconds (metav1.Time serialises RFC 3339 without fractions), and
    # a quick run makes them the same second (a final CI run saw 09:53:11 for both).
    assert ready is not None and ready.status == "True"
    assert ready.last_transition_time <= created.metadata.creation_timestamp
    assert pod.status.container_statuses[0].restart_count == 0
    # The stable Service still routes to it, and it answers through the healthy prefill.
    url = service_proxy_url(admin, namespace, spec.name, port) + "/v1/chat/completions"
    body = {
        "model": spec.served_model_name,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 30,
    }
    with httpx_client_for(admin, timeout_s=30) as client:
        reply = client.post(url, json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == answer
    print(
        f"REAL_DEPLOY_FIGURES F7: old-template router dropped from Ready {dropped_after_s:.0f} s "
        f"after {down} went down, the deployed router answered {answered} readiness probes "
        f"after losing it; the F7 part took {time.monotonic() - t0:.0f} s ("
        + ", ".join(f"{k} at {v:.0f} s" for k, v in marks.items())
        + ")"
    )
