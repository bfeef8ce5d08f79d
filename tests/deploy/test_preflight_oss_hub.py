"""Preflight's OSS and hub checks with the real oss2 and modelscope clients against the sandbox."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from llm_rollout.errors import PermanentError
from llm_rollout.kv_cache import ModelConfigError
from llm_rollout.preflight import (
    PreflightReport,
    check_hub,
    check_kv_fit,
    check_oss,
    read_model_config,
)
from llm_rollout.spec import ServiceSpec, spec_from_dict
from sandbox.hub import HubServer
from sandbox.oss import OssServer
from tests.spec.model_configs import QWEN3_8B

KEY_ID = "LTAItestKeyId"
KEY_SECRET = "testSecretValue0123456789"
BUCKET = "models-test"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        server.add_revision("acme/tiny", "v1", {"config.json": b"{}", "w.bin": b"x" * 64})
        server.add_revision("acme/qwen3-8b", "v1", {"config.json": QWEN3_8B_CONFIG})
        server.add_revision("acme/no-config", "v1", {"w.bin": b"x" * 64})
        yield server


@pytest.fixture(scope="module")
def oss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssServer]:
    with OssServer(
        tmp_path_factory.mktemp("oss"), credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET]
    ) as server:
        yield server


QWEN3_8B_CONFIG = json.dumps(QWEN3_8B).encode()


def _spec(oss_endpoint: str, serving: dict[str, Any] | None = None, **model: Any) -> ServiceSpec:
    model_id = model.pop("model_id", "acme/tiny")
    return spec_from_dict(
        {
            "name": "tiny",
            "namespace": "llm",
            "model": {
                "modelscope": {"model_id": model_id, "revision": "master", **model},
                "size_bytes": 16_381_470_720,
            },
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
            "serving": {
                "engine": "vllm",
                "shape": "single-gpu",
                "image": "vllm/vllm-openai:v1",
                **(serving or {}),
            },
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


def _kv_report(spec: ServiceSpec) -> PreflightReport:
    report = PreflightReport()
    config, unread = read_model_config(spec, None)
    check_kv_fit(spec, report, config, unread_reason=unread)
    return report


def test_kv_fit_reads_config_json_from_the_hub_and_refuses_the_f3_layout(
    hub: HubServer, oss: OssServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.base_url)
    serving = {"gpu_memory_gib": 24, "extra_args": ["--gpu-memory-utilization", "0.8"]}
    report = _kv_report(_spec(oss.endpoint, serving, model_id="acme/qwen3-8b", revision="v1"))
    assert len(report.problems) == 1
    assert report.problems[0].startswith("serving.extra_args:")
    assert "40960-token" in report.problems[0] and "5.62 GiB" in report.problems[0]
    serving["extra_args"] += ["--max-model-len", "8192"]
    report = _kv_report(_spec(oss.endpoint, serving, model_id="acme/qwen3-8b", revision="v1"))
    assert report.problems == []
    assert any(c.startswith("KV fit: one 8192-token sequence") for c in report.checks)


def test_kv_fit_refuses_a_config_json_missing_its_fields(
    hub: HubServer, oss: OssServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.base_url)
    report = _kv_report(_spec(oss.endpoint, {"gpu_memory_gib": 24}, revision="v1"))
    assert len(report.problems) == 1 and "num_hidden_layers" in report.problems[0]


def test_kv_fit_not_checked_without_config_json_or_for_sglang(
    hub: HubServer, oss: OssServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.base_url)
    spec = _spec(oss.endpoint, {"gpu_memory_gib": 24}, model_id="acme/no-config", revision="v1")
    report = _kv_report(spec)
    assert report.problems == []
    assert report.checks == ["KV fit not checked: config.json is not in the hub listing"]
    spec = _spec(oss.endpoint, {"engine": "sglang"}, model_id="acme/qwen3-8b", revision="v1")
    report = _kv_report(spec)
    assert report.problems == [] and report.checks[0].startswith("KV fit not checked")


def test_config_json_not_matching_the_listed_sha256_is_refused_naming_both_digests(
    hub: HubServer, oss: OssServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.base_url)
    spec = _spec(oss.endpoint, {"gpu_memory_gib": 24}, model_id="acme/qwen3-8b", revision="v1")
    served = hashlib.sha256(QWEN3_8B_CONFIG).hexdigest()
    bogus = hub.faults.wrong_sha256("config.json", model_id="acme/qwen3-8b")
    try:
        with pytest.raises(ModelConfigError) as info:
            read_model_config(spec, None)
    finally:
        hub.faults.clear()
    message = str(info.value)
    assert isinstance(info.value, PermanentError)
    assert message.startswith("hub acme/qwen3-8b@v1: config.json served with sha256 ")
    assert served[:12] in message and bogus[:12] in message
    # Prefixes only, and nothing of the document itself.
    assert served not in message and bogus not in message
    assert "num_hidden_layers" not in message and "{" not in message
    # The same bytes with the listing telling the truth are read.
    config, unread = read_model_config(spec, None)
    assert unread == "" and config == QWEN3_8B


def test_config_json_listed_too_large_is_refused_without_downloading_it(
    hub: HubServer, oss: OssServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.base_url)
    spec = _spec(oss.endpoint, {"gpu_memory_gib": 24}, model_id="acme/qwen3-8b", revision="v1")
    hub.faults.hostile_listing(
        [{"Path": "config.json", "Size": 5 * 1024 * 1024}], model_id="acme/qwen3-8b"
    )
    downloads_before = _config_downloads(hub)
    try:
        with pytest.raises(ModelConfigError, match=r"config\.json is listed with 5242880 bytes"):
            read_model_config(spec, None)
    finally:
        hub.faults.clear()
    assert _config_downloads(hub) == downloads_before


def _config_downloads(hub: HubServer) -> int:
    # File bytes are GET .../repo?FilePath=... (sandbox/hub.py's module docstring). The
    # server records a request just after the client has its last byte, so the previous
    # read's record may still be on its way (the stop-22 CI failure: 5 == 4).
    hub.wait_idle()
    return sum(
        1
        for r in hub.request_log.snapshot()
        if r.path.endswith("/repo") and r.query.get("FilePath") == "config.json"
    )


def test_kv_fit_reads_config_json_of_an_oss_uri_model_from_its_prefix(oss: OssServer) -> None:
    serving = {"gpu_memory_gib": 24, "extra_args": ["--gpu-memory-utilization", "0.8"]}
    data = _spec(oss.endpoint, serving).model_dump(mode="json")
    data["model"] = {"oss_uri": f"oss://{BUCKET}/models/acme/m/v1/", "size_bytes": 16_381_470_720}
    spec = spec_from_dict(data)
    environ = {"T_OSS_ID": KEY_ID, "T_OSS_SECRET": KEY_SECRET}
    report = PreflightReport()
    bucket = check_oss(spec, report, environ)
    assert bucket is not None
    # No config.json under the prefix yet: not checked, and said so.
    config, unread = read_model_config(spec, bucket)
    assert config is None and unread == "cannot read config.json (NoSuchKey)"
    bucket.put_object("models/acme/m/v1/config.json", QWEN3_8B_CONFIG)
    config, unread = read_model_config(spec, bucket)
    check_kv_fit(spec, report, config, unread_reason=unread)
    assert len(report.problems) == 1 and "40960-token" in report.problems[0]
