"""Bandwidth-cap accuracy, raw throughput, and the synthetic model generator."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path

import oss2
import requests
from modelscope import snapshot_download

from sandbox.hub import HubServer
from sandbox.oss import OssServer
from sandbox.synthetic import derive_changed_revision, make_synthetic_model
from tests.sandbox_storage.conftest import AK, BUCKET, SK

CAP = 20 * 1024 * 1024


def _timed_get(url: str, params: dict[str, str]) -> tuple[int, float]:
    start = time.monotonic()
    total = 0
    with requests.get(url, params=params, stream=True, timeout=30) as r:
        r.raise_for_status()
        for chunk in r.iter_content(1 << 20):
            total += len(chunk)
    return total, time.monotonic() - start


def test_hub_bandwidth_cap_per_connection(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x5a" * (10 * 1024 * 1024))
    with HubServer(tmp_path / "hub", bandwidth_bytes_per_s=CAP) as hub:
        hub.add_revision("acme/cap", "v1", {"blob.bin": blob})
        total, seconds = _timed_get(
            f"{hub.base_url}/api/v1/models/acme/cap/repo",
            {"Revision": "v1", "FilePath": "blob.bin"},
        )
    rate = total / seconds
    assert total == blob.stat().st_size
    # The cap is never exceeded (an upper bound a busy machine cannot break); how close to
    # it a transfer gets is measured by bench/transfer.py.
    assert rate <= 1.05 * CAP, rate


def test_oss_bandwidth_cap_on_upload(tmp_path: Path) -> None:
    data = b"\xa5" * (8 * 1024 * 1024)
    with OssServer(tmp_path / "oss", credentials={AK: SK}, buckets=[BUCKET],
                   bandwidth_bytes_per_s=CAP) as oss:  # fmt: skip
        b = oss2.Bucket(oss2.Auth(AK, SK), oss.endpoint, BUCKET)
        start = time.monotonic()
        b.put_object("capped", data)
        seconds = time.monotonic() - start
    rate = len(data) / seconds
    assert rate <= 1.05 * CAP, rate
    assert oss.object_meta(BUCKET, "capped").size == len(data)  # type: ignore[union-attr]


def _safetensors_header(path: Path) -> dict[str, object]:
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header: dict[str, object] = json.loads(fh.read(n))
    return header


def test_synthetic_model_layout_and_derived_revision(tmp_path: Path) -> None:
    size = 1024 * 1024 + 123
    src = make_synthetic_model(tmp_path / "r1", shards=3, shard_size_bytes=size, seed=5)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    for name in ["config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", *shards]:  # fmt: skip
        assert (src / name).is_file(), name
    for name in shards:
        path = src / name
        assert path.stat().st_size == size
        header = _safetensors_header(path)
        (tensor,) = [k for k in header if k != "__metadata__"]
        start, end = header[tensor]["data_offsets"]  # type: ignore[index]
        (hlen,) = struct.unpack("<Q", path.read_bytes()[:8])
        assert 8 + hlen + end - start == size
    again = make_synthetic_model(tmp_path / "again", shards=3, shard_size_bytes=size, seed=5)
    digests = {n: hashlib.sha256((src / n).read_bytes()).hexdigest() for n in shards}
    assert digests == {n: hashlib.sha256((again / n).read_bytes()).hexdigest() for n in shards}
    assert len(set(digests.values())) == 3

    r2 = derive_changed_revision(src, tmp_path / "r2", changed_shards=[2], seed=6)
    changed = {n for n in shards if (src / n).read_bytes() != (r2 / n).read_bytes()}
    assert changed == {shards[1]}
    assert (r2 / shards[0]).stat().st_ino == (src / shards[0]).stat().st_ino
    assert (r2 / shards[1]).stat().st_size == size


def test_hub_serves_two_revisions_of_a_synthetic_model(tmp_path: Path) -> None:
    r1 = make_synthetic_model(tmp_path / "r1", shards=2, shard_size_bytes=300_000, seed=1)
    r2 = derive_changed_revision(r1, tmp_path / "r2", changed_shards=[1], seed=2)
    with HubServer(tmp_path / "hub") as hub:
        hub.add_revision_from_dir("acme/syn", "r1", r1)
        hub.add_revision_from_dir("acme/syn", "r2", r2)
        hub.move_branch("acme/syn", "master", "r2")
        out = Path(snapshot_download("acme/syn", cache_dir=tmp_path / "c", endpoint=hub.base_url))
        shard = "model-00001-of-00002.safetensors"
        assert (out / shard).read_bytes() == (r2 / shard).read_bytes()
        assert hub.files("acme/syn", "r1")[shard].sha256 != hub.files("acme/syn")[shard].sha256
        assert hub.internal_errors == []
