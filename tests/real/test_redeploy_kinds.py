"""The redeploy flow (``flows/redeploy.py``) on the REAL cluster, for the Deployment, the
LeaderWorkerSet and the RoleBasedGroup kinds (issue 19 point 1, issue 16 B7): ``update``
replaces an engine flag's value in the pod templates and new pods run it, an update whose
smoke gate fails is reverted so the previous template keeps serving, and ``rollback`` routes
the stable Service back to the previous release. (``restart`` replacing every pod of a
Deployment runs, as the worker, in tests/real/test_worker_flows.py.)

The engine does not matter for any of this, so every kind serves the SGLang stand-in
(``sandbox/sglang_standin``): a Deployment-shaped SGLang spec (``single-gpu``), the
``seed-sglang-lws`` LeaderWorkerSet (leader and worker ranks) and the ``seed-sglang-pd-rbg``
RoleBasedGroup (prefill and decode stand-ins behind the real sglang-router, RBG v0.6 served by
the session cluster; the router takes no engine flag, so only the server roles get it). The
flag changed is ``--served-model-name``: its value is what ``/v1/models`` lists and what the
smoke gate sends, so the running server shows which template it was started from.

What the controllers do with a changed pod template is upstream's: the Deployment controller
replaces the pods of a changed template (kubernetes pkg/controller/deployment/rolling.go), the
LWS controller recreates each group whose template hash changed
(lws pkg/controllers/leaderworkerset_controller.go, rolling update of the leader StatefulSet),
RBG v0.6 writes each role's template into the role's StatefulSet (sgl-project/rbg
pkg/reconciler/sts_reconciler.go; sandbox/cluster/rbg.py stands in for it) whose controller
replaces the pods (kubernetes pkg/controller/statefulset/stateful_set_control.go). RayCluster
is not here: KubeRay rolls no pods on a template change, which
tests/real/test_redeploy_raycluster.py shows against the real operator.

Rollback needs a previous release whose workload still exists: that is the state of a deploy
run that stopped after promoting its release and before retiring the previous one (its bake
window, or a worker lost during it). ``_promote_without_retiring`` runs exactly the deploy
flow's tasks up to the promotion to reach it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s
from prefect import flow

from flows.deploy import deploy
from flows.redeploy import RedeployFailed, redeploy
from llm_rollout.kube.proxy import httpx_client_for, service_proxy_url
from llm_rollout.plan import new_release, plan_release
from llm_rollout.readiness_rules import tolerances_of
from llm_rollout.redeploy import ROUTER_COMPONENT, engine_templates, pod_templates
from llm_rollout.release.removal import teardown
from llm_rollout.release.state import read_release_state
from llm_rollout.spec import SmokeExpectations, SmokeSpec, load_spec
from llm_rollout.vocabulary import COMPONENT_LABEL, RELEASE_LABEL, RESTARTED_AT_ANNOTATION
from sandbox.cluster import rbg
from sandbox.cluster.control_plane import Cluster, ensure_rbg_crd
from sandbox.runtimes import install as runtimes_install
from tasks.kubernetes import promote, rollout
from tasks.preflight import preflight
from tasks.readiness import wait_workload_ready
from tests.real_deploy import RealStores, write_real_spec

pytestmark = pytest.mark.usefixtures("prefect_server")

# The shortest probe timing the spec allows; for SGLang the renderer raises period and timeout
# to 25 s (its /health runs a generation), which is what each roll below waits for.
FAST_PROBES = {"probes": {"period_s": 1, "timeout_s": 1}}
# workload kind -> (example, the changes to it that make it that kind)
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "Deployment": (
        "seed-sglang-lws",
        {
            "serving": {"shape": "single-gpu", "tp": 1, "nodes": 1, **FAST_PROBES},
            # The tiny model: a 32B size would not fit one 48 GiB GPU (spec rule).
            "model": {"size_bytes": 1 << 30},
        },
    ),
    "LeaderWorkerSet": ("seed-sglang-lws", {"serving": FAST_PROBES}),
    "RoleBasedGroup": (
        "seed-sglang-pd-rbg",
        {
            # The real router; the session's nodes offer no aliyun/erdma devices (KV transfer
            # between stand-ins needs none).
            # The router's startup probe (render.py `router_probes`) covers its wait for the
            # servers an update rolls with it.
            "serving": {"pd": {"router": "sglang_router"}, "resources": {"erdma": 0}},
            "rollout": {"smoke_timeout_s": 120},
        },
    ),
}
WORKLOAD_PLURALS = {
    "Deployment": ("apps", "v1", "deployments"),
    "LeaderWorkerSet": ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"),
    "RoleBasedGroup": ("workloads.x-k8s.io", "v1alpha1", "rolebasedgroups"),
}


def _workload(admin: k8s.ApiClient, namespace: str, kind: str, release: str) -> dict[str, Any]:
    group, version, plural = WORKLOAD_PLURALS[kind]
    listed = k8s.CustomObjectsApi(admin).list_namespaced_custom_object(
        group, version, namespace, plural, label_selector=f"{RELEASE_LABEL}={release}"
    )
    (item,) = listed["items"]  # type: ignore[index]
    return dict(item)


def _template_args(workload: dict[str, Any]) -> list[list[str]]:
    """The engine container's args of every engine pod template (LWS: leader and worker; RBG:
    prefill and decode, not the router)."""
    return [
        [str(a) for a in t["spec"]["containers"][0]["args"]]
        for t in engine_templates(pod_templates(workload))
    ]


def _is_router(pod: dict[str, Any]) -> bool:
    return pod["metadata"]["labels"].get(COMPONENT_LABEL) == ROUTER_COMPONENT


def _live_pods(admin: k8s.ApiClient, namespace: str, release: str) -> list[dict[str, Any]]:
    pods = k8s.CoreV1Api(admin).list_namespaced_pod(
        namespace, label_selector=f"{RELEASE_LABEL}={release}"
    )
    found: list[dict[str, Any]] = [
        admin.sanitize_for_serialization(p)  # type: ignore[no-untyped-call]
        for p in pods.items
    ]
    return [p for p in found if not p["metadata"].get("deletionTimestamp")]


def _uids(pods: list[dict[str, Any]]) -> set[str]:
    return {str(p["metadata"]["uid"]) for p in pods}


def _pod_args(pod: dict[str, Any]) -> list[str]:
    return [str(a) for a in pod["spec"]["containers"][0]["args"]]


def _flag(args: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` (a replaced value must leave exactly one)."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def _stable(admin: k8s.ApiClient, namespace: str, name: str) -> tuple[list[str], str]:
    """(model ids ``/v1/models`` lists, one chat answer), through the stable Service."""
    url = service_proxy_url(admin, namespace, name, 8000)
    with httpx_client_for(admin, timeout_s=20) as client:
        models = client.get(url + "/v1/models")
        models.raise_for_status()
        ids = [str(m["id"]) for m in models.json()["data"]]
        chat = client.post(
            url + "/v1/chat/completions",
            json={
                "model": ids[0],
                "messages": [{"role": "user", "content": "Say hello"}],
                "max_tokens": 64,
            },
        )
    chat.raise_for_status()
    return ids, str(chat.json()["choices"][0]["message"]["content"])


def _wait_stable(
    admin: k8s.ApiClient, namespace: str, name: str, model: str, wait_s: float = 60
) -> str:
    """The stable Service's answer once it lists ``model`` (endpoints follow the Service's
    selector and the pods' readiness asynchronously: the EndpointSlice controller)."""
    deadline = time.monotonic() + wait_s
    seen: object = None
    while time.monotonic() < deadline:
        try:
            ids, answer = _stable(admin, namespace, name)
        except httpx.HTTPError as exc:
            seen = exc
        else:
            if ids == [model]:
                return answer
            seen = ids
        time.sleep(1)  # polling an HTTP endpoint: there is nothing to watch
    raise AssertionError(f"the stable Service never listed {model!r}; last seen: {seen}")


@flow(name="promote-without-retiring")
def _promote_without_retiring(spec_path: Path) -> str:
    """The deploy flow's tasks up to the promotion of a new release (no smoke, no bake, no
    retirement): a second release serving while the previous one still exists."""
    spec = load_spec(spec_path)
    named = new_release(spec, int(time.time() * 1000))
    report = preflight(spec, named.release, named.spec_hash)
    plan = plan_release(
        spec,
        release=named.release,
        spec_hash=named.spec_hash,
        report=report,
        now=datetime.now(UTC),
    )
    applied = rollout(plan)
    wait_workload_ready(
        applied.workload,
        service_id=plan.service_id,
        timeout_s=float(spec.rollout.ready_timeout_s),
        tolerances=tolerances_of(spec.rollout),
    )
    promote(plan)
    return named.release


@pytest.mark.timeout(900, func_only=True)
@pytest.mark.parametrize("kind", KINDS)
def test_update_failed_gate_and_rollback(
    real_deploy_env: RealStores,
    real_admin: k8s.ApiClient,
    real_cluster: Cluster,
    tmp_path: Path,
    kind: str,
) -> None:
    # One kind at a time: run concurrently in this one process, two smoke tests streaming at
    # the same moment saw one stream broken (RemoteProtocolError) in 2 of 3 runs. That was
    # the API server's service proxy cutting answers over HTTP/1.1, likelier under concurrent
    # calls (llm_rollout/kube/proxy.py httpx_client_for, which now speaks HTTP/2).
    if kind == "RoleBasedGroup":
        if not runtimes_install.is_router_installed():
            pytest.fail(
                "sglang-router is not installed: run scripts/install-runtimes", pytrace=False
            )
        # The session cluster's RBG release, v0.6.0 (swapped back only if a v0.7.0 test ran).
        ensure_rbg_crd(real_cluster, rbg.CRD_V06, timeout_s=240.0)
    example, changes = KINDS[kind]
    _deploy_and_redeploy(real_deploy_env, real_admin, tmp_path, example, kind, changes)


def _deploy_and_redeploy(
    stores: RealStores,
    admin: k8s.ApiClient,
    tmp_path: Path,
    example: str,
    kind: str,
    changes: dict[str, Any],
) -> None:
    namespace = f"redeploy-{kind.lower()}"
    path, data = write_real_spec(stores, example, tmp_path, namespace=namespace, **changes)
    name = data["name"]
    try:
        _scenario(stores, admin, tmp_path, path, example, kind, changes)
    finally:
        teardown(admin, namespace, name, wait_timeout_s=120)
        k8s.CoreV1Api(admin).delete_namespace(namespace)


def _scenario(
    stores: RealStores,
    admin: k8s.ApiClient,
    tmp_path: Path,
    path: Path,
    example: str,
    kind: str,
    changes: dict[str, Any],
) -> None:
    spec = load_spec(path)
    namespace, name = spec.namespace, spec.name
    first = deploy(spec)
    release = first.release
    assert first.answer == stores.tiny.answer
    assert _workload(admin, namespace, kind, release)["spec"]  # served by that kind's API

    # update: the flag's value is replaced in every template, and the new pods run it.
    updated_model = "tiny-updated"
    uids = _uids(_live_pods(admin, namespace, release))
    done = redeploy(
        name,
        namespace,
        "update",
        engine_args=["--served-model-name", updated_model],
        ready_timeout_s=300,
    )
    assert done == f"update of Service {namespace}/{name} done (release {release})"
    updated = _workload(admin, namespace, kind, release)
    for args in _template_args(updated):
        assert _flag(args, "--served-model-name") == [updated_model], args
    pods = _live_pods(admin, namespace, release)
    assert pods and not uids & _uids(pods)
    for pod in pods:
        if not _is_router(pod):
            assert _flag(_pod_args(pod), "--served-model-name") == [updated_model]
        else:
            # Rolled with its servers, the router waited for them under its startup probe
            # instead of being killed for liveness (render.py `router_probes`).
            assert [c["restartCount"] for c in pod["status"]["containerStatuses"]] == [0]
    assert _wait_stable(admin, namespace, name, updated_model) == stores.tiny.answer

    # An update whose smoke gate fails is reverted: the template from before it is applied
    # again, and its pods serve.
    template_before = [t["metadata"] for t in pod_templates(updated)]
    args_before = _template_args(updated)
    failing_gate = SmokeSpec(expect=SmokeExpectations(equals="an answer no server gives"))
    with pytest.raises(RedeployFailed) as failed:
        redeploy(
            name,
            namespace,
            "update",
            engine_args=["--served-model-name", "tiny-rejected"],
            smoke=failing_gate,
            ready_timeout_s=300,
        )
    assert "reverted" in str(failed.value) and "smoke test failed" in str(failed.value)
    reverted = _workload(admin, namespace, kind, release)
    assert _template_args(reverted) == args_before
    assert [t["metadata"] for t in pod_templates(reverted)] == template_before
    assert all(RESTARTED_AT_ANNOTATION in m.get("annotations", {}) for m in template_before)
    pods = _live_pods(admin, namespace, release)
    for pod in pods:
        if not _is_router(pod):
            assert _flag(_pod_args(pod), "--served-model-name") == [updated_model]
    assert _wait_stable(admin, namespace, name, updated_model) == stores.tiny.answer

    # rollback: a second release promoted, the first one not yet retired.
    second_path, _ = write_real_spec(
        stores,
        example,
        tmp_path,
        namespace=namespace,
        **{**changes, "serving": {**changes.get("serving", {}), "served_model_name": "tiny-r2"}},
    )
    second = _promote_without_retiring(second_path)
    assert second != release
    assert _wait_stable(admin, namespace, name, "tiny-r2") == stores.tiny.answer
    assert read_release_state(admin, namespace, name).previous_release == release
    back = redeploy(name, namespace, "rollback", ready_timeout_s=300)
    assert back.startswith(f"Service {namespace}/{name} routes to the previous release")
    state = read_release_state(admin, namespace, name)
    assert (state.current_release, state.previous_release) == (release, second)
    assert _wait_stable(admin, namespace, name, updated_model) == stores.tiny.answer
