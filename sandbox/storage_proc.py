"""The sandbox hub and OSS in a process of their own.

In the test or benchmark process the servers compete with the clients for the GIL; here they
have an interpreter to themselves. Launch from a shell::

    python -m sandbox.storage_proc --root DIR \\
        --hub-model acme/model=v1:/path/to/model --hub-branch acme/model=master:v1 \\
        --oss-key AK:SK --bucket models \\
        --hub-aggregate-bps 100000000 --oss-aggregate-bps 100000000 \\
        --ready-file DIR/ready.json

or from Python::

    with spawn_storage(tmp / "storage", credentials={AK: SK}, buckets=["models"],
                       hub_revisions=[HubRevision("acme/model", "v1", model_dir)],
                       hub_aggregate_bandwidth_bytes_per_s=100_000_000,
                       oss_aggregate_bandwidth_bytes_per_s=100_000_000) as storage:
        storage.hub_url, storage.oss_endpoint, storage.region
        storage.hub_stats().bytes_served, storage.oss_stats().bytes_received
        storage.reset_counters()

The child writes ``{"pid", "hub_url", "oss_endpoint", "region"}`` as one JSON line to
``--ready-fd`` and/or atomically to ``--ready-file`` once both servers listen and every hub
revision is registered (shard sha256s computed). It serves until SIGTERM or SIGINT (or, with
``--exit-on-stdin-eof``, until its stdin closes: the parent died), then stops both servers and
exits 0. Counters come from the admin endpoints each server answers under ``/__sandbox/``
(``stats``, ``requests``, ``reset``, ``health``; see ``sandbox.http``). Fault injection
(``hub.faults``, ``oss.faults``) is available in-process only: tests that script faults run
``HubServer``/``OssServer`` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

from sandbox.hub import HubRequest, HubServer
from sandbox.oss import OssRequest, OssServer

_REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0


# -- the child ----------------------------------------------------------------------------
def _split_model_arg(text: str, what: str) -> tuple[str, str, str]:
    """``MODEL_ID=NAME:REST`` -> (model_id, name, rest)."""
    model_id, eq, rest = text.partition("=")
    name, colon, tail = rest.partition(":")
    if not eq or not colon or not model_id or not name or not tail:
        raise argparse.ArgumentTypeError(f"{what} wants MODEL_ID=NAME:VALUE, got {text!r}")
    return model_id, name, tail


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.storage_proc",
        description="Run the sandbox ModelScope hub and OSS until SIGTERM.",
    )
    parser.add_argument("--root", type=Path, required=True, help="working directory")
    parser.add_argument("--oss-data", type=Path, help="OSS data dir (default ROOT/oss)")
    parser.add_argument(
        "--hub-model",
        action="append",
        default=[],
        metavar="MODEL_ID=REV:DIR",
        help="serve DIR as revision REV of MODEL_ID (the first revision becomes master)",
    )
    parser.add_argument(
        "--hub-branch",
        action="append",
        default=[],
        metavar="MODEL_ID=BRANCH:REV",
        help="point BRANCH of MODEL_ID at REV (after all --hub-model)",
    )
    parser.add_argument("--oss-key", action="append", default=[], metavar="AK:SK")
    parser.add_argument("--bucket", action="append", default=[])
    parser.add_argument("--region", default="cn-hangzhou")
    parser.add_argument("--hub-bps", type=int, help="hub cap per connection, bytes/s")
    parser.add_argument("--hub-aggregate-bps", type=int, help="hub cap, all connections")
    parser.add_argument("--oss-bps", type=int, help="OSS cap per connection, bytes/s")
    parser.add_argument("--oss-aggregate-bps", type=int, help="OSS cap, all connections")
    parser.add_argument("--ready-file", type=Path, help="write the ready JSON here")
    parser.add_argument("--ready-fd", type=int, help="write the ready JSON line to this fd")
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="stop when stdin closes (the launching process is gone)",
    )
    args = parser.parse_args(argv)
    for spec in args.oss_key:
        if ":" not in spec:
            parser.error(f"--oss-key wants AK:SK, got {spec.split(':')[0]!r}...")
    try:
        args.hub_model = [_split_model_arg(t, "--hub-model") for t in args.hub_model]
        args.hub_branch = [_split_model_arg(t, "--hub-branch") for t in args.hub_branch]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    for model_id, revision, directory in args.hub_model:
        if not Path(directory).is_dir():
            parser.error(f"--hub-model {model_id}={revision}: {directory} is not a directory")
    return args


def _watch_stdin() -> None:
    """Turn EOF on stdin (the parent closed it or died) into a SIGTERM to ourselves."""
    # Raw fd reads: a daemon thread parked in a buffered stdin read would abort the
    # interpreter at shutdown (the buffer's lock is held).
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    # Blocked before any thread starts (threads inherit the mask): sigwait below is the
    # only place these signals are taken, so a stop always runs the orderly shutdown.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    hub = HubServer(
        root / "hub",
        bandwidth_bytes_per_s=args.hub_bps,
        aggregate_bandwidth_bytes_per_s=args.hub_aggregate_bps,
    )
    for model_id, revision, directory in args.hub_model:
        hub.add_revision_from_dir(model_id, revision, Path(directory))
    for model_id, branch, revision in args.hub_branch:
        hub.move_branch(model_id, branch, revision)
    oss = OssServer(
        (args.oss_data or root / "oss").resolve(),
        credentials=dict(spec.split(":", 1) for spec in args.oss_key),
        buckets=args.bucket,
        bandwidth_bytes_per_s=args.oss_bps,
        aggregate_bandwidth_bytes_per_s=args.oss_aggregate_bps,
        region=args.region,
    )
    hub.start()
    oss.start()
    try:
        ready = json.dumps(
            {
                "pid": os.getpid(),
                "hub_url": hub.base_url,
                "oss_endpoint": oss.endpoint,
                "region": oss.region,
            }
        )
        if args.ready_file is not None:
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(ready + "\n")
            tmp.replace(args.ready_file)
        if args.ready_fd is not None:
            with os.fdopen(args.ready_fd, "w") as out:
                out.write(ready + "\n")
        if args.exit_on_stdin_eof:
            threading.Thread(target=_watch_stdin, name="stdin-watch", daemon=True).start()
        received = signal.sigwait(stop_signals)
        sys.stderr.write(f"storage_proc: {signal.Signals(received).name}, stopping\n")
    finally:
        oss.stop()
        hub.stop()
    errors = hub.internal_errors + oss.internal_errors
    for text in errors:
        sys.stderr.write(f"storage_proc: internal error\n{text}\n")
    return 1 if errors else 0


# -- the parent ---------------------------------------------------------------------------
class StorageProcessError(RuntimeError):
    """The storage child failed to start, died, or an admin call failed."""


@dataclass(frozen=True)
class HubRevision:
    """A directory served as one revision of a model (the first one of a model is master)."""

    model_id: str
    revision: str
    directory: Path


@dataclass(frozen=True)
class HubStats:
    bytes_served: int
    requests: int
    requests_by_status: dict[str, int]
    file_gets: int
    range_gets: int
    internal_errors: list[str]
    idle: bool
    process_cpu_seconds: float
    process_max_rss_bytes: int


@dataclass(frozen=True)
class OssStats:
    bytes_received: int
    bytes_sent: int
    requests: int
    requests_by_op: dict[str, int]
    requests_by_status: dict[str, int]
    internal_errors: list[str]
    idle: bool
    fast_crc64: bool
    process_cpu_seconds: float
    process_max_rss_bytes: int


@dataclass
class StorageProcess:
    """A running storage child; use as a context manager (or call ``stop()``)."""

    process: subprocess.Popen[bytes]
    hub_url: str
    oss_endpoint: str
    region: str
    log_path: Path
    _client: httpx.Client = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def _admin(self, base: str, method: str, name: str, idle_timeout: float) -> object:
        if not self.running():
            raise StorageProcessError(f"storage process exited ({self.process.returncode})")
        try:
            response = self._client.request(
                method,
                f"{base}/__sandbox/{name}",
                params={"idle_timeout": str(idle_timeout)},
                timeout=idle_timeout + 30,
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise StorageProcessError(f"admin {method} {name} at {base}: {exc}") from exc
        return response.json()

    def hub_stats(self, *, idle_timeout: float = 5.0) -> HubStats:
        """Hub counters, once no hub request is in flight (or after ``idle_timeout``)."""
        raw = self._admin(self.hub_url, "GET", "stats", idle_timeout)
        assert isinstance(raw, dict)
        return HubStats(**{k: raw[k] for k in HubStats.__dataclass_fields__})

    def oss_stats(self, *, idle_timeout: float = 5.0) -> OssStats:
        """OSS counters, once no OSS request is in flight (or after ``idle_timeout``)."""
        raw = self._admin(self.oss_endpoint, "GET", "stats", idle_timeout)
        assert isinstance(raw, dict)
        return OssStats(**{k: raw[k] for k in OssStats.__dataclass_fields__})

    def hub_requests(self, *, idle_timeout: float = 5.0) -> list[HubRequest]:
        raw = self._admin(self.hub_url, "GET", "requests", idle_timeout)
        assert isinstance(raw, dict)
        return [HubRequest(**r) for r in raw["requests"]]

    def oss_requests(self, *, idle_timeout: float = 5.0) -> list[OssRequest]:
        raw = self._admin(self.oss_endpoint, "GET", "requests", idle_timeout)
        assert isinstance(raw, dict)
        return [OssRequest(**r) for r in raw["requests"]]

    def reset_counters(self) -> None:
        """Zero both servers' byte counters and request logs."""
        self._admin(self.hub_url, "POST", "reset", 0)
        self._admin(self.oss_endpoint, "POST", "reset", 0)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; the exit code."""
        self._client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_ready(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, str]:
    """Read the child's ready line; fails at once if the child dies first."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"storage process not ready after {timeout:.0f} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        block = os.read(fd, 4096)
        if not block:
            proc.wait(STOP_TIMEOUT)
            raise StorageProcessError(f"storage process exited ({proc.returncode}) before ready")
        data += block
    ready: dict[str, str] = json.loads(data)
    return ready


def spawn_storage(
    workdir: Path,
    *,
    credentials: Mapping[str, str],
    buckets: Sequence[str] = (),
    hub_revisions: Sequence[HubRevision] = (),
    hub_branches: Sequence[tuple[str, str, str]] = (),
    hub_bandwidth_bytes_per_s: int | None = None,
    hub_aggregate_bandwidth_bytes_per_s: int | None = None,
    oss_bandwidth_bytes_per_s: int | None = None,
    oss_aggregate_bandwidth_bytes_per_s: int | None = None,
    oss_data_dir: Path | None = None,
    region: str = "cn-hangzhou",
    start_timeout: float = START_TIMEOUT,
) -> StorageProcess:
    """Start ``python -m sandbox.storage_proc`` and wait until both servers answer.

    ``workdir`` gets ``hub/``, ``oss/`` (unless ``oss_data_dir``) and ``storage.log`` (the
    child's stderr). ``hub_branches`` are ``(model_id, branch, revision)``. The child exits
    on its own if this process dies (it watches its stdin). Raises ``StorageProcessError``
    with the child's log tail if it exits before it is ready.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "sandbox.storage_proc", "--root", str(workdir)]
    argv += ["--region", region, "--exit-on-stdin-eof"]
    if oss_data_dir is not None:
        argv += ["--oss-data", str(Path(oss_data_dir).resolve())]
    for rev in hub_revisions:
        argv += ["--hub-model", f"{rev.model_id}={rev.revision}:{Path(rev.directory).resolve()}"]
    for model_id, branch, revision in hub_branches:
        argv += ["--hub-branch", f"{model_id}={branch}:{revision}"]
    for ak, sk in credentials.items():
        argv += ["--oss-key", f"{ak}:{sk}"]
    for name in buckets:
        argv += ["--bucket", name]
    caps = {
        "--hub-bps": hub_bandwidth_bytes_per_s,
        "--hub-aggregate-bps": hub_aggregate_bandwidth_bytes_per_s,
        "--oss-bps": oss_bandwidth_bytes_per_s,
        "--oss-aggregate-bps": oss_aggregate_bandwidth_bytes_per_s,
    }
    for flag, value in caps.items():
        if value is not None:
            argv += [flag, str(int(value))]
    read_fd, write_fd = os.pipe()
    argv += ["--ready-fd", str(write_fd)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    log_path = workdir / "storage.log"
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                pass_fds=(write_fd,),
                env=env,
                cwd=workdir,
            )
    finally:
        os.close(write_fd)
    client = httpx.Client(trust_env=False)
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as ready_pipe:
            ready = _read_ready(ready_pipe.fileno(), proc, start_timeout)
    except (TimeoutError, StorageProcessError, ValueError) as exc:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise StorageProcessError(f"{exc}\n--- storage.log ---\n{tail}") from exc
    return StorageProcess(
        process=proc,
        hub_url=ready["hub_url"],
        oss_endpoint=ready["oss_endpoint"],
        region=ready["region"],
        log_path=log_path,
        _client=client,
    )


__all__ = [
    "HubRevision",
    "HubStats",
    "OssStats",
    "StorageProcess",
    "StorageProcessError",
    "main",
    "spawn_storage",
]

if __name__ == "__main__":
    sys.exit(main())
