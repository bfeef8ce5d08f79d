"""Reliability trials (issue 8): a few seeded trials of each class that `bench/reliability.py`
runs at full counts, through the same functions. The deploy trials run on the test session's
real cluster (`real_cluster`, tests/real_cluster.py), reached through the fault proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.reliability import InputWorld, TransferLab, input_world, transfer_lab
from sandbox.cluster.control_plane import Cluster


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransferLab]:
    # 2 shards x 1 MiB at 256 KiB parts: 4 parts a shard, small enough for a few seconds a trial.
    with transfer_lab(tmp_path_factory.mktemp("transfer"), shards=2, shard_bytes=1 << 20) as lab:
        yield lab


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, real_cluster: Cluster) -> Iterator[InputWorld]:
    # Leaving, the world deletes the namespaces its deploys used (and their volumes), so the
    # session cluster's GPUs are free for the next module.
    with input_world(tmp_path_factory.mktemp("input"), real_cluster) as world:
        yield world
