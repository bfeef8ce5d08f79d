"""Counted reliability trials (issue 8): faults survived, bad input refused, secrets kept.

Everything runs against the sandbox stand-ins on 127.0.0.1 with the real client libraries
(modelscope/httpx for the hub, oss2 for OSS, kubernetes for the API server). Each trial class is
a function taking its servers and a seeded `random.Random`; `tests/reliability/` runs a few
trials of the same functions, this script runs the full counts and prints the table:

    fault class | trials | survived | bytes re-sent (per fault) | leaks found

    uv run python bench/reliability.py                  # every class, full counts
    uv run python bench/reliability.py --trials 3       # every class, 3 trials each
    uv run python bench/reliability.py --only transfer  # one group: transfer, kube, workload,
                                                        # input, secrets, concurrency

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
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
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
from sandbox.http import RequestLog  # noqa: E402
from sandbox.hub import HubServer  # noqa: E402
from sandbox.oss import OssRequest, OssServer  # noqa: E402
from sandbox.synthetic import make_synthetic_model  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
PART = 256 * KiB
EXAMPLE = REPO / "examples" / "seed-vllm-single-gpu.yaml"
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
    root: Path, *, shards: int = 4, shard_bytes: int = 2 * MiB
) -> Iterator[TransferLab]:
    """Start the hub and OSS stand-ins and publish a synthetic model."""
    with ExitStack() as stack:
        hub = stack.enter_context(HubServer(root / "hub"))
        oss = stack.enter_context(
            OssServer(root / "oss", credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET])
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
    return [
        sys.executable,
        "-c",
        "from cli import main; main()",
        "sync",
        str(spec),
        "--part-size-mb",
        str(PART / MiB),
        "--max-parallel-files",
        "2",
        "--max-parallel-parts",
        "3",
        "--checkpoint-dir",
        str(checkpoints),
        "--no-progress",
    ]


def write_sync_spec(case: TransferCase, path: Path) -> Path:
    """A valid spec (the single-GPU example) whose model is this case's hub revision."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["model"] = {
        "modelscope": {"model_id": case.source.model_id, "revision": "v1"},
        "size_bytes": case.lab.total_bytes,
    }
    data["storage"].update(
        {"bucket": BUCKET, "endpoint": case.lab.oss.endpoint, "region": case.lab.oss.region}
    )
    path.write_text(yaml.safe_dump(data))
    return path


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
    spec = write_sync_spec(case, case.work / "spec.yaml")
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
        proc.communicate(timeout=60)
    runs = 1
    detail = f"killed after {kill_at} parts" if killed else "finished before the kill"
    for _ in range(MAX_RUNS):
        runs += 1
        done = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        if done.returncode == 0:
            break
        if done.returncode != 3:
            return TransferTrial(False, 1, 0, 0, runs, f"re-run exit {done.returncode}")
    return _finish(case, 1 if killed else 0, runs, detail)


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


@dataclass
class InputWorld:
    """The sandbox that a wrongly accepted input would write to."""

    hub: HubServer
    oss: OssServer
    kube_log: Any  # sandbox.kube.faults.RequestLog
    base: dict[str, Any]
    work: Path
    faults: Any = None  # sandbox.kube.faults.FaultPlan
    kubeconfig: Path = Path()

    def counts(self) -> tuple[int, int, int]:
        self.hub.wait_idle(10)
        self.oss.wait_idle(10)
        return len(self.hub.request_log), len(self.oss.request_log), len(self.kube_log.writes())


def _cli(argv: list[str]) -> tuple[int, str]:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, argv)
    return result.exit_code, result.output


def check_hostile_spec(world: InputWorld, label: str, field_name: str, mutate: Mutation) -> str:
    """'' when every entry point refuses the spec naming `field_name` before any write."""
    import copy

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
    """A valid tensor-parallel spec whose model and bucket live in the sandbox."""
    data = yaml.safe_load((REPO / "examples" / "seed-vllm-tp4.yaml").read_text())
    data["model"] = {
        "modelscope": {"model_id": model_id, "revision": "v1"},
        "size_bytes": size_bytes,
    }
    data["storage"].update({"bucket": BUCKET, "endpoint": oss_endpoint})
    data["rollout"] = {"promote_grace_s": 0, "ready_timeout_s": 60}
    return data


@contextmanager
def input_world(root: Path) -> Iterator[InputWorld]:
    """Hub, OSS and a Kubernetes cluster running, with the environment pointing at them."""
    from sandbox.kube.cluster import ClusterConfig, SandboxCluster

    with transfer_lab(root / "stores", shards=1, shard_bytes=256 * KiB) as lab:
        lab.hub.add_revision_from_dir("rel/input", "v1", lab.model_dir)
        with SandboxCluster(ClusterConfig(), root / "kube") as cluster:
            saved = {k: os.environ.get(k) for k in _ENV_KEYS}
            os.environ.update(
                {
                    "KUBECONFIG": str(cluster.kubeconfig),
                    "MODELSCOPE_ENDPOINT": lab.hub.base_url,
                    "OSS_ACCESS_KEY_ID": KEY_ID,
                    "OSS_ACCESS_KEY_SECRET": KEY_SECRET,
                }
            )
            try:
                yield InputWorld(
                    hub=lab.hub,
                    oss=lab.oss,
                    kube_log=cluster.api.request_log,
                    base=base_spec(lab.oss.endpoint, "rel/input", lab.total_bytes),
                    work=root / "input",
                    faults=cluster.api.faults,
                    kubeconfig=cluster.kubeconfig,
                )
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


_ENV_KEYS = ("KUBECONFIG", "MODELSCOPE_ENDPOINT", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET")


def run_input(trials: int, seed: int, root: Path) -> list[Row]:
    with input_world(root / "input") as world:
        return [run_bad_input_checks(world)]


# -- Kubernetes API faults + secrets ---------------------------------------------------------------
# Every API fault class the sandbox scripts, injected into one deploy run (count-limited rules).
def inject_api_faults(faults: Any, rng: random.Random, error_path: str | None = ".*") -> list[str]:
    """429 + Retry-After, 500s, resets and watch cuts; returns what was set.

    Not injected: 410 Gone. The sandbox's `error` rule cannot target watch requests only, and a
    410 on a plain list (which a real API server does not send) fails preflight.
    """
    done = []
    faults.throttle("PATCH", ".*", times=rng.randint(1, 3), retry_after=1)
    done.append("429 Retry-After on apply")
    if error_path is not None:
        faults.error("GET", error_path, times=rng.randint(1, 3), code=500)
        done.append(f"500 on GET {error_path}")
    faults.reset("*", ".*", times=rng.randint(1, 2))
    done.append("connection reset")
    faults.cut_watch(".*", after_events=rng.randint(1, 3), times=2)
    done.append("watch cut")
    return done


def scan_for_keys(texts: dict[str, str], keys: tuple[str, ...]) -> list[str]:
    """Where any key appears: the names of the texts holding one."""
    return [where for where, text in texts.items() if any(k in text for k in keys)]


class CapturedLogs:
    """Every Python log record of the process, formatted with its exception, while active."""

    def __init__(self) -> None:
        import logging

        self.lines: list[str] = []
        outer = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                outer.lines.append(self.format(record))

        self.handler = _Handler(level=logging.DEBUG)
        self.handler.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def __enter__(self) -> CapturedLogs:
        import logging

        logging.getLogger().addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import logging

        logging.getLogger().removeHandler(self.handler)


def prefect_texts(flow_run_id: str) -> dict[str, str]:
    """Logs, artifacts, parameters and state message of a flow run, read back via the API."""
    import asyncio
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async def read() -> dict[str, str]:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            return {
                "prefect logs": "\n".join(log.message for log in logs),
                "prefect artifacts": "\n".join(str(a.data) + str(a.description) for a in artifacts),
                "flow-run parameters": json.dumps(run.parameters, default=str),
                "flow-run state": str(run.state.message if run.state else ""),
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


# -- main ---------------------------------------------------------------------------------------
GROUPS = ("transfer", "kube", "workload", "input", "secrets", "concurrency")


def run_transfer(trials: int, seed: int, root: Path) -> list[Row]:
    rows = []
    with transfer_lab(root / "transfer") as lab:
        for spec in TRANSFER_CLASSES:
            row, _ = run_transfer_class(lab, spec, trials, seed)
            print(format_table([row]).splitlines()[2], flush=True)
            rows.append(row)
    return rows


RUNNERS: dict[str, Callable[[int, int, Path], list[Row]]] = {
    "transfer": run_transfer,
    "input": run_input,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=None, help="Trials per class.")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--only", choices=GROUPS, action="append")
    args = parser.parse_args(argv)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="llm-rollout-reliability-") as tmp:
        for group in args.only or GROUPS:
            runner = RUNNERS.get(group)
            if runner is None:
                rows.append(Row(group, notes="not implemented"))
                continue
            rows.extend(runner(args.trials or DEFAULT_TRIALS[group], args.seed, Path(tmp)))
    print()
    print(format_table(rows))
    failed = any(r.survived != r.trials or r.leaks for r in rows)
    return 1 if failed else 0


DEFAULT_TRIALS: dict[str, int] = {
    "transfer": 20,
    "kube": 20,
    "workload": 5,
    "input": 1,
    "secrets": 1,
    "concurrency": 5,
}

if __name__ == "__main__":
    sys.exit(main())
