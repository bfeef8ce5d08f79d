"""The session's real cluster (tests/real_cluster.py) under the short names this folder's tests
use; the cluster itself, its start, timeouts and figures live in that plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from sandbox.cluster.control_plane import Cluster
from sandbox.cluster.node_agent import NodeSpec


@pytest.fixture(scope="session")
def root_routes_before(
    real_root_routes_before: tuple[list[tuple[str, str]], list[str]],
) -> tuple[list[tuple[str, str]], list[str]]:
    return real_root_routes_before


@pytest.fixture(scope="session")
def cluster(real_cluster: Cluster) -> Cluster:
    return real_cluster


@pytest.fixture(scope="session")
def gpu_nodes(real_gpu_nodes: tuple[NodeSpec, ...]) -> tuple[NodeSpec, ...]:
    return real_gpu_nodes


@pytest.fixture(scope="session")
def admin(real_admin: k8s.ApiClient) -> k8s.ApiClient:
    return real_admin


@pytest.fixture
def namespace(real_namespace: str) -> str:
    return real_namespace


@pytest.fixture
def render_example(
    real_render_example: Callable[[str, str, str], dict[str, Any]],
) -> Callable[[str, str, str], dict[str, Any]]:
    return real_render_example
