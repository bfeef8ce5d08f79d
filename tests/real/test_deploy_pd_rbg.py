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
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.deploy import DeployResult, deploy
from llm_rollout.spec import load_spec
from sandbox.cluster import rbg
from sandbox.cluster.control_plane import Cluster, ensure_rbg_crd
from sandbox.runtimes import install as runtimes_install
from tests.real_deploy import RealStores, write_real_spec

pytestmark = pytest.mark.usefixtures("prefect_server")

EXAMPLE = "seed-sglang-pd-rbg"
V1 = ("workloads.x-k8s.io", "v1alpha1", "rolebasedgroups")


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
@pytest.mark.usefixtures("rbg_v06")
def test_pd_on_rbg_v06_serves_through_the_real_router_bound_to_the_created_services(
    real_deploy_env: RealStores,
    real_admin: k8s.ApiClient,
    real_cleanup: Callable[[str, str], None],
    tmp_path: Path,
) -> None:
    if not runtimes_install.is_router_installed():
        pytest.fail("sglang-router is not installed: run scripts/install-runtimes", pytrace=False)
    namespace = "real-pd-rbg06"
    path, data = write_real_spec(
        real_deploy_env,
        EXAMPLE,
        tmp_path,
        namespace=namespace,
        # The real router; the session's nodes offer no aliyun/erdma devices (KV transfer
        # between stand-ins needs none).
        serving={"pd": {"router": "sglang_router"}, "resources": {"erdma": 0}},
        rollout={"smoke_timeout_s": 120},
    )
    real_cleanup(namespace, data["name"])
    try:
        result = deploy(load_spec(path))
    finally:
        print("events:\n" + "\n".join(_events(real_admin, namespace)))
    assert isinstance(result, DeployResult)
    assert result.answer == real_deploy_env.tiny.answer

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
