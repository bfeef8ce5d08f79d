"""Fixtures for the real-engine tests: one tiny model per session, one engine per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from sandbox.vllm.engine import VllmEngine
from sandbox.vllm.install import is_installed, venv_dir
from sandbox.vllm.tiny_model import TinyModelInfo, generate_tiny_model


def require_engine() -> None:
    """Fail (never skip): the test command installs the engine, so its absence is a defect."""
    if not is_installed():
        pytest.fail(
            f"the vLLM engine is not installed in {venv_dir()}: run scripts/install-vllm",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")


@pytest.fixture(scope="session")
def tiny_info(tiny_model: Path) -> TinyModelInfo:
    return TinyModelInfo.load(tiny_model)


@pytest.fixture(scope="module")
def engine(tiny_model: Path, tiny_info: TinyModelInfo) -> Iterator[VllmEngine]:
    require_engine()
    eng = VllmEngine(tiny_model, served_name=tiny_info.served_name)
    eng.start()
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="session")
def tiny_model_tokenizer(tiny_model: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
