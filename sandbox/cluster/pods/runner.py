"""The node agent's pod runner: the pods kube-scheduler binds to a node run there.

One :class:`PodRunner` per node lists and watches the pods bound to it (``spec.nodeName``) with
the node's own identity; each pod gets a :class:`PodWorker` thread that does what the kubelet's
pod worker does for it (``pkg/kubelet/pod_workers.go``, ``kuberuntime_manager.go`` SyncPod): make
the sandbox, run the init containers one after another and then the containers, restart them
per ``restartPolicy`` with the back-off, run their probes, write the pod's status, and on
deletion stop the containers within the grace period, tear the sandbox down and delete the pod
with grace 0 (``pkg/kubelet/status/status_manager.go``: ``NewDeleteOptions(0)`` with the pod's
UID as precondition).
"""

from __future__ import annotations

import json
import logging
import secrets as token
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from sandbox.cluster import images
from sandbox.cluster.pods import env as podenv
from sandbox.cluster.pods import volumes
from sandbox.cluster.pods.containers import (
    Backoff,
    BackoffPolicy,
    Run,
    enter_container,
    start_run,
    utc_now,
)
from sandbox.cluster.pods.memory import OOM_KILLED, MemoryCgroups, memory_limit_bytes
from sandbox.cluster.pods.probes import ProbeKind, ProbeSpec, ProbeWorker, prober_for
from sandbox.cluster.pods.sandbox import (
    PodIpAllocator,
    Sandbox,
    SandboxError,
    create_sandbox,
    enable_forwarding,
)
from sandbox.cluster.pods.status import (
    CRASH_LOOP_BACK_OFF,
    CREATE_CONTAINER_CONFIG_ERROR,
    ERR_IMAGE_PULL,
    IMAGE_PULL_BACK_OFF,
    POD_INITIALIZING,
    Conditions,
    ContainerRecord,
    Terminated,
    pod_conditions,
    pod_phase,
)

log = logging.getLogger("node-agent.pods")
# As the kubelet's status manager writes pod status (pkg/util/pod/pod.go PatchPodStatus: a
# two-way strategic merge patch), so conditions merge by type and the ones other components
# own (PodScheduled from the scheduler, DisruptionTarget from taint eviction, Ready set False
# by the node-lifecycle controller's MarkPodsNotReady until the kubelet reports again) stay.
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# The one field manager of every write the node agent makes (Nodes, Leases, pod status,
# Events), so managedFields tell its writes from the controllers'.
FIELD_MANAGER = "llm-rollout-node-agent"
DEFAULT_GRACE_S = 30.0
# kuberuntime_container.go minimumGracePeriodInSeconds.
MINIMUM_GRACE_S = 2.0


def go_duration(seconds: float) -> str:
    """A duration as Go's time.Duration prints whole seconds ("10s", "1m20s", "5m0s")."""
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def no_registry_fault(image: str) -> str | None:
    """Every pull goes through (the image table decides whether it finds anything)."""
    return None


@dataclass(frozen=True)
class NodeContext:
    """What every pod worker of one node shares."""

    node_name: str
    host_ip: str
    api: k8s.ApiClient
    allocator: PodIpAllocator
    pods_dir: Path
    backoff: BackoffPolicy
    nameserver: str
    # True while the node is cut off from the API server (a lost node, issue 14 item 7): its
    # pods keep running, but it neither hears of changes nor writes status or Events.
    cut_off: Callable[[], bool]
    # The agent's memory cgroups (one per container run), shared by its nodes.
    memory: MemoryCgroups
    # image -> the registry's error for a pull of it now, None when the pull goes through
    # (node_agent.registry_faults_file).
    registry_fault: Callable[[str], str | None] = no_registry_fault


@dataclass
class Slot:
    """One container of the pod and its current run."""

    spec: dict[str, Any]
    record: ContainerRecord
    backoff: Backoff
    pull_backoff: Backoff
    run: Run | None = None
    logs: list[Path] = field(default_factory=list)
    exit_handled: bool = True
    next_try_mono: float = 0.0
    done: bool = False
    # The restart whose BackOff event has been recorded (one event per back-off, as the
    # kubelet's recorder aggregates repeats).
    announced_mono: float = -1.0
    # The running container's environment, which exec'd commands get too.
    env: dict[str, str] = field(default_factory=dict)
    probes: dict[ProbeKind, ProbeWorker] = field(default_factory=dict)
    # A sidecar that has started once no longer holds the init containers after it back
    # (computeInitContainerActions starts the next one the first time it is started).
    initialized_once: bool = False
    # Stopped with the pod's end, not to be restarted.
    stopped_for_good: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def stop_probes(self) -> None:
        for worker in self.probes.values():
            worker.stop()
        self.probes = {}


class PodWorker:
    """Runs one pod on its node until it is deleted or the agent stops."""

    def __init__(self, pod: dict[str, Any], ctx: NodeContext) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.uid = str(meta["uid"])
        self.namespace = str(meta["namespace"])
        self.name = str(meta["name"])
        spec = pod["spec"]
        self.restart_policy = str(spec.get("restartPolicy") or "Always")
        self.core = k8s.CoreV1Api(ctx.api)
        self.directory = ctx.pods_dir / f"{self.namespace}_{self.name}_{self.uid}"
        policy = ctx.backoff

        def slot(container: dict[str, Any], init: bool) -> Slot:
            record = ContainerRecord(
                name=str(container["name"]),
                image=str(container.get("image", "")),
                init=init,
                sidecar=init and container.get("restartPolicy") == "Always",
            )
            return Slot(container, record, Backoff(policy), Backoff(policy))

        self.init_slots = [slot(c, True) for c in spec.get("initContainers") or []]
        self.slots = [slot(c, False) for c in spec.get("containers") or []]
        waiting = POD_INITIALIZING if self.init_slots else None
        for s in self.init_slots + self.slots:
            if waiting and not s.record.init:
                s.record.waiting_reason = waiting
        self.sandbox: Sandbox | None = None
        self.pod_ip = ""
        # The volume manager's state for this pod: mounted once, failures retried with the
        # nested pending operations' back-off and one FailedMount event per distinct error.
        self._mounted = not (spec.get("volumes") or [])
        self._mount_backoff = Backoff(
            BackoffPolicy(volumes.MOUNT_RETRY_BASE_S, volumes.MOUNT_RETRY_MAX_S)
        )
        self._mount_next_mono = 0.0
        self._mount_error = ""
        self._mount_event: str | None = None
        self._mount_event_count = 0
        self._mounted_targets: set[str] = set()
        self.start_time = utc_now()
        self.conditions = Conditions()
        self._posted: dict[str, Any] | None = None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._deleting = False
        self._gone = False
        self._stopping_agent = False
        self._kill_requests: dict[str, str] = {}
        self._thread = threading.Thread(target=self._main, name=f"pod-{self.name}", daemon=True)

    # --- control from the runner ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self.pod = pod
            if pod["metadata"].get("deletionTimestamp"):
                self._deleting = True
        self._wake.set()

    def gone(self) -> None:
        """The pod was removed from the API (force-deleted): stop without writing to it."""
        with self._lock:
            self._gone = True
            self._deleting = True
        self._wake.set()

    def stop_for_agent(self) -> None:
        with self._lock:
            self._stopping_agent = True
        # Every container goes with the agent at once, from here: the pod's thread may be
        # waiting out a grace period of up to the pod's terminationGracePeriodSeconds (a
        # liveness kill, a deletion, the sidecars' ordered stop) and would only then notice
        # the agent's stop, past the supervisor's grace for the agent itself.
        for s in self.init_slots + self.slots:
            run = s.run
            if run is not None and run.process.poll() is None:
                run.signal(signal.SIGKILL)
        self._wake.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def log_path(self, container: str, previous: bool) -> Path | None:
        for s in self.init_slots + self.slots:
            if s.name == container:
                index = -2 if previous else -1
                return s.logs[index] if len(s.logs) >= -index else None
        return None

    def log_writer_exited(self, container: str, path: Path) -> threading.Event | None:
        """The event set when the running container writing ``path`` ends; None when no
        running container writes it."""
        for s in self.init_slots + self.slots:
            run = s.run
            if s.name == container and run is not None and run.log == path:
                return None if run.exited.is_set() else run.exited
        return None

    def exec_target(self, container: str) -> tuple[list[str], dict[str, str]] | None:
        """How to run a command in ``container`` while it runs: the argv prefix that enters the
        pod's namespaces, and the container's environment."""
        for s in self.init_slots + self.slots:
            running = s.run is not None and s.run.exit_code is None
            if s.name == container and running and self.sandbox is not None:
                assert s.run is not None
                workdir = str(s.spec.get("workingDir") or "") or None
                pid1 = s.run.pid1()
                if pid1 is None:
                    return self.sandbox.enter(workdir), s.env
                return enter_container(pid1, workdir, s.run.cgroup), s.env
        return None

    def sandbox_pid(self) -> int | None:
        """The process holding the pod's namespaces, while the sandbox exists."""
        return None if self.sandbox is None else self.sandbox.pid

    def has_container(self, container: str) -> bool:
        return any(s.name == container for s in self.init_slots + self.slots)

    # --- the pod's life -------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run()
        except SandboxError as exc:
            # kuberuntime_manager.go: events.FailedCreatePodSandBox, "Failed to create pod
            # sandbox: %v"; the kubelet retries, this agent leaves the pod Pending.
            log.error("pod %s/%s: %s", self.namespace, self.name, exc)
            self._event(
                None, "Warning", "FailedCreatePodSandBox", f"Failed to create pod sandbox: {exc}"
            )
            self._kill_all(grace_s=0)
            self._teardown()
        except (ApiException, OSError, subprocess.SubprocessError) as exc:
            log.error("pod %s/%s: %s", self.namespace, self.name, exc)
            self._kill_all(grace_s=0)
            self._teardown()

    def _run(self) -> None:
        self.pod_ip = self.ctx.allocator.allocate()
        spec = self.pod["spec"]
        self.sandbox = create_sandbox(
            pod_uid=self.uid,
            namespace=self.namespace,
            hostname=str(spec.get("hostname") or self.name),
            subdomain=str(spec.get("subdomain") or ""),
            pod_ip=self.pod_ip,
            nameserver=self.ctx.nameserver,
            directory=self.directory / "sandbox",
        )
        while True:
            with self._lock:
                deleting, stopping = self._deleting, self._stopping_agent
            if stopping:
                self._kill_all(grace_s=0)
                self._teardown()
                return
            if deleting:
                self._terminate()
                return
            wait_s = self._sync()
            self._post_status()
            self._wake.wait(wait_s)
            self._wake.clear()

    def _sync(self) -> float | None:
        """One pass of SyncPod; returns how long until something is due without an event."""
        now = time.monotonic()
        for s in self.init_slots + self.slots:
            self._handle_exit(s, now)
            self._handle_probes(s)
        self._stop_sidecars_when_done()
        for s in self.init_slots:
            self._handle_exit(s, time.monotonic())
        due: list[float] = []
        if not self._mounted and not self._mount_volumes(now, due):
            return max(0.0, min(due) - time.monotonic())
        self._start_due(now, due)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _start_due(self, now: float, due: list[float]) -> None:
        """Start what is down and due, as computeInitContainerActions
        (pkg/kubelet/kuberuntime/kuberuntime_container.go) orders it: the init containers one
        after another, a sidecar (restartPolicy Always) counting as done for the ones after it
        once it has started (its startup probe passed, or it has none) and kept running, with
        restarts, from then on; the containers once every init container is done."""
        for s in self.init_slots:
            self._start_if_down(s, now, due)
            if s.record.sidecar:
                if not s.initialized_once:
                    return
            elif not s.done:
                return
            elif s.record.terminated is None or s.record.terminated.exit_code != 0:
                # A failed init container that is not restarted ends the pod (KillPod).
                return
        for s in self.slots:
            self._start_if_down(s, now, due)

    def _start_if_down(self, s: Slot, now: float, due: list[float]) -> None:
        if not s.done and (s.run is None or s.exit_handled):
            self._maybe_start(s, now, due)

    def _mount_volumes(self, now: float, due: list[float]) -> bool:
        """WaitForAttachAndMount: True once every volume is mounted into the pod."""
        if now < self._mount_next_mono:
            due.append(self._mount_next_mono)
            return False
        assert self.sandbox is not None
        try:
            planned = volumes.plan_mounts(
                self.pod,
                self._volume_readers(),
                self.directory / "volumes",
                self.ctx.pods_dir / "csi",
            )
            volumes.apply_mounts(self.sandbox.enter(), planned, self._mounted_targets)
        except volumes.MountError as exc:
            log.warning("pod %s/%s: %s", self.namespace, self.name, exc.event_message)
            # The kubelet records FailedMount on every failed attempt; client-go's recorder
            # folds a repeat of the same event into the first one, raising its count and
            # lastTimestamp with a patch (tools/record/events_cache.go eventObserve,
            # event.go recordToSink).
            if exc.event_message != self._mount_error or self._mount_event is None:
                self._mount_error = exc.event_message
                self._mount_event = self._event(None, "Warning", "FailedMount", exc.event_message)
                self._mount_event_count = 1
            else:
                self._mount_event_count += 1
                self._event_repeated(self._mount_event, self._mount_event_count)
            self._mount_backoff.next(now)
            assert self._mount_backoff.current_s is not None
            self._mount_next_mono = now + self._mount_backoff.current_s
            due.append(self._mount_next_mono)
            return False
        self._mounted = True
        return True

    def _volume_readers(self) -> volumes.Readers:
        def absent_as_none(read: Callable[[], Any], what: str) -> dict[str, Any] | None:
            try:
                found = read()
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise volumes.ReadRefused(
                    what, f"failed to fetch {what} from API server: {exc.status} {exc.reason}"
                ) from exc
            result: dict[str, Any] = self.ctx.api.sanitize_for_serialization(found)
            return result

        core = self.core
        return volumes.Readers(
            secret=lambda ns, n: absent_as_none(
                lambda: core.read_namespaced_secret(n, ns), f"secret {ns}/{n}"
            ),
            config_map=lambda ns, n: absent_as_none(
                lambda: core.read_namespaced_config_map(n, ns), f"configmap {ns}/{n}"
            ),
            claim=lambda ns, n: absent_as_none(
                lambda: core.read_namespaced_persistent_volume_claim(n, ns), f"PVC {ns}/{n}"
            ),
            volume=lambda n: absent_as_none(lambda: core.read_persistent_volume(n), f"PV {n}"),
            token=self._service_account_token,
        )

    def _service_account_token(self, account: str, audiences: list[str], expiry_s: int) -> str:
        """A TokenRequest bound to this pod, as the kubelet's token manager makes one
        (pkg/kubelet/token); NodeRestriction admits it for a pod bound to this node."""
        body = {
            "spec": {
                "audiences": audiences,
                "expirationSeconds": expiry_s,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.uid,
                },
            }
        }
        try:
            made = self.core.create_namespaced_service_account_token(account, self.namespace, body)
        except ApiException as exc:
            raise volumes.MountError(
                "kube-api-access", f"failed to fetch token: {exc.status} {exc.reason}"
            ) from exc
        return str(made.status.token)

    def _handle_exit(self, s: Slot, now: float, *, final: bool = False) -> None:
        run = s.run
        if run is None or s.exit_handled or run.exit_code is None:
            return
        s.exit_handled = True
        s.stop_probes()
        assert run.finished_at is not None
        term = Terminated(
            run.exit_code,
            run.started_at,
            run.finished_at,
            s.record.container_id,
            reason=OOM_KILLED if run.oom_killed else "",
        )
        record = s.record
        record.running_since = None
        record.ready = False
        record.started = False
        if s.record.sidecar:
            # A sidecar restarts whatever the pod's restartPolicy (computeInitContainerActions:
            # an exited restartable init container is started again).
            restart = True
        elif s.record.init:
            restart = run.exit_code != 0 and self.restart_policy != "Never"
        else:
            restart = self.restart_policy == "Always" or (
                self.restart_policy == "OnFailure" and run.exit_code != 0
            )
        if final or not restart or s.stopped_for_good:
            record.terminated = term
            s.done = True
            return
        record.last_terminated = term
        record.terminated = None
        record.waiting_reason = CRASH_LOOP_BACK_OFF
        s.next_try_mono = now + s.backoff.wait_s(run.finished_mono, now)

    def _handle_probes(self, s: Slot) -> None:
        if s.run is None or s.exit_handled:
            return
        startup = s.probes.get(ProbeKind.STARTUP)
        readiness = s.probes.get(ProbeKind.READINESS)
        liveness = s.probes.get(ProbeKind.LIVENESS)
        s.record.started = startup is None or startup.result is True
        s.record.ready = s.record.started and (readiness is None or readiness.result is True)
        if s.record.started:
            s.initialized_once = True
        failed = None
        if startup is not None and startup.result is False:
            failed = "startup"
        elif liveness is not None and liveness.result is False:
            failed = "liveness"
        if failed is not None:
            s.stop_probes()
            self._event(
                s,
                "Normal",
                "Killing",
                f"Container {s.name} failed {failed} probe, will be restarted",
            )
            s.run.stop(self._probe_grace_s(s, failed))

    def _probe_grace_s(self, s: Slot, kind: str) -> float:
        probe = s.spec.get(f"{kind}Probe") or {}
        grace = probe.get("terminationGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds")
        return DEFAULT_GRACE_S if grace is None else float(grace)

    def _maybe_start(self, s: Slot, now: float, due: list[float]) -> None:
        image = s.record.image
        runtime = images.resolve(image)
        fault = self.ctx.registry_fault(image)
        if runtime is None or fault is not None:
            self._pull_failed(s, now, due, fault)
            return
        restarting = bool(s.logs)
        if restarting and now < s.next_try_mono:
            s.record.waiting_reason = CRASH_LOOP_BACK_OFF
            assert s.backoff.current_s is not None
            s.record.waiting_message = (
                f"back-off {go_duration(s.backoff.current_s)} restarting failed "
                f"container={s.name} pod={self.name}_{self.namespace}({self.uid})"
            )
            if s.announced_mono != s.next_try_mono:
                s.announced_mono = s.next_try_mono
                self._event(
                    s,
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {s.name} in pod "
                    f"{self.name}_{self.namespace}({self.uid})",
                )
            due.append(s.next_try_mono)
            return
        facts = podenv.PodFacts(self.pod, self.pod_ip, self.ctx.host_ip)
        try:
            variables = podenv.container_env(
                s.spec, facts, self._sources(), self._service_variables()
            )
        except podenv.ContainerConfigError as exc:
            s.record.waiting_reason = CREATE_CONTAINER_CONFIG_ERROR
            s.record.waiting_message = str(exc)
            self._event(s, "Warning", "Failed", f"Error: {exc}")
            due.append(now + self.ctx.backoff.base_s)
            return
        env_map = dict(variables)
        argv = podenv.command_line(s.spec, runtime.entrypoint, runtime.cmd, env_map)
        host = runtime.host_argv(argv)
        # The container's own variables win over the image's, as with an image's ENV.
        process_env = {**(host.env if host else {}), "HOSTNAME": self._hostname(), **env_map}
        if restarting:
            s.backoff.next(now)
            s.record.restart_count += 1
        if not restarting:
            self._event(
                s, "Normal", "Pulled", f'Container image "{image}" already present on machine'
            )
        assert self.sandbox is not None
        attempt = s.record.restart_count
        s.record.container_id = f"llm-rollout://{self.uid[:8]}-{s.name}-{attempt}"
        log_file = self.directory / "logs" / s.name / f"{attempt}.log"
        if host is None:
            # The runtime's create fails: the container terminates with StartError, 128.
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_bytes(b"")
            s.logs.append(log_file)
            stamp = utc_now()
            first = argv[0] if argv else ""
            message = f'exec: "{first}": executable file not found in $PATH'
            self._event(s, "Warning", "Failed", f"Error: {message}")
            s.run = None
            term = Terminated(128, stamp, stamp, s.record.container_id, reason="StartError")
            self._fake_exit(s, term, now, due)
            return
        workdir = str(s.spec.get("workingDir") or "") or None
        s.run = start_run(
            enter=self.sandbox.enter(workdir),
            argv=list(host.argv),
            env=process_env,
            log=log_file,
            on_exit=self._wake.set,
            private_tmp=runtime.private_tmp,
            cgroup=self.ctx.memory.create(
                self.uid, f"{s.name}-{attempt}", memory_limit_bytes(s.spec)
            ),
        )
        s.logs.append(log_file)
        s.exit_handled = False
        s.record.running_since = s.run.started_at
        s.record.waiting_reason = None
        s.record.waiting_message = ""
        s.record.terminated = None
        self._event(s, "Normal", "Created", f"Created container: {s.name}")
        self._event(s, "Normal", "Started", f"Started container {s.name}")
        s.env = process_env
        self._start_probes(s, process_env)
        self._handle_probes(s)

    def _fake_exit(self, s: Slot, term: Terminated, now: float, due: list[float]) -> None:
        if self.restart_policy == "Never" and not s.record.sidecar:
            s.record.terminated = term
            s.done = True
            return
        s.record.last_terminated = term
        s.record.waiting_reason = CRASH_LOOP_BACK_OFF
        s.next_try_mono = now + s.backoff.wait_s(now, now)
        due.append(s.next_try_mono)

    def _pull_failed(
        self, s: Slot, now: float, due: list[float], registry_error: str | None
    ) -> None:
        image = s.record.image
        if s.pull_backoff.in_backoff_since_update(now):
            if s.record.waiting_reason != IMAGE_PULL_BACK_OFF:
                message = f'Back-off pulling image "{image}"'
                s.record.waiting_reason = IMAGE_PULL_BACK_OFF
                s.record.waiting_message = message
                self._event(s, "Normal", "BackOff", message)
                self._event(s, "Warning", "Failed", f"Error: {IMAGE_PULL_BACK_OFF}")
            assert s.pull_backoff.current_s is not None
            due.append(s.next_try_mono)
            return
        # images/image_manager.go EnsureImageExists: the pull fails, a Failed event names the
        # image and the error, and the image's back-off grows; kuberuntime_container.go then
        # records "Error: ErrImagePull".
        # An image without an entry in sandbox/cluster/images.py is one no registry serves:
        # containerd's words for that (remotes/docker/resolver.go: "<ref>: not found", wrapped
        # by the CRI plugin's "failed to pull and unpack image" / "failed to resolve reference").
        error = registry_error or (
            f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
            f'failed to resolve reference "{image}": {image}: not found'
        )
        s.record.waiting_reason = ERR_IMAGE_PULL
        s.record.waiting_message = error
        self._event(s, "Warning", "Failed", f'Failed to pull image "{image}": {error}')
        self._event(s, "Warning", "Failed", f"Error: {ERR_IMAGE_PULL}")
        s.pull_backoff.next(now)
        assert s.pull_backoff.current_s is not None
        s.next_try_mono = now + s.pull_backoff.current_s
        # The kubelet's pod worker re-syncs a pod whose sync failed after a back-off of its own
        # (pod_workers.go); half the image back-off stands for it, so that the status shows
        # ImagePullBackOff between two pulls as on a node.
        due.append(now + s.pull_backoff.current_s / 2)

    def _start_probes(self, s: Slot, process_env: dict[str, str]) -> None:
        assert s.run is not None and self.sandbox is not None
        ports = {
            str(p["name"]): int(p["containerPort"])
            for p in s.spec.get("ports") or []
            if "name" in p
        }
        sandbox, run = self.sandbox, s.run

        def enter() -> list[str]:
            pid1 = run.pid1()
            return sandbox.enter() if pid1 is None else enter_container(pid1, None, run.cgroup)

        for kind, key in (
            (ProbeKind.STARTUP, "startupProbe"),
            (ProbeKind.READINESS, "readinessProbe"),
            (ProbeKind.LIVENESS, "livenessProbe"),
        ):
            spec = s.spec.get(key)
            if not spec:
                continue
            startup = s.probes.get(ProbeKind.STARTUP)

            def may_run(kind: ProbeKind = kind, startup: ProbeWorker | None = startup) -> bool:
                return kind is ProbeKind.STARTUP or startup is None or startup.result is True

            def failed(kind: ProbeKind, output: str, s: Slot = s) -> None:
                self._event(s, "Warning", "Unhealthy", f"{kind.value} probe failed: {output}")

            worker = ProbeWorker(
                kind,
                ProbeSpec.of(spec),
                prober_for(spec, self.pod_ip, ports, enter, process_env),
                started_mono=s.run.started_mono,
                may_run=may_run,
                on_failure=failed,
                on_change=self._wake.set,
            )
            s.probes[kind] = worker
            worker.start()

    def _hostname(self) -> str:
        return str(self.pod["spec"].get("hostname") or self.name)

    def _sources(self) -> podenv.Sources:
        """Secrets and ConfigMaps read with the node's identity (the Node authorizer allows
        those the node's pods reference)."""

        def reader(read: Callable[[str, str], Any]) -> podenv.ObjectReader:
            def data(namespace: str, name: str) -> dict[str, str] | None:
                try:
                    found = read(name, namespace)
                except ApiException as exc:
                    if exc.status == 404:
                        return None
                    raise
                return {k: str(v) for k, v in (found.data or {}).items()}

            return data

        def allocatable() -> dict[str, str]:
            try:
                node = self.core.read_node(self.ctx.node_name)
            except ApiException as exc:
                # kubelet_resources.go defaultPodLimitsForDownwardAPI's words.
                raise podenv.ContainerConfigError(
                    "failed to find node object, expected a node"
                ) from exc
            return {k: str(v) for k, v in (node.status.allocatable or {}).items()}

        return podenv.Sources(
            secrets=reader(self.core.read_namespaced_secret),
            config_maps=reader(self.core.read_namespaced_config_map),
            allocatable=allocatable,
        )

    def _service_variables(self) -> dict[str, str]:
        """The Services' variables at this container's start (kubelet_pods.go
        makeEnvironmentVariables reads them at every start; a Service made later reaches a
        container only when it starts again)."""
        links = self.pod["spec"].get("enableServiceLinks")
        if links is None:
            # The API server defaults it to true; the kubelet refuses a pod without it.
            raise podenv.ContainerConfigError(
                "nil pod.spec.enableServiceLinks encountered, cannot construct envvars"
            )
        found: list[Any] = []
        try:
            if links:
                found += self.core.list_namespaced_service(self.namespace).items
            if not (links and self.namespace == "default"):
                found += self.core.list_namespaced_service(
                    "default", field_selector="metadata.name=kubernetes"
                ).items
        except ApiException as exc:
            # An error of makeEnvironmentVariables is CreateContainerConfigError, retried.
            raise podenv.ContainerConfigError(
                "failed to list services when setting up env vars"
            ) from exc
        services = [self.ctx.api.sanitize_for_serialization(svc) for svc in found]
        return podenv.service_env(services, self.namespace, bool(links))

    # --- stopping -------------------------------------------------------------------------

    def _grace_s(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        for value in (
            meta.get("deletionGracePeriodSeconds"),
            spec.get("terminationGracePeriodSeconds"),
        ):
            if value is not None:
                return float(value)
        return DEFAULT_GRACE_S

    def _kill_all(self, grace_s: float) -> None:
        """Stop every running container: the sidecars after the others, the later sidecars
        first, each with what is left of the grace period but at least the kubelet's minimum
        (kuberuntime_termination_order.go, kuberuntime_container.go killContainer)."""
        started_mono = time.monotonic()
        runs = []
        sidecars = []
        for s in self.init_slots + self.slots:
            s.stop_probes()
            if s.run is not None and s.run.process.poll() is None:
                (sidecars if s.record.sidecar else runs).append(s.run)
        stoppers = [threading.Thread(target=run.stop, args=(grace_s,), daemon=True) for run in runs]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for run in reversed(sidecars):
            left_s = grace_s - (time.monotonic() - started_mono)
            run.stop(max(left_s, MINIMUM_GRACE_S) if grace_s > 0 else 0)

    def _stop_sidecars_when_done(self) -> None:
        """Once no container runs or will be started again, the kubelet kills the pod, its
        sidecars with it and not to be restarted (kuberuntime_manager.go computePodActions:
        keepCount == 0 and nothing to start is KillPod, InitContainersToStart dropped)."""
        running = [
            s
            for s in self.init_slots
            if s.record.sidecar and s.run is not None and s.run.exit_code is None
        ]
        failed_init = any(
            s.done and s.record.terminated is not None and s.record.terminated.exit_code != 0
            for s in self.init_slots
            if not s.record.sidecar
        )
        if not running or not (failed_init or (self.slots and all(s.done for s in self.slots))):
            return
        for s in running:
            s.stopped_for_good = True
            self._event(s, "Normal", "Killing", f"Stopping container {s.name}")
        self._kill_all(self._grace_s())

    def _teardown(self) -> None:
        if self.sandbox is not None:
            self.sandbox.teardown()
            self.sandbox = None
        # Each run's cgroup went with the run; the pod's own is left.
        self.ctx.memory.remove_pod(self.uid)
        if self.pod_ip:
            self.ctx.allocator.release(self.pod_ip)

    def _terminate(self) -> None:
        with self._lock:
            gone = self._gone
        if not gone:
            for s in self.init_slots + self.slots:
                if s.run is not None and s.run.process.poll() is None:
                    self._event(s, "Normal", "Killing", f"Stopping container {s.name}")
        self._kill_all(self._grace_s())
        for s in self.init_slots + self.slots:
            if s.run is not None:
                s.run.exited.wait(30)
            self._handle_exit(s, time.monotonic(), final=True)
        self._teardown()
        if gone:
            return
        self._post_status()
        try:
            self.core.delete_namespaced_pod(
                self.name,
                self.namespace,
                body=k8s.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=k8s.V1Preconditions(uid=self.uid)
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    # --- writing to the API ---------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        now = utc_now()
        phase = pod_phase(
            [s.record for s in self.init_slots], [s.record for s in self.slots], self.restart_policy
        )
        pod_conditions(
            self.conditions,
            now=now,
            sandbox_ready=self.sandbox is not None,
            init_records=[s.record for s in self.init_slots],
            records=[s.record for s in self.slots],
            phase=phase,
        )
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "conditions": self.conditions.as_list(),
            "containerStatuses": [s.record.as_dict() for s in self.slots],
        }
        if self.init_slots:
            status["initContainerStatuses"] = [s.record.as_dict() for s in self.init_slots]
        return status

    def _post_status(self) -> None:
        status = self._status()
        if status == self._posted or self.ctx.cut_off():
            return
        try:
            self.core.patch_namespaced_pod_status(
                self.name,
                self.namespace,
                {"status": status},
                field_manager=FIELD_MANAGER,
                _content_type=STRATEGIC_MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        self._posted = status

    def _event(self, s: Slot | None, kind: str, reason: str, message: str) -> str | None:
        """An Event on the pod, or on one of its containers (``fieldPath``) when ``s`` is set;
        returns its name, None when it was not recorded."""
        if self.ctx.cut_off():
            # The kubelet's recorder drops what it cannot send.
            return None
        now_stamp = utc_now()
        involved = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
        }
        if s is not None:
            section = "initContainers" if s.record.init else "containers"
            involved["fieldPath"] = f"spec.{section}{{{s.name}}}"
        body = {
            "metadata": {"name": f"{self.name}.{token.token_hex(8)}", "namespace": self.namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": self.ctx.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.ctx.node_name,
            "firstTimestamp": now_stamp,
            "lastTimestamp": now_stamp,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(self.namespace, body, field_manager=FIELD_MANAGER)
        except ApiException as exc:
            # An event is best effort for the kubelet too (the recorder drops on errors).
            log.warning("event %s for %s/%s: %s", reason, self.namespace, self.name, exc.status)
            return None
        return str(body["metadata"]["name"])

    def _event_repeated(self, name: str, count: int) -> None:
        """The recorded event ``name`` seen again: its count and lastTimestamp move on."""
        if self.ctx.cut_off():
            return
        patch = {"count": count, "lastTimestamp": utc_now()}
        try:
            self.core.patch_namespaced_event(
                name, self.namespace, patch, field_manager=FIELD_MANAGER
            )
        except ApiException as exc:
            log.warning("event %s for %s/%s: %s", name, self.namespace, self.name, exc.status)


class PodRunner:
    """The pods bound to one node."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        enable_forwarding()
        self._thread = threading.Thread(
            target=self._watch, args=(stop,), name=f"pods-{self.ctx.node_name}", daemon=True
        )
        self._thread.start()

    def find(self, namespace: str, name: str) -> PodWorker | None:
        with self._lock:
            for worker in self.workers.values():
                if worker.namespace == namespace and worker.name == name:
                    return worker
        return None

    def stop(self) -> None:
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.stop_for_agent()
        for worker in workers:
            worker.join(60)
        if self._thread is not None:
            self._thread.join(30)

    def _seen(self, pod: dict[str, Any], deleted: bool) -> None:
        uid = str(pod["metadata"]["uid"])
        with self._lock:
            worker = self.workers.get(uid)
            if deleted:
                if worker is not None:
                    worker.gone()
                return
            if worker is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return
                worker = PodWorker(pod, self.ctx)
                self.workers[uid] = worker
                worker.start()
            else:
                worker.update(pod)
            for old in [u for u, w in self.workers.items() if w.finished and u != uid]:
                del self.workers[old]

    def _watch(self, stop: threading.Event) -> None:
        core = k8s.CoreV1Api(self.ctx.api)
        selector = f"spec.nodeName={self.ctx.node_name}"
        version: str | None = None
        while not stop.is_set():
            if self.ctx.cut_off():
                # Whatever happens meanwhile is read afresh once the node is back.
                version = None
                stop.wait(1.0)
                continue
            try:
                if version is None:
                    listed = self.ctx.api.sanitize_for_serialization(
                        core.list_pod_for_all_namespaces(field_selector=selector)
                    )
                    for pod in listed["items"]:
                        self._seen(pod, deleted=False)
                    version = str(listed["metadata"]["resourceVersion"])
                stream = watch.Watch()
                # A short server-side timeout so that the agent's stop is noticed promptly.
                for event in stream.stream(
                    core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=version,
                    timeout_seconds=5,
                ):
                    raw = event["raw_object"]
                    if self.ctx.cut_off():
                        stream.stop()
                        version = None
                        break
                    if event["type"] == "ERROR":
                        version = None
                        break
                    version = str(raw["metadata"]["resourceVersion"])
                    self._seen(raw, deleted=event["type"] == "DELETED")
                    if stop.is_set():
                        stream.stop()
                        break
            except ApiException as exc:
                log.warning(
                    "watch of pods on %s: %s %s", self.ctx.node_name, exc.status, exc.reason
                )
                version = None
                stop.wait(1.0)
            except (ConnectionError, OSError, json.JSONDecodeError) as exc:
                log.warning("watch of pods on %s: %s", self.ctx.node_name, exc)
                stop.wait(1.0)
