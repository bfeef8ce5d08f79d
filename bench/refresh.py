"""Refresh benchmark: 1 of N shards changed on the hub's `master`, and an unchanged refresh
through a real Prefect server.

In process, side by side, on the sandbox hub + OSS with a synthetic model:
- full re-mirror: the new revision mirrored into an empty prefix (what a refresh without
  incremental copy would move);
- incremental refresh: plan (hub listing vs deployed manifest), server-side copy of the
  unchanged files inside OSS, then the mirror, which moves only the changed shard.
Prints bytes received by OSS and wall time of both, and the ratios; also the time of an
unchanged check (the reads a refresh does when nothing changed).

Through a real server (skip with --no-server): an ephemeral `prefect server start` with a private
PREFECT_HOME, the process work pool prefect.yaml names, `prefect deploy --all` and a `prefect
worker start` whose environment reaches the sandbox hub, OSS and a REAL cluster (sandbox.cluster:
one GPU node, no operators, as a single-GPU Deployment needs none) through a recording proxy in
front of its API server (sandbox.cluster.api_proxy, no faults), which counts the runs' reads and
writes (sandbox.prefect_stack, shared with tests/deployments). The served pod runs the SGLang
stand-in (the engine plays no part in a refresh). The model is mirrored and deployed once by a
`deploy-model` run; then `refresh-model` runs --repeat times with the spec while the hub's
`master` is unchanged. For each run: the flow run's own duration (start_time -> end_time recorded
by the API), the end-to-end wall time from the create_flow_run request to the run reaching its
final state (includes the worker's pickup -- it polls every PREFECT_WORKER_QUERY_SECONDS -- and
the start of the flow-run process), the writes OSS and the cluster's API server saw (must be
none), and the run's "up to date" line.
Target: an unchanged refresh under 10 s against a running server.

    ./scripts/in-netns uv run --no-sync python bench/refresh.py [--shards 8] [--shard-mib 16] \
        [--repeat 3] [--no-server]

The cluster runs only inside the private network namespace scripts/in-netns makes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from llm_rollout.credentials import OssCredentials
from llm_rollout.hub import HubClient, HubSource
from llm_rollout.incremental import copy_unchanged
from llm_rollout.mirror import MirrorOptions, OssTarget, mirror_model
from llm_rollout.mirror.manifest import read_manifest
from llm_rollout.oss import open_bucket
from llm_rollout.refresh import diff_files
from sandbox.cluster.api_proxy import running_proxy
from sandbox.cluster.control_plane import ClusterConfig, start_cluster, stop_cluster
from sandbox.cluster.node_agent import NodeSpec
from sandbox.hub import HubServer
from sandbox.oss import OssServer
from sandbox.prefect_stack import (
    FlowRunTiming,
    PrefectStack,
    deployments_worker,
    flow_run_logs,
    prefect_server,
    run_deployment,
    single_gpu_spec,
)
from sandbox.synthetic import derive_changed_revision, make_synthetic_model

KEY_ID, KEY_SECRET, BUCKET, MODEL = "LTAIbench", "benchSecretValue0000", "bench", "acme/bench"
SERVED_MODEL, SERVICE, NAMESPACE = "acme/bench-served", "bench-refresh", "llm-bench"
TARGET_S = 10.0
WORKER_QUERY_S = 1  # PREFECT_WORKER_QUERY_SECONDS: how often the worker polls for runs
# One node is all a single-GPU Deployment needs; without the operators the cluster starts in
# about a third of the time (tests/real_cluster.py).
CLUSTER = ClusterConfig(
    nodes=(NodeSpec(name="bench-node-0", internal_ip="10.244.254.1", gpus=1),),
    with_kuberay=False,
    with_lws=False,
)


def in_process(args: argparse.Namespace, tmp: Path, hub: HubServer, oss: OssServer) -> None:
    """Full re-mirror vs incremental refresh of 1 changed shard; the unchanged check."""
    creds = OssCredentials(access_key_id=SecretStr(KEY_ID), access_key_secret=SecretStr(KEY_SECRET))
    v1 = tmp / "v1"
    v2 = derive_changed_revision(v1, tmp / "v2", changed_shards=[2], seed=2)
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

    def mirror(revision: str, folder: str) -> None:
        mirror_model(
            HubSource(model_id=MODEL, revision=revision),
            target(folder),
            creds,
            MirrorOptions(checkpoint_dir=tmp / f"ckpt-{folder}"),
            hub=client,
        )

    mirror("v1", "v1")
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
    mirror("v2", "full")
    full_s, full_bytes = time.monotonic() - started, oss.bytes_received

    # Incremental: plan, copy unchanged inside OSS, mirror the rest.
    oss.reset_counters()
    started = time.monotonic()
    listing = client.list_files(HubSource(model_id=MODEL, revision="v2"))
    copies, changed, _ = diff_files(listing, manifest, target("v2").key())
    copy_unchanged(bucket, copies)
    mirror("v2", "v2")
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
    print(f"unchanged check in process (hub listing + manifest read): {unchanged_s:.2f} s")


@dataclass
class UnchangedRun:
    timing: FlowRunTiming
    oss_writes: int
    oss_reads: int
    kube_writes: int
    kube_reads: int
    hub_requests: int
    result_line: str


def _result_line(stack: PrefectStack, run: FlowRunTiming, timeout_s: float = 30) -> str:
    """The run's "up to date" log line: the flow-run process ships its last log lines in the
    background, after the final state is set, so read until it is there (or time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [m for m in flow_run_logs(stack, run.flow_run_id) if "up to date" in m]
        if lines or time.monotonic() > deadline:
            return lines[-1] if lines else f"(no 'up to date' line; state message {run.message!r})"
        # Logs arrive through the API only: a short pause between reads.
        time.sleep(0.25)


def through_server(
    args: argparse.Namespace, tmp: Path, hub: HubServer, oss: OssServer
) -> list[UnchangedRun]:
    """Deploy once through `deploy-model`, then time unchanged `refresh-model` runs."""
    v1 = tmp / "v1"
    hub.add_revision_from_dir(SERVED_MODEL, "v1", v1)  # the first revision: `master`
    size = sum(p.stat().st_size for p in v1.rglob("*") if p.is_file())
    spec = single_gpu_spec(
        name=SERVICE,
        namespace=NAMESPACE,
        model_id=SERVED_MODEL,
        size_bytes=size + 4096,
        oss_endpoint=oss.endpoint,
        oss_region=oss.region,
        bucket=BUCKET,
    )
    home = tmp / "prefect-home"
    home.mkdir()
    runs: list[UnchangedRun] = []
    started = time.monotonic()
    cluster = start_cluster(CLUSTER)
    print(f"real cluster up in {cluster.ready_s['total']:.1f} s", flush=True)
    try:
        with (
            running_proxy(cluster.pki, cluster.api_url) as proxy,
            prefect_server(home) as stack,
        ):
            env = {
                "KUBECONFIG": str(
                    cluster.kubeconfig_for("bench", cluster.pki.admin, server=proxy.url)
                ),
                "MODELSCOPE_ENDPOINT": hub.base_url,
                "OSS_ACCESS_KEY_ID": KEY_ID,
                "OSS_ACCESS_KEY_SECRET": KEY_SECRET,
                "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_S),
                "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            }
            with deployments_worker(stack, env):
                print(
                    f"prefect server {stack.api_url}, process worker on pool llm-rollout: "
                    f"up in {time.monotonic() - started:.1f} s "
                    f"(PREFECT_WORKER_QUERY_SECONDS={WORKER_QUERY_S}, "
                    "PREFECT_WORKER_PREFETCH_SECONDS=1)",
                    flush=True,
                )
                deployed = run_deployment(stack, "deploy-model/deploy-model", {"spec": spec})
                if deployed.state != "COMPLETED":
                    logs = "\n".join(flow_run_logs(stack, deployed.flow_run_id))
                    raise SystemExit(
                        f"deploy-model ended {deployed.state}: {deployed.message}\n{logs}"
                    )
                print(
                    f"deploy-model (mirror {size} bytes + rollout): "
                    f"flow run {deployed.run_s:.1f} s, "
                    f"end to end {deployed.wall_s:.1f} s",
                    flush=True,
                )
                for _ in range(args.repeat):
                    oss.reset_counters()
                    hub.reset_counters()
                    proxy.clear()
                    run = run_deployment(stack, "refresh-model/refresh-model", {"spec": spec})
                    oss_log = list(oss.request_log)
                    kube_log = proxy.records()
                    oss_writes = sum(1 for r in oss_log if r.method not in ("GET", "HEAD"))
                    kube_writes = sum(1 for r in kube_log if r.method not in ("GET", "HEAD"))
                    runs.append(
                        UnchangedRun(
                            timing=run,
                            oss_writes=oss_writes,
                            oss_reads=len(oss_log) - oss_writes,
                            kube_writes=kube_writes,
                            kube_reads=len(kube_log) - kube_writes,
                            hub_requests=len(hub.request_log),
                            result_line=_result_line(stack, run),
                        )
                    )
    finally:
        stop_cluster(cluster)
    return runs


def _s(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def report(runs: list[UnchangedRun]) -> None:
    print()
    print(
        "unchanged refresh-model runs through the server (hub master unchanged)\n"
        "  flow run     = the run's start_time -> end_time recorded by the API (Running -> final)\n"
        "  end to end   = create_flow_run request -> final state seen by the caller (0.1 s polls);"
        "\n                 includes the worker's pickup (it polls every "
        f"{WORKER_QUERY_S} s: PREFECT_WORKER_QUERY_SECONDS={WORKER_QUERY_S}; Prefect's default is"
        " 10 s)\n                 and the start of the flow-run process (interpreter, flow import)"
        "\n  pickup       = Scheduled -> Pending; process start = Pending -> Running"
    )
    print(
        f"{'run':>3}  {'state':10}{'flow run s':>12}{'end to end s':>14}{'pickup s':>10}"
        f"{'proc start s':>14}{'OSS writes':>12}{'OSS reads':>11}{'kube writes':>13}"
        f"{'kube reads':>12}{'hub reqs':>10}"
    )
    for i, r in enumerate(runs, 1):
        t = r.timing
        print(
            f"{i:>3}  {t.state:10}{_s(t.run_s):>12}{t.wall_s:>14.2f}{_s(t.pickup_s):>10}"
            f"{_s(t.process_start_s):>14}{r.oss_writes:>12}{r.oss_reads:>11}{r.kube_writes:>13}"
            f"{r.kube_reads:>12}{r.hub_requests:>10}"
        )
    for i, r in enumerate(runs, 1):
        message = f"; state message {r.timing.message!r}" if r.timing.message else ""
        print(f"run {i}: the flow's last word: {r.result_line!r}{message}")
    completed = all(r.timing.state == "COMPLETED" for r in runs)
    no_writes = all(r.oss_writes == 0 and r.kube_writes == 0 for r in runs)
    up_to_date = all("up to date" in r.result_line for r in runs)
    worst_run = max((r.timing.run_s or float("inf")) for r in runs)
    worst_wall = max(r.timing.wall_s for r in runs)

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print(
        f"verdict flow-run duration: worst {worst_run:.2f} s vs target < {TARGET_S:.0f} s: "
        f"{verdict(worst_run < TARGET_S and completed)}"
    )
    print(
        f"verdict end to end (incl. worker pickup at {WORKER_QUERY_S} s polling + process start):"
        f" worst {worst_wall:.2f} s vs target < {TARGET_S:.0f} s: "
        f"{verdict(worst_wall < TARGET_S and completed)}"
    )
    print(
        f"verdict no writes to OSS or the cluster, every run 'up to date': "
        f"{verdict(no_writes and up_to_date and completed)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="unchanged refresh-model runs")
    parser.add_argument(
        "--no-server", action="store_true", help="skip the runs through a real Prefect server"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-refresh-") as tmp_name:
        tmp = Path(tmp_name)
        make_synthetic_model(
            tmp / "v1", shards=args.shards, shard_size_bytes=args.shard_mib << 20, seed=1
        )
        with (
            HubServer(tmp / "hub") as hub,
            OssServer(tmp / "oss", credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET]) as oss,
        ):
            os.environ["MODELSCOPE_ENDPOINT"] = hub.base_url
            in_process(args, tmp, hub, oss)
            if not args.no_server:
                report(through_server(args, tmp, hub, oss))


if __name__ == "__main__":
    main()
