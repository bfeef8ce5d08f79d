"""`llm-rollout sync SPEC` end to end in a subprocess against the sandbox hub and OSS."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from sandbox.sync_cli import sync_argv
from tests.mirror.conftest import ACCESS_KEY_ID, ACCESS_KEY_SECRET, MirrorCase, write_spec


def _sync(
    case: MirrorCase, spec: Path, secret: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MODELSCOPE_ENDPOINT": case.hub.base_url,
        "OSS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "OSS_ACCESS_KEY_SECRET": secret,
    }
    argv = sync_argv(spec, "--part-size-mb", "0.25", "--checkpoint-dir", str(tmp_path / "ckpt"))
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=110, check=False)


def test_sync_exit_zero_prints_manifest_uri(case: MirrorCase, tmp_path: Path) -> None:
    spec = write_spec(case, tmp_path / "spec.yaml")
    done = _sync(case, spec, ACCESS_KEY_SECRET, tmp_path)
    assert done.returncode == 0, done.stderr
    expected = f"oss://models/models/{case.source.model_id}/v1/.llm-rollout/manifest.json"
    assert done.stdout.strip() == expected
    assert ACCESS_KEY_SECRET not in done.stdout + done.stderr


def test_sync_invalid_spec_exits_2_naming_the_field(case: MirrorCase, tmp_path: Path) -> None:
    spec = write_spec(case, tmp_path / "spec.yaml")
    data = yaml.safe_load(spec.read_text())
    data["storage"]["bucket"] = "Not_A_Bucket"
    spec.write_text(yaml.safe_dump(data))
    done = _sync(case, spec, ACCESS_KEY_SECRET, tmp_path)
    assert done.returncode == 2
    assert "storage.bucket" in done.stderr


def test_sync_wrong_secret_fails_without_printing_it(case: MirrorCase, tmp_path: Path) -> None:
    spec = write_spec(case, tmp_path / "spec.yaml")
    wrong = "wrong-secret-value-9f8e7d"
    done = _sync(case, spec, wrong, tmp_path)
    assert done.returncode == 1
    assert "SignatureDoesNotMatch" in done.stderr
    assert done.stdout == ""
    for secret in (wrong, ACCESS_KEY_SECRET):
        assert secret not in done.stdout + done.stderr
