"""Start, watch and stop a real vLLM OpenAI-compatible server from the engine venv.

The venv is ``sandbox.vllm.install.venv_dir()`` (in the per-user cache) unless one is given.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import httpx
import psutil

from sandbox.vllm.install import is_installed, venv_dir, venv_python

# Flags that work on this CPU (see the field notes): without an explicit KV cache size vLLM
# reserves --gpu-memory-utilization (0.92) of the NUMA node's memory and refuses to start when
# less is free (still so with PyPI's CUDA torch on the polyglot machine); eager mode skips a
# long compile.
DEFAULT_MAX_MODEL_LEN = 512
DEFAULT_KV_CACHE_BYTES = "64M"
POLL_INTERVAL = 0.25
START_TIMEOUT = 240.0
STOP_TIMEOUT = 20.0
LOG_RING = 4000
_ERROR_MARKERS = ("error", "exception", "failed")
_PORT_TAKEN = "Address already in use"
_EXCEPTION_LINE = re.compile(r"\b[A-Z]\w*(?:Error|Exception)(?:\[[^\]]*\])?: \S")


class EngineError(RuntimeError):
    """The engine failed to start or died; ``lines`` holds its own output."""

    def __init__(self, message: str, lines: Sequence[str] = ()) -> None:
        self.lines = list(lines)
        detail = "\n".join(error_lines(self.lines) or self.lines[-20:])
        super().__init__(f"{message}\n--- engine output ---\n{detail}" if detail else message)


class EngineNotInstalled(EngineError):
    """The engine venv is missing or incomplete."""


def error_lines(lines: Sequence[str], limit: int = 30) -> list[str]:
    """The lines of an engine log worth showing a user: exception messages first.

    A failing vLLM prints long tracebacks (once per process, each line prefixed); the lines
    that name the exception and its message say what went wrong.
    """
    summaries = [line for line in lines if _EXCEPTION_LINE.search(line)]
    if summaries:
        return list(dict.fromkeys(summaries))[-limit:]
    picked = [line for line in lines if any(m in line.lower() for m in _ERROR_MARKERS)]
    return picked[-limit:]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class VllmEngine:
    """One ``vllm.entrypoints.openai.api_server`` process serving one model directory.

    ``on_line`` is called (from a reader thread) with every output line, e.g. to write them as
    container logs; the last ``LOG_RING`` lines are also kept for error reports.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        served_name: str,
        port: int | None = None,
        host: str = "127.0.0.1",
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        kv_cache_bytes: str = DEFAULT_KV_CACHE_BYTES,
        extra_args: Sequence[str] = (),
        venv: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.served_name = served_name
        self.host = host
        self._port_given = port is not None
        self.port = port if port is not None else free_port(host)
        self.max_model_len = max_model_len
        self.kv_cache_bytes = kv_cache_bytes
        self.extra_args = list(extra_args)
        self.venv = venv if venv is not None else venv_dir()
        self._on_line = on_line
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_RING)
        self._lock = threading.Lock()
        self._exited = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.started_at: float | None = None
        self.ready_after: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        return [
            str(venv_python(self.venv)),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            "bfloat16",
            "--max-model-len",
            str(self.max_model_len),
            "--enforce-eager",
            "--kv-cache-memory-bytes",
            self.kv_cache_bytes,
            *self.extra_args,
        ]

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn the server and return once it serves the model; raise EngineError otherwise."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except EngineError as exc:
            self.stop()
            # A port picked free can be taken before vLLM binds it (other engines start in
            # parallel on this machine): one more try on a fresh port.
            if not self._port_given and any(_PORT_TAKEN in line for line in exc.lines):
                self._reset(free_port(self.host))
                self.launch()
                try:
                    self.wait_ready(timeout)
                except BaseException:
                    self.stop()
                    raise
                return
            raise
        except BaseException:
            self.stop()
            raise

    def _reset(self, port: int) -> None:
        self.port = port
        self._process = None
        self._reader = None
        self._exited = threading.Event()
        with self._lock:
            self._lines.clear()
        self.started_at = None
        self.ready_after = None

    def launch(self) -> None:
        """Spawn the server without waiting for it (a pod's container start does not wait)."""
        if self._process is not None:
            raise EngineError("engine already started")
        if not is_installed(self.venv):
            raise EngineNotInstalled(
                f"vLLM is not installed in {self.venv}: run scripts/install-vllm"
            )
        env = dict(os.environ)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                # A local directory is all it needs; never reach out to a hub.
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        self.started_at = time.monotonic()
        # Own session so that stop() reaches the EngineCore child processes as well.
        self._process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"vllm-{self.port}", daemon=True)
        self._reader.start()

    @property
    def exit_code(self) -> int | None:
        """None while running (or never launched); the exit status once the process ended."""
        return self._process.poll() if self._process is not None else None

    @property
    def drained(self) -> bool:
        """The process ended and every line it printed was read (and passed to ``on_line``)."""
        return self._exited.is_set()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.rstrip("\n")
            with self._lock:
                self._lines.append(line)
            if self._on_line is not None:
                self._on_line(line)
        self._process.wait()
        self._exited.set()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll until the model is served; raise EngineError with the engine's lines if the
        process exits first or the deadline passes (the process is left to the caller)."""
        if self._process is None:
            raise EngineError("engine not launched")
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._exited.is_set() or (self._process and self._process.poll() is not None):
                    # Let the reader drain what the process printed before it died.
                    self._exited.wait(5.0)
                    code = self._process.returncode if self._process else None
                    raise EngineError(f"vLLM exited with code {code} while starting", self.lines())
                if self._serves_model(client):
                    if self.started_at is not None and self.ready_after is None:
                        self.ready_after = time.monotonic() - self.started_at
                    return
                if time.monotonic() > deadline:
                    raise EngineError(f"vLLM not ready after {timeout:.0f} s", self.lines())
                # Doubles as the poll interval and an early wake-up if the process exits.
                self._exited.wait(POLL_INTERVAL)

    def _serves_model(self, client: httpx.Client) -> bool:
        try:
            health = client.get(f"{self.url}/health")
            if health.status_code != 200:
                return False
            models = client.get(f"{self.url}/v1/models")
        except httpx.TransportError:
            return False
        if models.status_code != 200:
            return False
        served = [m.get("id") for m in models.json().get("data", [])]
        return self.served_name in served

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the engine's process group, SIGKILL it after ``timeout``. Returns the code."""
        process = self._process
        if process is None:
            return None
        children = self._children()
        if process.poll() is None:
            # The group is signalled only while its leader is unreaped, so its id is still ours.
            self._signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout)
        for child in children:
            # psutil checks the creation time, so a recycled pid is never hit.
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        if self._reader is not None:
            self._reader.join(timeout)
        return process.returncode

    def _children(self) -> list[psutil.Process]:
        if self._process is None or self._process.poll() is not None:
            return []
        try:
            return list(psutil.Process(self._process.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def rss_bytes(self) -> int:
        """Resident memory of the server and its child processes."""
        if self._process is None or self._process.poll() is not None:
            return 0
        total = 0
        try:
            procs = [psutil.Process(self._process.pid), *self._children()]
        except psutil.NoSuchProcess:
            return 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def __enter__(self) -> VllmEngine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
