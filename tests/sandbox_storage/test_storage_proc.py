"""The hub and OSS in their own process: start, real clients, stats, stop."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import oss2
import psutil
import pytest
from modelscope import snapshot_download
from modelscope.hub.api import HubApi

from sandbox.storage_proc import (
    HubRevision,
    StorageProcess,
    StorageProcessError,
    spawn_storage,
)
from sandbox.synthetic import make_synthetic_model
from tests.sandbox_storage.conftest import AK, BUCKET, SK

SHARD_BYTES = 300_000


def _spawn(tmp_path: Path, **caps: int) -> StorageProcess:
    r1 = make_synthetic_model(tmp_path / "r1", shards=2, shard_size_bytes=SHARD_BYTES, seed=1)
    r2 = make_synthetic_model(tmp_path / "r2", shards=2, shard_size_bytes=SHARD_BYTES, seed=2)
    return spawn_storage(
        tmp_path / "storage",
        credentials={AK: SK},
        buckets=[BUCKET],
        hub_revisions=[HubRevision("acme/syn", "r1", r1), HubRevision("acme/syn", "r2", r2)],
        hub_branches=[("acme/syn", "master", "r2")],
        **caps,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_child_serves_real_clients_and_reports_stats(tmp_path: Path) -> None:
    with _spawn(tmp_path, oss_aggregate_bandwidth_bytes_per_s=500_000_000) as storage:
        assert storage.running() and storage.pid != os.getpid()
        # OSS: the real oss2 client, v1 put/get and a v4 multipart upload.
        v1 = oss2.Bucket(oss2.Auth(AK, SK), storage.oss_endpoint, BUCKET, enable_crc=True)
        data = os.urandom(1_000_003)
        v1.put_object("a/b.bin", data)
        assert v1.get_object("a/b.bin").read() == data
        v4 = oss2.Bucket(oss2.AuthV4(AK, SK), storage.oss_endpoint, BUCKET,
                         region=storage.region, enable_crc=True)  # fmt: skip
        upload_id = v4.init_multipart_upload("mp.bin").upload_id
        parts = [
            oss2.models.PartInfo(n, v4.upload_part("mp.bin", upload_id, n, chunk).etag)
            for n, chunk in ((1, data[:600_000]), (2, data[600_000:]))
        ]
        v4.complete_multipart_upload("mp.bin", upload_id, parts)
        assert v4.get_object("mp.bin").read() == data
        with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):
            oss2.Bucket(oss2.Auth(AK, "wrong"), storage.oss_endpoint, BUCKET).put_object("x", b"")

        # Hub: the real modelscope client lists a revision and downloads master (= r2),
        # checking every file's listed sha256 and size on the way.
        api = HubApi(endpoint=storage.hub_url)
        shard = "model-00001-of-00002.safetensors"
        listed = {f["Path"]: f["Size"] for f in api.get_model_files("acme/syn", revision="r1")}
        assert listed == {p.name: p.stat().st_size for p in (tmp_path / "r1").iterdir()}
        out = Path(snapshot_download("acme/syn", cache_dir=tmp_path / "cache",
                                     endpoint=storage.hub_url))  # fmt: skip
        assert _sha256(out / shard) == _sha256(tmp_path / "r2" / shard)
        model_bytes = sum(p.stat().st_size for p in (tmp_path / "r2").iterdir())

        oss_stats = storage.oss_stats()
        assert oss_stats.idle and oss_stats.internal_errors == []
        assert oss_stats.requests_by_op["UploadPart"] == 2
        assert oss_stats.requests_by_status["403"] == 1
        assert oss_stats.fast_crc64 is True
        requests = storage.oss_requests()
        assert [r.part_number for r in requests if r.op == "UploadPart"] == [1, 2]
        # Counters include XML bodies; the object bytes are exactly the data, both ways.
        writes = sum(r.bytes_in for r in requests if r.op in ("PutObject", "UploadPart"))
        reads = sum(r.bytes_out for r in requests if r.op == "GetObject")
        assert writes == reads == 2 * len(data)
        assert oss_stats.bytes_received == sum(r.bytes_in for r in requests)
        assert oss_stats.bytes_sent == sum(r.bytes_out for r in requests)
        hub_stats = storage.hub_stats()
        assert hub_stats.internal_errors == []
        assert hub_stats.file_gets == len(listed)
        assert hub_stats.bytes_served >= model_bytes
        file_gets = [r for r in storage.hub_requests() if r.path.endswith("/repo")]
        assert sum(r.bytes_sent for r in file_gets) == model_bytes
        assert {r.query["Revision"] for r in file_gets} == {"master"}

        storage.reset_counters()
        assert storage.oss_stats().bytes_received == 0
        assert storage.hub_stats().requests == 0
        pid = storage.pid
    assert storage.process.returncode == 0
    assert _gone(pid)
    assert "SIGTERM, stopping" in storage.log_tail()


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    storage = spawn_storage(tmp_path / "s", credentials={AK: SK}, buckets=[BUCKET])
    os.kill(storage.pid, signal.SIGSTOP)  # a child that can no longer act on SIGTERM
    assert storage.stop(timeout=0.5) == -signal.SIGKILL
    assert _gone(storage.pid)


def test_child_exits_when_its_parent_goes_away(tmp_path: Path) -> None:
    storage = spawn_storage(tmp_path / "s", credentials={AK: SK})
    assert storage.process.stdin is not None
    storage.process.stdin.close()  # what the kernel does when the parent dies
    assert storage.process.wait(10) == 0
    assert storage.stop() == 0


def test_failed_start_reports_the_child_error(tmp_path: Path) -> None:
    with pytest.raises(StorageProcessError) as info:
        spawn_storage(
            tmp_path / "s",
            credentials={AK: SK},
            hub_revisions=[HubRevision("acme/none", "v1", tmp_path / "missing")],
        )
    assert "exited (2) before ready" in str(info.value)
    assert "is not a directory" in str(info.value)


def test_cli_ready_file(tmp_path: Path) -> None:
    ready_file = tmp_path / "ready.json"
    read_fd, write_fd = os.pipe()
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    argv = [sys.executable, "-m", "sandbox.storage_proc", "--root", str(tmp_path / "root"),
            "--oss-key", f"{AK}:{SK}", "--bucket", BUCKET, "--hub-aggregate-bps", "100000000",
            "--ready-file", str(ready_file), "--ready-fd", str(write_fd)]  # fmt: skip
    proc = subprocess.Popen(argv, pass_fds=(write_fd,), env=env, stderr=subprocess.PIPE)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            line = pipe.readline()  # blocks until ready (or EOF if the child died)
        ready = json.loads(line)
        # The file is in place before the fd is written.
        assert json.loads(ready_file.read_text()) == ready
        assert ready["pid"] == proc.pid
        bucket = oss2.Bucket(oss2.Auth(AK, SK), ready["oss_endpoint"], BUCKET)
        assert bucket.put_object("k", b"v").status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
