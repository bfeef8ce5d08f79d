"""Fixtures of the deployments area: sandbox hub + OSS for the session, the session's REAL
cluster (tests/real_cluster.py) behind the fault proxy of sandbox/cluster/api_proxy.py, which
here only records what reaches the API server (who, which verb, which path), and -- for the
tests that need them -- a REAL `prefect server start` and a REAL process worker on free ports
with a private PREFECT_HOME. The worker is a separate process: it reaches the sandbox through
the endpoints in the spec and the KUBECONFIG / MODELSCOPE_ENDPOINT / OSS key variables it is
started with."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.cluster.api_proxy import ApiFaultProxy, ProxyRecord, running_proxy
from sandbox.cluster.control_plane import Cluster
from sandbox.hub import HubServer
from sandbox.oss import OssServer
from sandbox.prefect_stack import PrefectStack, prefect_server, single_gpu_spec
from sandbox.synthetic import make_synthetic_model

KEY_ID = "LTAIdeploymentsKeyId"
KEY_SECRET = "deploymentsSecretNeverLogged0123"
BUCKET = "llm-models"
SHARDS = 4
SHARD_BYTES = 3 * 256 * 1024 + 777

_models = itertools.count()


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    server = HubServer(tmp_path_factory.mktemp("hub"))
    url = server.start()
    # The modelscope library reads its endpoint once per process: set it before any hub call.
    os.environ["MODELSCOPE_ENDPOINT"] = url
    yield server
    server.stop()


@pytest.fixture(scope="session")
def oss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssServer]:
    server = OssServer(
        tmp_path_factory.mktemp("oss"), credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET]
    )
    server.start()
    yield server
    server.stop()


@dataclass
class Model:
    model_id: str
    v1_dir: Path
    root: Path


@pytest.fixture
def model(hub: HubServer, tmp_path: Path) -> Model:
    """A fresh synthetic model published as v1 (and `master`)."""
    model_id = f"acme/tiny-{next(_models)}-{os.getpid()}"
    v1 = make_synthetic_model(tmp_path / "v1", shards=SHARDS, shard_size_bytes=SHARD_BYTES, seed=3)
    hub.add_revision_from_dir(model_id, "v1", v1)
    return Model(model_id, v1, tmp_path)


def spec_data(
    oss: OssServer, model_id: str, *, name: str, namespace: str = "llm-test"
) -> dict[str, Any]:
    """A single-GPU SGLang spec whose storage is the sandbox OSS (its pod runs the SGLang
    stand-in, which serves any model directory: what these tests check does not depend on the
    engine)."""
    return single_gpu_spec(
        name=name,
        namespace=namespace,
        model_id=model_id,
        size_bytes=SHARDS * SHARD_BYTES + 4096,
        oss_endpoint=oss.endpoint,
        oss_region=oss.region,
        bucket=BUCKET,
    )


@pytest.fixture(scope="module")
def recording_proxy(real_cluster: Cluster) -> Iterator[ApiFaultProxy]:
    """A proxy in front of the real API server with no faults: it records every request."""
    with running_proxy(real_cluster.pki, real_cluster.api_url) as proxy:
        yield proxy


def admin_kubeconfig_via(cluster: Cluster, proxy: ApiFaultProxy, name: str) -> Path:
    """A kubeconfig with the cluster admin's certificate whose server is ``proxy``."""
    return cluster.kubeconfig_for(name, cluster.pki.admin, server=proxy.url)


def writes(records: list[ProxyRecord]) -> list[ProxyRecord]:
    """The requests that change state (a watch is a GET)."""
    return [r for r in records if r.method not in ("GET", "HEAD")]


# --- a real Prefect server and process worker ------------------------------------------------


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    # A 1 s scheduler loop: the scheduled-refresh tests wait for the server's scheduler to turn
    # a schedule into a run (Prefect's default loop is 60 s).
    with prefect_server(tmp_path_factory.mktemp("prefect-home"), scheduler_loop_s=1) as stack:
        yield stack
