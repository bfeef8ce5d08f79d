"""Preflight's OSS and hub checks with the real oss2 and modelscope clients against the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llm_rollout.preflight import PreflightReport, check_hub, check_oss
from llm_rollout.spec import ServiceSpec, spec_from_dict
from sandbox.hub import HubServer
from sandbox.oss import OssServer

KEY_ID = "LTAItestKeyId"
KEY_SECRET = "testSecretValue0123456789"
BUCKET = "models-test"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        server.add_revision("acme/tiny", "v1", {"config.json": b"{}", "w.bin": b"x" * 64})
        yield server


@pytest.fixture(scope="module")
def oss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssServer]:
    with OssServer(
        tmp_path_factory.mktemp("oss"), credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET]
    ) as server:
        yield server


def _spec(oss_endpoint: str, **model: Any) -> ServiceSpec:
    return spec_from_dict(
        {
            "name": "tiny",
            "namespace": "llm",
            "model": {"modelscope": {"model_id": "acme/tiny", "revision": "master", **model}},
            "storage": {
                "bucket": BUCKET,
                "endpoint": oss_endpoint,
                "region": "cn-hangzhou",
                "credentials": {
                    "access_key_id_env": "T_OSS_ID",
                    "access_key_secret_env": "T_OSS_SECRET",
                },
            },
            "volume": {"capacity_gib": 1},
            "serving": {"engine": "vllm", "shape": "single-gpu", "image": "vllm/vllm-openai:v1"},
        }
    )


def test_oss_check_passes_with_the_right_keys(oss: OssServer) -> None:
    report = PreflightReport()
    check_oss(_spec(oss.endpoint), report, {"T_OSS_ID": KEY_ID, "T_OSS_SECRET": KEY_SECRET})
    assert report.problems == []
    assert any("readable" in c for c in report.checks)


def test_oss_check_names_a_wrong_secret_without_leaking_it(oss: OssServer) -> None:
    report = PreflightReport()
    wrong = "wrongSecretValue987654321"
    check_oss(_spec(oss.endpoint), report, {"T_OSS_ID": KEY_ID, "T_OSS_SECRET": wrong})
    assert len(report.problems) == 1
    assert "secret is wrong" in report.problems[0]
    assert wrong not in report.problems[0] and KEY_ID not in report.problems[0]


def test_oss_check_reports_unset_variables_and_missing_bucket(oss: OssServer) -> None:
    report = PreflightReport()
    check_oss(_spec(oss.endpoint), report, {})
    assert "T_OSS_ID is not set" in report.problems[0]
    spec = _spec(oss.endpoint).model_copy(deep=True)
    spec.storage.bucket = "no-such-bucket"
    report = PreflightReport()
    check_oss(spec, report, {"T_OSS_ID": KEY_ID, "T_OSS_SECRET": KEY_SECRET})
    assert "does not exist" in report.problems[0]


def test_hub_check_finds_the_model_and_refuses_a_missing_revision(
    hub: HubServer, oss: OssServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.base_url)
    report = PreflightReport()
    check_hub(_spec(oss.endpoint), report)
    assert report.problems == [] and report.model_files == 2
    report = PreflightReport()
    check_hub(_spec(oss.endpoint, revision="v9"), report)
    assert len(report.problems) == 1 and "acme/tiny@v9" in report.problems[0]
