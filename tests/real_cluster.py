"""The session's real cluster as a pytest plugin, for any suite that asks for it.

Registered from tests/conftest.py; the cluster starts only when a test requests
``real_cluster`` (or a fixture built on it), once per session, inside the run's own network
namespace (``./scripts/in-netns``). tests/cluster/conftest.py names these fixtures ``cluster``,
``admin``, ``namespace`` and ``gpu_nodes`` for its own tests; product suites use the ``real_``
names, which no imitation fixture shadows.

Its start is outside every test's timeout: each test here is timed on its body alone
(``func_only``), while the start has its own bound per component (``ready_timeout_s``).
Measured on the 2-core machine shared with other work: 27-57 s in all at load average 10-15,
115 s once at 16, before LWS; with LWS 36-73 s at load 8-12 (six starts, most 52-59 s).
kube-apiserver's /readyz takes 3-7 s of it, the operators' ~1 MB CRDs most of the rest:
KubeRay's applied in 24-49 s on one thread while LWS's two take 13-27 s on another, all
Established 6-24 s later; the LWS manager then serves its webhooks in under a second. 11-12 s
without the operators. Each run prints its own figures as ``CLUSTER_FIGURES`` in the terminal
summary.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from sandbox.cluster import netns
from sandbox.cluster.control_plane import Cluster, ClusterConfig, start_cluster, stop_cluster
from sandbox.cluster.node_agent import NodeSpec
from sandbox.cluster.processes import ComponentFailed
from sandbox.cluster.waits import wait_for

# A test's own work on the running cluster (create, watch controllers act) took at most 4.3 s
# at load average 16 (--durations); the bound leaves room for worse.
TEST_TIMEOUT_S = 90
REPO_ROOT = Path(__file__).resolve().parents[1]

NODES = (
    NodeSpec(
        name="gpu-node-0",
        internal_ip="10.244.254.1",
        gpus=8,
        labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    ),
    NodeSpec(
        name="gpu-node-1",
        internal_ip="10.244.254.2",
        gpus=8,
        labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    ),
)

# A pickled `Cluster` already running in this network namespace (its supervisor left out):
# bench/mutation.py starts one cluster for a whole mutation run and each mutant's pytest
# session attaches to it instead of starting its own (20-60 s each). Unset in every other run.
ATTACH_ENV = "LLM_ROLLOUT_ATTACH_CLUSTER"

_figures: dict[str, object] = {}
_session_cluster: list[Cluster] = []


def _uses_real_cluster(item: pytest.Item) -> bool:
    return "real_cluster" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _uses_real_cluster(item) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, func_only=True))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and _session_cluster and _uses_real_cluster(item):
        report.sections.append(("cluster component logs", _session_cluster[0].tails()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _figures:
        terminalreporter.write_line(f"CLUSTER_FIGURES {json.dumps(_figures, sort_keys=True)}")


def _route_snapshot() -> tuple[list[tuple[str, str]], list[str]]:
    v4 = [(iface, str(dest)) for iface, dest in netns.ipv4_routes("1")]
    return v4, netns.ipv6_route_lines("1")


@pytest.fixture(scope="session")
def real_root_routes_before() -> tuple[list[tuple[str, str]], list[str]]:
    """The root namespace's routes before the cluster starts."""
    return _route_snapshot()


@pytest.fixture(scope="session")
def real_cluster(real_root_routes_before: object) -> Iterator[Cluster]:
    attach = os.environ.get(ATTACH_ENV)
    if attach:
        attached: Cluster = pickle.loads(Path(attach).read_bytes())
        yield attached
        return
    try:
        # Restarts back off from 1 s instead of the kubelet's 10 s so crash-loop tests see
        # several restarts within their bounds; set through the node agent's config only.
        started = start_cluster(ClusterConfig(nodes=NODES, container_backoff_base_s=1.0))
    except (ComponentFailed, netns.NotInPrivateNamespace, FileNotFoundError) as exc:
        pytest.fail(str(exc), pytrace=False)
    _session_cluster.append(started)
    _figures["ready_s"] = {k: round(v, 2) for k, v in started.ready_s.items()}
    yield started
    _figures["rss_mb_at_end"] = started.rss_mb()
    _session_cluster.clear()
    stop_cluster(started)


@pytest.fixture(scope="session")
def real_gpu_nodes() -> tuple[NodeSpec, ...]:
    return NODES


@pytest.fixture(scope="session")
def real_admin(real_cluster: Cluster) -> k8s.ApiClient:
    return real_cluster.api_client()


@pytest.fixture
def real_namespace(real_admin: k8s.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = k8s.CoreV1Api(real_admin)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def real_render_example(tmp_path: Path) -> Callable[[str, str, str], dict[str, Any]]:
    """``render(example, kind_file_prefix, namespace)``: the one object of that kind that
    ``llm-rollout plan`` renders from ``examples/<example>``, moved into ``namespace``."""

    def render(example: str, kind_file_prefix: str, namespace: str) -> dict[str, Any]:
        out_dir = tmp_path / f"plan-{example}"
        cli = Path(sys.executable).parent / "llm-rollout"
        subprocess.run(
            [str(cli), "plan", str(REPO_ROOT / "examples" / example), "--out", str(out_dir)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        (path,) = out_dir.glob(f"{kind_file_prefix}-*.yaml")
        doc = yaml.safe_load(path.read_text())
        assert isinstance(doc, dict)
        doc["metadata"]["namespace"] = namespace
        return doc

    return render


def counted_pod_quota(core: k8s.CoreV1Api, namespace: str, name: str, pods: int) -> None:
    """Create a ResourceQuota of ``pods`` pods and return once the quota controller has
    counted it: until then quota admission refuses every pod with "status unknown for quota"
    (k8s.io/apiserver pkg/admission/plugin/resourcequota), not the refusal a test is after."""
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": name}, "spec": {"hard": {"pods": str(pods)}}}
    )
    wait_for(
        core.list_namespaced_resource_quota,
        lambda items: (
            len(items) == 1 and "pods" in ((items[0].status and items[0].status.hard) or {})
        ),
        namespace=namespace,
        field_selector=f"metadata.name={name}",
        timeout_s=60,
        what=f"ResourceQuota {namespace}/{name} counted",
    )
