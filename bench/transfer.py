"""Benchmark: the seeds' procedure vs the streamed mirror, side by side, same link caps.

A synthetic model is served by the sandbox hub; both sides write to the sandbox OSS; each
server has the same aggregate bandwidth cap (the "link"). The hub and OSS each run in a
process of their own (`sandbox.storage_proc`), as the real services run on machines of their
own: neither shares a GIL with a side or with the other server. The sides run
one after the other, each in its own subprocess, sampled with psutil for peak RSS (the process
and its children) and for disk used under its own work dir (incl. its modelscope cache):

- seeds: `modelscope.snapshot_download` of the whole model to a temp dir, then file by file
  `oss2.resumable_upload` at its defaults (what seed 000's download + `ossutil cp -r` does);
- ours: `llm-rollout sync SPEC` (streamed: hub ranges feed multipart parts), its defaults
  unless --part-size-mb / --max-parallel-* say otherwise; the phases it prints are shown.

Prints, per run, wall time of each side (the whole subprocess: interpreter start and imports
included), the ratio, the fraction of the link limit (bytes / cap / wall), peak RSS, peak local
disk, and the bytes the hub served / OSS received for that side. Targets: ratio >= 1.8,
>= 85% of the link, disk independent of model size, peak RSS < 400 MB.

    uv run python bench/transfer.py             # 2 GiB in 8 shards, 100 MB/s caps
    uv run python bench/transfer.py --quick     # 256 MiB in 8 shards
    uv run python bench/transfer.py --repeat 3  # three side-by-side tables, one model
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llm_rollout.mirror.models import MirrorOptions  # noqa: E402
from sandbox.storage_proc import HubRevision, StorageProcess, spawn_storage  # noqa: E402
from sandbox.sync_cli import sync_argv, write_sync_spec  # noqa: E402
from sandbox.synthetic import make_synthetic_model  # noqa: E402

AK, SK = "LTAI-bench", "bench-secret"
MB = 1_000_000
MODEL_ID = "bench/synthetic"


def _disk_used(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_blocks * 512
            except OSError:
                continue
    return total


def _measure(
    argv: list[str], env: dict[str, str], watch_dir: Path, log_path: Path
) -> dict[str, float]:
    """Run a side in a subprocess; sample RSS (tree) and disk every 50 ms."""
    started = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The side's output (progress bars) goes to a log; shown only if the side fails.
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    peak_rss = 0
    peak_disk = 0
    while proc.poll() is None:
        rss = 0
        try:
            for p in [ps, *ps.children(recursive=True)]:
                rss += p.memory_info().rss
        except psutil.Error:
            pass
        peak_rss = max(peak_rss, rss)
        peak_disk = max(peak_disk, _disk_used(watch_dir))
        time.sleep(0.05)  # sampling period of the monitor
    wall = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"side failed (exit {proc.returncode}):\n{tail}")
    return {"wall_s": wall, "peak_rss": peak_rss, "peak_disk": peak_disk, "cpu_s": cpu}


SEEDS_SIDE = r"""
import os, sys, oss2
from pathlib import Path
from modelscope import snapshot_download
model_id, work, endpoint, bucket, prefix = sys.argv[1:6]
local = snapshot_download(model_id, revision="v1", local_dir=os.path.join(work, "model"))
b = oss2.Bucket(oss2.Auth(os.environ["BENCH_AK"], os.environ["BENCH_SK"]), endpoint, bucket)
for path in sorted(Path(local).rglob("*")):
    if path.is_file() and ".cache" not in path.parts and ".msc" not in path.name:
        key = prefix + "/" + path.relative_to(local).as_posix()
        oss2.resumable_upload(b, key, str(path),
                              store=oss2.ResumableStore(root=os.path.join(work, "ckpt")))
"""


def _seeds_argv(work: Path, storage: Storage, prefix: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        SEEDS_SIDE,
        MODEL_ID,
        str(work),
        storage.oss.oss_endpoint,
        "bench",
        prefix,
    ]


def _ours_argv(
    work: Path, storage: Storage, prefix: str, *, args: argparse.Namespace, total: int
) -> list[str]:
    """`llm-rollout sync SPEC`: the product's own entry point, its exit included."""
    spec = write_sync_spec(
        work / "spec.yaml",
        model_id=MODEL_ID,
        revision="v1",
        size_bytes=total,
        bucket="bench",
        endpoint=storage.oss.oss_endpoint,
        region=storage.oss.region,
        prefix=prefix,
    )
    return sync_argv(
        spec,
        *("--part-size-mb", str(args.part_size_mb)),
        *("--max-parallel-files", str(args.max_parallel_files)),
        *("--max-parallel-parts", str(args.max_parallel_parts)),
        *("--checkpoint-dir", str(work / "ckpt"), "--no-progress"),
    )


@dataclass(frozen=True)
class Storage:
    """The hub from one storage child, OSS from another (each child's other server idles)."""

    hub: StorageProcess
    oss: StorageProcess

    def reset_counters(self) -> None:
        self.hub.reset_counters()
        self.oss.reset_counters()

    def cpu_seconds(self) -> float:
        return self.hub.hub_stats().process_cpu_seconds + self.oss.oss_stats().process_cpu_seconds


def _side(
    name: str,
    run: int,
    argv_for: Callable[[Path, Storage, str], list[str]],
    tmp: Path,
    storage: Storage,
    base_env: dict[str, str],
) -> dict[str, Any]:
    work = tmp / f"work-{name}"
    work.mkdir()
    # The library cache lives in the side's own work dir so its disk use is counted too.
    # A fresh prefix per run: ours would otherwise skip the objects verified by the last run.
    prefix = f"{name}-run-{run}"
    env = {**base_env, "MODELSCOPE_CACHE": str(work / "mscache")}
    storage.reset_counters()
    server_cpu = storage.cpu_seconds()
    argv = argv_for(work, storage, prefix)
    log_path = tmp / f"{name}-run-{run}.log"
    result: dict[str, Any] = dict(_measure(argv, env, work, log_path))
    for line in log_path.read_text(errors="replace").splitlines():
        # `sync` ends with "phases (s): read_manifest 0.01, list_hub 0.03, ...".
        if line.startswith("phases (s): "):
            pairs = (item.rsplit(" ", 1) for item in line.split(": ", 1)[1].split(", "))
            result["phases"] = {k: float(v) for k, v in pairs}
    result["hub_bytes"] = storage.hub.hub_stats().bytes_served
    result["oss_bytes"] = storage.oss.oss_stats().bytes_received
    result["server_cpu_s"] = storage.cpu_seconds() - server_cpu
    shutil.rmtree(work, ignore_errors=True)
    return result


def _report(
    total: int, cap: int, args: argparse.Namespace, results: dict[str, dict[str, Any]]
) -> None:
    link_s = total / cap
    print(
        f"model: {total / MB:.0f} MB in {args.shards} shards; caps {cap / MB:.0f} MB/s each; "
        f"ours: part {args.part_size_mb} MiB, {args.max_parallel_files} files x "
        f"{args.max_parallel_parts} parts (GX imported while bytes move); "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'side':6} {'wall s':>8} {'link %':>7} {'peak RSS MB':>12} {'peak disk MB':>13} "
        f"{'hub MB':>8} {'OSS MB':>8} {'CPU s':>6} {'srv CPU s':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:6} {r['wall_s']:8.1f} {100 * link_s / r['wall_s']:6.1f}% "
            f"{r['peak_rss'] / MB:12.0f} {r['peak_disk'] / MB:13.1f} "
            f"{r['hub_bytes'] / MB:8.0f} {r['oss_bytes'] / MB:8.0f} {r['cpu_s']:6.1f} "
            f"{r['server_cpu_s']:9.1f}"
        )
    phases = results["ours"].get("phases")
    if phases:
        # Where ours spends its wall time; the rest is interpreter start before the script.
        print("ours phases s: " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    ratio = results["seeds"]["wall_s"] / results["ours"]["wall_s"]
    print(f"speed-up ours vs seeds: {ratio:.2f}x (target >= 1.8x; link target >= 85%)")
    print(json.dumps({"ratio": round(ratio, 3), **results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=2048.0, help="model size in MiB")
    parser.add_argument("--shards", type=int, default=8, help="number of weight shards")
    parser.add_argument("--cap-mb-s", type=float, default=100.0, help="link cap per server, MB/s")
    parser.add_argument("--quick", action="store_true", help="256 MiB model")
    parser.add_argument("--part-size-mb", type=float, default=MirrorOptions().part_size_mb)
    parser.add_argument(
        "--max-parallel-files", type=int, default=MirrorOptions().max_parallel_files
    )
    parser.add_argument(
        "--max-parallel-parts", type=int, default=MirrorOptions().max_parallel_parts
    )
    parser.add_argument("--repeat", type=int, default=1, help="side-by-side runs, one table each")
    parser.add_argument("--sides", default="seeds,ours", help="comma-separated sides to run")
    args = parser.parse_args()
    size_mib = 256.0 if args.quick else args.size_mb
    cap = int(args.cap_mb_s * MB)
    chosen = [name for name in args.sides.split(",") if name]

    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp_name:
        tmp = Path(tmp_name)
        shard_bytes = int(size_mib * 1024 * 1024) // args.shards
        model = make_synthetic_model(
            tmp / "src", shards=args.shards, shard_size_bytes=shard_bytes, seed=3
        )
        total = sum(p.stat().st_size for p in model.iterdir() if p.is_file())
        with (
            spawn_storage(
                tmp / "hub",
                credentials={AK: SK},
                hub_revisions=[HubRevision(MODEL_ID, "v1", model)],
                hub_aggregate_bandwidth_bytes_per_s=cap,
            ) as hub_proc,
            spawn_storage(
                tmp / "oss",
                credentials={AK: SK},
                buckets=["bench"],
                oss_aggregate_bandwidth_bytes_per_s=cap,
            ) as oss_proc,
        ):
            storage = Storage(hub=hub_proc, oss=oss_proc)
            sides: dict[str, Callable[[Path, Storage, str], list[str]]] = {
                "seeds": _seeds_argv,
                "ours": functools.partial(_ours_argv, args=args, total=total),
            }
            env = {
                **os.environ,
                "MODELSCOPE_ENDPOINT": storage.hub.hub_url,
                "BENCH_AK": AK,
                "BENCH_SK": SK,
                "BENCH_REGION": storage.oss.region,
                # ours: the spec names these variables (storage.credentials).
                "OSS_ACCESS_KEY_ID": AK,
                "OSS_ACCESS_KEY_SECRET": SK,
                "PYTHONPATH": str(REPO),
            }
            for run in range(1, args.repeat + 1):
                results = {
                    name: _side(name, run, sides[name], tmp, storage, env) for name in chosen
                }
                print(f"--- run {run}/{args.repeat}")
                if set(results) == {"seeds", "ours"}:
                    _report(total, cap, args, results)
                else:
                    print(json.dumps(results))


if __name__ == "__main__":
    main()
