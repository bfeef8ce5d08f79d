"""Suite-wide fixtures. Helper areas keep their own conftest.py in their subfolder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cluster.rbg import upstream_crd_dir

# The real cluster's fixtures (real_cluster, real_admin, ...); nothing starts unless asked for.
pytest_plugins = ["tests.real_cluster", "tests.real_deploy"]

# Telemetry off and loopback never proxied, before any client library reads the environment.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ["no_proxy"] = "127.0.0.1,localhost"

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_CRDS = upstream_crd_dir()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_crds() -> Path:
    if not SHARED_CRDS.is_dir():
        pytest.fail(
            f"upstream CRD schemas not found at {SHARED_CRDS}"
            " (set LLM_ROLLOUT_CRD_DIR to their directory)"
        )
    return SHARED_CRDS


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One ephemeral Prefect server for the whole session (it costs ~8 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
