"""The deploy flow end to end on the REAL cluster with the seed-sglang-lws example: a leader and
a worker pod under the real LWS operator, each running the SGLang stand-in (sandbox/
sglang_standin), which answers the tiny model's text and rendezvouses at the leader.

One release is deployed for the module and keeps serving while each later release fails, is
rolled back or is rolled back by hand; the last test replaces it and tears the service down
through the CLI. Nothing here depends on the engine, so the stand-in serves (real vLLM serves in
tests/real/test_deploy_single_gpu.py); a release still takes ~1 min to turn Ready, most of it
the product's SGLang probe period (at least 25 s, llm_rollout/render.py SGLANG_PROBE_TIMEOUT_S):
the leader's first startup probe comes before the stand-in listens, the next 25 s later.

How each failure is made, with real components only:
- smoke: an expectation the server does not meet (`smoke.expect.equals`);
- degrading while baking: a pod of the new release is deleted through the API server, which
  `bake` (llm_rollout/release/bake.py) must notice from its watch;
- manual rollback: `llm-rollout rollback` while the flow bakes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from prefect.client.schemas.objects import State

from flows.deploy import RolloutFailed, deploy
from llm_rollout.kube.client import shared_api_client
from llm_rollout.kube.watching import Selector, watching
from llm_rollout.spec import load_spec
from llm_rollout.vocabulary import ANN_DEPLOYED_AT, RELEASE_LABEL
from sandbox.cluster.control_plane import Cluster
from tests.deploy.cli_support import (
    cli,
    deploy_and_check,
    product_via_proxy,
    serving_release,
    stable_models,
    teardown_and_check,
    writes_seen,
)
from tests.real_deploy import (
    KEY_SECRET,
    RealStores,
    write_real_spec,
)

pytestmark = pytest.mark.usefixtures("prefect_server")

EXAMPLE = "seed-sglang-lws"
NAMESPACE = "e2e-lws"
# lws api/leaderworkerset/v1/leaderworkerset_types.go: WorkerIndexLabelKey.
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
BAKE_S = 60
SWITCH_WAIT_S = 300
FLOW_CHECK_S = 5.0


@pytest.fixture(scope="module")
def env(real_deploy_module_env: RealStores) -> RealStores:
    return real_deploy_module_env


@pytest.fixture(scope="module")
def serving(
    env: RealStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], str]]:
    """Release 1 of the example serving in NAMESPACE; yields the spec data and the release."""
    path, data = write_real_spec(
        env, EXAMPLE, tmp_path_factory.mktemp("e2e-lws"), namespace=NAMESPACE
    )
    release, _ = deploy_and_check(str(path), data, KEY_SECRET)
    yield data, release
    # The last test tears down and checks it; this only frees the GPUs if it did not run.
    cli("teardown", data["name"], "-n", NAMESPACE, "--timeout-s", "60")


def _spec(env: RealStores, tmp_path: Path, **changes: Any) -> Path:
    path, _ = write_real_spec(env, EXAMPLE, tmp_path, namespace=NAMESPACE, **changes)
    return path


def _pods(admin: k8s.ApiClient, selector: str) -> list[k8s.V1Pod]:
    return list(k8s.CoreV1Api(admin).list_namespaced_pod(NAMESPACE, label_selector=selector).items)


def test_leader_and_worker_serve_under_the_real_lws_operator(
    serving: tuple[dict[str, Any], str], real_admin: k8s.ApiClient
) -> None:
    data, release = serving
    pods = _pods(real_admin, f"{RELEASE_LABEL}={release}")
    by_index = {p.metadata.labels[WORKER_INDEX]: p for p in pods}
    assert sorted(by_index) == ["0", "1"], [p.metadata.name for p in pods]
    for pod in pods:
        # The LWS operator made them through its StatefulSets (one for leaders, one per group
        # for workers), not the product.
        (owner,) = pod.metadata.owner_references
        assert owner.kind == "StatefulSet"
        assert pod.status.phase == "Running" and pod.spec.node_name
    (worker,) = by_index["1"].spec.containers
    argv = " ".join([*(worker.command or []), *(worker.args or [])])
    # The worker rendezvouses at its leader as SGLang's --dist-init-addr, through variables the
    # LWS pod webhook injects (lws pkg/utils/pod/pod_utils.go AddLWSVariables: the leader's
    # address `<lws>-<group>.<lws>.<namespace>` and the group size), which the node agent
    # expands as the kubelet does.
    assert "--dist-init-addr $(LWS_LEADER_ADDRESS)" in argv, argv
    env = {e.name: e.value for e in worker.env or []}
    assert env.get("LWS_GROUP_SIZE") == "2", env
    assert env.get("LWS_LEADER_ADDRESS", "").startswith(by_index["0"].metadata.name + "."), env
    response = stable_models(NAMESPACE, data["name"], data["serving"].get("port", 8000))
    assert response.status_code == 200, response.text
    assert [m["id"] for m in response.json()["data"]] == [data["serving"]["served_model_name"]]
    # One plan, one set of annotations (issue 17 point 1): the workload and the stable Service
    # the gate switched record the same deploy time.
    (workload,) = k8s.CustomObjectsApi(real_admin).list_namespaced_custom_object(
        "leaderworkerset.x-k8s.io",
        "v1",
        NAMESPACE,
        "leaderworkersets",
        label_selector=f"{RELEASE_LABEL}={release}",
    )["items"]
    stable = k8s.CoreV1Api(real_admin).read_namespaced_service(data["name"], NAMESPACE)
    deployed_at = workload["metadata"]["annotations"][ANN_DEPLOYED_AT]
    assert stable.metadata.annotations[ANN_DEPLOYED_AT] == deployed_at


def test_failed_smoke_rolls_back_and_the_old_release_keeps_serving(
    env: RealStores, serving: tuple[dict[str, Any], str], tmp_path: Path
) -> None:
    data, _ = serving
    before = cli("status", data["name"], "-n", NAMESPACE).output
    bad = _spec(env, tmp_path, smoke={"expect": {"equals": "an answer the server never gives"}})
    second = cli("deploy", str(bad))
    assert second.exit_code == 1, second.output
    assert "smoke test failed" in second.output and "keeps serving" in second.output
    after = cli("status", data["name"], "-n", NAMESPACE)
    assert after.exit_code == 0 and after.output == before  # same release, still ready
    assert stable_models(NAMESPACE, data["name"]).status_code == 200


def _deploy_in_background(path: Path) -> tuple[threading.Thread, list[State[Any]]]:
    """Run the flow on a thread (the CLI runner owns stdout, so only one CLI call at a time)."""
    states: list[State[Any]] = []
    spec = load_spec(path)
    thread = threading.Thread(target=lambda: states.append(deploy(spec, return_state=True)))
    thread.start()
    return thread, states


def _when_service_routes_away_from(
    name: str, release: str, flow: threading.Thread, states: list[State[Any]]
) -> str:
    """Block (watching the stable Service) until it selects another release; return that.
    The new release needs readiness and the smoke test first: ~1 min on the loaded machine.
    Fails at once when the flow run ended without switching it."""
    api = shared_api_client()
    spec = Selector("v1", "Service", NAMESPACE, name=name)
    deadline = time.monotonic() + SWITCH_WAIT_S
    try:
        with watching(api, [spec]) as group:
            while True:
                service = group.cache[spec].get(name) or {}
                selector = (service.get("spec") or {}).get("selector") or {}
                if spec in group.synced and selector.get(RELEASE_LABEL) not in (None, release):
                    return str(selector[RELEASE_LABEL])
                assert flow.is_alive(), f"the flow run ended before promoting: {states}"
                left_s = deadline - time.monotonic()
                assert left_s > 0, f"Service {NAMESPACE}/{name} never switched"
                # Wake at least every few seconds to notice a flow run that ended.
                group.next(min(left_s, FLOW_CHECK_S))
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _bake_scenario(
    env: RealStores,
    serving: tuple[dict[str, Any], str],
    tmp_path: Path,
    during_bake: Callable[[str], None],
) -> State[Any]:
    """A new release promoted with a long bake window; `during_bake(new)` runs once the stable
    Service routes to it. Returns the flow run's final state."""
    data, _ = serving
    old = serving_release(data["name"], NAMESPACE)
    newer = _spec(env, tmp_path, rollout={"promote_grace_s": BAKE_S})
    thread, states = _deploy_in_background(newer)
    try:
        new = _when_service_routes_away_from(data["name"], old, thread, states)
        during_bake(new)
    finally:
        thread.join(timeout=SWITCH_WAIT_S)
    assert not thread.is_alive() and len(states) == 1
    return states[0]


def _serves_release(data: dict[str, Any], release: str) -> None:
    status = cli("status", data["name"], "-n", NAMESPACE)
    assert status.exit_code == 0, status.output
    assert f"release:          {release}" in status.output, status.output
    assert "NOT ready" not in status.output
    assert stable_models(NAMESPACE, data["name"]).status_code == 200


@pytest.mark.timeout(420, func_only=True)
def test_release_degrading_while_baking_is_rolled_back(
    env: RealStores,
    serving: tuple[dict[str, Any], str],
    real_admin: k8s.ApiClient,
    tmp_path: Path,
    render_calls: list[str],
) -> None:
    data, _ = serving
    old = serving_release(data["name"], NAMESPACE)
    deleted: list[str] = []

    def delete_a_pod(new: str) -> None:
        pods = _pods(real_admin, f"{RELEASE_LABEL}={new}")
        assert pods, f"release {new} has no pods"
        victim = pods[0].metadata.name
        k8s.CoreV1Api(real_admin).delete_namespaced_pod(victim, NAMESPACE)
        deleted.append(victim)

    state = _bake_scenario(env, serving, tmp_path, delete_a_pod)
    assert state.is_failed() and deleted
    with pytest.raises(RolloutFailed, match="while baking") as failure:
        state.result()
    assert "keeps serving" in str(failure.value)
    _serves_release(data, old)
    release_label = str(failure.value).split("release ", 1)[1].split()[0]
    assert _pods(real_admin, f"{RELEASE_LABEL}={release_label}") == []
    # Issue 17 point 1: this run went through preflight twice (before and under the lease),
    # volumes, rollout, readiness, smoke, promote, bake and rollback, and rendered once.
    assert render_calls == [release_label]


@pytest.mark.timeout(420, func_only=True)
def test_manual_rollback_while_baking_wins(
    env: RealStores, serving: tuple[dict[str, Any], str], tmp_path: Path
) -> None:
    data, _ = serving
    old = serving_release(data["name"], NAMESPACE)
    outputs: list[str] = []

    def roll_back(new: str) -> None:
        result = cli("rollback", data["name"], "-n", NAMESPACE)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)

    state = _bake_scenario(env, serving, tmp_path, roll_back)
    assert f"now routes to release {old}" in outputs[0]
    assert state.is_failed()  # the bake saw the Service leave its release
    _serves_release(data, old)


@pytest.mark.timeout(420, func_only=True)
def test_a_release_too_big_to_run_beside_the_old_recreates_and_skips_the_mirror(
    env: RealStores,
    serving: tuple[dict[str, Any], str],
    real_cluster: Cluster,
    tmp_path: Path,
) -> None:
    """The last test of the module: it replaces the serving release and tears the service down.

    The new release asks for both whole nodes (two pods of 8 GPUs): beside the serving release
    it cannot fit, after it it can, so `auto` recreates; `blue-green` forced is refused by
    preflight before any write; the old workload is gone, so rollback asks for a redeploy."""
    data, _ = serving
    old = serving_release(data["name"], NAMESPACE)
    whole_nodes = {"serving": {"tp": 16, "gpus_per_node": 8}}
    env.oss.request_log.clear()
    new, output = deploy_and_check(str(_spec(env, tmp_path, **whole_nodes)), data, KEY_SECRET)
    assert new != old and "(strategy recreate)" in output, output
    writes = [
        f"{r.method} {r.bucket}/{r.key}"
        for r in env.oss.request_log.snapshot()
        if r.method in ("PUT", "POST", "DELETE")
    ]
    assert writes == []  # mirrored and verified: `is_mirrored` skipped the copy
    before = cli("status", data["name"], "-n", NAMESPACE).output
    forced = _spec(env, tmp_path, rollout={"strategy": "blue-green"}, **whole_nodes)
    with product_via_proxy(real_cluster) as proxy:
        refused = cli("deploy", str(forced))
        assert refused.exit_code == 1, refused.output
        assert "preflight failed" in refused.output and "blue-green" in refused.output
        assert proxy.records(), "the product did not go through the proxy"
        assert writes_seen(proxy) == []
    assert cli("status", data["name"], "-n", NAMESPACE).output == before
    rollback = cli("rollback", data["name"], "-n", NAMESPACE)
    assert rollback.exit_code == 1 and "redeploy" in rollback.output, rollback.output
    teardown_and_check(data, "LeaderWorkerSet")
