"""Run a sandbox cluster until Ctrl-C: ``python -m sandbox.kube [--rbg v0.7] [--workdir DIR]``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from sandbox.kube.cluster import ClusterConfig, SandboxCluster


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.kube", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".sandbox-kube"))
    parser.add_argument("--rbg", choices=["v0.6", "v0.7", "none"], default="v0.6")
    parser.add_argument("--model-load-s", type=float, default=0.0)
    args = parser.parse_args()
    config = ClusterConfig(rbg_version=None if args.rbg == "none" else args.rbg)
    if args.model_load_s:
        from dataclasses import replace

        config.timings = replace(config.timings, model_load_s=args.model_load_s)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with SandboxCluster(config, args.workdir) as cluster:
        sys.stdout.write(
            f"API server:  {cluster.url}\nkubeconfig:  {cluster.kubeconfig}\n"
            f"started in:  {cluster.start_seconds:.2f} s  (Ctrl-C to stop)\n"
        )
        sys.stdout.flush()
        done.wait()


if __name__ == "__main__":
    main()
