"""The sandbox OSS met straight through the real oss2 client, for the mirror's decision tests
(test_manifest_checks, test_transfer_checks, test_resume_checks): no hub and no mirror run,
so each case costs a few requests. Not a conftest: those files also run with --noconftest
(bench/mutation.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import oss2
from pydantic import SecretStr

from llm_rollout.credentials import OssCredentials
from llm_rollout.mirror.buffers import BufferPool
from llm_rollout.mirror.checkpoint import CheckpointStore
from llm_rollout.mirror.models import MirrorOptions, NullProgress
from llm_rollout.mirror.transfer import Counters, LocalRangeSource, TransferContext
from llm_rollout.oss import OssTarget, open_bucket
from sandbox.oss import OssServer

KEY_ID = "LTAI-direct-oss"
KEY_SECRET = "direct-oss-secret-value"

_prefixes = itertools.count()


def running_oss(directory: Path, bucket: str) -> Iterator[OssServer]:
    """The sandbox OSS with one bucket, for a module-scoped fixture to `yield from`."""
    with OssServer(directory, credentials={KEY_ID: KEY_SECRET}, buckets=[bucket]) as server:
        yield server


def fresh_target(oss: OssServer, bucket: str, prefix: str) -> OssTarget:
    """A target under a prefix no other test of the session used."""
    return OssTarget(
        endpoint=oss.endpoint,
        bucket=bucket,
        region=oss.region,
        prefix=f"{prefix}/r{next(_prefixes)}",
    )


def direct_bucket(target: OssTarget, secret: str = KEY_SECRET) -> oss2.Bucket:
    creds = OssCredentials(access_key_id=SecretStr(KEY_ID), access_key_secret=SecretStr(secret))
    # As the mirror opens it (llm_rollout/mirror/run.py): oss2's own CRC64 check off, so the
    # product's comparisons are the ones that run.
    return open_bucket(target, creds, enable_crc=False)


@contextmanager
def transfer_context(
    oss: OssServer, target: OssTarget, directory: Path, part_size: int
) -> Iterator[TransferContext]:
    """What the mirror's file workers share, reading files from `directory`/src."""
    (directory / "src").mkdir(exist_ok=True)
    with ThreadPoolExecutor(1) as pool:
        yield TransferContext(
            bucket=direct_bucket(target),
            target=target,
            source=LocalRangeSource(directory / "src"),
            options=MirrorOptions(retry_attempts=3, retry_base_delay_s=0.01),
            checkpoints=CheckpointStore(directory / "checkpoints", oss.endpoint),
            part_pool=pool,
            buffers=BufferPool(1, part_size),
            progress=NullProgress(),
            counters=Counters(),
        )
    oss.faults.clear()
