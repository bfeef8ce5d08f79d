"""The deploy flow end to end on the sandbox (hub, OSS, Kubernetes) with the real clients.

One cluster for the module; every test works in its own namespace and removes what it
deployed (through `llm-rollout teardown`), so the GPUs are free for the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from prefect.client.schemas.objects import State

from flows.deploy import RolloutFailed, deploy
from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.watching import WatchSpec, watching
from llm_rollout.render import RELEASE_LABEL
from llm_rollout.spec import load_spec
from sandbox.kube.backends import BackendBehavior
from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.kube.nodes import NodeSpec
from tests.deploy.conftest import (
    KEY_SECRET,
    Stores,
    cli,
    cluster_env,
    oss_writes,
    stable_models,
    write_spec,
)

pytestmark = pytest.mark.usefixtures("prefect_server")
API_KEY = "sk-e2e-api-key"

SHAPES = [
    ("seed-qwen14b-ray-tp2", None),
    ("seed-sglang-lws", None),
    ("seed-sglang-pd-rbg", "v0.6"),
    ("seed-sglang-pd-rbg", "v0.7"),
    ("seed-vllm-lws", None),
    ("seed-vllm-ray-tp8-pp2", None),
    ("seed-vllm-single-gpu", None),
    ("seed-vllm-tp4", None),
]


@pytest.fixture(scope="module")
def cluster(stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxCluster]:
    # Six 8-GPU nodes: room for one test's two releases side by side plus what a PD test
    # leaves behind (see below).
    nodes = [NodeSpec(f"gpu-node-{i}") for i in range(6)]
    with cluster_env(ClusterConfig(nodes=nodes), tmp_path_factory.mktemp("kube")) as cluster:
        yield cluster
        assert cluster.controller_errors() == []


def _create_api_key_secret(namespace: str, name: str, key: str) -> None:
    """What the user does before deploying a spec whose server needs an API key."""
    api = load_api_client()
    try:
        core = k8s_client.CoreV1Api(api)
        core.create_namespace(k8s_client.V1Namespace(metadata={"name": namespace}))
        core.create_namespaced_secret(
            namespace,
            k8s_client.V1Secret(metadata={"name": name}, string_data={key: API_KEY}),
        )
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _check_the_api_key_gate(
    cluster: SandboxCluster, path: Path, data: dict[str, Any], api_key: dict[str, str]
) -> None:
    """The smoke calls reached the server with the key (port-forward), the server really
    requires it, and a wrong key in the Secret fails the gate while the release keeps serving."""
    namespace = data["namespace"]
    seen = [b.auth_seen for b in cluster.scripted.backends if b.namespace == namespace]
    assert sum(s["valid"] for s in seen) >= 3 and not any(s["wrong"] for s in seen), seen
    assert stable_models(namespace, data["name"]).status_code == 401  # no key via the proxy
    before = cli("status", data["name"], "-n", namespace).output
    api = load_api_client()
    try:
        k8s_client.CoreV1Api(api).patch_namespaced_secret(
            api_key["secret_name"], namespace, {"stringData": {api_key["key"]: "sk-wrong"}}
        )
    finally:
        api.close()  # type: ignore[no-untyped-call]
    refused = cli("deploy", str(path))
    assert refused.exit_code == 1, refused.output
    assert "smoke test failed" in refused.output and "HTTP 401" in refused.output
    assert "sk-wrong" not in refused.output and API_KEY not in refused.output
    assert cli("status", data["name"], "-n", namespace).output == before
    assert sum(b.auth_seen["wrong"] for b in cluster.scripted.backends if b.namespace == namespace)


def _deploy_and_check(path: Path, data: dict[str, Any]) -> str:
    """Deploy through the CLI, check status says ready; return the serving release."""
    result = cli("deploy", str(path))
    assert result.exit_code == 0, result.output
    assert "smoke test answer" in result.output and "flow run" in result.output
    status = cli("status", data["name"], "-n", data["namespace"])
    assert status.exit_code == 0, status.output
    assert "ready" in status.output and "NOT ready" not in status.output
    assert KEY_SECRET not in result.output + status.output
    release = status.output.split("release:")[1].split()[0]
    assert f"serves release {release}" in result.output
    return release


def _engine_command_lines(namespace: str) -> list[str]:
    """Each container's command line (command + args) in the namespace's pods."""
    api = load_api_client()
    try:
        pods = k8s_client.CoreV1Api(api).list_namespaced_pod(namespace).items
    finally:
        api.close()  # type: ignore[no-untyped-call]
    return [
        " ".join([*(c.command or []), *(c.args or [])]) for p in pods for c in p.spec.containers
    ]


def _teardown(data: dict[str, Any], *kinds: str) -> None:
    result = cli("teardown", data["name"], "-n", data["namespace"], "--timeout-s", "20")
    assert result.exit_code == 0, result.output
    for kind in (*kinds, "PersistentVolumeClaim", "PersistentVolume", "Secret", "Service"):
        assert f"removed {kind}" in result.output
    assert "OSS was kept" in result.output
    assert cli("status", data["name"], "-n", data["namespace"]).exit_code == 3


@pytest.mark.parametrize(("example", "rbg"), SHAPES)
def test_full_flow_for_every_example_shape(
    stores: Stores, cluster: SandboxCluster, tmp_path: Path, example: str, rbg: str | None
) -> None:
    namespace = f"e2e-{example.removeprefix('seed-')}"[:40]
    path, data = write_spec(stores, example, tmp_path, namespace=namespace)
    if rbg == "v0.7":
        # RBG v0.7 conventions only on a cluster that serves v1alpha2.
        with cluster_env(ClusterConfig(rbg_version="v0.7"), tmp_path / "kube07") as own:
            _deploy_and_check(path, data)
            assert own.controller_errors() == []
        return
    api_key = data["serving"].get("api_key")
    if api_key:
        _create_api_key_secret(namespace, api_key["secret_name"], api_key["key"])
        # The scripted server requires the key, as `vllm serve --api-key` does.
        cluster.scripted.set_behavior(
            lambda pod: pod["metadata"].get("namespace") == namespace,
            BackendBehavior(api_key=API_KEY),
        )
    _deploy_and_check(path, data)
    if api_key:
        _check_the_api_key_gate(cluster, path, data, api_key)
        _teardown(data, "Deployment")
        return
    pinned = "modelscope" in data["model"] and "--max-model-len" not in str(data["serving"])
    if data["serving"]["engine"] == "vllm" and pinned:
        # Preflight's KV fit (llm_rollout/kv_cache.py) was checked for the hub model's own
        # max_position_embeddings (512 in sandbox/synthetic.py); the rollout pins that length so
        # the engine cannot start with a longer one than was shown to fit. (An oss_uri model
        # here has no config.json under its prefix: "KV fit not checked", nothing pinned.)
        lines = [ln for ln in _engine_command_lines(namespace) if "vllm" in ln]
        assert lines and any("--max-model-len 512" in ln for ln in lines), lines
    response = stable_models(namespace, data["name"], data["serving"].get("port", 8000))
    assert response.status_code == 200
    served = data["serving"].get("served_model_name")
    if served:
        assert [m["id"] for m in response.json()["data"]] == [served]
    kinds = {
        "multi-node": "LeaderWorkerSet",
        "ray-cluster": "RayCluster",
        "pd-disaggregated": "RoleBasedGroup",
    }
    _teardown(data, kinds.get(data["serving"]["shape"], "Deployment"))


def test_failed_smoke_rolls_back_and_the_old_release_keeps_serving(
    stores: Stores, cluster: SandboxCluster, tmp_path: Path
) -> None:
    path, data = write_spec(stores, "seed-vllm-lws", tmp_path, namespace="e2e-smoke")
    ns, name = data["namespace"], data["name"]
    _deploy_and_check(path, data)
    before = cli("status", name, "-n", ns).output
    bad, _ = write_spec(
        stores,
        "seed-vllm-lws",
        tmp_path,
        namespace=ns,
        smoke={"expect": {"equals": "an answer the backend never gives"}},
    )
    second = cli("deploy", str(bad))
    assert second.exit_code == 1
    assert "smoke test failed" in second.output and "keeps serving" in second.output
    after = cli("status", name, "-n", ns)
    assert after.exit_code == 0 and after.output == before  # same release, still ready
    assert stable_models(ns, name).status_code == 200
    _teardown(data, "LeaderWorkerSet")


def _deploy_in_background(path: Path) -> tuple[threading.Thread, list[State[Any]]]:
    """Run the flow on a thread (the CLI runner owns stdout, so only one CLI call at a time)."""
    states: list[State[Any]] = []
    spec = load_spec(path)
    thread = threading.Thread(target=lambda: states.append(deploy(spec, return_state=True)))
    thread.start()
    return thread, states


def _when_service_routes_away_from(namespace: str, name: str, release: str) -> str:
    """Block (watching the stable Service) until it selects another release; return that."""
    api = load_api_client()
    spec = WatchSpec("v1", "Service", namespace, name=name)
    try:
        with watching(api, [spec]) as group:
            while True:
                selector = ((group.cache[spec].get(name) or {}).get("spec") or {}).get(
                    "selector"
                ) or {}
                if spec in group.synced and selector.get(RELEASE_LABEL) not in (None, release):
                    return str(selector[RELEASE_LABEL])
                assert group.next(30.0) is not None, f"Service {namespace}/{name} never switched"
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _bake_scenario(
    stores: Stores, tmp_path: Path, namespace: str, during_bake: Callable[[str, str], None]
) -> tuple[dict[str, Any], str, State[Any]]:
    """Release 1 serving; release 2 (another image tag) promoted with a long bake window;
    `during_bake(old, new)` runs once the stable Service routes to release 2."""
    path, data = write_spec(stores, "seed-vllm-tp4", tmp_path, namespace=namespace)
    old = _deploy_and_check(path, data)
    newer, _ = write_spec(
        stores,
        "seed-vllm-tp4",
        tmp_path,
        namespace=namespace,
        serving={"image": "vllm/vllm-openai:v0.10.1"},
        rollout={"promote_grace_s": 60},
    )
    thread, states = _deploy_in_background(newer)
    try:
        new = _when_service_routes_away_from(namespace, data["name"], old)
        during_bake(old, new)
    finally:
        thread.join(timeout=120)
    assert not thread.is_alive() and len(states) == 1
    return data, old, states[0]


def test_release_degrading_while_baking_is_rolled_back(
    stores: Stores, cluster: SandboxCluster, tmp_path: Path
) -> None:
    def crash(old: str, new: str) -> None:
        cluster.kubelet.inject_crash_loop(selector={RELEASE_LABEL: new})

    data, old, state = _bake_scenario(stores, tmp_path, "e2e-bake", crash)
    try:
        assert state.is_failed()
        with pytest.raises(RolloutFailed, match="while baking") as failure:
            state.result()
        assert "keeps serving" in str(failure.value)
        status = cli("status", data["name"], "-n", data["namespace"])
        assert status.exit_code == 0, status.output
        assert f"release:          {old}" in status.output
        assert stable_models(data["namespace"], data["name"]).status_code == 200
    finally:
        cluster.kubelet.clear()
    _teardown(data, "Deployment")


def test_manual_rollback_while_baking_wins(
    stores: Stores, cluster: SandboxCluster, tmp_path: Path
) -> None:
    outputs: list[str] = []

    def roll_back(old: str, new: str) -> None:
        result = cli("rollback", "qwen3-32b-tp4", "-n", "e2e-manual")
        assert result.exit_code == 0, result.output
        outputs.append(result.output)

    data, old, state = _bake_scenario(stores, tmp_path, "e2e-manual", roll_back)
    assert f"now routes to release {old}" in outputs[0]
    assert state.is_failed()  # the bake saw the Service leave its release
    status = cli("status", data["name"], "-n", data["namespace"])
    assert f"release:          {old}" in status.output and "NOT ready" not in status.output
    _teardown(data, "Deployment")


def test_second_deploy_skips_the_mirror_and_rollback_needs_the_old_workload(
    stores: Stores, cluster: SandboxCluster, tmp_path: Path
) -> None:
    path, data = write_spec(stores, "seed-vllm-tp4", tmp_path, namespace="e2e-rollback")
    ns, name = data["namespace"], data["name"]
    _deploy_and_check(path, data)
    stores.oss.request_log.clear()
    _deploy_and_check(path, data)  # grace 0: the first release's workload is removed at once
    assert oss_writes(stores) == []  # mirrored and verified: `is_mirrored` skipped the copy
    rollback = cli("rollback", name, "-n", ns)
    assert rollback.exit_code == 1 and "redeploy" in rollback.output
    _teardown(data, "Deployment")
