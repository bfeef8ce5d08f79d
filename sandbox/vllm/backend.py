"""A kubelet ``BackendFactory`` that serves a workload's pods with one real vLLM process.

Contract (``sandbox.kube.backends``): the kubelet calls ``start(pod, container, port)`` when a
container starts, binds the returned backend's ``url`` as that pod port, probes it, and calls
``stop()`` when the container ends.

On two cores one engine per workload is all that fits, so every pod of one serving workload
(Deployment replicas, an LWS group's leader and workers, ...) shares one process, refcounted:
the first pod's start launches it, the last pod's stop ends it. ``start`` does not wait for the
model to load; until vLLM listens the pod's port refuses connections, exactly as a loading
server does, so the kubelet's probes decide readiness. A dead engine is replaced when a pod of
its workload starts again (e.g. after a container restart).

The engine's output is sent to ``log_sink(namespace, pod, container, line)`` for every attached
container (pass ``Store.append_log``), replaying what it printed before the pod attached, so
``kubectl logs`` and the readiness report show vLLM's own lines, errors included.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.kube.backends import parse_served_model
from sandbox.vllm.engine import (
    DEFAULT_KV_CACHE_BYTES,
    DEFAULT_MAX_MODEL_LEN,
    LOG_RING,
    STOP_TIMEOUT,
    VllmEngine,
)

Obj = dict[str, Any]
LogSink = Callable[[str, str, str, str], None]
ModelDirFor = Callable[[Obj, Obj], Path]

# Labels that name the serving workload a pod belongs to, most specific first.
WORKLOAD_LABELS = (
    "leaderworkerset.sigs.k8s.io/name",
    "rolebasedgroup.workloads.x-k8s.io/name",
    "ray.io/cluster",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/name",
    "app",
)


def workload_key(pod: Mapping[str, Any]) -> str:
    """``namespace/workload`` for a pod: a workload label, else its owner (ReplicaSets are
    folded into their Deployment by dropping the pod-template-hash suffix)."""
    meta = pod.get("metadata") or {}
    namespace = meta.get("namespace", "default")
    labels = meta.get("labels") or {}
    for label in WORKLOAD_LABELS:
        if labels.get(label):
            return f"{namespace}/{label}={labels[label]}"
    for owner in meta.get("ownerReferences") or []:
        name = str(owner.get("name", ""))
        template_hash = labels.get("pod-template-hash")
        if owner.get("kind") == "ReplicaSet" and template_hash and name.endswith(template_hash):
            name = name[: -len(template_hash) - 1]
        return f"{namespace}/{owner.get('kind')}={name}"
    return f"{namespace}/pod={meta.get('name', '')}"


@dataclass
class _Shared:
    """One engine and the containers attached to it."""

    key: str
    engine: VllmEngine
    refs: int = 0
    attached: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=LOG_RING)
    )
    lock: threading.Lock = field(default_factory=threading.Lock)


class VllmBackend:
    """One container port's view of a shared engine."""

    def __init__(self, factory: VllmBackendFactory, shared: _Shared, handle: int) -> None:
        self._factory = factory
        self._shared = shared
        self._handle = handle
        self._released = False

    @property
    def url(self) -> str:
        return self._shared.engine.url

    @property
    def engine(self) -> VllmEngine:
        return self._shared.engine

    @property
    def workload(self) -> str:
        return self._shared.key

    @property
    def writes_container_log(self) -> bool:
        """True when the engine's output goes to the container log (the kubelet then writes no
        start lines of its own)."""
        return self._factory.writes_logs

    @property
    def exit_code(self) -> int | None:
        """None while the engine runs; once it died and its last lines reached the log, its
        exit status as a container runtime reports it (killed by signal N: 128 + N)."""
        engine = self._shared.engine
        if not engine.drained:
            return None
        code = engine.exit_code
        if code is None:
            return None
        return 128 - code if code < 0 else code

    def lines(self) -> list[str]:
        with self._shared.lock:
            return list(self._shared.lines)

    def stop(self) -> None:
        if self._released:
            return
        self._released = True
        self._factory._release(self._shared, self._handle)


class VllmBackendFactory:
    """Maps all pods of a serving workload onto one real vLLM serving ``model_dir``.

    ``model_dir`` is a directory, or a function of (pod, container) returning one (e.g. the
    local side of the pod's model volume). The served model name comes from the container's
    ``--served-model-name`` (as vLLM would read it), else ``served_name``. The other engine
    flags are this machine's CPU flags, not the container's GPU ones.
    """

    def __init__(
        self,
        model_dir: Path | ModelDirFor,
        *,
        served_name: str | None = None,
        log_sink: LogSink | None = None,
        key_for: Callable[[Obj], str] = workload_key,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        kv_cache_bytes: str = DEFAULT_KV_CACHE_BYTES,
        venv: Path | None = None,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self._model_dir = model_dir
        self._served_name = served_name
        self._log_sink = log_sink
        self._key_for = key_for
        self._max_model_len = max_model_len
        self._kv_cache_bytes = kv_cache_bytes
        self._venv = venv
        self._stop_timeout = stop_timeout
        self._lock = threading.Lock()
        self._current: dict[str, _Shared] = {}
        self._next_handle = 0
        self._stoppers: list[threading.Thread] = []
        self.engines_started = 0

    @property
    def writes_logs(self) -> bool:
        return self._log_sink is not None

    def start(self, pod: Obj, container: Obj, port: int) -> VllmBackend:
        key = self._key_for(pod)
        meta = pod.get("metadata") or {}
        target = (meta.get("namespace", "default"), meta.get("name", ""), container.get("name", ""))
        with self._lock:
            shared = self._current.get(key)
            if shared is None or shared.engine.exit_code is not None:
                shared = self._launch(key, pod, container)
                self._current[key] = shared
            shared.refs += 1
            self._next_handle += 1
            handle = self._next_handle
        with shared.lock:
            # One container may have several ports; its log gets the engine's lines once.
            first_for_container = target not in shared.attached.values()
            shared.attached[handle] = target
            backlog = list(shared.lines) if first_for_container else []
        if self._log_sink is not None:
            for line in backlog:
                self._log_sink(*target, line)
        return VllmBackend(self, shared, handle)

    def _launch(self, key: str, pod: Obj, container: Obj) -> _Shared:
        served_from_args, _ = parse_served_model(container)
        has_flag = any(
            "--served-model-name" in str(part)
            for part in list(container.get("command") or []) + list(container.get("args") or [])
        )
        served = served_from_args if has_flag else (self._served_name or served_from_args)
        model_dir = (
            self._model_dir(pod, container) if callable(self._model_dir) else self._model_dir
        )
        holder: list[_Shared] = []

        def on_line(line: str) -> None:
            shared = holder[0]
            with shared.lock:
                shared.lines.append(line)
                targets = list(dict.fromkeys(shared.attached.values()))
            if self._log_sink is not None:
                for target in targets:
                    self._log_sink(*target, line)

        engine = VllmEngine(
            model_dir,
            served_name=served,
            max_model_len=self._max_model_len,
            kv_cache_bytes=self._kv_cache_bytes,
            venv=self._venv,
            on_line=on_line,
        )
        shared = _Shared(key=key, engine=engine)
        holder.append(shared)
        engine.launch()
        self.engines_started += 1
        return shared

    def _release(self, shared: _Shared, handle: int) -> None:
        with self._lock:
            shared.refs -= 1
            with shared.lock:
                shared.attached.pop(handle, None)
            if shared.refs > 0:
                return
            if self._current.get(shared.key) is shared:
                del self._current[shared.key]
        # SIGTERM and the wait for vLLM's shutdown take seconds; the kubelet must not block.
        stopper = threading.Thread(
            target=shared.engine.stop,
            args=(self._stop_timeout,),
            name=f"vllm-stop-{shared.engine.port}",
            daemon=True,
        )
        stopper.start()
        with self._lock:
            self._stoppers = [t for t in self._stoppers if t.is_alive()] + [stopper]

    def running(self) -> dict[str, VllmEngine]:
        """Workload key -> its live engine."""
        with self._lock:
            return {k: s.engine for k, s in self._current.items()}

    def close(self, timeout: float = STOP_TIMEOUT * 2) -> None:
        """Stop every engine now, whatever still refers to it, and wait for them to exit."""
        with self._lock:
            shared = list(self._current.values())
            self._current.clear()
            stoppers = list(self._stoppers)
        for s in shared:
            s.engine.stop(self._stop_timeout)
        for t in stoppers:
            t.join(timeout)
