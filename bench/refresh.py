"""Refresh benchmark: 1 of N shards changed on the hub's `master`.

Side by side, on the sandbox hub + OSS with a synthetic model:
- full re-mirror: the new revision mirrored into an empty prefix (what a refresh without
  incremental copy would move);
- incremental refresh: plan (hub listing vs deployed manifest), server-side copy of the
  unchanged files inside OSS, then the mirror, which moves only the changed shard.
Prints bytes received by OSS and wall time of both, and the ratios; also the time of an
unchanged check (the reads a refresh does when nothing changed).

    uv run python bench/refresh.py [--shards 8] [--shard-mib 16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from llm_rollout.credentials import OssCredentials
from llm_rollout.hub import HubClient, HubSource
from llm_rollout.incremental import copy_unchanged
from llm_rollout.mirror import MirrorOptions, OssTarget, mirror_model
from llm_rollout.mirror.manifest import read_manifest
from llm_rollout.oss import open_bucket
from llm_rollout.refresh import diff_files
from sandbox.hub import HubServer
from sandbox.oss import OssServer
from sandbox.synthetic import derive_changed_revision, make_synthetic_model

KEY_ID, KEY_SECRET, BUCKET, MODEL = "LTAIbench", "benchSecretValue0000", "bench", "acme/bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mib", type=int, default=16)
    args = parser.parse_args()
    creds = OssCredentials(access_key_id=SecretStr(KEY_ID), access_key_secret=SecretStr(KEY_SECRET))
    with tempfile.TemporaryDirectory(prefix="bench-refresh-") as tmp_name:
        tmp = Path(tmp_name)
        v1 = make_synthetic_model(
            tmp / "v1", shards=args.shards, shard_size_bytes=args.shard_mib << 20, seed=1
        )
        v2 = derive_changed_revision(v1, tmp / "v2", changed_shards=[2], seed=2)
        with (
            HubServer(tmp / "hub") as hub,
            OssServer(tmp / "oss", credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET]) as oss,
        ):
            os.environ["MODELSCOPE_ENDPOINT"] = hub.base_url
            hub.add_revision_from_dir(MODEL, "v1", v1)
            hub.add_revision_from_dir(MODEL, "v2", v2)
            client = HubClient(endpoint=hub.base_url)

            def target(folder: str) -> OssTarget:
                return OssTarget(
                    endpoint=oss.endpoint,
                    bucket=BUCKET,
                    region=oss.region,
                    prefix=f"models/{MODEL}/{folder}",
                )

            def options(name: str) -> MirrorOptions:
                return MirrorOptions(checkpoint_dir=tmp / f"ckpt-{name}")

            mirror_model(
                HubSource(model_id=MODEL, revision="v1"),
                target("v1"),
                creds,
                options("v1"),
                hub=client,
            )
            bucket = open_bucket(target("v1"), creds)

            # Unchanged check: hub listing + manifest read (what an up-to-date refresh reads).
            started = time.monotonic()
            listing_v1 = client.list_files(HubSource(model_id=MODEL, revision="v1"))
            manifest = read_manifest(bucket, target("v1"))
            assert manifest is not None and manifest.content_digest == listing_v1.content_digest
            unchanged_s = time.monotonic() - started

            # Baseline: full re-mirror of v2 into an empty prefix.
            oss.reset_counters()
            started = time.monotonic()
            mirror_model(
                HubSource(model_id=MODEL, revision="v2"),
                target("full"),
                creds,
                options("full"),
                hub=client,
            )
            full_s, full_bytes = time.monotonic() - started, oss.bytes_received

            # Incremental: plan, copy unchanged inside OSS, mirror the rest.
            oss.reset_counters()
            started = time.monotonic()
            listing = client.list_files(HubSource(model_id=MODEL, revision="v2"))
            copies, changed, _ = diff_files(listing, manifest, target("v2").key())
            copy_unchanged(bucket, copies)
            mirror_model(
                HubSource(model_id=MODEL, revision="v2"),
                target("v2"),
                creds,
                options("v2"),
                hub=client,
            )
            inc_s, inc_bytes = time.monotonic() - started, oss.bytes_received
            changed_bytes = sum(f.size for f in changed)

    print(
        f"model: {args.shards} shards of {args.shard_mib} MiB, 1 shard changed "
        f"({changed_bytes} bytes)"
    )
    print(f"{'':24}{'bytes to OSS':>16}{'wall s':>10}")
    print(f"{'full re-mirror':24}{full_bytes:>16}{full_s:>10.2f}")
    print(f"{'incremental refresh':24}{inc_bytes:>16}{inc_s:>10.2f}")
    print(f"ratio incremental/full: bytes {inc_bytes / full_bytes:.4f}, time {inc_s / full_s:.3f}")
    print(f"incremental bytes / changed bytes: {inc_bytes / changed_bytes:.4f} (target <= 1.01)")
    print(f"unchanged check (hub listing + manifest read): {unchanged_s:.2f} s")


if __name__ == "__main__":
    main()
