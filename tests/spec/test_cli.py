"""The plan and schema commands, run in-process through the real CLI app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llm_rollout.cli import app

from .conftest import EXAMPLES
from .model_configs import QWEN3_8B

runner = CliRunner()


def _example(stem: str) -> Path:
    return next(path for path in EXAMPLES if path.stem == stem)


def test_plan_writes_one_file_per_object(tmp_path: Path) -> None:
    out = tmp_path / "plan"
    result = runner.invoke(
        app, ["plan", str(_example("seed-vllm-lws")), "--out", str(out), "--release", "r7"]
    )
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "leaderworkerset-qwen3-32b-vllm-r7.yaml",
        "persistentvolume-qwen3-32b-vllm-model-84a7867c.yaml",
        "persistentvolumeclaim-qwen3-32b-vllm-model-b8a91267.yaml",
        "secret-qwen3-32b-vllm-oss.yaml",
        "service-qwen3-32b-vllm-r7-api.yaml",
        "service-qwen3-32b-vllm.yaml",
    ]
    for path in out.iterdir():
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        assert len(docs) == 1
        assert f"{docs[0]['kind'].lower()}-{docs[0]['metadata']['name']}.yaml" == path.name
    assert "6 objects, validated" in result.output
    assert "LeaderWorkerSet" in result.output


def test_plan_rejects_invalid_spec_with_exit_2(tmp_path: Path) -> None:
    spec = yaml.safe_load(_example("seed-vllm-lws").read_text(encoding="utf-8"))
    spec["serving"]["nodes"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = runner.invoke(app, ["plan", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "serving.tp" in result.output and "must equal nodes*gpus_per_node" in result.output
    assert not (tmp_path / "out").exists()


def test_plan_refuses_a_name_a_deploy_would_refuse(tmp_path: Path) -> None:
    """`plan` renders an 8-character default release, a deploy a 12-character one
    (strategy.new_release_id); a PD name of 32 characters passes the first and breaks the RBG
    v0.6 prefill StatefulSet's controller-revision-hash label with the second, so plan must
    refuse it too."""
    spec = yaml.safe_load(_example("seed-sglang-pd-rbg").read_text(encoding="utf-8"))
    spec["name"] = "p" * 32
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = runner.invoke(app, ["plan", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "name: " in result.output and "use at most 31 characters" in result.output
    assert not (tmp_path / "out").exists()


def test_plan_rejects_unknown_rbg_flavor(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["plan", str(_example("seed-sglang-pd-rbg")), "--out", str(tmp_path), "--rbg-flavor", "v9"],
    )
    assert result.exit_code == 2
    assert "--rbg-flavor" in result.output


def test_plan_v07_flavor_renders_v1alpha2(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "plan",
            str(_example("seed-sglang-pd-rbg")),
            "--out",
            str(tmp_path),
            "--rbg-flavor",
            "v0.7",
        ],
    )
    assert result.exit_code == 0, result.output
    rbg = next(tmp_path.glob("rolebasedgroup-*.yaml"))
    assert yaml.safe_load(rbg.read_text(encoding="utf-8"))["apiVersion"].endswith("v1alpha2")


def test_plan_never_contains_secret_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_id, key_secret = "LTAI-plan-test-id-7f3a", "plan-test-secret-9c1e"
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", key_secret)
    for example in EXAMPLES:
        out = tmp_path / example.stem
        result = runner.invoke(app, ["plan", str(example), "--out", str(out)])
        assert result.exit_code == 0, result.output
        texts = [result.output] + [p.read_text(encoding="utf-8") for p in out.iterdir()]
        assert not any(key_id in text or key_secret in text for text in texts)
        secret_files = list(out.glob("secret-*.yaml"))
        assert len(secret_files) == 1
        secret = yaml.safe_load(secret_files[0].read_text(encoding="utf-8"))
        assert "data" not in secret and "stringData" not in secret


def test_schema_prints_the_spec_json_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "ServiceSpec"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "namespace", "model", "storage", "serving"}
    serving = schema["$defs"]["ServingSpec"]["properties"]
    assert all("description" in prop for prop in serving.values())


def test_plan_prints_its_checks_and_says_kv_fit_not_checked_offline(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["plan", str(_example("seed-qwen14b-ray-tp2")), "--out", str(tmp_path / "p")]
    )
    assert result.exit_code == 0, result.output
    assert "checks:" in result.output
    assert "a port named metrics (8081)" in result.output
    assert "KV fit not checked" in result.output


def test_plan_checks_kv_fit_from_a_given_config_json(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(QWEN3_8B), encoding="utf-8")
    example = _example("seed-vllm-single-gpu")
    result = runner.invoke(
        app, ["plan", str(example), "--out", str(tmp_path / "ok"), "--model-config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "KV fit: one 8192-token sequence (--max-model-len)" in result.output
    # The seed's flags without --max-model-len: vLLM would refuse to start (issue 16, F3).
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    data["serving"]["extra_args"] = [
        "--max-num-batched-tokens",
        "1024",
        "--gpu-memory-utilization",
        "0.8",
    ]
    spec = tmp_path / "no-max-len.yaml"
    spec.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = runner.invoke(
        app, ["plan", str(spec), "--out", str(tmp_path / "bad"), "--model-config", str(config)]
    )
    assert result.exit_code == 2
    assert "serving.extra_args" in result.output and "40960-token" in result.output
    config.write_text(json.dumps({**QWEN3_8B, "num_hidden_layers": -1}), encoding="utf-8")
    result = runner.invoke(
        app, ["plan", str(example), "--out", str(tmp_path / "cfg"), "--model-config", str(config)]
    )
    assert result.exit_code == 2
    assert "num_hidden_layers" in result.output


def test_plan_pins_the_checked_length_where_the_user_set_none(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(QWEN3_8B), encoding="utf-8")
    data = yaml.safe_load(_example("seed-vllm-single-gpu").read_text(encoding="utf-8"))
    # 24 GiB x 0.95 - 15.3 GiB of weights holds one 40960-token sequence (5.62 GiB).
    data["serving"]["extra_args"] = ["--gpu-memory-utilization", "0.95"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "plan"
    args = ["plan", str(spec), "--out", str(out), "--release", "r1"]
    result = runner.invoke(app, [*args, "--model-config", str(config)])
    assert result.exit_code == 0, result.output
    deployment = yaml.safe_load((out / "deployment-qwen3-8b-vllm-r1.yaml").read_text("utf-8"))
    vllm_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert vllm_args[vllm_args.index("--max-model-len") + 1] == "40960"
    # Without config.json nothing is pinned: the length was not checked.
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    deployment = yaml.safe_load((out / "deployment-qwen3-8b-vllm-r1.yaml").read_text("utf-8"))
    assert "--max-model-len" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_plan_keeps_the_users_max_model_len(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(QWEN3_8B), encoding="utf-8")
    out = tmp_path / "plan"
    example = str(_example("seed-vllm-single-gpu"))
    result = runner.invoke(
        app, ["plan", example, "--out", str(out), "--release", "r1", "--model-config", str(config)]
    )
    assert result.exit_code == 0, result.output
    deployment = yaml.safe_load((out / "deployment-qwen3-8b-vllm-r1.yaml").read_text("utf-8"))
    vllm_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert vllm_args.count("--max-model-len") == 1
    assert vllm_args[vllm_args.index("--max-model-len") + 1] == "8192"
