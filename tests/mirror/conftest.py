"""Mirror tests: one sandbox hub + OSS per session (the modelscope library reads its endpoint
once per process), a fresh small synthetic model and OSS prefix per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from llm_rollout.credentials import OssCredentials
from llm_rollout.hub import HubClient, HubSource
from llm_rollout.mirror import MirrorOptions, OssTarget
from sandbox.hub import HubServer
from sandbox.oss import OssServer
from sandbox.sync_cli import write_sync_spec
from sandbox.synthetic import make_synthetic_model

ACCESS_KEY_ID = "LTAI-test-mirror-id"
ACCESS_KEY_SECRET = "s3cr3t-mirror-value-never-printed"
BUCKET = "models"
# Shards of 3 parts and a bit at a 256 KiB part size: multipart with a short last part.
PART_SIZE_MB = 0.25
SHARD_BYTES = 3 * 256 * 1024 + 4321

_counter = itertools.count()


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    hub = HubServer(tmp_path_factory.mktemp("hub"))
    url = hub.start()
    os.environ["MODELSCOPE_ENDPOINT"] = url
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def oss_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssServer]:
    oss = OssServer(
        tmp_path_factory.mktemp("oss"),
        credentials={ACCESS_KEY_ID: ACCESS_KEY_SECRET},
        buckets=[BUCKET],
    )
    oss.start()
    yield oss
    oss.stop()


@dataclass
class MirrorCase:
    """One test's model on the hub and its destination in OSS."""

    hub: HubServer
    oss: OssServer
    model_dir: Path
    source: HubSource
    target: OssTarget
    credentials: OssCredentials
    options: MirrorOptions
    client: HubClient

    def shard(self, n: int) -> str:
        return f"model-{n:05d}-of-00003.safetensors"


@pytest.fixture
def case(hub_server: HubServer, oss_server: OssServer, tmp_path: Path) -> Iterator[MirrorCase]:
    model_id = f"acme/tiny-{next(_counter)}"
    model_dir = make_synthetic_model(
        tmp_path / "model", shards=3, shard_size_bytes=SHARD_BYTES, seed=7
    )
    hub_server.add_revision_from_dir(model_id, "v1", model_dir)
    hub_server.faults.clear()
    oss_server.faults.clear()
    yield MirrorCase(
        hub=hub_server,
        oss=oss_server,
        model_dir=model_dir,
        source=HubSource(model_id=model_id, revision="v1"),
        target=OssTarget(
            endpoint=oss_server.endpoint,
            bucket=BUCKET,
            region=oss_server.region,
            prefix=f"models/{model_id}/v1",
        ),
        credentials=OssCredentials(
            access_key_id=SecretStr(ACCESS_KEY_ID), access_key_secret=SecretStr(ACCESS_KEY_SECRET)
        ),
        options=MirrorOptions(
            part_size_mb=PART_SIZE_MB,
            max_parallel_files=2,
            max_parallel_parts=3,
            retry_attempts=3,
            retry_base_delay_s=0.01,
            checkpoint_dir=tmp_path / "checkpoints",
            staging_dir=tmp_path / "staging",
        ),
        client=HubClient(endpoint=hub_server.base_url),
    )
    hub_server.faults.clear()
    oss_server.faults.clear()


def write_spec(case: MirrorCase, path: Path) -> Path:
    """A valid service spec (from the single-GPU example) pointing at this case's model."""
    return write_sync_spec(
        path,
        model_id=case.source.model_id,
        revision="v1",
        size_bytes=4 * 1024 * 1024,
        bucket=BUCKET,
        endpoint=case.oss.endpoint,
        region=case.oss.region,
    )
