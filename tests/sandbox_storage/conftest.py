"""Fixtures for the sandbox hub/OSS tests: fresh servers per test, real clients pointed at them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.hub import HubServer
from sandbox.oss import OssServer

AK, SK = "LTAI-sandbox-test", "sandbox-secret-value-123"
BUCKET = "models-bkt"

# Fail-fast retry pacing for the modelscope client (read once, at import of its constants).
os.environ.setdefault("MODELSCOPE_DOWNLOAD_RETRY_MAX_DELAY_SECONDS", "1")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    with HubServer(tmp_path / "hub") as server:
        yield server
        assert server.internal_errors == []


@pytest.fixture
def oss(tmp_path: Path) -> Iterator[OssServer]:
    with OssServer(tmp_path / "oss", credentials={AK: SK}, buckets=[BUCKET]) as server:
        yield server
        assert server.internal_errors == []
