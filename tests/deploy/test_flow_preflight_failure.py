"""The deploy flow and CLI refusing to start: invalid specs and failed preflight, before writes.

These run the real flow on the session's Prefect test server with the real kubernetes, oss2 and
modelscope clients; the cluster here is a kubeconfig pointing at a closed port.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.reliability import prefect_texts
from llm_rollout.cli import app
from llm_rollout.record import EVENT_FAILED, service_resource_id
from sandbox.hub import HubServer
from sandbox.oss import OssServer

KEY_ID = "LTAIflowKeyId"
KEY_SECRET = "flowSecretValue0123456789"
WRONG_SECRET = "flowWrongSecret987654321"
BUCKET = "models-flow"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sandbox_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{_closed_port()}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    with (
        HubServer(tmp_path / "hub") as hub,
        OssServer(tmp_path / "oss", credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET]) as oss,
    ):
        hub.add_revision("acme/tiny", "v1", {"config.json": b"{}"})
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.base_url)
        monkeypatch.setenv("T_FLOW_ID", KEY_ID)
        monkeypatch.setenv("T_FLOW_SECRET", WRONG_SECRET)
        spec = {
            "name": "tiny",
            "namespace": "llm",
            "model": {"modelscope": {"model_id": "acme/tiny", "revision": "v2"}},
            "storage": {
                "bucket": BUCKET,
                "endpoint": oss.endpoint,
                "region": "cn-hangzhou",
                "credentials": {
                    "access_key_id_env": "T_FLOW_ID",
                    "access_key_secret_env": "T_FLOW_SECRET",
                },
            },
            "volume": {"capacity_gib": 1},
            "serving": {"engine": "vllm", "shape": "single-gpu", "image": "vllm/vllm-openai:v1"},
        }
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        yield {"path": path, "oss": oss, "hub": hub, "spec": spec}


def test_invalid_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: Not_A_DNS_Name\nnamespace: llm\n")
    result = CliRunner().invoke(app, ["deploy", str(path)])
    assert result.exit_code == 2
    first, *rest = result.output.splitlines()
    assert first == (
        f"invalid spec {path}: name: must be a DNS-1123 label (lowercase letters, digits, '-')"
    )
    # Every missing section is named too, one a line; the bad value itself is never echoed.
    assert sorted(line.strip() for line in rest) == [
        "model: required field is missing",
        "serving: required field is missing",
        "storage: required field is missing",
    ]
    assert "Not_A_DNS_Name" not in result.output


@pytest.mark.usefixtures("prefect_server")
def test_preflight_lists_every_problem_and_writes_nothing(
    sandbox_env: dict[str, object],
) -> None:
    oss: OssServer = sandbox_env["oss"]  # type: ignore[assignment]
    result = CliRunner().invoke(app, ["deploy", str(sandbox_env["path"])])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "preflight failed" in out
    assert "cannot reach the API server" in out  # cluster
    assert "secret is wrong" in out  # OSS keys
    assert "acme/tiny@v2" in out  # hub revision
    assert "flow run" in out
    assert WRONG_SECRET not in out and KEY_ID not in out
    oss.wait_idle()  # the last request's record lands just after its answer
    requests = oss.request_log.snapshot()
    assert any(r.status == 403 for r in requests)  # the bucket check really asked OSS
    assert [r for r in requests if r.method in ("PUT", "POST", "DELETE")] == []
    # The run is recorded as failed: the service.failed event, naming the service, no keys.
    run_id = re.search(r"flow run ([0-9a-f-]{36})", out)
    assert run_id is not None, out
    events = [
        json.loads(line) for line in prefect_texts(run_id.group(1))["prefect events"].splitlines()
    ]
    ours = [e for e in events if e["event"].startswith("llm-rollout.")]
    assert [e["event"] for e in ours] == [EVENT_FAILED]
    (failed,) = ours
    assert failed["resource"]["prefect.resource.id"] == service_resource_id("llm", "tiny")
    assert failed["payload"]["outcome"] == "failed"
    assert "preflight failed" in failed["payload"]["message"]
    assert WRONG_SECRET not in json.dumps(failed) and KEY_ID not in json.dumps(failed)
