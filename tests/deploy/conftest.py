"""Deploy-flow fixtures on the imitation cluster (tests still to move to tests/real): one sandbox
hub + OSS for the whole session, helpers for spec files and clusters; the CLI helper lives in
tests/deploy/cli_support.py.

The modelscope library reads its endpoint once per process, so every test here that lets the
flow talk to the hub shares this one hub (`MODELSCOPE_ENDPOINT` is set before any hub call).
Clusters are cheap (~0.2 s): modules share one, tests that need a special cluster start their
own with `cluster_env`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.hub import HubServer
from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.oss import OssServer
from sandbox.synthetic import make_synthetic_model
from tests.deploy.cli_support import cli
from tests.real_deploy import merge_sections

__all__ = ["cli"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEY_ID = "LTAIe2eKeyId"
KEY_SECRET = "e2eSecretValue0123456789"
BUCKET = "llm-models-example"


@dataclass
class Stores:
    hub: HubServer
    oss: OssServer
    root: Path


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """Hub with every example's model (one small synthetic revision) and OSS with its bucket."""
    root = tmp_path_factory.mktemp("deploy-stores")
    with (
        HubServer(root / "hub") as hub,
        OssServer(root / "oss", credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET]) as oss,
        pytest.MonkeyPatch.context() as mp,
    ):
        model_dir = make_synthetic_model(root / "model", shards=2, shard_size_bytes=64 << 10)
        published: set[str] = set()
        for path in sorted(EXAMPLES.glob("seed-*.yaml")):
            model = yaml.safe_load(path.read_text())["model"]
            model_id = (model.get("modelscope") or {}).get("model_id")
            if model_id and model_id not in published:
                published.add(model_id)
                hub.add_revision_from_dir(model_id, "v1", model_dir)
        mp.setenv("MODELSCOPE_ENDPOINT", hub.base_url)
        mp.setenv("OSS_ACCESS_KEY_ID", KEY_ID)
        mp.setenv("OSS_ACCESS_KEY_SECRET", KEY_SECRET)
        yield Stores(hub, oss, root)


def write_spec(
    stores: Stores, example: str, dest: Path, *, namespace: str, **changes: Any
) -> tuple[Path, dict[str, Any]]:
    """A copy of `examples/<example>.yaml` pointing at the sandbox OSS, in `namespace`, with
    short time limits (no bake unless asked) and `changes` merged in section by section."""
    data = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    data["storage"]["endpoint"] = stores.oss.endpoint
    data["namespace"] = namespace
    data["rollout"] = {**(data.get("rollout") or {}), "promote_grace_s": 0, "ready_timeout_s": 30}
    data = merge_sections(data, changes)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{example}-{namespace}-{len(list(dest.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


@contextmanager
def cluster_env(config: ClusterConfig, workdir: Path) -> Iterator[SandboxCluster]:
    """A sandbox cluster selected through KUBECONFIG for the duration of the block."""
    with SandboxCluster(config, workdir) as cluster, pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(cluster.kubeconfig))
        yield cluster
