"""Benchmark: the seeds' procedure vs the streamed mirror, side by side, same link caps.

A synthetic model is served by the sandbox hub; both sides write to the sandbox OSS; each
server has the same aggregate bandwidth cap (the "link"). Run sequentially under the same
conditions, each side in its own subprocess (sampled with psutil for peak RSS incl. children,
and for disk used under its own temp dir):

- seeds: `modelscope.snapshot_download` of the whole model to a temp dir, then file by file
  `oss2.resumable_upload` at its defaults (what seed 000's download + `ossutil cp -r` does);
- ours: `llm_rollout.mirror.mirror_model` (streamed: hub ranges feed multipart parts).

Prints wall time of each, the ratio, the fraction of the link limit (bytes / cap / time), peak
RSS and peak local disk. Targets: ratio >= 1.8, >= 85% of the link, disk independent of model
size, peak RSS < 400 MB.

    uv run python bench/transfer.py             # 2 GiB in 8 shards, 100 MB/s caps
    uv run python bench/transfer.py --quick     # 256 MiB in 8 shards
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

AK, SK = "LTAI-bench", "bench-secret"
MB = 1_000_000


def _disk_used(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_blocks * 512
            except OSError:
                continue
    return total


def _measure(argv: list[str], env: dict[str, str], watch_dir: Path) -> dict[str, float]:
    """Run a side in a subprocess; sample RSS (tree) and disk every 50 ms."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env)
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
    if proc.returncode != 0:
        raise SystemExit(f"side failed: {' '.join(argv[:4])} exit {proc.returncode}")
    return {"wall_s": wall, "peak_rss": peak_rss, "peak_disk": peak_disk}


SEEDS_SIDE = r"""
import os, sys, oss2
from pathlib import Path
from modelscope import snapshot_download
model_id, work, endpoint, bucket = sys.argv[1:5]
local = snapshot_download(model_id, revision="v1", local_dir=os.path.join(work, "model"))
b = oss2.Bucket(oss2.Auth(os.environ["BENCH_AK"], os.environ["BENCH_SK"]), endpoint, bucket)
for path in sorted(Path(local).rglob("*")):
    if path.is_file() and ".cache" not in path.parts and ".msc" not in path.name:
        key = "seeds/" + path.relative_to(local).as_posix()
        oss2.resumable_upload(b, key, str(path),
                              store=oss2.ResumableStore(root=os.path.join(work, "ckpt")))
"""

OURS_SIDE = r"""
import os, sys
from pathlib import Path
from pydantic import SecretStr
from llm_rollout.credentials import OssCredentials
from llm_rollout.mirror import HubSource, MirrorOptions, OssTarget, mirror_model
model_id, work, endpoint, bucket = sys.argv[1:5]
creds = OssCredentials(access_key_id=SecretStr(os.environ["BENCH_AK"]),
                       access_key_secret=SecretStr(os.environ["BENCH_SK"]))
target = OssTarget(endpoint=endpoint, bucket=bucket, region="cn-hangzhou", prefix="ours")
options = MirrorOptions(part_size_mb=float(os.environ["BENCH_PART_MB"]),
                        max_parallel_files=int(os.environ["BENCH_FILES"]),
                        max_parallel_parts=int(os.environ["BENCH_PARTS"]),
                        checkpoint_dir=Path(work) / "ckpt")
result = mirror_model(HubSource(model_id=model_id, revision="v1"), target, creds, options)
assert result.bytes_sent > 0
print(f"ours: mirror_model {result.seconds:.1f}s", file=sys.stderr)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=2048.0, help="model size in MiB")
    parser.add_argument("--shards", type=int, default=8, help="number of weight shards")
    parser.add_argument("--cap-mb-s", type=float, default=100.0, help="link cap per server, MB/s")
    parser.add_argument("--quick", action="store_true", help="256 MiB model")
    parser.add_argument("--part-size-mb", type=float, default=8.0)
    parser.add_argument("--max-parallel-files", type=int, default=4)
    parser.add_argument("--max-parallel-parts", type=int, default=8)
    args = parser.parse_args()
    size_mib = 256.0 if args.quick else args.size_mb
    cap = int(args.cap_mb_s * MB)

    from sandbox.http import TokenBucket
    from sandbox.hub import HubServer
    from sandbox.oss import OssServer
    from sandbox.synthetic import make_synthetic_model

    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp_name:
        tmp = Path(tmp_name)
        shard_bytes = int(size_mib * 1024 * 1024) // args.shards
        model = make_synthetic_model(
            tmp / "src", shards=args.shards, shard_size_bytes=shard_bytes, seed=3
        )
        total = sum(p.stat().st_size for p in model.iterdir() if p.is_file())
        hub = HubServer(tmp / "hub")
        # HubServer takes only a per-connection cap; the link is an aggregate cap, which the
        # shared SandboxServer base supports: install it the way the base constructor would.
        hub.aggregate_bandwidth_bytes_per_s = cap
        hub._aggregate_bucket = TokenBucket(cap)
        oss = OssServer(
            tmp / "oss",
            credentials={AK: SK},
            buckets=["bench"],
            aggregate_bandwidth_bytes_per_s=cap,
        )
        hub_url, endpoint = hub.start(), oss.start()
        try:
            hub.add_revision_from_dir("bench/synthetic", "v1", model)
            env = {
                **os.environ,
                "MODELSCOPE_ENDPOINT": hub_url,
                "MODELSCOPE_CACHE": str(tmp / "mscache"),
                "BENCH_AK": AK,
                "BENCH_SK": SK,
                "BENCH_PART_MB": str(args.part_size_mb),
                "BENCH_FILES": str(args.max_parallel_files),
                "BENCH_PARTS": str(args.max_parallel_parts),
                "PYTHONPATH": str(REPO),
            }
            results = {}
            for name, code in (("seeds", SEEDS_SIDE), ("ours", OURS_SIDE)):
                work = tmp / f"work-{name}"
                work.mkdir()
                argv = [sys.executable, "-c", code, "bench/synthetic", str(work), endpoint, "bench"]
                results[name] = _measure(argv, env, work)
        finally:
            hub.stop()
            oss.stop()

    link_s = total / cap
    print(f"model: {total / MB:.0f} MB in {args.shards} shards; caps {args.cap_mb_s:.0f} MB/s")
    print(f"{'side':6} {'wall s':>8} {'link %':>7} {'peak RSS MB':>12} {'peak disk MB':>13}")
    for name, r in results.items():
        print(
            f"{name:6} {r['wall_s']:8.1f} {100 * link_s / r['wall_s']:6.1f}% "
            f"{r['peak_rss'] / MB:12.0f} {r['peak_disk'] / MB:13.1f}"
        )
    ratio = results["seeds"]["wall_s"] / results["ours"]["wall_s"]
    print(f"speed-up ours vs seeds: {ratio:.2f}x (target >= 1.8x)")
    print(json.dumps({"ratio": round(ratio, 3), **{k: v for k, v in results.items()}}))


if __name__ == "__main__":
    main()
