"""Counted reliability trials (issue 8): faults survived, bad input refused, secrets kept.

The transfer trials run against the hub and OSS stand-ins on 127.0.0.1 with the real client
libraries (modelscope/httpx for the hub, oss2 for OSS). Everything that deploys runs on a REAL
cluster (`sandbox/cluster/`: kube-apiserver, etcd, controller-manager, scheduler, CoreDNS,
kube-proxy and the node agent running the pods' real command lines), which the bench starts
itself and which therefore needs the private network namespace:

    ./scripts/in-netns uv run --no-sync python bench/reliability.py --trials 1

Each trial class is a function taking its world and a seeded `random.Random`;
`tests/reliability/` runs a few trials of the same functions on the test session's cluster,
this script runs the full counts and prints the table:

    fault class | trials | survived | bytes re-sent (per fault) | leaks found

    uv run python bench/reliability.py --only transfer  # one group: transfer, kube, workload,
                                                        # input, secrets, concurrency,
                                                        # hostile

Transfer trials (model: 4 shards x 2 MiB plus small files, 256 KiB parts):
- hub drop: the hub cuts the connection of one GET of a random shard after a random number of
  body bytes; the mirror resumes with Range.
- OSS 503 / stall / reset: one random part of a random shard answers 503 (a random number of
  times, sometimes beyond the retry budget), stalls for a random time around the client's read
  timeout, or has its connection reset after a random number of body bytes.
- kill -9: `llm-rollout sync SPEC` in a subprocess is SIGKILLed once a random number of parts
  reached OSS (0 = during its first requests), then run again to completion.
After the re-runs every trial must end with `is_mirrored` true and every object byte-for-byte
equal (sha256 of the bytes the OSS stand-in stores, CRC64 of the HEAD against the manifest).
Bytes re-sent are what OSS received for the model's objects beyond the model size (from the
OSS request log) and what the hub served for its files beyond the model size (hub log).

Deploy trials (input, kube, workload, secrets, concurrency, hostile) share one real cluster of
four 8-GPU nodes (node-lifecycle timings shortened by flags), hub, OSS and an ephemeral Prefect
server. The product reaches the API server only through the fault-injecting proxy
(`sandbox/cluster/api_proxy.py`), which keeps the admin certificate's identity (request-header
authentication) and records each request: "Kubernetes writes" are its POST/PUT/PATCH/DELETE
records. Each release is one pod of the SGLang stand-in on one GPU (`TRIAL_SERVING`: what the
trials test does not depend on the engine); a new release of a service is rendered by giving it
a served model name of its own, which the stand-in returns in every answer. Each group deploys
its own service (PersistentVolumes are cluster-scoped and named after the service):
- kube API: one deploy of a new release per trial under one fault class, with seeded counts,
  methods and paths: 429 + Retry-After, HTTP 500, connection reset, a watch cut mid-stream, a
  410 Gone ERROR event inside a watch. Survived: the run promotes the new release, the stable
  Service routes to it and its workload is ready, and the fault fired.
- workload: release N+1 fails for a reason a real node gives it (an image tag no registry
  serves: ImagePullBackOff; a flag the server refuses: CrashLoopBackOff; a claim the CSI
  driver cannot publish: FailedMount; more CPU than any node: Unschedulable) or loses its node
  once a pod is bound (the node agent stops that node's heartbeats and the real
  node-lifecycle controller judges it; every other node cordoned but a spare) while a thread
  sends chat completions through the stable Service to the real pod of release N. Survived: a
  failure naming the reason within 25 s (NodeLost and the lost Node for a lost node), "keeps
  serving", the Service still on release N and ready -- and zero failed requests. OOMKilled
  is not a class here: the spec's memory is whole GiB and the SGLang stand-in uses far less,
  so no release of it exceeds its limit; tests/real/test_readiness_classes.py makes one (a
  Deployment over a 64Mi limit in the node agent's memory cgroup). On the real
  cluster the lost node's pod stays Terminating (nobody confirms its deletion,
  tests/cluster/test_node_loss.py); the rollback does not wait for it but names it, its Node
  and what frees it (llm_rollout/release/removal.py unconfirmable_deletion, issue 16 B4).
- workload, blue-green promotion: release A serves; with the same traffic running, release B
  passes readiness and smoke, takes the stable Service, bakes 3 s and A is removed. Survived:
  B serves and is ready, A's objects and pods are gone, zero failed requests, the answers are
  A's then B's (never A after the first B) and B answered for at least the bake window.
- secrets: deploy (under every API fault), plan, redeploy, refresh with the fake keys; the CLI
  output, Python logging, each run's Prefect logs/artifacts/events/parameters/state, plan files,
  cluster objects (not Secrets) and OSS metadata are scanned. `sync` subprocess output is
  scanned in the kill -9 transfer trials.
- concurrency: two deploys of one service started together (a barrier); the Lease's holder
  changes are watched and each run's task runs after its read-only preflight must not overlap
  the other's; the Service ends on the release of the run that held the lease last.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from llm_rollout.credentials import OssCredentials  # noqa: E402
from llm_rollout.hub import HubClient, HubSource  # noqa: E402
from llm_rollout.mirror import (  # noqa: E402
    MirrorOptions,
    MirrorTransientError,
    OssTarget,
    is_mirrored,
    mirror_model,
    read_manifest,
)
from llm_rollout.oss import crc64, head_crc64, open_bucket  # noqa: E402
from llm_rollout.vocabulary import RELEASE_LABEL  # noqa: E402
from sandbox.cluster.api_proxy import (  # noqa: E402
    ApiFaultProxy,
    FaultAction,
    FaultPlan,
    FaultRule,
    ProxyRecord,
    running_proxy,
)
from sandbox.cluster.control_plane import (  # noqa: E402
    Cluster,
    ClusterConfig,
    start_cluster,
    stop_cluster,
)
from sandbox.cluster.node_agent import NodeSpec, heartbeats_stopped_file  # noqa: E402
from sandbox.cluster.waits import wait_for  # noqa: E402
from sandbox.http import RequestLog  # noqa: E402
from sandbox.hub import HubServer  # noqa: E402
from sandbox.oss import OssRequest, OssServer  # noqa: E402
from sandbox.sync_cli import sync_argv, write_sync_spec  # noqa: E402
from sandbox.synthetic import make_synthetic_model  # noqa: E402
from sandbox.tiny_spec import tiny_model_spec  # noqa: E402
from sandbox.vllm.tiny_model import TinyModelInfo, generate_tiny_model  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
PART = 256 * KiB
# Distinctive fake keys: any appearance of these strings outside the OSS stand-in is a leak.
KEY_ID = "LTAIrelFAKEid7Q3xK9"
KEY_SECRET = "relFAKEsecret-Zq81vW0p-DO-NOT-PRINT"
BUCKET = "models"
MAX_RUNS = 5  # a trial may take this many mirror runs to finish (faults are count-limited)


# -- the table ----------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the report."""

    fault_class: str
    trials: int = 0
    survived: int = 0
    resent: str = "-"
    leaks: int | None = None
    failures: list[str] = field(default_factory=list)
    notes: str = ""


def format_table(rows: list[Row]) -> str:
    """The report table as plain text."""
    head = ("fault class", "trials", "survived", "bytes re-sent (per fault)", "leaks found")
    body = [
        (
            r.fault_class,
            str(r.trials),
            str(r.survived),
            r.resent,
            "-" if r.leaks is None else str(r.leaks),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))

    out = [line(head), "-+-".join("-" * w for w in widths), *(line(b) for b in body)]
    for r in rows:
        if r.notes:
            out.append(f"  {r.fault_class}: {r.notes}")
        for failure in r.failures:
            out.append(f"  FAILED {r.fault_class}: {failure}")
    return "\n".join(out)


# -- transfer trials ----------------------------------------------------------------------------
class WatchedLog(RequestLog[OssRequest]):
    """The OSS request log with a condition to wait on (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def append(self, record: OssRequest) -> None:
        super().append(record)
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[list[OssRequest]], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.snapshot()), timeout)


@dataclass
class TransferLab:
    """A hub and an OSS stand-in in this process, one synthetic model, fresh prefixes."""

    hub: HubServer
    oss: OssServer
    model_dir: Path
    work: Path
    log: WatchedLog
    shards: list[str]
    credentials: OssCredentials
    counter: Iterator[int] = field(default_factory=itertools.count)

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.model_dir.iterdir() if p.is_file())

    def new_case(self, label: str) -> TransferCase:
        n = next(self.counter)
        model_id = f"rel/{label}-{n}"
        self.hub.add_revision_from_dir(model_id, "v1", self.model_dir)
        self.hub.faults.clear()
        self.oss.faults.clear()
        work = self.work / f"{label}-{n}"
        work.mkdir(parents=True)
        return TransferCase(
            lab=self,
            source=HubSource(model_id=model_id, revision="v1"),
            target=OssTarget(
                endpoint=self.oss.endpoint,
                bucket=BUCKET,
                region=self.oss.region,
                prefix=f"models/{model_id}/v1",
            ),
            work=work,
            received_at_start=self.oss.bytes_received,
        )


@contextmanager
def transfer_lab(
    root: Path, *, shards: int = 4, shard_bytes: int = 2 * MiB, link_bytes_per_s: int | None = None
) -> Iterator[TransferLab]:
    """Start the hub and OSS stand-ins and publish a synthetic model.

    `link_bytes_per_s` caps each server's aggregate bandwidth; uncapped, a part's body takes
    about a millisecond on loopback, so a kill almost never lands in the middle of one.
    """
    with ExitStack() as stack:
        hub = stack.enter_context(
            HubServer(root / "hub", aggregate_bandwidth_bytes_per_s=link_bytes_per_s)
        )
        oss = stack.enter_context(
            OssServer(
                root / "oss",
                credentials={KEY_ID: KEY_SECRET},
                buckets=[BUCKET],
                aggregate_bandwidth_bytes_per_s=link_bytes_per_s,
            )
        )
        log = WatchedLog()
        oss.request_log = log
        model_dir = make_synthetic_model(
            root / "model", shards=shards, shard_size_bytes=shard_bytes, seed=8
        )
        names = sorted(p.name for p in model_dir.glob("*.safetensors"))
        yield TransferLab(
            hub=hub,
            oss=oss,
            model_dir=model_dir,
            work=root / "trials",
            log=log,
            shards=names,
            credentials=OssCredentials(
                access_key_id=SecretStr(KEY_ID), access_key_secret=SecretStr(KEY_SECRET)
            ),
        )


@dataclass
class TransferCase:
    lab: TransferLab
    source: HubSource
    target: OssTarget
    work: Path
    received_at_start: int

    def options(self) -> MirrorOptions:
        return MirrorOptions(
            part_size_mb=PART / MiB,
            max_parallel_files=2,
            max_parallel_parts=3,
            retry_attempts=3,
            retry_base_delay_s=0.01,
            request_timeout_s=1.0,
            checkpoint_dir=self.work / "checkpoints",
        )

    def client(self) -> HubClient:
        return HubClient(endpoint=self.lab.hub.base_url)

    def mirror_until_done(self) -> int:
        """Run the mirror in this process until it completes; return the number of runs."""
        for run in range(1, MAX_RUNS + 1):
            try:
                mirror_model(
                    self.source,
                    self.target,
                    self.lab.credentials,
                    self.options(),
                    hub=self.client(),
                )
            except MirrorTransientError:
                continue
            return run
        raise AssertionError(f"mirror still incomplete after {MAX_RUNS} runs")

    def verify(self) -> str:
        """'' when complete and byte-for-byte equal; else what is wrong."""
        lab = self.lab
        listing = self.client().list_files(self.source)
        status = is_mirrored(self.target, lab.credentials, listing)
        if not status.complete:
            return f"is_mirrored: {status.reason}"
        bucket = open_bucket(self.target, lab.credentials)
        manifest = read_manifest(bucket, self.target)
        if manifest is None:
            return "no manifest"
        records = {r.path: r for r in manifest.files}
        for path in sorted(p for p in lab.model_dir.iterdir() if p.is_file()):
            key = self.target.key(path.name)
            stored = b"".join(lab.oss.open_object(BUCKET, key))
            local = path.read_bytes()
            if hashlib.sha256(stored).digest() != hashlib.sha256(local).digest():
                return f"{path.name}: stored bytes differ"
            head = head_crc64(bucket.head_object(key).headers)
            expected = str(crc64(local))
            if head is None or str(head) != expected or records[path.name].crc64 != expected:
                return f"{path.name}: CRC64 differs"
        return ""

    def resent(self) -> tuple[int, int]:
        """(bytes OSS received beyond the model size, bytes the hub served beyond it).

        OSS: every body byte the stand-in read during the trial (its byte counter, which also
        sees requests the client abandoned), less the logged bodies that are not file data
        (the manifest, CompleteMultipartUpload XML), less the model size.
        """
        lab = self.lab
        lab.oss.wait_idle(30)
        lab.hub.wait_idle(30)
        prefix = self.target.key() + "/"
        data_ops = ("UploadPart", "PutObject")
        not_data = sum(
            r.bytes_in
            for r in lab.log.snapshot()
            if r.key.startswith(prefix)
            and (r.op not in data_ops or r.key.startswith(prefix + ".llm-rollout/"))
        )
        received = lab.oss.bytes_received - self.received_at_start
        hub_out = sum(
            e.bytes_sent
            for e in lab.hub.request_log
            if "FilePath" in e.query and f"/{self.source.model_id}/" in e.path + "/"
        )
        return received - not_data - lab.total_bytes, hub_out - lab.total_bytes

    def parts_done(self, records: list[OssRequest]) -> int:
        prefix = self.target.key() + "/"
        return sum(
            1
            for r in records
            if r.op == "UploadPart" and r.status == 200 and r.key.startswith(prefix)
        )

    def touched(self, records: list[OssRequest]) -> bool:
        prefix = self.target.key()
        return any(r.key.startswith(prefix) for r in records)


@dataclass
class TransferTrial:
    """Outcome of one transfer trial."""

    survived: bool
    faults: int
    oss_resent: int
    hub_resent: int
    runs: int
    detail: str = ""
    leaks: int = 0  # places (subprocess stdout/stderr) where the fake keys appeared


def _finish(case: TransferCase, faults: int, runs: int, detail: str = "") -> TransferTrial:
    problem = case.verify()
    oss_resent, hub_resent = case.resent()
    return TransferTrial(
        survived=not problem,
        faults=faults,
        oss_resent=oss_resent,
        hub_resent=hub_resent,
        runs=runs,
        detail=problem or detail,
    )


def trial_hub_drop(lab: TransferLab, rng: random.Random) -> TransferTrial:
    """The hub cuts one GET of a random shard after a random number of body bytes."""
    case = lab.new_case("hubdrop")
    shard = rng.choice(lab.shards)
    offset = rng.randrange(1, PART)
    lab.hub.faults.drop_after_bytes(shard, offset, model_id=case.source.model_id)
    runs = case.mirror_until_done()
    return _finish(case, 1, runs, f"{shard} cut after {offset} B")


def trial_oss_fault(lab: TransferLab, rng: random.Random, kind: str) -> TransferTrial:
    """One random part of a random shard: 503 (1-5 times), stall, or connection reset."""
    case = lab.new_case(f"oss{kind}")
    shard = rng.choice(lab.shards)
    key = case.target.key(shard)
    parts = -(-(lab.model_dir / shard).stat().st_size // PART)
    part = rng.randint(1, parts)
    if kind == "503":
        times = rng.randint(1, 5)
        lab.oss.faults.fail_parts([part], times=times, status=503, key=key)
        detail = f"{shard} part {part}: 503 x{times}"
    elif kind == "stall":
        seconds = round(rng.uniform(0.3, 2.5), 2)  # the client's read timeout is 1 s
        lab.oss.faults.stall("UploadPart", seconds, key=key, times=1)
        detail = f"{shard}: first part stalls {seconds}s"
    elif kind == "reset":
        after = rng.randrange(0, PART)
        lab.oss.faults.reset("UploadPart", key=key, times=1, after_bytes=after)
        detail = f"{shard}: first part reset after {after} B"
    else:
        raise ValueError(kind)
    runs = case.mirror_until_done()
    fired = lab.oss.faults.fired()
    return _finish(case, fired, runs, detail)


def _sync_argv(spec: Path, checkpoints: Path) -> list[str]:
    return sync_argv(
        spec,
        *("--part-size-mb", str(PART / MiB), "--max-parallel-files", "2"),
        *("--max-parallel-parts", "3", "--checkpoint-dir", str(checkpoints), "--no-progress"),
    )


def write_case_spec(case: TransferCase, path: Path) -> Path:
    """A valid spec (the single-GPU example) whose model is this case's hub revision."""
    lab = case.lab
    return write_sync_spec(
        path,
        model_id=case.source.model_id,
        revision="v1",
        size_bytes=lab.total_bytes,
        bucket=BUCKET,
        endpoint=lab.oss.endpoint,
        region=lab.oss.region,
    )


def sync_env(lab: TransferLab, home: Path) -> dict[str, str]:
    """Environment of a `llm-rollout sync` subprocess: sandbox endpoints and the fake keys."""
    return {
        **os.environ,
        "MODELSCOPE_ENDPOINT": lab.hub.base_url,
        "MODELSCOPE_CACHE": str(home / "ms-cache"),
        "OSS_ACCESS_KEY_ID": KEY_ID,
        "OSS_ACCESS_KEY_SECRET": KEY_SECRET,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def trial_kill9(lab: TransferLab, rng: random.Random) -> TransferTrial:
    """SIGKILL `llm-rollout sync` once a random number of parts reached OSS; run it again."""
    case = lab.new_case("kill9")
    spec = write_case_spec(case, case.work / "spec.yaml")
    argv = _sync_argv(spec, case.work / "checkpoints")
    env = sync_env(lab, case.work)
    total_parts = sum(-(-(lab.model_dir / s).stat().st_size // PART) for s in lab.shards)
    kill_at = rng.randrange(0, total_parts)
    with subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:

        def reached(records: list[OssRequest]) -> bool:
            if proc.poll() is not None:
                return True
            if kill_at == 0:
                return case.touched(records)
            return case.parts_done(records) >= kill_at

        lab.log.wait_for(reached, timeout=120)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    # The sync subprocess had the keys in its environment: its output must not show them.
    outputs = {"killed sync stdout": out.decode(errors="replace")}
    outputs["killed sync stderr"] = err.decode(errors="replace")
    runs = 1
    detail = f"killed after {kill_at} parts" if killed else "finished before the kill"
    for _ in range(MAX_RUNS):
        runs += 1
        done = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        outputs[f"re-run {runs} output"] = done.stdout + done.stderr
        if done.returncode == 0:
            break
        if done.returncode != 3:
            return TransferTrial(False, 1, 0, 0, runs, f"re-run exit {done.returncode}")
    result = _finish(case, 1 if killed else 0, runs, detail)
    result.leaks = len(scan_for_keys(outputs, (KEY_SECRET, KEY_ID)))
    return result


@dataclass
class TransferRowSpec:
    name: str
    run: Callable[[TransferLab, random.Random], TransferTrial]


TRANSFER_CLASSES = [
    TransferRowSpec("transfer: hub connection dropped", trial_hub_drop),
    TransferRowSpec("transfer: OSS 503 on a part", lambda lab, r: trial_oss_fault(lab, r, "503")),
    TransferRowSpec(
        "transfer: OSS stall/timeout on a part", lambda lab, r: trial_oss_fault(lab, r, "stall")
    ),
    TransferRowSpec(
        "transfer: OSS connection reset on a part",
        lambda lab, r: trial_oss_fault(lab, r, "reset"),
    ),
    TransferRowSpec("transfer: kill -9 of sync", trial_kill9),
]


def run_transfer_class(
    lab: TransferLab, spec: TransferRowSpec, trials: int, seed: int
) -> tuple[Row, list[TransferTrial]]:
    """`trials` seeded trials of one transfer fault class, summarised as a table row."""
    row = Row(spec.name)
    results: list[TransferTrial] = []
    for i in range(trials):
        rng = random.Random(f"{spec.name}:{seed}:{i}")
        try:
            result = spec.run(lab, rng)
        except (AssertionError, OSError, subprocess.SubprocessError, RuntimeError) as exc:
            result = TransferTrial(False, 0, 0, 0, 0, f"{type(exc).__name__}: {exc}")
        results.append(result)
        row.trials += 1
        if result.survived:
            row.survived += 1
        else:
            row.failures.append(f"trial {i}: {result.detail}")
    faults = sum(r.faults for r in results)
    oss = sum(max(0, r.oss_resent) for r in results)
    hub = sum(max(0, r.hub_resent) for r in results)
    worst = max((r.oss_resent / max(1, r.faults) for r in results), default=0)
    per = f"{oss / faults / KiB:.0f} KiB" if faults else "n/a"
    row.resent = (
        f"OSS {oss / MiB:.2f} MiB ({per}/fault, worst {worst / PART:.2f} part), "
        f"hub {hub / MiB:.2f} MiB"
    )
    runs = sum(r.runs for r in results)
    row.notes = f"{faults} faults fired, {runs} runs in all; part = {PART // KiB} KiB"
    if spec.run is trial_kill9:
        row.leaks = sum(r.leaks for r in results)
        row.notes += "; keys scanned in every sync subprocess's stdout/stderr"
    return row, results


# -- bad input ----------------------------------------------------------------------------------
Mutation = Callable[[dict[str, Any]], None]


def _set(dotted: str, value: object) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def _drop_env_creds_then(dotted: str, value: object) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["storage"]["credentials"] = {dotted: value}

    return mutate


ANSI = "\x1b]0;owned\x07\x1b[2J"
# (label, field the refusal must name, mutation of a valid spec)
HOSTILE_SPECS: list[tuple[str, str, Mutation]] = [
    ("name: wrong type (int)", "name", _set("name", 12345)),
    ("name: list", "name", _set("name", ["a", "b"])),
    ("name: uppercase", "name", _set("name", "Qwen3")),
    ("name: shell ';'", "name", _set("name", "q; rm -rf /")),
    ("name: $(...)", "name", _set("name", "$(reboot)")),
    ("name: backticks", "name", _set("name", "`id`")),
    ("name: newline + YAML", "name", _set("name", "a\nkind: ClusterRoleBinding")),
    ("name: JSON injection", "name", _set("name", '{"metadata":{"name":"x"}}')),
    ("name: oversized", "name", _set("name", "a" * 5000)),
    ("namespace: '..'", "namespace", _set("namespace", "../kube-system")),
    ("namespace: YAML doc break", "namespace", _set("namespace", "ns\n---\nkind: Pod")),
    ("unknown top-level field", "hostNetwork", _set("hostNetwork", True)),
    ("unknown nested field", "serving.privileged", _set("serving.privileged", True)),
    ("extra_args: '; curl|sh'", "serving.extra_args", _set("serving.extra_args", ["x; curl e|sh"])),
    ("extra_args: $(...)", "serving.extra_args", _set("serving.extra_args", ["--a=$(id)"])),
    ("extra_args: backticks", "serving.extra_args", _set("serving.extra_args", ["`id`"])),
    ("extra_args: newline", "serving.extra_args", _set("serving.extra_args", ["--a\n--b"])),
    ("extra_args: quote escape", "serving.extra_args", _set("serving.extra_args", ["x' && rm '"])),
    ("extra_args: too many", "serving.extra_args", _set("serving.extra_args", ["--x"] * 65)),
    ("extra_args: string not list", "serving.extra_args", _set("serving.extra_args", "--x 1")),
    ("image: shell", "serving.image", _set("serving.image", "vllm:1; rm -rf /")),
    ("image: YAML injection", "serving.image", _set("serving.image", "i\n---\nkind: Pod")),
    (
        "served_model_name: pipe",
        "serving.served_model_name",
        _set("serving.served_model_name", "a b|c"),
    ),
    (
        "served_model_name: $(...)",
        "serving.served_model_name",
        _set("serving.served_model_name", "$(whoami)"),
    ),
    ("storage.prefix: '..'", "storage.prefix", _set("storage.prefix", "../../etc")),
    ("storage.prefix: absolute", "storage.prefix", _set("storage.prefix", "/models")),
    ("storage.prefix: $(...)", "storage.prefix", _set("storage.prefix", "models/$(id)")),
    ("storage.prefix: quote+semicolon", "storage.prefix", _set("storage.prefix", "m';x")),
    ("storage.prefix: oversized", "storage.prefix", _set("storage.prefix", "m/" * 400)),
    ("storage.bucket: uppercase", "storage.bucket", _set("storage.bucket", "Bad_Bucket")),
    (
        "storage.endpoint: path+query",
        "storage.endpoint",
        _set("storage.endpoint", "http://evil.example/x?y=1"),
    ),
    ("storage.endpoint: file://", "storage.endpoint", _set("storage.endpoint", "file:///etc")),
    (
        "model.oss_uri: '..'",
        "model.oss_uri",
        lambda d: d.__setitem__("model", {"oss_uri": "oss://bkt-a/m/../../x", "size_bytes": 1}),
    ),
    (
        "model_id: '..' path",
        "model.modelscope.model_id",
        _set("model.modelscope.model_id", "../../etc/passwd"),
    ),
    ("model_id: shell", "model.modelscope.model_id", _set("model.modelscope.model_id", "a/b;rm")),
    ("revision: '..'", "model.modelscope.revision", _set("model.modelscope.revision", "..")),
    (
        "revision: newline",
        "model.modelscope.revision",
        _set("model.modelscope.revision", "v1\nmaster"),
    ),
    ("size_bytes: string", "model.size_bytes", _set("model.size_bytes", "16GB")),
    ("size_bytes: negative", "model.size_bytes", _set("model.size_bytes", -1)),
    ("size_bytes: oversized", "model.size_bytes", _set("model.size_bytes", 10**30)),
    ("mount_path: '..'", "volume.mount_path", _set("volume.mount_path", "/models/../etc")),
    ("other_opts: ';'", "volume.other_opts", _set("volume.other_opts", "-o allow_other; rm")),
    ("other_opts: newline", "volume.other_opts", _set("volume.other_opts", "-o a\n-o b")),
    ("pv_name: '..'", "volume.pv_name", _set("volume.pv_name", "x/../y")),
    (
        "api_key: secret value inline",
        "serving.api_key",
        _set("serving.api_key", "sk-live-0123456789abcdef"),
    ),
    (
        "credentials: key pair inline",
        "storage.credentials.access_key_secret",
        _set("storage.credentials", {"access_key_id": KEY_ID, "access_key_secret": KEY_SECRET}),
    ),
    (
        "credentials: AccessKey ID as env name",
        "storage.credentials.access_key_id_env",
        _set("storage.credentials.access_key_id_env", "LTAI5tRelFakeIdQ9xK2mP7"),
    ),
    (
        "credentials: secret as env name",
        "storage.credentials.access_key_secret_env",
        _set("storage.credentials.access_key_secret_env", "Zq81vW0pAbCdEf1234567890XyZabc"),
    ),
    (
        "smoke message: terminal escapes",
        "smoke.messages[0].content",
        _set("smoke.messages", [{"role": "user", "content": "hi" + ANSI}]),
    ),
    (
        "smoke message: NUL byte",
        "smoke.messages[0].content",
        _set("smoke.messages", [{"role": "user", "content": "a\x00b"}]),
    ),
    (
        "smoke message: oversized",
        "smoke.messages[0].content",
        _set("smoke.messages", [{"role": "user", "content": "x" * 20_000}]),
    ),
    (
        "smoke message: role injection",
        "smoke.messages[0].role",
        _set("smoke.messages", [{"role": "tool", "content": "x"}]),
    ),
    (
        "smoke expect: terminal escapes",
        "smoke.expect.equals",
        _set("smoke.expect", {"equals": "ok" + ANSI}),
    ),
    ("rollout: huge timeout", "rollout.ready_timeout_s", _set("rollout.ready_timeout_s", 10**9)),
    ("rollout: strategy shell", "rollout.strategy", _set("rollout.strategy", "rm -rf")),
    ("YAML alias bomb", "name", lambda d: d.__setitem__("name", [[["a"] * 9] * 9] * 9)),
    ("not a mapping", "spec", lambda d: d.clear()),
]

# (label, text the refusal must contain, CLI argv; "{spec}" and "{out}" are filled in)
HOSTILE_PARAMS: list[tuple[str, str, list[str]]] = [
    ("sync --part-size-mb negative", "--part-size-mb", ["sync", "{spec}", "--part-size-mb", "-1"]),
    ("sync --mode injection", "--mode", ["sync", "{spec}", "--mode", "staged;rm -rf /"]),
    (
        "sync --max-parallel-parts huge",
        "--max-parallel-parts",
        ["sync", "{spec}", "--max-parallel-parts", "100000"],
    ),
    ("plan --release '..'", "release", ["plan", "{spec}", "--out", "{out}", "--release", "../x"]),
    (
        "plan --release $(...)",
        "release",
        ["plan", "{spec}", "--out", "{out}", "--release", "$(id)"],
    ),
    (
        "plan --rbg-flavor unknown",
        "--rbg-flavor",
        ["plan", "{spec}", "--out", "{out}", "--rbg-flavor", "v9;x"],
    ),
]


# The serving shape of every deploy trial: the tensor-parallel example's spec as an SGLang
# Deployment on one GPU, so a release is one pod of the SGLang stand-in (instant; what the
# trials test does not depend on the engine) and several services fit on the nodes at once.
TRIAL_SERVING: dict[str, Any] = {
    "engine": "sglang",
    "shape": "single-gpu",
    "image": "lmsysorg/sglang:v0.4.10.post2-cu126",
    "tp": 1,
    "gpus_per_node": 1,
    "extra_args": [],
    "resources": {"cpu": "1", "memory_gib": 2},
    "shm_size_gib": 1,
    # The stand-in answers /health within about a second of its start; probing each second
    # (not the default 10 s) lets a pod be Ready in seconds.
    "probes": {"period_s": 1, "timeout_s": 5},
}
# What the product sends that changes something (the API server's verbs for writes).
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class InputWorld:
    """The sandbox that a wrongly accepted input would write to: the hub and OSS stand-ins and
    a real cluster, which the product reaches only through the fault-injecting proxy
    (`sandbox/cluster/api_proxy.py`, keeping the admin certificate's identity). The proxy's
    records are the product's Kubernetes requests; its plan injects the API faults."""

    hub: HubServer
    oss: OssServer
    base: dict[str, Any]  # what the input checks mutate (vLLM, `base_spec`)
    trial: dict[str, Any]  # what the deploy trials deploy (SGLang stand-in, `trial_spec`)
    work: Path
    cluster: Cluster
    proxy: ApiFaultProxy
    kubeconfig: Path  # the product's: the admin certificate, through the proxy
    tiny: TinyModelInfo

    @property
    def faults(self) -> FaultPlan:
        return self.proxy.plan

    def product_writes(self) -> list[ProxyRecord]:
        return [r for r in self.proxy.records() if r.method in WRITE_METHODS]

    def counts(self) -> tuple[int, int, int]:
        self.hub.wait_idle(10)
        self.oss.wait_idle(10)
        return len(self.hub.request_log), len(self.oss.request_log), len(self.product_writes())


def _cli(argv: list[str]) -> tuple[int, str]:
    from typer.testing import CliRunner

    from llm_rollout.cli import app

    result = CliRunner().invoke(app, argv)
    return result.exit_code, result.output


def check_hostile_spec(world: InputWorld, label: str, field_name: str, mutate: Mutation) -> str:
    """'' when every entry point refuses the spec naming `field_name` before any write."""

    from llm_rollout.spec import InvalidSpecError, load_spec

    data = copy.deepcopy(world.base)
    mutate(data)
    case = world.work / f"spec-{abs(hash(label)) % 10**8}"
    case.mkdir(parents=True, exist_ok=True)
    spec_path = case / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data, allow_unicode=False) if data else "[]\n")
    before = world.counts()
    problems: list[str] = []
    try:
        load_spec(spec_path)
        problems.append("load_spec accepted it")
    except InvalidSpecError as exc:
        fields = [f for f, _ in exc.problems]
        if not any(f == field_name or f.startswith(field_name) for f in fields):
            problems.append(f"load_spec named {fields}, not {field_name}")
        if not exc.problems[0][1]:
            problems.append("empty message")
    out = case / "plan-out"
    commands = {
        "plan": ["plan", str(spec_path), "--out", str(out)],
        "sync": ["sync", str(spec_path), "--no-progress", "--checkpoint-dir", str(case / "ck")],
        "deploy": ["deploy", str(spec_path)],
    }
    for name, argv in commands.items():
        code, output = _cli(argv)
        if code != 2:
            problems.append(f"{name} exit {code}")
        elif field_name not in output:
            problems.append(f"{name} message does not name {field_name}: {output.strip()[:120]}")
        if KEY_SECRET in output:
            problems.append(f"{name} printed the secret")
    if out.exists():
        problems.append("plan wrote files")
    after = world.counts()
    if after != before:
        problems.append(f"side effect: (hub, oss, kube writes) {before} -> {after}")
    return "; ".join(problems)


def check_hostile_param(world: InputWorld, label: str, expected: str, argv: list[str]) -> str:
    """'' when the command refuses the parameter (exit 2) naming it, before any write."""
    case = world.work / f"param-{abs(hash(label)) % 10**8}"
    case.mkdir(parents=True, exist_ok=True)
    spec_path = case / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(world.base))
    out = case / "plan-out"
    filled = [a.replace("{spec}", str(spec_path)).replace("{out}", str(out)) for a in argv]
    before = world.counts()
    code, output = _cli(filled)
    problems = []
    if code != 2:
        problems.append(f"exit {code}: {output.strip()[:160]}")
    elif expected not in output:
        problems.append(f"message does not name {expected}: {output.strip()[:160]}")
    if out.exists():
        problems.append("plan wrote files")
    after = world.counts()
    if after != before:
        problems.append(f"side effect: (hub, oss, kube writes) {before} -> {after}")
    return "; ".join(problems)


def run_bad_input_checks(world: InputWorld) -> Row:
    row = Row("bad input: hostile specs + parameters (refused before any write)")
    for label, field_name, mutate in HOSTILE_SPECS:
        row.trials += 1
        problem = check_hostile_spec(world, label, field_name, mutate)
        if problem:
            row.failures.append(f"{label}: {problem}")
        else:
            row.survived += 1
    for label, expected, argv in HOSTILE_PARAMS:
        row.trials += 1
        problem = check_hostile_param(world, label, expected, argv)
        if problem:
            row.failures.append(f"{label}: {problem}")
        else:
            row.survived += 1
    row.notes = (
        f"{len(HOSTILE_SPECS)} specs x (load_spec, plan, sync, deploy) + "
        f"{len(HOSTILE_PARAMS)} CLI parameters; hub/OSS request logs and Kubernetes writes() "
        "unchanged"
    )
    return row


def base_spec(oss_endpoint: str, model_id: str, size_bytes: int) -> dict[str, Any]:
    """A valid tensor-parallel vLLM spec whose model and bucket live in the sandbox: what the
    bad-input and hostile-upstream checks mutate (their deploys must be refused before any pod,
    vLLM's KV-cache sizing from config.json included)."""
    data = yaml.safe_load((REPO / "examples" / "seed-vllm-tp4.yaml").read_text())
    data["model"] = {
        "modelscope": {"model_id": model_id, "revision": "v1"},
        "size_bytes": size_bytes,
    }
    data["storage"].update({"bucket": BUCKET, "endpoint": oss_endpoint})
    data["rollout"] = {"promote_grace_s": 0, "ready_timeout_s": 60}
    return data


def trial_spec(base: dict[str, Any], tiny: TinyModelInfo) -> dict[str, Any]:
    """The spec every deploy trial starts from: `base` served by the SGLang stand-in on one GPU
    (`TRIAL_SERVING`), answering the tiny model's text."""
    data = copy.deepcopy(base)
    data["serving"] = dict(TRIAL_SERVING)
    return tiny_model_spec(data, tiny)


# The bench's own cluster: four nodes, so that a lost node's trial finds two empty ones, and the
# node-lifecycle controller's timings shortened by its flags (as tests/cluster/test_node_loss.py
# does) so a lost node is judged Unknown within seconds, well inside FAIL_FAST_S.
BENCH_NODES = tuple(
    NodeSpec(
        name=f"gpu-node-{i}",
        internal_ip=f"10.244.254.{i + 1}",
        gpus=8,
        labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    )
    for i in range(4)
)
BENCH_CLUSTER = ClusterConfig(
    nodes=BENCH_NODES,
    node_monitor_period_s=1,
    node_monitor_grace_period_s=8,
    container_backoff_base_s=1.0,
    with_kuberay=False,
    with_lws=False,
)
# The namespaces the trials deploy into (one per trial group), removed when the world closes.
TRIAL_NAMESPACE_PREFIX = "rel-"


@contextmanager
def input_world(root: Path, cluster: Cluster | None = None) -> Iterator[InputWorld]:
    """Hub, OSS, a real cluster (`cluster`, else one started here, which needs the private
    network namespace: `./scripts/in-netns`) and the fault proxy in front of it, with the
    environment pointing the product at them."""
    from modelscope_hub.config import set_default_config

    with ExitStack() as stack:
        lab = stack.enter_context(transfer_lab(root / "stores", shards=1, shard_bytes=256 * KiB))
        model_dir = generate_tiny_model(root / "tiny-model")
        tiny = TinyModelInfo.load(model_dir)
        lab.hub.add_revision_from_dir("rel/input", "v1", model_dir)
        size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
        if cluster is None:
            cluster = start_cluster(BENCH_CLUSTER)
            stack.callback(stop_cluster, cluster)
        else:
            stack.callback(_remove_trial_namespaces, cluster)
        proxy = stack.enter_context(running_proxy(cluster.pki, cluster.api_url))
        kubeconfig = cluster.kubeconfig_for(
            "reliability-admin", cluster.pki.admin, server=proxy.url
        )
        saved = {k: os.environ.get(k) for k in _ENV_KEYS}
        os.environ.update(
            {
                "KUBECONFIG": str(kubeconfig),
                "MODELSCOPE_ENDPOINT": lab.hub.base_url,
                "OSS_ACCESS_KEY_ID": KEY_ID,
                "OSS_ACCESS_KEY_SECRET": KEY_SECRET,
            }
        )
        # The modelscope library reads its endpoint once per process.
        set_default_config(None)
        base = base_spec(lab.oss.endpoint, "rel/input", size)
        try:
            yield InputWorld(
                hub=lab.hub,
                oss=lab.oss,
                base=base,
                trial=trial_spec(base, tiny),
                work=root / "input",
                cluster=cluster,
                proxy=proxy,
                kubeconfig=kubeconfig,
                tiny=tiny,
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            set_default_config(None)


def _remove_trial_namespaces(cluster: Cluster) -> None:
    """Delete the trials' namespaces and the PersistentVolumes their claims bound (cluster-
    scoped), so a shared cluster gets its GPUs back; the deletions finish in the background."""
    from kubernetes import client as k8s_client

    api = cluster.api_client()
    try:
        core = k8s_client.CoreV1Api(api)
        names = [
            str(n.metadata.name)
            for n in core.list_namespace().items
            if str(n.metadata.name).startswith(TRIAL_NAMESPACE_PREFIX)
        ]
        for pv in core.list_persistent_volume().items:
            claim = pv.spec.claim_ref
            if claim is not None and claim.namespace in names:
                core.delete_persistent_volume(pv.metadata.name)
        for name in names:
            core.delete_namespace(name)
    finally:
        api.close()  # type: ignore[no-untyped-call]


_ENV_KEYS = ("KUBECONFIG", "MODELSCOPE_ENDPOINT", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET")


# -- Kubernetes API faults + secrets ---------------------------------------------------------------
# Every API fault class the proxy injects, into one deploy run (count-limited rules).
def inject_api_faults(
    plan: FaultPlan, rng: random.Random, error_path: str | None = ".*"
) -> list[FaultRule]:
    """429 + Retry-After, 500s, resets, watch cuts and a 410 Gone inside pod watches (the
    readiness stream, so its re-list runs during a real deploy); returns the rules set."""
    rules = [
        # First in the list: the first pod watch (readiness's) gets the 410, not a cut.
        FaultRule("gone", r"/pods$", watch=True, times=rng.randint(1, 2)),
        FaultRule("throttle", ".*", method="PATCH", times=rng.randint(1, 3), retry_after_s=1),
    ]
    if error_path is not None:
        rules.append(FaultRule("error", error_path, method="GET", times=rng.randint(1, 3)))
    rules.append(FaultRule("reset", ".*", times=rng.randint(1, 2)))
    rules.append(FaultRule("cut", ".*", watch=True, events_before_cut=rng.randint(1, 3), times=2))
    return [plan.add(rule) for rule in rules]


def scan_for_keys(texts: dict[str, str], keys: tuple[str, ...]) -> list[str]:
    """Where any key appears: the names of the texts holding one."""
    return [where for where, text in texts.items() if any(k in text for k in keys)]


class CapturedLogs:
    """Every Python log record of the process, formatted with its exception, while active."""

    def __init__(self) -> None:
        import logging

        self.lines: list[str] = []
        self.created: list[float] = []  # each line's time (time.time())
        outer = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                outer.lines.append(self.format(record))
                outer.created.append(record.created)

        self.handler = _Handler(level=logging.DEBUG)
        self.handler.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def __enter__(self) -> CapturedLogs:
        import logging

        logging.getLogger().addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import logging

        logging.getLogger().removeHandler(self.handler)


def prefect_texts(
    flow_run_id: str, *, timeout_s: float = 30.0, outcome_event: bool = True
) -> dict[str, str]:
    """Logs, artifacts, parameters, state message and events of a finished flow run, read back
    via the API.

    Logs and events reach the server in batches after the run ended: this re-reads (bounded by
    `timeout_s`) until the run's last log line ("Finished in state ...") and both its final
    state event and the flow's own outcome event are stored.
    """
    import asyncio
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.events.filters import EventAnyResourceFilter, EventFilter

    from llm_rollout.record import EVENT_FAILED, EVENT_READY

    resource = f"prefect.flow-run.{flow_run_id}"

    async def read_all(client: Any, run_id: Any) -> tuple[list[Any], list[Any]]:
        logs: list[Any] = []
        while True:
            batch = await client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=200,
                offset=len(logs),
            )
            logs.extend(batch)
            if len(batch) < 200:
                break
        page = await client.read_events(
            EventFilter(any_resource=EventAnyResourceFilter(id=[resource])), limit=50
        )
        events = list(page.events)
        while page.next_page is not None:
            page = await client.read_events_page(str(page.next_page))
            events.extend(page.events)
        return logs, events

    async def read() -> dict[str, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
            final = f"prefect.flow-run.{run.state.name if run.state else 'Completed'}"
            while True:
                logs, events = await read_all(client, run.id)
                names = {e.event for e in events}
                done_logging = any(log.message.startswith("Finished in state") for log in logs)
                outcome = not outcome_event or bool(names & {EVENT_READY, EVENT_FAILED})
                if done_logging and final in names and outcome:
                    break
                if loop.time() > deadline:
                    raise AssertionError(
                        f"flow run {flow_run_id}: last log line or events not stored after "
                        f"{timeout_s:.0f}s (events {sorted(names)})"
                    )
                await asyncio.sleep(0.25)  # batches are flushed on the client's own schedule
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            return {
                "prefect logs": "\n".join(log.message for log in logs),
                "prefect artifacts": "\n".join(str(a.data) + str(a.description) for a in artifacts),
                "flow-run parameters": json.dumps(run.parameters, default=str),
                "flow-run state": str(run.state.message if run.state else ""),
                "prefect events": "\n".join(e.model_dump_json() for e in events),
            }

    return asyncio.run(read())


def kube_texts(kubeconfig: Path) -> dict[str, str]:
    """Every object in the sandbox cluster except Secrets, as JSON text, per kind."""
    import json

    from kubernetes import client, config

    api = config.new_client_from_config(str(kubeconfig))
    try:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        lists = {
            "configmaps": core.list_config_map_for_all_namespaces(),
            "pods": core.list_pod_for_all_namespaces(),
            "services": core.list_service_for_all_namespaces(),
            "persistentvolumes": core.list_persistent_volume(),
            "persistentvolumeclaims": core.list_persistent_volume_claim_for_all_namespaces(),
            "events": core.list_event_for_all_namespaces(),
            "deployments": apps.list_deployment_for_all_namespaces(),
        }
        return {
            f"kube {k}": json.dumps(api.sanitize_for_serialization(v)) for k, v in lists.items()
        }
    finally:
        api.close()


def oss_meta_texts(oss: OssServer) -> dict[str, str]:
    """User metadata and keys of every object the OSS stand-in holds."""
    out = []
    for key in oss.keys(BUCKET):
        meta = oss.object_meta(BUCKET, key)
        out.append(f"{key} {meta!r}")
    return {"oss object metadata": "\n".join(out)}


# -- deploys on the sandbox: Kubernetes API faults, workload faults, concurrency ------------------
def write_deploy_spec(
    world: InputWorld, label: str, namespace: str, name: str, **changes: Any
) -> Path:
    """`world.base` as Service `namespace/name` with `changes` merged (`_write_spec`)."""
    return _write_spec(world, world.base, label, namespace, name, changes)


def write_trial_spec(
    world: InputWorld, label: str, namespace: str, name: str, **changes: Any
) -> Path:
    """`world.trial` (a release of the SGLang stand-in) as Service `namespace/name` with
    `changes` merged (`_write_spec`)."""
    return _write_spec(world, world.trial, label, namespace, name, changes)


def _write_spec(
    world: InputWorld,
    base: dict[str, Any],
    label: str,
    namespace: str,
    name: str,
    changes: dict[str, Any],
) -> Path:
    """The base spec as Service `namespace/name` with `changes` merged section by section, as a
    file. Each trial group uses its own service name: PersistentVolumes are cluster-scoped and
    named after the service, so one name in two namespaces would compete for one volume."""
    data = copy.deepcopy(base)
    data["namespace"] = namespace
    data["name"] = name
    for section, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    world.work.mkdir(parents=True, exist_ok=True)
    path = world.work / f"{label}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def release_name(prefix: str, rng: random.Random) -> str:
    """A served model name of its own: the spec's hash changes, so the deploy renders a new
    release of the same pods, which the SGLang stand-in serves under that name (the `model` of
    its answers, sandbox/sglang_standin/server.py chat_response)."""
    return f"tiny-{prefix}{rng.randrange(10**6)}"


def serving_release(namespace: str, name: str) -> tuple[str | None, bool]:
    """(release the stable Service routes to, whether its workload is ready), from the cluster."""
    from llm_rollout.release.cluster import cluster_api
    from llm_rollout.release.status import service_status

    with cluster_api() as api:
        status = service_status(api, namespace, name)
    ready = bool(status.workloads) and all(w.ready for w in status.workloads)
    return status.state.current_release, ready


def deploy_cli(path: Path) -> tuple[int, str, float]:
    """`llm-rollout deploy PATH` in this process: (exit code, output, seconds)."""
    started = time.monotonic()
    code, output = _cli(["deploy", str(path)])
    return code, output, time.monotonic() - started


def _released(output: str) -> str | None:
    match = re.search(r"serves release (\S+)", output)
    return match.group(1) if match else None


# Kubernetes API fault classes: each adds count-limited rules to the proxy's plan, on paths
# and methods chosen by the trial's seed (the proxy fires a rule on the first requests that
# match it, so the random choice of path and method is what spreads the faults).
KubeFault = Callable[[FaultPlan, random.Random], list[FaultRule]]
# (method, path) pairs every deploy sends (None: any method): its Lease read, server-side
# applies, the workload's and pods' lists, discovery.
_FAULT_TARGETS: tuple[tuple[str | None, str], ...] = (
    (None, ".*"),
    ("GET", ".*"),
    ("PATCH", ".*"),
    ("GET", r"/leases"),
    ("PATCH", r"/deployments"),
    ("GET", r"/deployments"),
    ("GET", r"/pods$"),
    ("GET", r"^/api"),
)


def _rule(plan: FaultPlan, rng: random.Random, action: FaultAction) -> list[FaultRule]:
    method, path = rng.choice(_FAULT_TARGETS)
    rule = FaultRule(action, path, method=method, watch=False, times=rng.randint(1, 3))
    return [plan.add(rule)]


def _kube_429(plan: FaultPlan, rng: random.Random) -> list[FaultRule]:
    return _rule(plan, rng, "throttle")


def _kube_500(plan: FaultPlan, rng: random.Random) -> list[FaultRule]:
    return _rule(plan, rng, "error")


def _kube_reset(plan: FaultPlan, rng: random.Random) -> list[FaultRule]:
    return _rule(plan, rng, "reset")


def _kube_cut(plan: FaultPlan, rng: random.Random) -> list[FaultRule]:
    rule = FaultRule(
        "cut", ".*", watch=True, events_before_cut=rng.randint(0, 3), times=rng.randint(1, 3)
    )
    return [plan.add(rule)]


def _kube_gone(plan: FaultPlan, rng: random.Random) -> list[FaultRule]:
    path = rng.choice([r"/pods$", r"/deployments$", r"/events$", ".*"])
    return [plan.add(FaultRule("gone", path, watch=True, times=rng.randint(1, 2)))]


KUBE_CLASSES: list[tuple[str, KubeFault]] = [
    ("kube API: 429 + Retry-After", _kube_429),
    ("kube API: HTTP 500", _kube_500),
    ("kube API: connection reset", _kube_reset),
    ("kube API: watch cut mid-stream", _kube_cut),
    ("kube API: 410 Gone in a watch", _kube_gone),
]


@dataclass
class DeployTrial:
    survived: bool
    detail: str
    seconds: float
    leaks: int = 0
    fired: int = 0
    reported_s: float | None = None  # lost node: from the loss to readiness's report


def trial_kube_fault(
    world: InputWorld, fault: KubeFault, rng: random.Random, label: str
) -> DeployTrial:
    """One deploy (a new release replacing the serving one) under one fault class."""
    namespace = name = "rel-kube"
    path = write_trial_spec(
        world,
        label,
        namespace,
        name,
        serving={"served_model_name": release_name("k", rng)},
    )
    world.faults.clear()
    rules = fault(world.faults, rng)
    try:
        with CapturedLogs() as logs:
            code, output, seconds = deploy_cli(path)
    finally:
        world.faults.clear()
    fired = sum(r.hits for r in rules)
    leaks = len(scan_for_keys({"out": output, "logs": "\n".join(logs.lines)}, (KEY_SECRET,)))
    release = _released(output)
    problems = []
    if code != 0:
        problems.append(f"exit {code}: {output.strip()[-400:]}")
    if not fired:
        problems.append("the fault never fired")
    if code == 0:
        current, ready = serving_release(namespace, name)
        if current != release or not ready:
            problems.append(f"Service routes to {current} (ready {ready}), not {release}")
    return DeployTrial(not problems, "; ".join(problems), seconds, leaks, fired)


def _deploy_row(name: str, results: list[DeployTrial], notes: str) -> Row:
    row = Row(name, trials=len(results), resent="n/a (no transfer)")
    row.survived = sum(r.survived for r in results)
    row.leaks = sum(r.leaks for r in results)
    row.failures = [f"trial {i}: {r.detail}" for i, r in enumerate(results) if not r.survived]
    worst = max((r.seconds for r in results), default=0.0)
    row.notes = f"{notes}; worst run {worst:.1f}s"
    return row


def run_kube_class(
    world: InputWorld, name: str, fault: KubeFault, trials: int, seed: int
) -> tuple[Row, list[DeployTrial]]:
    results = []
    for i in range(trials):
        rng = random.Random(f"{name}:{seed}:{i}")
        results.append(trial_kube_fault(world, fault, rng, f"kube-{seed}-{i}-{abs(hash(name))}"))
    fired = sum(r.fired for r in results)
    return _deploy_row(name, results, f"{fired} faults fired; every trial promotes"), results


# Workload faults: the new release's pods fail, for a reason a real node gives them (an image
# no registry serves, a server that exits, a volume the CSI driver cannot mount, more CPU than
# any node has), or its node is lost while it starts; requests through the stable Service run
# the whole time.
WORKLOAD_KINDS: dict[str, tuple[str, ...]] = {
    "ImagePullBackOff": ("ImagePullBackOff", "ErrImagePull"),
    "CrashLoopBackOff": ("CrashLoopBackOff",),
    "FailedMount": ("FailedMount",),
    "Unschedulable": ("Unschedulable",),
    "node lost": ("NodeLost",),
}
# OOMKilled is not among them: the spec's memory is whole GiB and the SGLang stand-in stays far
# below 1 GiB, so no release of it is OOM-killed; tests/real/test_readiness_classes.py makes one
# with a 64Mi limit (the node agent's memory cgroup, sandbox/cluster/pods/memory.py).
# The node-lost class needs the node-lifecycle controller's timings shortened (BENCH_CLUSTER);
# the session cluster keeps upstream's, so tests/reliability runs the others.
SESSION_WORKLOAD_KINDS = tuple(k for k in WORKLOAD_KINDS if k != "node lost")
FAIL_FAST_S = 25.0
# The workload faults here are persistent: readiness fails them once they outlast their
# tolerance (llm_rollout/readiness_rules.py). One second each, so the verdict comes within
# FAIL_FAST_S; a transient signal that clears inside the (default) tolerance is
# tests/kube_edge/test_readiness_tolerance.py's and bench/readiness.py's case.
# A lost node's tolerance is 0: the trial measures the report of the loss, not a wait for a
# replacement pod (on a real cluster the lost pod stays Terminating; the rollback sets it
# aside, issue 16 B4).
PERSISTENT_FAULT_TOLERANCES = {
    "image_pull_tolerance_s": 1,
    "mount_tolerance_s": 1,
    "node_not_ready_tolerance_s": 0,
}
# The SGLang stand-in refuses a flag it does not know with exit 2, as SGLang's argparse does
# (python/sglang/srt/server_args.py): the container exits at once, each restart too.
CRASH_FLAG = "--no-such-flag-reliability-trial"


class _Background:
    """A daemon thread running `_run` for the duration of a `with` block."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class ServiceTraffic(_Background):
    """A thread sending chat completions through the stable Service (the API server's service
    proxy, to the real pods behind it) back to back until stopped; counts answers and failures.
    It is a client of the Service, not the product: it reaches the API server directly, not
    through the fault proxy."""

    def __init__(self, world: InputWorld, namespace: str, name: str, model: str) -> None:
        super().__init__("service-traffic")
        self.world, self.namespace, self.name, self.model = world, namespace, name, model
        self.port = int(world.trial["serving"].get("port", 8000))
        self.ok = 0
        self.failed: list[str] = []
        # The answers in the order they came, run-length encoded: [answer, count, first seen
        # (monotonic)] per run of equal answers. An answer is "<served model name>: <text>":
        # each release serves under a name of its own (`release_name`).
        self.answers: list[list[Any]] = []
        self.answered = threading.Event()

    def _run(self) -> None:
        import httpx

        from llm_rollout.kube.proxy import httpx_client_for, service_proxy_url

        api = self.world.cluster.api_client()
        try:
            url = service_proxy_url(api, self.namespace, self.name, self.port)
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 8,
            }
            with httpx_client_for(api, timeout_s=10) as client:
                while not self._stop.is_set():
                    try:
                        response = client.post(url + "/v1/chat/completions", json=body)
                    except httpx.HTTPError as exc:
                        self.failed.append(f"{type(exc).__name__}: {exc}")
                        continue
                    if response.status_code == 200 and response.json().get("choices"):
                        self.ok += 1
                        data = response.json()
                        content = data["choices"][0]["message"]["content"]
                        self._record(f"{data.get('model')}: {content}")
                    else:
                        self.failed.append(f"HTTP {response.status_code}: {response.text[:160]}")
                    self._stop.wait(0.02)  # pacing: leave the two cores to the rollout
        finally:
            api.close()  # type: ignore[no-untyped-call]

    def _record(self, answer: str) -> None:
        if self.answers and self.answers[-1][0] == answer:
            self.answers[-1][1] += 1
        else:
            self.answers.append([answer, 1, time.monotonic()])
        self.answered.set()


def _pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    from llm_rollout.kube.client import shared_api_client
    from llm_rollout.kube.resources import list_objects

    api = shared_api_client()
    try:
        items, _ = list_objects(api, "v1", "Pod", namespace, label_selector=selector)
    finally:
        api.close()  # type: ignore[no-untyped-call]
    return items


def _nodes() -> list[Any]:
    from kubernetes import client as k8s_client

    from llm_rollout.kube.client import shared_api_client

    api = shared_api_client()
    try:
        return list(k8s_client.CoreV1Api(api).list_node().items)
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _cordon(names: set[str], cordoned: bool) -> None:
    from kubernetes import client as k8s_client

    from llm_rollout.kube.client import shared_api_client

    api = shared_api_client()
    try:
        core = k8s_client.CoreV1Api(api)
        for node in sorted(names):
            core.patch_node(node, {"spec": {"unschedulable": cordoned or None}})
    finally:
        api.close()  # type: ignore[no-untyped-call]


class NodeKiller(_Background):
    """Watches the pods of the release being rolled out (any release of the service but the
    serving one) and, once one is bound to a node, cuts that node off: the node agent stops
    renewing its Lease and posting its status (`node_agent.heartbeats_stopped_file`), and the
    real node-lifecycle controller judges it (Unknown, unreachable taints, pods NotReady)."""

    def __init__(self, world: InputWorld, namespace: str, serving: str) -> None:
        super().__init__("node-killer")
        self.world, self.namespace, self.serving = world, namespace, serving
        self.lost: str | None = None
        self.lost_at = 0.0  # time.time(), as log records stamp theirs

    def _run(self) -> None:
        from llm_rollout.kube.watching import Selector, watching

        api = self.world.cluster.api_client()  # not through the fault proxy
        selector = f"{RELEASE_LABEL}!={self.serving}"
        spec = Selector("v1", "Pod", self.namespace, label_selector=selector)
        try:
            with watching(api, [spec]) as group:
                while not self._stop.is_set():
                    for pod in group.cache[spec].values():
                        node = (pod.get("spec") or {}).get("nodeName")
                        if node:
                            self.lost, self.lost_at = str(node), time.time()
                            self._stopped_file(self.lost).touch()
                            return
                    group.next(0.5)
        finally:
            api.close()  # type: ignore[no-untyped-call]

    def _stopped_file(self, node: str) -> Path:
        return heartbeats_stopped_file(self.world.cluster.run_dir, node)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self.lost:
            self._stopped_file(self.lost).unlink()
            _wait_node_ready(self.world, self.lost)


def _wait_node_ready(world: InputWorld, node: str) -> None:
    """Until `node` is Ready again and no longer tainted unreachable (its agent posts status
    again, the node-lifecycle controller lifts the taints)."""
    from kubernetes import client as k8s_client

    def back(nodes: list[Any]) -> bool:
        (item,) = [n for n in nodes if n.metadata.name == node]
        ready = any(c.type == "Ready" and c.status == "True" for c in item.status.conditions)
        tainted = any(t.key.startswith("node.kubernetes.io/") for t in item.spec.taints or [])
        return ready and not tainted

    api = world.cluster.api_client()
    try:
        wait_for(
            k8s_client.CoreV1Api(api).list_node, back, timeout_s=120, what=f"{node} Ready again"
        )
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _spare_nodes(world: InputWorld, count: int) -> list[str]:
    """Up to `count` nodes on which no trial's pod runs."""
    from kubernetes import client as k8s_client

    api = world.cluster.api_client()
    try:
        pods = k8s_client.CoreV1Api(api).list_pod_for_all_namespaces().items
    finally:
        api.close()  # type: ignore[no-untyped-call]
    names = {str(n.metadata.name) for n in _nodes()}
    busy = {
        str(p.spec.node_name)
        for p in pods
        if str(p.metadata.namespace).startswith(TRIAL_NAMESPACE_PREFIX)
    }
    return sorted(names - busy)[:count]


def trial_workload(world: InputWorld, kind: str, rng: random.Random, label: str) -> DeployTrial:
    """Release N serves; release N+1 fails with `kind` (or loses its node) while chat
    completions flow through the stable Service. Survived: the run fails clearly (naming the
    reason, and the Node for a lost one) within FAIL_FAST_S; the previous release keeps
    serving; zero failed requests."""
    from llm_rollout.spec import load_spec

    namespace = name = "rel-work"
    before, ready_before = serving_release(namespace, name)
    if before is None or not ready_before:
        return DeployTrial(False, f"no ready release serving before the trial ({before})", 0.0)
    tag = f"{kind.lower().replace(' ', '-')}-{rng.randrange(10**6)}"
    serving: dict[str, Any] = {"served_model_name": f"tiny-{tag}"}
    changes: dict[str, Any] = {}
    if kind == "ImagePullBackOff":
        # A tag no registry serves: the node agent's image table has no entry for it, and it
        # reports the pull failure as a kubelet does (sandbox/cluster/images.py).
        serving["image"] = f"lmsysorg/sglang:v0.0.0-{tag}"
    elif kind == "CrashLoopBackOff":
        serving["extra_args"] = [CRASH_FLAG]
    elif kind == "FailedMount":
        # A claim of its own whose volume the CSI driver cannot publish: RRSA authentication
        # with no RAM role behind it on this cluster (the stand-in refuses authType rrsa, as
        # the driver fails without the cluster's RRSA OIDC set up). The mirror still uses the
        # environment's keys.
        changes["volume"] = {
            "pv_name": f"rel-work-{tag}",
            "pvc_name": f"rel-work-{tag}",
            "rrsa_role": "reliability-trial",
        }
    elif kind == "Unschedulable":
        serving["resources"] = {"cpu": "128", "memory_gib": 4}  # more CPU than any node has
    path = write_trial_spec(
        world,
        label,
        namespace,
        name,
        serving=serving,
        rollout={"strategy": "blue-green", **PERSISTENT_FAULT_TOLERANCES},
        **changes,
    )
    # Two empty nodes for a lost-node trial: the new release lands on one (the killer loses
    # whichever it is bound to) and the other stays schedulable.
    open_nodes = set(_spare_nodes(world, 2)) if kind == "node lost" else set()
    if kind == "node lost" and len(open_nodes) < 2:
        return DeployTrial(False, f"two empty nodes needed, found {sorted(open_nodes)}", 0.0)
    all_nodes = {str(n.metadata.name) for n in _nodes()}
    model = load_spec(path).served_model_name
    with ExitStack() as stack:
        killer = None
        if kind == "node lost":
            # Every other node cordoned: the serving release's (losing one must not take the
            # stable Service down with it) and those of other services.
            _cordon(all_nodes - open_nodes, True)
            stack.callback(_cordon, all_nodes - open_nodes, False)
            killer = stack.enter_context(NodeKiller(world, namespace, before))
        traffic = stack.enter_context(ServiceTraffic(world, namespace, name, model))
        with CapturedLogs() as logs:
            code, output, seconds = deploy_cli(path)
        stack.close()
    leaks = len(scan_for_keys({"out": output, "logs": "\n".join(logs.lines)}, (KEY_SECRET,)))
    after, ready_after = serving_release(namespace, name)
    problems = []
    expected = WORKLOAD_KINDS[kind]
    promoted = code == 0
    if killer is not None and killer.lost is None:
        problems.append("no pod of the new release was bound to a node: nothing was lost")
    if killer is not None and killer.lost and f"Node {killer.lost}" not in output:
        problems.append(f"the failure does not name Node {killer.lost}: {output.strip()[-300:]}")
    if promoted:
        problems.append(f"a failing release was promoted (Service on {after})")
    else:
        if code != 1:
            problems.append(f"exit {code}: {output.strip()[-300:]}")
        if expected and not any(reason in output for reason in expected):
            problems.append(f"no {'/'.join(expected)} in: {output.strip()[-300:]}")
        if "keeps serving" not in output:
            problems.append("the failure does not say the previous release keeps serving")
        if seconds > FAIL_FAST_S:
            problems.append(f"failed after {seconds:.1f}s (limit {FAIL_FAST_S:.0f}s)")
        if after != before or not ready_after:
            problems.append(f"Service routes to {after} (ready {ready_after}), not {before}")
    if traffic.failed:
        problems.append(
            f"{len(traffic.failed)} of {traffic.ok + len(traffic.failed)} requests through "
            f"the Service failed, first: {traffic.failed[0]}"
        )
    if traffic.ok == 0:
        problems.append("no request went through the Service during the rollout")
    reported_s = None
    if killer is not None and killer.lost:
        # From the loss to readiness's report of it (its first log record naming NodeLost).
        noticed = [t for t, ln in zip(logs.created, logs.lines, strict=True) if "NodeLost" in ln]
        if noticed:
            reported_s = noticed[0] - killer.lost_at
        else:
            problems.append("no log record names NodeLost")
    outcome = "promoted" if promoted else f"failed in {seconds:.1f}s"
    detail = "; ".join(problems) or f"{outcome}, {traffic.ok} requests, 0 failed"
    return DeployTrial(not problems, detail, seconds, leaks, traffic.ok, reported_s)


def run_workload_class(
    world: InputWorld, kind: str, trials: int, seed: int
) -> tuple[Row, list[DeployTrial]]:
    results = []
    for i in range(trials):
        rng = random.Random(f"{kind}:{seed}:{i}")
        results.append(trial_workload(world, kind, rng, f"work-{seed}-{i}-{kind.replace(' ', '')}"))
    name = f"workload: {kind}" + (" mid-rollout" if kind == "node lost" else "")
    requests = sum(r.fired for r in results)
    failed = [r.seconds for r in results if r.survived and r.detail.startswith("failed in")]
    outcome = (
        f"{len(failed)} of {len(results)} failed the rollout in "
        f"{min(failed):.1f}-{max(failed):.1f}s (previous release kept)"
        if failed
        else "-"
    )
    notes = (
        f"{requests} chat completions through the Service during the rollouts, "
        f"{sum(1 for r in results if 'requests through' in r.detail)} trial(s) with failed "
        f"requests; outcomes: {outcome}"
    )
    reported = [r.reported_s for r in results if r.reported_s is not None]
    if reported:
        notes += f"; NodeLost reported {max(reported):.1f}s after the loss at worst"
    return _deploy_row(name, results, notes), results


def workload_baseline(world: InputWorld) -> str:
    """Release 1 of the workload namespace, serving; returns its release id."""
    path = write_trial_spec(world, "work-baseline", "rel-work", "rel-work")
    code, output, _ = deploy_cli(path)
    if code != 0:
        raise AssertionError(f"baseline deploy failed: {output}")
    release = _released(output)
    assert release is not None, output
    return release


# Blue-green promotion under traffic: release A serves, release B (another image tag, so a new
# release is rendered) passes readiness and smoke, takes the stable Service, bakes, and A is
# removed -- while chat completions flow through the stable Service the whole time.
BLUE_GREEN_CLASS = "workload: blue-green promotion under traffic"
BAKE_S = 3


def trial_blue_green(
    world: InputWorld,
    rng: random.Random,
    label: str,
    *,
    service: str = "rel-bg",
    serving_spec: Path | None = None,
) -> DeployTrial:
    """Deploy A; start traffic through the stable Service; deploy B (blue-green, baked for
    BAKE_S). Survived: B promoted and ready, A's objects and pods gone, zero failed requests,
    and the answers (distinct per release) are all A's, then all B's, with B answering for at
    least the bake window before the run ended.

    `serving_spec`: the spec of the release that already serves `service`, which is then A
    (the tests reuse a deploy; each costs the SGLang probes' period)."""
    from llm_rollout.release.cluster import cluster_api
    from llm_rollout.release.inventory import release_objects
    from llm_rollout.spec import load_spec

    namespace = name = service
    # Each release serves under a name of its own, which the stand-in puts in every answer.
    names = {side: release_name(f"bg-{side.lower()}-", rng) for side in ("A", "B")}
    if serving_spec is not None:
        names["A"] = load_spec(serving_spec).served_model_name
    paths = {
        side: write_trial_spec(
            world,
            f"{label}-{side}",
            namespace,
            name,
            serving={"served_model_name": served},
            rollout={"strategy": "blue-green", "promote_grace_s": BAKE_S if side == "B" else 0},
        )
        for side, served in names.items()
    }
    if serving_spec is None:
        code, output, _ = deploy_cli(paths["A"])
        release_a = _released(output)
    else:
        paths["A"], output = serving_spec, "(already serving)"
        release_a, _ = serving_release(namespace, name)
    current, ready = serving_release(namespace, name)
    if release_a is None or current != release_a or not ready:
        return DeployTrial(False, f"release A not serving ({current}): {output[-300:]}", 0.0)
    model = load_spec(paths["A"]).served_model_name
    with ServiceTraffic(world, namespace, name, model) as traffic:
        if not traffic.answered.wait(30):
            return DeployTrial(False, f"no answer through the Service: {traffic.failed[:1]}", 0.0)
        with CapturedLogs() as logs:
            code, output, seconds = deploy_cli(paths["B"])
        ended = time.monotonic()
    leaks = len(scan_for_keys({"out": output, "logs": "\n".join(logs.lines)}, (KEY_SECRET,)))
    release_b = _released(output)
    current, ready = serving_release(namespace, name)
    problems = []
    if code != 0:
        problems.append(f"release B: exit {code}: {output.strip()[-300:]}")
    elif current != release_b or not ready:
        problems.append(f"Service routes to {current} (ready {ready}), not B's {release_b}")
    with cluster_api() as api:
        left = release_objects(api, namespace, name, release_a)
    pods_left = _pods_gone(world, namespace, f"{RELEASE_LABEL}={release_a}")
    if left or pods_left:
        problems.append(
            f"release A still has {[o['metadata']['name'] for o in left]} and "
            f"{len(pods_left)} pod(s)"
        )
    if traffic.failed:
        problems.append(
            f"{len(traffic.failed)} of {traffic.ok + len(traffic.failed)} requests through "
            f"the Service failed, first: {traffic.failed[0]}"
        )
    order = [_side(names, answer) for answer, _, _ in traffic.answers]
    if order != ["A", "B"]:
        problems.append(f"answers in order {order} (runs of equal answers), not [A, B]")
    else:
        served_b = ended - traffic.answers[1][2]
        if served_b < BAKE_S:
            problems.append(f"B answered for only {served_b:.1f}s (bake {BAKE_S}s) before the end")
    counts = "/".join(str(n) for _, n, _ in traffic.answers)
    detail = "; ".join(problems) or (
        f"promoted in {seconds:.1f}s, {traffic.ok} requests (A/B {counts}), 0 failed"
    )
    return DeployTrial(not problems, detail, seconds, leaks, traffic.ok)


def _pods_gone(world: InputWorld, namespace: str, selector: str, wait_s: float = 60) -> list[Any]:
    """The pods matching `selector` left after waiting up to `wait_s` for none to be left: a
    deleted pod stays Terminating until its node's agent has stopped its containers (the
    kubelet's confirmation), and the deploy does not wait for that."""
    from kubernetes import client as k8s_client

    from sandbox.cluster.waits import WaitTimeout

    api = world.cluster.api_client()
    try:
        core = k8s_client.CoreV1Api(api)
        # On a timeout, what is left is listed and returned below.
        with contextlib.suppress(WaitTimeout):
            wait_for(
                core.list_namespaced_pod,
                lambda pods: not pods,
                namespace=namespace,
                label_selector=selector,
                timeout_s=wait_s,
                what=f"no pod {selector}",
            )
        return list(core.list_namespaced_pod(namespace, label_selector=selector).items)
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _side(names: dict[str, str], answer: str) -> str:
    """Which release answered ("<served model name>: <text>", `ServiceTraffic`)."""
    return next(
        (side for side, served in names.items() if answer.startswith(f"{served}: ")),
        f"other: {answer!r}",
    )


def run_blue_green_class(
    world: InputWorld, trials: int, seed: int
) -> tuple[Row, list[DeployTrial]]:
    results = [
        trial_blue_green(world, random.Random(f"blue-green:{seed}:{i}"), f"bg-{seed}-{i}")
        for i in range(trials)
    ]
    requests = sum(r.fired for r in results)
    notes = (
        f"{requests} chat completions through the Service during the rollouts (bake {BAKE_S}s); "
        f"{sum(1 for r in results if 'requests through' in r.detail)} trial(s) with failed "
        f"requests, {sum(1 for r in results if 'answers in order' in r.detail)} with answers "
        "out of order"
    )
    return _deploy_row(BLUE_GREEN_CLASS, results, notes), results


# Concurrency: two deploys of one service started together never interleave.
@dataclass
class PairResult:
    survived: bool
    detail: str
    holders: list[str]
    windows: dict[str, tuple[float, float]]


class LeaseRecorder:
    """Watches the service's Lease and records every change of holder (with local time)."""

    def __init__(self, namespace: str, service: str) -> None:
        from llm_rollout.locking import lease_name

        self.namespace, self.name = namespace, lease_name(service)
        self.changes: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-recorder", daemon=True)

    def _run(self) -> None:
        from llm_rollout.kube.client import shared_api_client
        from llm_rollout.kube.watching import Selector, watching

        api = shared_api_client()
        spec = Selector("coordination.k8s.io/v1", "Lease", self.namespace, name=self.name)
        try:
            with watching(api, [spec]) as group:
                while not self._stop.is_set():
                    if spec in group.synced:
                        self._synced.set()
                    lease = group.cache[spec].get(self.name) or {}
                    holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
                    if not self.changes or self.changes[-1][1] != holder:
                        self.changes.append((time.time(), holder))
                    group.next(0.5)
        finally:
            api.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> LeaseRecorder:
        self._thread.start()
        if not self._synced.wait(30):
            raise AssertionError(f"Lease watch {self.namespace}/{self.name} never synced")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def holders(self) -> list[str]:
        return [h for _, h in self.changes]


def locked_window(flow_run_id: str) -> tuple[float, float]:
    """(start, end) as epoch seconds of the run's task runs after its first preflight: the
    part of the run that may write (it runs under the lease)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list[Any]:
        async with get_client() as client:
            return list(
                await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
            )

    runs = sorted(
        (r for r in asyncio.run(read()) if r.start_time is not None),
        key=lambda r: r.start_time,
    )
    locked = runs[1:]  # runs[0] is the read-only preflight before the lease
    if not locked or runs[0].name.split("-")[0] != "preflight":
        raise AssertionError(
            f"flow run {flow_run_id}: unexpected task runs {[r.name for r in runs]}"
        )
    start = min(r.start_time.timestamp() for r in locked)
    end = max((r.end_time or r.start_time).timestamp() for r in locked)
    return start, end


def trial_concurrent_pair(world: InputWorld, index: int, wait_s: int = 300) -> PairResult:
    """Two deploys of one service (different images) started at the same moment."""
    from prefect.client.schemas.objects import State

    from flows.deploy import deploy
    from llm_rollout.spec import load_spec

    namespace = name = f"rel-conc-{index}"
    specs = [
        load_spec(
            write_trial_spec(
                world,
                f"conc-{index}-{side}",
                namespace,
                name,
                serving={"served_model_name": f"tiny-c{index}{side}"},
                rollout={"lock_wait_s": wait_s},
            )
        )
        for side in ("a", "b")
    ]
    states: dict[int, State[Any]] = {}
    start = threading.Barrier(2)

    def run(side: int) -> None:
        start.wait()
        states[side] = deploy(specs[side], return_state=True)

    with LeaseRecorder(namespace, name) as lease:
        threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    problems = []
    windows: dict[str, tuple[float, float]] = {}
    run_ids = {}
    for side, state in sorted(states.items()):
        run_id = str(state.state_details.flow_run_id)
        run_ids[side] = run_id
        if not state.is_completed():
            problems.append(f"run {side}: {state.name}: {state.message}")
        else:
            windows[run_id] = locked_window(run_id)
    if len(states) != 2:
        problems.append(f"only {len(states)} run(s) finished")
    holders = [h for h in lease.holders() if h]
    if len(windows) == 2:
        (_a0, a1), (b0, _b1) = sorted(windows.values())
        if b0 < a1:
            problems.append(f"locked stages overlap by {a1 - b0:.2f}s")
    # Each run held the lease exactly once, one after the other, released in between.
    held_by = [next((r for r in run_ids.values() if r in h), "?") for h in holders]
    if sorted(held_by) != sorted(run_ids.values()) or len(set(held_by)) != 2:
        problems.append(f"lease holders {holders}")
    ordered = [h for _, h in lease.changes]
    if ordered and ordered[-1] != "":
        problems.append("the lease is still held after both runs")
    current, ready = serving_release(namespace, name)
    if len(held_by) == 2 and not problems:
        second = next(s for s, r in run_ids.items() if r == held_by[1])
        expected = states[second].result().release  # type: ignore[union-attr]
        if current != expected or not ready:
            problems.append(f"Service routes to {current}, not the second run's {expected}")
    return PairResult(not problems, "; ".join(problems), holders, windows)


def run_concurrency(world: InputWorld, pairs: int, seed: int) -> Row:
    row = Row("concurrency: 2 simultaneous deploys of one service", resent="n/a (no transfer)")
    gaps = []
    for i in range(pairs):
        result = trial_concurrent_pair(world, seed * 100 + i)
        row.trials += 1
        if result.survived:
            row.survived += 1
            (_a0, a1), (b0, _b1) = sorted(result.windows.values())
            gaps.append(b0 - a1)
        else:
            row.failures.append(f"pair {i}: {result.detail}")
    row.leaks = 0
    row.notes = f"{pairs} pairs" + (
        f"; in the {len(gaps)} that completed, the second run waited on the Lease and its "
        f"locked stages began {min(gaps):.2f}-{max(gaps):.2f}s after the first's ended"
        if gaps
        else ""
    )
    return row


# -- secrets: every flow with the fake keys, everything it left behind scanned --------------------
def run_secrets_check(world: InputWorld, seed: int) -> Row:
    """Run deploy (under every API fault), plan, redeploy (restart) and refresh; scan the CLI
    output, Python logging, each flow run's Prefect logs/artifacts/events/parameters/state, the
    plan files, every cluster object but Secrets and the OSS object metadata for the keys.
    (`sync` subprocess output is scanned by the kill -9 transfer trials.)"""
    from flows.redeploy import redeploy
    from flows.refresh import refresh
    from llm_rollout.spec import load_spec

    row = Row("secrets: every flow run with fake keys, all outputs scanned", resent="n/a")
    namespace = name = "rel-secrets"
    path = write_trial_spec(world, "secrets", namespace, name)
    texts: dict[str, str] = {}
    runs: list[tuple[str, str | None, bool]] = []  # (flow, run id, completed)
    world.faults.clear()
    inject_api_faults(world.faults, random.Random(seed), ".*")
    with CapturedLogs() as logs:
        code, output = _cli(["deploy", str(path)])
        world.faults.clear()
        match = re.search(r"flow run ([0-9a-f-]{36})", output)
        runs.append(("deploy", match.group(1) if match else None, code == 0))
        texts["deploy output"] = output
        plan_dir = world.work / "secrets-plan"
        plan_code, plan_output = _cli(["plan", str(path), "--out", str(plan_dir)])
        runs.append(("plan", None, plan_code == 0))
        texts["plan output"] = plan_output
        if plan_dir.is_dir():
            texts["plan files"] = "\n".join(p.read_text() for p in sorted(plan_dir.iterdir()))
        state = redeploy(name, namespace, "restart", return_state=True)
        runs.append(("redeploy", str(state.state_details.flow_run_id), state.is_completed()))
        texts["redeploy state"] = str(state.message)
        state = refresh(load_spec(path), return_state=True)
        runs.append(("refresh", str(state.state_details.flow_run_id), state.is_completed()))
        texts["refresh state"] = str(state.message)
    texts["python logging"] = "\n".join(logs.lines)
    for flow_name, run_id, _ in runs:
        if run_id is not None:
            read = prefect_texts(run_id, outcome_event=flow_name == "deploy")
            texts.update({f"{flow_name}: {k}": v for k, v in read.items()})
    texts.update(kube_texts(world.cluster.admin_kubeconfig))
    texts.update(oss_meta_texts(world.oss))
    leaks = scan_for_keys(texts, (KEY_SECRET, KEY_ID))
    row.trials = len(runs)
    row.survived = sum(1 for _, _, ok in runs if ok)
    row.failures = [f"{flow_name} did not complete" for flow_name, _, ok in runs if not ok]
    row.failures += [f"key material in {where}" for where in leaks]
    row.leaks = len(leaks)
    empty = [k for k, v in texts.items() if k.endswith("prefect logs") and not v]
    if empty:
        row.failures.append(f"nothing read back from {empty}: the scan would be empty")
    row.notes = f"{len(texts)} texts scanned ({sum(len(v) for v in texts.values())} chars)"
    return row


# -- main ---------------------------------------------------------------------------------------
GROUPS = ("transfer", "kube", "workload", "input", "secrets", "concurrency", "hostile")


def run_transfer(
    trials: int, seed: int, root: Path, link_bytes_per_s: int | None = None
) -> list[Row]:
    rows = []
    with transfer_lab(root / "transfer", link_bytes_per_s=link_bytes_per_s) as lab:
        for spec in TRANSFER_CLASSES:
            row, _ = run_transfer_class(lab, spec, trials, seed)
            print(format_table([row]).splitlines()[2], flush=True)
            rows.append(row)
    return rows


RUNNERS: dict[str, Callable[[int, int, Path], list[Row]]] = {
    "transfer": run_transfer,
}
DEPLOY_GROUPS = ("input", "kube", "workload", "secrets", "concurrency", "hostile")


def run_world_groups(
    world: InputWorld, groups: list[str], trials: int | None, seed: int, *, node_lost: bool
) -> list[Row]:
    """The groups that need the cluster, on `world`; `node_lost` adds the lost-node class,
    which needs the node-lifecycle controller's shortened timings (BENCH_CLUSTER)."""
    rows: list[Row] = []

    def report(row: Row) -> None:
        print(format_table([row]).splitlines()[2], flush=True)
        rows.append(row)

    for group in groups:
        count = trials or DEFAULT_TRIALS[group]
        if group == "input":
            report(run_bad_input_checks(world))
        elif group == "kube":
            for name, fault in KUBE_CLASSES:
                report(run_kube_class(world, name, fault, count, seed)[0])
        elif group == "workload":
            workload_baseline(world)
            kinds = WORKLOAD_KINDS if node_lost else SESSION_WORKLOAD_KINDS
            for kind in kinds:
                report(run_workload_class(world, kind, count, seed)[0])
            report(run_blue_green_class(world, count, seed)[0])
        elif group == "secrets":
            report(run_secrets_check(world, seed))
        elif group == "concurrency":
            report(run_concurrency(world, count, seed))
        elif group == "hostile":
            from bench.hostile_upstream import run_hostile_upstream

            report(run_hostile_upstream(world))
    return rows


def run_deploy_groups(groups: list[str], trials: int | None, seed: int, root: Path) -> list[Row]:
    """The groups that need the cluster: one real cluster (started here, in the private network
    namespace), one fault proxy and one Prefect server for all."""
    from prefect.testing.utilities import prefect_test_harness

    started = time.monotonic()
    with (
        prefect_test_harness(server_startup_timeout=90),
        input_world(root / "deploy") as world,
    ):
        print(
            f"real cluster and stores ready in {time.monotonic() - started:.0f}s "
            f"({', '.join(f'{k} {v:.0f}s' for k, v in world.cluster.ready_s.items())})",
            flush=True,
        )
        return run_world_groups(world, groups, trials, seed, node_lost=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=None, help="Trials per class.")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--only", choices=GROUPS, action="append")
    parser.add_argument(
        "--link-mb-s",
        type=float,
        default=None,
        help="transfer trials: cap the hub's and OSS's bandwidth (MB/s each); default uncapped",
    )
    args = parser.parse_args(argv)
    link = int(args.link_mb_s * 1_000_000) if args.link_mb_s else None
    runners = {**RUNNERS, "transfer": functools.partial(run_transfer, link_bytes_per_s=link)}
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    groups = list(args.only or GROUPS)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="llm-rollout-reliability-") as tmp:
        for group in groups:
            if group in runners:
                rows.extend(
                    runners[group](args.trials or DEFAULT_TRIALS[group], args.seed, Path(tmp))
                )
        deploy_groups = [g for g in groups if g in DEPLOY_GROUPS]
        if deploy_groups:
            rows.extend(run_deploy_groups(deploy_groups, args.trials, args.seed, Path(tmp)))
    print()
    print(format_table(rows))
    failed = any(r.survived != r.trials or r.leaks for r in rows)
    return 1 if failed else 0


DEFAULT_TRIALS: dict[str, int] = {
    "transfer": 20,
    "kube": 10,
    "workload": 5,
    "input": 1,
    "secrets": 1,
    "concurrency": 5,
    "hostile": 1,
}

if __name__ == "__main__":
    sys.exit(main())
