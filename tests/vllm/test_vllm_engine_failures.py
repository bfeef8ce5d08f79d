"""Engine failures surface vLLM's own error lines, and a missing install fails loudly."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

import sandbox.vllm.engine as engine_module
from sandbox.vllm.engine import EngineError, EngineNotInstalled, VllmEngine, error_lines
from tests.vllm.conftest import require_engine


def test_missing_install_names_the_installer(tmp_path: Path, tiny_model: Path) -> None:
    engine = VllmEngine(tiny_model, served_name="x", venv=tmp_path / "no-venv")
    with pytest.raises(EngineNotInstalled, match="scripts/install-vllm"):
        engine.start()
    assert engine.pid is None


@pytest.mark.vllm
@pytest.mark.timeout(300)
def test_bad_model_path_raises_with_engine_lines(tmp_path: Path) -> None:
    require_engine()
    missing = tmp_path / "models" / "Qwen3-32B"
    engine = VllmEngine(missing, served_name="qwen")
    with pytest.raises(EngineError, match="exited with code") as caught:
        engine.start()
    assert not engine.running()
    # The engine's own words, not ours: its exception line naming the path it could not use.
    reported = caught.value.lines
    assert any(str(missing) in line and "Error" in line for line in error_lines(reported))
    assert str(missing) in str(caught.value)
    assert engine.lines() == reported


@pytest.mark.vllm
@pytest.mark.timeout(300)
def test_too_little_kv_cache_raises_with_engine_lines(tiny_model: Path) -> None:
    require_engine()
    # 512 tokens of this model's KV cache take 256 KiB; 100 KB cannot hold one sequence.
    engine = VllmEngine(tiny_model, served_name="tiny", kv_cache_bytes="100K")
    with pytest.raises(EngineError, match="exited with code") as caught:
        engine.start()
    assert not engine.running()
    summary = error_lines(caught.value.lines)
    assert any("ValueError" in line and "cache" in line.lower() for line in summary), summary
    assert "ValueError" in str(caught.value)


@pytest.mark.vllm
@pytest.mark.timeout(400)
def test_port_taken_after_pick_retries_on_a_fresh_port(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engines start in parallel here: a port picked free may be taken before vLLM binds it."""
    require_engine()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_free_port = engine_module.free_port
        monkeypatch.setattr(
            engine_module,
            "free_port",
            lambda host="127.0.0.1": next(picks, None) or real_free_port(host),
        )
        engine = VllmEngine(tiny_model, served_name="tiny")
        assert engine.port == taken
        try:
            engine.start()
            assert engine.port != taken
            assert httpx.get(f"{engine.url}/v1/models", timeout=10).status_code == 200
        finally:
            engine.stop()
