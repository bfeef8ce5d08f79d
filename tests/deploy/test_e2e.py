"""The deploy flow end to end on the sandbox (hub, OSS, Kubernetes) with the real clients."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.proxy import httpx_client_for, service_proxy_url
from sandbox.hub import HubServer
from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.oss import OssServer
from sandbox.synthetic import make_synthetic_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEY_ID = "LTAIe2eKeyId"
KEY_SECRET = "e2eSecretValue0123456789"
BUCKET = "llm-models-example"
# Examples whose API key lives in a cluster Secret need that Secret created by the user first.
NO_API_KEY = [
    pytest.param(
        p,
        marks=pytest.mark.xfail(
            strict=True,
            reason="the sandbox PD router backend does not list the served model name yet",
        ),
    )
    if "pd-rbg" in p.name
    else p
    for p in sorted(EXAMPLES.glob("seed-*.yaml"))
    if "api_key" not in p.read_text()
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubServer, OssServer]]:
    root = tmp_path_factory.mktemp("stores")
    with (
        HubServer(root / "hub") as hub,
        OssServer(root / "oss", credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET]) as oss,
    ):
        model_dir = make_synthetic_model(root / "model", shards=2, shard_size_bytes=64 << 10)
        published: set[str] = set()
        for path in sorted(EXAMPLES.glob("seed-*.yaml")):
            model = yaml.safe_load(path.read_text())["model"]
            if "oss_uri" in model:  # weights said to be mirrored already: only the bucket
                bucket = model["oss_uri"].removeprefix("oss://").split("/")[0]
                if bucket != BUCKET:
                    oss.create_bucket(bucket)
                continue
            model_id = model["modelscope"]["model_id"]
            if model_id not in published:
                published.add(model_id)
                hub.add_revision_from_dir(model_id, "v1", model_dir)
        yield hub, oss


@pytest.fixture
def env(
    stores: tuple[HubServer, OssServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    hub, oss = stores
    with SandboxCluster(ClusterConfig(), tmp_path / "kube") as cluster:
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.base_url)
        monkeypatch.setenv("OSS_ACCESS_KEY_ID", KEY_ID)
        monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", KEY_SECRET)
        yield {"cluster": cluster, "oss": oss, "tmp": tmp_path}


def _spec_file(env: dict[str, Any], example: Path, **rollout: Any) -> Path:
    data = yaml.safe_load(example.read_text())
    data["storage"]["endpoint"] = env["oss"].endpoint
    data["rollout"] = {"promote_grace_s": 0, "ready_timeout_s": 60, **rollout}
    path = env["tmp"] / f"{example.stem}-{len(list(env['tmp'].iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _stable_answer(namespace: str, name: str) -> httpx.Response:
    api = load_api_client()
    try:
        url = service_proxy_url(api, namespace, name, 8000) + "/v1/models"
        with httpx_client_for(api, timeout_s=10) as client:
            return client.get(url)
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("example", NO_API_KEY, ids=lambda p: p.stem)
def test_full_flow_for_every_example_shape(env: dict[str, Any], example: Path) -> None:
    result = CliRunner().invoke(app, ["deploy", str(_spec_file(env, example))])
    assert result.exit_code == 0, result.output
    assert "smoke test answer" in result.output and "flow run" in result.output
    data = yaml.safe_load(example.read_text())
    status = CliRunner().invoke(app, ["status", data["name"], "-n", data["namespace"]])
    assert status.exit_code == 0, status.output
    assert "ready" in status.output and "NOT ready" not in status.output
    assert KEY_SECRET not in result.output + status.output


@pytest.mark.usefixtures("prefect_server")
def test_failed_smoke_rolls_back_and_the_old_release_keeps_serving(env: dict[str, Any]) -> None:
    example = EXAMPLES / "seed-vllm-lws.yaml"
    data = yaml.safe_load(example.read_text())
    ns, name = data["namespace"], data["name"]
    first = CliRunner().invoke(app, ["deploy", str(_spec_file(env, example))])
    assert first.exit_code == 0, first.output
    before = CliRunner().invoke(app, ["status", name, "-n", ns]).output
    bad = yaml.safe_load(_spec_file(env, example).read_text())
    bad["smoke"] = {"expect": {"equals": "an answer the backend never gives"}}
    bad_path = env["tmp"] / "bad.yaml"
    bad_path.write_text(yaml.safe_dump(bad))
    second = CliRunner().invoke(app, ["deploy", str(bad_path)])
    assert second.exit_code == 1
    assert "smoke test failed" in second.output and "keeps serving" in second.output
    after = CliRunner().invoke(app, ["status", name, "-n", ns])
    assert after.exit_code == 0 and after.output == before  # same release, still ready
    response = _stable_answer(ns, name)
    assert response.status_code == 200


@pytest.mark.usefixtures("prefect_server")
def test_rollback_and_teardown_commands(env: dict[str, Any]) -> None:
    example = EXAMPLES / "seed-vllm-tp4.yaml"
    data = yaml.safe_load(example.read_text())
    ns, name = data["namespace"], data["name"]
    runner = CliRunner()
    assert runner.invoke(app, ["deploy", str(_spec_file(env, example))]).exit_code == 0
    # A second release with a long grace keeps the first one's workload around.
    assert runner.invoke(app, ["deploy", str(_spec_file(env, example))]).exit_code == 0
    rollback = runner.invoke(app, ["rollback", name, "-n", ns])
    # grace 0: the previous workload is gone, and the command says what is possible instead
    assert rollback.exit_code == 1 and "redeploy" in rollback.output
    teardown = runner.invoke(app, ["teardown", name, "-n", ns])
    assert teardown.exit_code == 0, teardown.output
    for kind in ("Deployment", "PersistentVolumeClaim", "PersistentVolume", "Secret", "Service"):
        assert f"removed {kind}" in teardown.output
    assert "OSS data was kept" in teardown.output
    assert runner.invoke(app, ["status", name, "-n", ns]).exit_code == 3
    assert os.environ["KUBECONFIG"]
