"""Fixtures shared by the real-cluster product tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from sandbox.cluster.control_plane import Cluster
from sandbox.cluster.node_agent import registry_faults_file


@pytest.fixture
def registry(real_cluster: Cluster) -> Iterator[Callable[[dict[str, str]], None]]:
    """``set_faults({image: message})``; emptied after the test."""
    path = registry_faults_file(real_cluster.run_dir)

    def set_faults(faults: dict[str, str]) -> None:
        staged = path.with_suffix(".new")
        staged.write_text(json.dumps(faults))
        staged.replace(path)  # the agent never reads a half-written file

    yield set_faults
    path.unlink(missing_ok=True)
