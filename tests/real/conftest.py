"""Fixtures shared by the real-cluster product tests."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llm_rollout import render as rendering
from llm_rollout.spec import ServiceSpec
from sandbox.cluster.control_plane import Cluster
from sandbox.cluster.node_agent import registry_faults_file

# RoleBasedGroup v0.7.0's CRD has v0.6.0's name, so the session cluster serves one of them at a
# time and tests/real/test_rbg_v07.py swaps v0.7.0's in (sandbox/cluster/control_plane.py
# ensure_rbg_crd). Run in file order it sat between the v0.6 modules, and
# test_redeploy_kinds[RoleBasedGroup] paid a second swap back to v0.6.0. Running it last of the
# session leaves every other test on the cluster's own v0.6.0 and saves that swap; no other
# test asks for v0.7.0.
RBG_V07_MODULE = "tests/real/test_rbg_v07.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def in_v07(item: pytest.Item) -> bool:
        return item.nodeid.split("::")[0] == RBG_V07_MODULE

    items[:] = [i for i in items if not in_v07(i)] + [i for i in items if in_v07(i)]


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


@pytest.fixture
def render_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The release of every `render()` call during the test, whichever module of ours calls it
    (issue 17 point 1: a deploy run renders once)."""
    calls: list[str] = []
    real = rendering.render

    def counting(spec: ServiceSpec, **options: Any) -> rendering.RenderedRelease:
        calls.append(str(options["release"]))
        return real(spec, **options)

    for name, module in list(sys.modules.items()):
        ours = name.split(".")[0] in ("llm_rollout", "tasks", "flows")
        if ours and getattr(module, "render", None) is real:
            monkeypatch.setattr(module, "render", counting)
    return calls
