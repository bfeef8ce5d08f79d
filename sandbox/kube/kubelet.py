"""The kubelet of every sandbox node: runs bound pods through their lifecycle and can fail them.

One reconcile loop (a Controller) owns the runtime state of all pods on all nodes. Each step
looks at the clock, advances the pod's containers (mount, image pull, create, start, probes,
crash, back-off), writes the pod status when it changed, and asks to be woken at the next due
moment; store events (a pod bound, deleted, a fault injected) wake it early. Simulated durations
(image pull, container start, probe periods, back-offs) come from ``Timings``; probe timings are
the pod's own, multiplied by ``probe_time_scale``.

A backend may be a real server process (``sandbox.vllm``): when it reports an ``exit_code``
the container terminates with that code (reason Error) and restarts with the usual back-off
(CrashLoopBackOff); a backend with ``writes_container_log`` true writes the container log itself
(its own output), so the kubelet adds no made-up start lines.

Fault controls (``inject_*``) target pods by workload name (any owner up the ownerReference
chain, e.g. a Deployment or LeaderWorkerSet name) and/or a label selector, and apply to current
and future pods until cleared.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.kube.backends import Backend, BackendFactory
from sandbox.kube.controllers._base import (
    Controller,
    Key,
    controller_ref,
    get_condition,
    key_of,
    meta,
    now_iso,
    set_condition,
    try_get,
)
from sandbox.kube.network import PodNetwork
from sandbox.kube.nodes import node_ip
from sandbox.kube.store import NotFound, Store

Obj = dict[str, Any]
KUBELET = "kubelet"
NODE_KEY = "__node__"


@dataclass(frozen=True)
class Timings:
    image_pull_s: float = 0.05
    container_start_s: float = 0.02
    model_load_s: float = 0.0  # default backends listen only after this
    probe_time_scale: float = 0.01  # pod probe seconds -> wall seconds
    backoff_scale: float = 0.01  # kubelet back-off seconds (10 s, 20 s, ... 300 s) -> wall seconds
    node_eviction_s: float = 0.3  # NotReady node -> its pods force-deleted
    min_probe_period_s: float = 0.05


# --------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class ImagePullFault:
    message: str = ""  # default: containerd's "not found" error for the image


@dataclass(frozen=True)
class CrashFault:
    """The container exits ``after_s`` wall seconds after every start (CrashLoopBackOff)."""

    exit_code: int = 1
    reason: str = "Error"  # "OOMKilled" for the OOM killer
    after_s: float = 0.05
    log_lines: tuple[str, ...] = (
        "Traceback (most recent call last):",
        '  File "/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/openai/api_server.py",'
        " line 1920, in <module>",
        "    uvloop.run(run_server(args))",
        '  File "/usr/local/lib/python3.12/dist-packages/vllm/engine/arg_utils.py", line 1234,'
        " in create_engine_config",
        "    raise ValueError(msg)",
        "ValueError: The model's max seq len (40960) is larger than the maximum number of tokens "
        "that can be stored in KV cache (16384). Try increasing `gpu_memory_utilization` or "
        "decreasing `max_model_len` when initializing the engine.",
    )


def oom_fault(after_s: float = 0.05) -> CrashFault:
    return CrashFault(
        exit_code=137,
        reason="OOMKilled",
        after_s=after_s,
        log_lines=(
            "INFO 01-01 00:00:00 [model_runner.py:1105] Loading model weights took 61.03 GiB",
            "INFO 01-01 00:00:01 [worker.py:267] Memory profiling takes 4.21 seconds",
        ),
    )


@dataclass(frozen=True)
class MountFault:
    volume: str | None = None  # None: the pod's first volume
    message: str = (
        "rpc error: code = Unknown desc = Ossfs mount failed: ossfs: "
        "bucket not found or access denied"
    )


Fault = ImagePullFault | CrashFault | MountFault


@dataclass
class FaultRule:
    fault: Fault
    workload: str | None
    selector: dict[str, str] | None
    namespace: str | None
    container: str | None
    id: int = 0


# ------------------------------------------------------------------------------ runtime


@dataclass
class ProbeState:
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    passed: bool = False


@dataclass
class ContainerRuntime:
    name: str
    spec: Obj
    # pulling | pull_backoff | creating | running | terminated | crash_backoff
    stage: str = "pulling"
    due: float = 0.0
    pull_attempts: int = 0
    pull_started: float = 0.0
    restart_count: int = 0
    crash_count: int = 0
    started_iso: str = ""
    started_at: float = 0.0
    container_id: str = ""
    backends: dict[int, Backend] = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    startup: ProbeState = field(default_factory=ProbeState)
    readiness: ProbeState = field(default_factory=ProbeState)
    liveness: ProbeState = field(default_factory=ProbeState)
    crash_at: float | None = None
    crash_fault: CrashFault | None = None
    announced_ready: bool = False


@dataclass
class PodRuntime:
    uid: str
    node: str
    pod_ip: str
    start_iso: str
    mount_ok: bool = False
    mount_due: float = 0.0
    mount_attempts: int = 0
    containers: dict[str, ContainerRuntime] = field(default_factory=dict)
    evict_at: float | None = None


def _stamp() -> str:
    return now_iso()


def _kubelet_time() -> str:
    return datetime.now(UTC).strftime("%m-%d %H:%M:%S")


# How often a running container whose backend is a real process is checked for its exit.
PROCESS_POLL_S = 0.25


def _exit_code(backend: Backend) -> int | None:
    """The exit status of a backend that is a process and has ended, else None."""
    code = getattr(backend, "exit_code", None)
    return code if isinstance(code, int) else None


def _is_process(backend: Backend) -> bool:
    return hasattr(backend, "exit_code")


def _writes_own_log(backends: Iterable[Backend]) -> bool:
    return any(getattr(b, "writes_container_log", False) is True for b in backends)


class Kubelet(Controller):
    name = "kubelet"

    def __init__(
        self,
        store: Store,
        network: PodNetwork,
        backends: BackendFactory,
        timings: Timings,
    ) -> None:
        super().__init__(store)
        self.network = network
        self.backends = backends
        self.timings = timings
        self.pod_rt = store.resource_type("v1", "Pod")
        self.node_rt = store.resource_type("v1", "Node")
        self.pvc_rt = store.resource_type("v1", "PersistentVolumeClaim")
        self.pv_rt = store.resource_type("v1", "PersistentVolume")
        self.secret_rt = store.resource_type("v1", "Secret")
        self.cm_rt = store.resource_type("v1", "ConfigMap")
        self._pods: dict[Key, PodRuntime] = {}
        self._lost_nodes: dict[str, float] = {}
        self._rules: list[FaultRule] = []
        self._rules_lock = threading.Lock()
        self._rule_ids = itertools.count(1)
        self._ip_seq = itertools.count(2)
        self._images: dict[str, set[str]] = {}  # node -> images present

    # ------------------------------------------------------------------ fault controls
    def inject(
        self,
        fault: Fault,
        *,
        workload: str | None = None,
        selector: Mapping[str, str] | None = None,
        namespace: str | None = None,
        container: str | None = None,
    ) -> int:
        """Apply ``fault`` to matching pods, current and future, until ``clear`` is called."""
        if workload is None and selector is None:
            raise ValueError("a fault needs a workload name or a label selector")
        rule = FaultRule(
            fault,
            workload,
            dict(selector) if selector else None,
            namespace,
            container,
            next(self._rule_ids),
        )
        with self._rules_lock:
            self._rules.append(rule)
        self._wake_all()
        return rule.id

    def inject_image_pull_error(
        self,
        *,
        workload: str | None = None,
        selector: Mapping[str, str] | None = None,
        message: str = "",
    ) -> int:
        return self.inject(ImagePullFault(message), workload=workload, selector=selector)

    def inject_crash_loop(
        self,
        *,
        workload: str | None = None,
        selector: Mapping[str, str] | None = None,
        log_lines: tuple[str, ...] | None = None,
        exit_code: int = 1,
    ) -> int:
        fault = (
            CrashFault(exit_code=exit_code)
            if log_lines is None
            else CrashFault(exit_code=exit_code, log_lines=log_lines)
        )
        return self.inject(fault, workload=workload, selector=selector)

    def inject_oom(
        self, *, workload: str | None = None, selector: Mapping[str, str] | None = None
    ) -> int:
        return self.inject(oom_fault(), workload=workload, selector=selector)

    def inject_mount_failure(
        self,
        *,
        workload: str | None = None,
        selector: Mapping[str, str] | None = None,
        volume: str | None = None,
        message: str | None = None,
    ) -> int:
        fault = MountFault(volume) if message is None else MountFault(volume, message)
        return self.inject(fault, workload=workload, selector=selector)

    def clear(self, rule_id: int | None = None) -> None:
        """Remove one fault (by id) or all of them; affected pods recover on their next retry."""
        with self._rules_lock:
            self._rules = [r for r in self._rules if rule_id is not None and r.id != rule_id]
        self._wake_all()

    def lose_node(self, node_name: str) -> None:
        """The node stops reporting: NotReady (Unknown), unreachable taints, its pods NotReady
        at once and force-deleted after ``node_eviction_s`` so their controllers replace them."""
        node = self.store.get(self.node_rt, None, node_name)
        status = dict(node.get("status") or {})
        conds = []
        for cond in status.get("conditions") or []:
            c = dict(cond)
            c["status"] = "Unknown"
            c["reason"] = "NodeStatusUnknown"
            c["message"] = "Kubelet stopped posting node status."
            c["lastTransitionTime"] = _stamp()
            conds.append(c)
        status["conditions"] = conds
        node["status"] = status
        node = self.store.update_status(node)
        node["spec"] = dict(node.get("spec") or {})
        node["spec"]["taints"] = [
            t for t in node["spec"].get("taints") or [] if "unreachable" not in t.get("key", "")
        ] + [
            {
                "key": "node.kubernetes.io/unreachable",
                "effect": "NoSchedule",
                "timeAdded": _stamp(),
            },
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": _stamp()},
        ]
        self.store.update(node)
        self.store.emit_event(
            node,
            "NodeNotReady",
            f"Node {node_name} status is now: NodeNotReady",
            "Normal",
            "node-controller",
        )
        self._lost_nodes[node_name] = time.monotonic() + self.timings.node_eviction_s
        self.queue.add((NODE_KEY, node_name))

    def restore_node(self, node_name: str) -> None:
        node = self.store.get(self.node_rt, None, node_name)
        status = dict(node.get("status") or {})
        healthy = {
            "Ready": ("True", "KubeletReady", "kubelet is posting ready status"),
            "MemoryPressure": ("False", "KubeletHasSufficientMemory", "KubeletHasSufficientMemory"),
            "DiskPressure": ("False", "KubeletHasNoDiskPressure", "KubeletHasNoDiskPressure"),
            "PIDPressure": ("False", "KubeletHasSufficientPID", "KubeletHasSufficientPID"),
        }
        conds = []
        for cond in status.get("conditions") or []:
            c = dict(cond)
            if c["type"] in healthy:
                c["status"], c["reason"], c["message"] = healthy[c["type"]]
                c["lastTransitionTime"] = _stamp()
            conds.append(c)
        status["conditions"] = conds
        node["status"] = status
        node = self.store.update_status(node)
        node["spec"] = dict(node.get("spec") or {})
        node["spec"]["taints"] = [
            t for t in node["spec"].get("taints") or [] if "unreachable" not in t.get("key", "")
        ]
        if not node["spec"]["taints"]:
            del node["spec"]["taints"]
        self.store.update(node)
        self._lost_nodes.pop(node_name, None)
        self.store.emit_event(
            node,
            "NodeReady",
            f"Node {node_name} status is now: NodeReady",
            "Normal",
            "node-controller",
        )

    def backends_of(self, namespace: str, pod: str) -> dict[str, dict[int, Backend]]:
        rt = self._pods.get((namespace, pod))
        if rt is None:
            return {}
        return {name: dict(c.backends) for name, c in rt.containers.items()}

    # ----------------------------------------------------------------------- routing
    def keys_for(self, event: str, obj: Obj) -> Iterable[Key]:
        if obj.get("kind") == "Pod":
            if (obj.get("spec") or {}).get("nodeName") or key_of(obj) in self._pods:
                return [key_of(obj)]
            return []
        if obj.get("kind") in ("Secret", "ConfigMap", "PersistentVolumeClaim"):
            ns = meta(obj).get("namespace")
            return [k for k, r in self._pods.items() if k[0] == ns and not r.mount_ok]
        return []

    def resync(self) -> None:
        pods, _ = self.store.list(self.pod_rt)
        for pod in pods:
            if (pod.get("spec") or {}).get("nodeName"):
                self.queue.add(key_of(pod))

    def _wake_all(self) -> None:
        for key in list(self._pods):
            self.queue.add(key)

    def stop(self) -> None:
        super().stop()
        for key in list(self._pods):
            self._teardown(key)

    # ----------------------------------------------------------------------- matching
    def _owner_names(self, pod: Obj) -> set[str]:
        names: set[str] = set()
        obj: Obj | None = pod
        ns = meta(pod).get("namespace")
        for _ in range(6):
            ref = controller_ref(obj) if obj is not None else None
            if ref is None:
                break
            names.add(str(ref.get("name")))
            try:
                rt = self.store.resource_type(str(ref.get("apiVersion")), str(ref.get("kind")))
            except NotFound:
                break
            obj = try_get(self.store, rt, ns, str(ref.get("name")))
            if obj is None:
                break
        labels = meta(pod).get("labels") or {}
        for k in ("leaderworkerset.sigs.k8s.io/name", "app", "app.kubernetes.io/name"):
            if k in labels:
                names.add(labels[k])
        return names

    def _faults_for(self, pod: Obj, container: str | None, kind: type) -> list[Fault]:
        with self._rules_lock:
            rules = [r for r in self._rules if isinstance(r.fault, kind)]
        if not rules:
            return []
        labels = meta(pod).get("labels") or {}
        owners: set[str] | None = None
        out: list[Fault] = []
        for r in rules:
            if r.namespace and r.namespace != meta(pod).get("namespace"):
                continue
            if r.container and container and r.container != container:
                continue
            if r.selector and any(labels.get(k) != v for k, v in r.selector.items()):
                continue
            if r.workload:
                if owners is None:
                    owners = self._owner_names(pod)
                if r.workload not in owners:
                    continue
            out.append(r.fault)
        return out

    # ---------------------------------------------------------------------- reconcile
    def reconcile(self, key: Key) -> float | None:
        if key[0] == NODE_KEY:
            return self._evict_lost(key[1])
        pod = try_get(self.store, self.pod_rt, key[0], key[1])
        runtime = self._pods.get(key)
        if pod is None:
            if runtime is not None:
                self._teardown(key)
            return None
        node = (pod.get("spec") or {}).get("nodeName")
        if runtime is not None and runtime.uid != meta(pod).get("uid"):
            self._teardown(key)
            runtime = None
        if not node:
            return None
        if node in self._lost_nodes:
            # Nobody is home on that node: nothing runs, nothing reports.
            if runtime is not None:
                self._teardown(key)
            return None
        if meta(pod).get("deletionTimestamp"):
            self._kill_pod(pod, runtime)
            return None
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and runtime is None:
            return None
        if runtime is None:
            runtime = self._admit(pod, node)
        now = time.monotonic()
        if not runtime.mount_ok:
            wait = self._mount(pod, runtime, now)
            if wait is not None:
                self._write_status(pod, runtime)
                return wait
        waits = [self._step_container(pod, runtime, c, now) for c in runtime.containers.values()]
        self._write_status(pod, runtime)
        due = [w for w in waits if w is not None]
        return max(min(due), 0.001) if due else None

    # ------------------------------------------------------------------------ phases
    def _admit(self, pod: Obj, node_name: str) -> PodRuntime:
        node = try_get(self.store, self.node_rt, None, node_name)
        host = node_ip(node) if node is not None else "127.0.1.1"
        seq = next(self._ip_seq)
        ip = f"10.244.{int(host.rsplit('.', 1)[-1]) - 1}.{seq % 250 + 2}"
        runtime = PodRuntime(
            uid=str(meta(pod).get("uid")), node=node_name, pod_ip=ip, start_iso=_stamp()
        )
        for c in (pod.get("spec") or {}).get("containers") or []:
            runtime.containers[c["name"]] = ContainerRuntime(c["name"], c)
        runtime.mount_due = time.monotonic()
        self._pods[key_of(pod)] = runtime
        return runtime

    def _mount(self, pod: Obj, runtime: PodRuntime, now: float) -> float | None:
        if now < runtime.mount_due:
            return runtime.mount_due - now
        problem = self._volume_problem(pod)
        if problem is None:
            runtime.mount_ok = True
            return None
        runtime.mount_attempts += 1
        self.store.emit_event(pod, "FailedMount", problem, "Warning", KUBELET)
        # The kubelet's volume manager retries with exponential back-off (0.5 s doubling).
        delay = (
            min(0.5 * 2 ** (runtime.mount_attempts - 1), 120.0) * self.timings.backoff_scale * 10
        )
        runtime.mount_due = now + max(delay, 0.02)
        return runtime.mount_due - now

    def _volume_problem(self, pod: Obj) -> str | None:
        ns = meta(pod).get("namespace")
        volumes = (pod.get("spec") or {}).get("volumes") or []
        for fault in self._faults_for(pod, None, MountFault):
            assert isinstance(fault, MountFault)
            target = fault.volume or (volumes[0]["name"] if volumes else "kube-api-access")
            shown = target
            for vol in volumes:
                claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                if vol.get("name") == target and claim:
                    pvc = try_get(self.store, self.pvc_rt, ns, claim)
                    shown = ((pvc or {}).get("spec") or {}).get("volumeName") or target
            return f'MountVolume.SetUp failed for volume "{shown}" : {fault.message}'
        for vol in volumes:
            name = vol.get("name")
            secret = vol.get("secret")
            if secret and not secret.get("optional"):
                sname = secret.get("secretName", "")
                if try_get(self.store, self.secret_rt, ns, sname) is None:
                    return (
                        f'MountVolume.SetUp failed for volume "{name}" : secret "{sname}" not found'
                    )
            cm = vol.get("configMap")
            if cm and not cm.get("optional"):
                cname = cm.get("name", "")
                if try_get(self.store, self.cm_rt, ns, cname) is None:
                    return (
                        f'MountVolume.SetUp failed for volume "{name}" : '
                        f'configmap "{cname}" not found'
                    )
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                problem = self._csi_problem(ns, claim)
                if problem:
                    return problem
        return None

    def _csi_problem(self, ns: str | None, claim: str) -> str | None:
        pvc = try_get(self.store, self.pvc_rt, ns, claim)
        pv_name = ((pvc or {}).get("spec") or {}).get("volumeName")
        if not pv_name:
            return None
        pv = try_get(self.store, self.pv_rt, None, pv_name)
        csi = ((pv or {}).get("spec") or {}).get("csi") or {}
        ref = csi.get("nodePublishSecretRef")
        if not ref:
            return None
        sns, sname = ref.get("namespace") or ns, ref.get("name", "")
        if try_get(self.store, self.secret_rt, sns, sname) is None:
            return (
                f'MountVolume.SetUp failed for volume "{pv_name}" : kubernetes.io/csi: '
                f'mounter.SetUpAt failed to get node publish secret: secrets "{sname}" not found'
            )
        return None

    def _step_container(
        self, pod: Obj, runtime: PodRuntime, c: ContainerRuntime, now: float
    ) -> float | None:
        """Advance one container as far as the clock allows; return seconds to the next step."""
        for _ in range(8):
            if c.stage in ("pulling", "pull_backoff", "creating", "crash_backoff", "terminated"):
                if c.stage == "terminated":
                    if not self._should_restart(pod, c):
                        return None
                    c.stage = "crash_backoff"
                    continue
                if c.due == 0.0:
                    self._enter(pod, runtime, c, now)
                if now < c.due:
                    return c.due - now
                self._advance(pod, runtime, c, now)
                continue
            if c.stage == "running":
                return self._run_tick(pod, runtime, c, now)
        return 0.001

    def _enter(self, pod: Obj, runtime: PodRuntime, c: ContainerRuntime, now: float) -> None:
        """Start the timer of the current stage, with its event."""
        image = c.spec.get("image", "")
        if c.stage == "pulling":
            present = image in self._images.get(runtime.node, set())
            policy = c.spec.get("imagePullPolicy") or (
                "Always"
                if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]
                else "IfNotPresent"
            )
            if present and policy != "Always" and not self._faults_for(pod, c.name, ImagePullFault):
                self._image_present(pod, c, now)
                return
            c.pull_attempts += 1
            c.pull_started = now
            self.store.emit_event(pod, "Pulling", f'Pulling image "{image}"', "Normal", KUBELET)
            c.due = now + self.timings.image_pull_s
        elif c.stage == "creating":
            c.due = now + self.timings.container_start_s
        elif c.stage == "crash_backoff":
            # The terminated state is visible briefly before the kubelet acts on it.
            c.due = now + max(self.timings.container_start_s, 0.01)
        elif c.stage == "pull_backoff":
            c.due = now + self._backoff(c.pull_attempts)

    def _image_present(self, pod: Obj, c: ContainerRuntime, now: float) -> None:
        image = c.spec.get("image", "")
        msg = f'Container image "{image}" already present on machine'
        self.store.emit_event(pod, "Pulled", msg, "Normal", KUBELET)
        c.stage = "creating"
        c.due = now + self.timings.container_start_s

    def _backoff(self, attempts: int) -> float:
        seconds = min(10.0 * 2.0 ** max(attempts - 1, 0), 300.0)
        return max(seconds * self.timings.backoff_scale, 0.01)

    def _advance(self, pod: Obj, runtime: PodRuntime, c: ContainerRuntime, now: float) -> None:
        image = c.spec.get("image", "")
        m = meta(pod)
        if c.stage == "pulling":
            faults = self._faults_for(pod, c.name, ImagePullFault)
            if faults:
                fault = faults[0]
                assert isinstance(fault, ImagePullFault)
                ref = image if "/" in image.split(":")[0] else f"docker.io/library/{image}"
                msg = fault.message or (
                    f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": '
                    f'failed to resolve reference "{ref}": {ref}: not found'
                )
                text = f'Failed to pull image "{image}": {msg}'
                self.store.emit_event(pod, "Failed", text, "Warning", KUBELET)
                self.store.emit_event(pod, "Failed", "Error: ErrImagePull", "Warning", KUBELET)
                c.state = {"waiting": {"reason": "ErrImagePull", "message": text}}
                c.stage = "pull_backoff"
                c.due = 0.0
                return
            took = now - c.pull_started
            self._images.setdefault(runtime.node, set()).add(image)
            self.store.emit_event(
                pod,
                "Pulled",
                f'Successfully pulled image "{image}" in {took:.3f}s ({took:.3f}s including '
                f"waiting). Image size: 8432659211 bytes.",
                "Normal",
                KUBELET,
            )
            c.stage = "creating"
            c.due = now + self.timings.container_start_s
            return
        if c.stage == "pull_backoff":
            if c.state.get("waiting", {}).get("reason") == "ErrImagePull":
                # First the short ErrImagePull display, then the back-off proper.
                msg = f'Back-off pulling image "{image}"'
                self.store.emit_event(pod, "BackOff", msg, "Normal", KUBELET)
                self.store.emit_event(pod, "Failed", "Error: ImagePullBackOff", "Warning", KUBELET)
                c.state = {"waiting": {"reason": "ImagePullBackOff", "message": msg}}
                c.due = now + self._backoff(c.pull_attempts)
                return
            c.stage = "pulling"
            c.due = 0.0
            return
        if c.stage == "crash_backoff":
            # Upstream restarts after the first exit at once; back-off (10 s doubling, capped
            # at 300 s) starts with the second one.
            if c.state.get("terminated") and c.crash_count >= 2:
                msg = (
                    f"back-off {int(min(10 * 2 ** (c.crash_count - 2), 300))}s restarting "
                    f"failed container={c.name} "
                    f"pod={m['name']}_{m.get('namespace')}({m.get('uid')})"
                )
                self.store.emit_event(
                    pod,
                    "BackOff",
                    f"Back-off restarting failed container {c.name} in pod "
                    f"{m['name']}_{m.get('namespace')}({m.get('uid')})",
                    "Warning",
                    KUBELET,
                )
                c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": msg}}
                c.due = now + self._backoff(c.crash_count - 1)
                return
            # Back-off over: the kubelet restarts the container from the image it already has.
            self.store.rotate_logs(m.get("namespace", ""), m["name"], c.name)
            c.restart_count += 1
            self._image_present(pod, c, now)
            return
        if c.stage == "creating":
            self._start_container(pod, runtime, c, now)

    def _start_container(
        self, pod: Obj, runtime: PodRuntime, c: ContainerRuntime, now: float
    ) -> None:
        m = meta(pod)
        self.store.emit_event(pod, "Created", f"Created container: {c.name}", "Normal", KUBELET)
        c.container_id = f"containerd://{uuid.uuid4().hex}{uuid.uuid4().hex}"
        c.started_iso = _stamp()
        c.started_at = now
        c.state = {"running": {"startedAt": c.started_iso}}
        c.stage = "running"
        c.ready = False
        c.announced_ready = False
        c.startup = ProbeState()
        c.readiness = ProbeState()
        c.liveness = ProbeState()
        c.started = not c.spec.get("startupProbe")
        c.crash_at = None
        c.crash_fault = None
        crash = self._faults_for(pod, c.name, CrashFault)
        if crash:
            fault = crash[0]
            assert isinstance(fault, CrashFault)
            c.crash_fault = fault
            c.crash_at = now + fault.after_s
        else:
            for port in self._ports(c.spec):
                backend = self.backends.start(pod, c.spec, port)
                c.backends[port] = backend
                self.network.bind(m.get("namespace", ""), m["name"], port, backend.url)
        self._write_start_logs(pod, c)
        self.store.emit_event(pod, "Started", f"Started container {c.name}", "Normal", KUBELET)

    @staticmethod
    def _ports(container: Obj) -> list[int]:
        ports: list[int] = []
        for p in container.get("ports") or []:
            if p.get("protocol", "TCP") == "TCP" and p.get("containerPort"):
                ports.append(int(p["containerPort"]))
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(probe_name) or {}
            for kind in ("httpGet", "tcpSocket"):
                port = (probe.get(kind) or {}).get("port")
                if isinstance(port, int) and port not in ports:
                    ports.append(port)
        return ports

    def _write_start_logs(self, pod: Obj, c: ContainerRuntime) -> None:
        if _writes_own_log(c.backends.values()):
            return  # the server's own output is the container log
        m = meta(pod)
        ns, name = m.get("namespace", ""), m["name"]
        words = " ".join(
            [c.spec.get("image", "")]
            + [str(x) for x in (c.spec.get("command") or [])]
            + [str(x) for x in (c.spec.get("args") or [])]
        )
        t = _kubelet_time()
        ports = self._ports(c.spec)
        port = ports[0] if ports else 8000
        if "sglang" in words:
            lines = [
                f"[{t}] server_args=ServerArgs(model_path=..., tp_size=..., port={port})",
                f"[{t}] Load weight begin.",
                f"[{t}] INFO:     Started server process [1]",
                f"[{t}] INFO:     Uvicorn running on http://0.0.0.0:{port} (Press CTRL+C to quit)",
            ]
        elif "vllm" in words:
            lines = [
                f"INFO {t} [api_server.py:1805] vLLM API server version 0.10.1",
                f"INFO {t} [utils.py:326] non-default args: {{'port': {port}}}",
                f"INFO {t} [model_runner.py:1105] Starting to load model ...",
                "INFO:     Started server process [1]",
                "INFO:     Waiting for application startup.",
                f"INFO:     Uvicorn running on http://0.0.0.0:{port} (Press CTRL+C to quit)",
            ]
        elif "ray" in words:
            lines = [
                f"{t} INFO usage_lib.py:467 -- Usage stats collection is disabled.",
                f"{t} INFO scripts.py:865 -- Local node IP: 10.244.0.2",
                "Ray runtime started.",
            ]
        else:
            lines = [f"{t} container {c.name} started"]
        for line in lines:
            self.store.append_log(ns, name, c.name, line)

    # ----------------------------------------------------------------------- running
    def _run_tick(
        self, pod: Obj, runtime: PodRuntime, c: ContainerRuntime, now: float
    ) -> float | None:
        if c.crash_fault is None:
            # A crash fault injected while the container runs hits it too, like a real crash.
            crash = self._faults_for(pod, c.name, CrashFault)
            if crash:
                fault = crash[0]
                assert isinstance(fault, CrashFault)
                c.crash_fault = fault
                c.crash_at = now + fault.after_s
        if c.crash_at is not None and now >= c.crash_at:
            assert c.crash_fault is not None
            self._terminate(
                pod, c, c.crash_fault.exit_code, c.crash_fault.reason, c.crash_fault.log_lines
            )
            return 0.001
        died = [code for b in c.backends.values() if (code := _exit_code(b)) is not None]
        if died:
            # The server process ended: so did the container. Its output is already the log.
            self._terminate(pod, c, died[0], "Completed" if died[0] == 0 else "Error", ())
            return 0.001
        waits: list[float] = []
        if c.crash_at is not None:
            waits.append(c.crash_at - now)
        if any(_is_process(b) for b in c.backends.values()):
            waits.append(PROCESS_POLL_S)
        spec = c.spec
        startup = spec.get("startupProbe")
        if startup and not c.started:
            res = self._probe_tick(pod, c, "Startup", startup, c.startup, now, waits)
            if res is False:
                self._kill_for_probe(pod, c, "startup")
                return 0.001
            if c.startup.passed:
                c.started = True
        if c.started:
            readiness = spec.get("readinessProbe")
            if readiness:
                self._probe_tick(pod, c, "Readiness", readiness, c.readiness, now, waits)
                c.ready = c.readiness.passed
            else:
                c.ready = True
            liveness = spec.get("livenessProbe")
            if liveness:
                res = self._probe_tick(pod, c, "Liveness", liveness, c.liveness, now, waits)
                if res is False:
                    self._kill_for_probe(pod, c, "liveness")
                    return 0.001
        if c.ready and not c.announced_ready:
            c.announced_ready = True
            if not _writes_own_log(c.backends.values()):
                m = meta(pod)
                self.store.append_log(
                    m.get("namespace", ""),
                    m["name"],
                    c.name,
                    "INFO:     Application startup complete.",
                )
        return min(waits) if waits else None

    def _probe_tick(
        self,
        pod: Obj,
        c: ContainerRuntime,
        label: str,
        probe: Obj,
        st: ProbeState,
        now: float,
        waits: list[float],
    ) -> bool | None:
        """Run the probe if due. Returns False when the failure threshold was just crossed for a
        startup/liveness probe, else None. Readiness flips ``st.passed`` both ways."""
        scale = self.timings.probe_time_scale
        period = max(float(probe.get("periodSeconds", 10)) * scale, self.timings.min_probe_period_s)
        if st.next_at == 0.0:
            st.next_at = c.started_at + float(probe.get("initialDelaySeconds", 0)) * scale
        if now < st.next_at:
            waits.append(st.next_at - now)
            return None
        st.next_at = now + period
        waits.append(period)
        ok, why = self._run_probe(pod, c, probe)
        if ok:
            st.successes += 1
            st.failures = 0
            threshold = int(probe.get("successThreshold", 1))
            if st.successes >= threshold:
                st.passed = True
            return None
        st.failures += 1
        st.successes = 0
        self.store.emit_event(pod, "Unhealthy", f"{label} probe failed: {why}", "Warning", KUBELET)
        if st.failures >= int(probe.get("failureThreshold", 3)):
            if label == "Readiness":
                st.passed = False
                return None
            return False
        return None

    def _run_probe(self, pod: Obj, c: ContainerRuntime, probe: Obj) -> tuple[bool, str]:
        timeout = max(float(probe.get("timeoutSeconds", 1)) * self.timings.probe_time_scale, 0.5)
        ip = self._pods[key_of(pod)].pod_ip
        if "httpGet" in probe:
            hg = probe["httpGet"]
            port = self._resolve_port(c.spec, hg.get("port"))
            path = hg.get("path", "/")
            shown = f"http://{ip}:{port}{path}"
            backend = c.backends.get(port) if port is not None else None
            if backend is None:
                return False, f'Get "{shown}": dial tcp {ip}:{port}: connect: connection refused'
            try:
                status = _http_get(
                    backend.url,
                    path,
                    timeout,
                    [(h.get("name", ""), h.get("value", "")) for h in hg.get("httpHeaders") or []],
                )
            except (ConnectionRefusedError, ConnectionResetError):
                return False, f'Get "{shown}": dial tcp {ip}:{port}: connect: connection refused'
            except TimeoutError:
                return False, (
                    f'Get "{shown}": context deadline exceeded (Client.Timeout exceeded while '
                    "awaiting headers)"
                )
            except (OSError, http.client.HTTPException) as exc:
                return False, f'Get "{shown}": {exc}'
            if 200 <= status < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {status}"
        if "tcpSocket" in probe:
            port = self._resolve_port(c.spec, probe["tcpSocket"].get("port"))
            backend = c.backends.get(port) if port is not None else None
            if backend is None or not _tcp_ok(backend.url, timeout):
                return False, f"dial tcp {ip}:{port}: connect: connection refused"
            return True, ""
        # exec / grpc: succeed once the container's servers (if any) accept connections.
        for backend in c.backends.values():
            if not _tcp_ok(backend.url, timeout):
                return False, "command timed out or exited with non-zero status"
        return True, ""

    @staticmethod
    def _resolve_port(container: Obj, port: Any) -> int | None:
        if isinstance(port, int):
            return port
        if isinstance(port, str):
            if port.isdigit():
                return int(port)
            for p in container.get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
        return None

    def _stop_backends(self, pod_key: Key, c: ContainerRuntime) -> None:
        for port, backend in list(c.backends.items()):
            self.network.unbind(pod_key[0], pod_key[1], port)
            backend.stop()
        c.backends.clear()

    def _terminate(
        self, pod: Obj, c: ContainerRuntime, exit_code: int, reason: str, lines: Iterable[str]
    ) -> None:
        m = meta(pod)
        for line in lines:
            self.store.append_log(m.get("namespace", ""), m["name"], c.name, line)
        self._stop_backends(key_of(pod), c)
        finished = _stamp()
        term = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": c.started_iso,
            "finishedAt": finished,
            "containerID": c.container_id,
        }
        c.state = {"terminated": term}
        c.last_state = {"terminated": dict(term)}
        c.ready = False
        c.started = False
        c.crash_count += 1
        c.crash_at = None
        c.stage = "terminated"
        c.due = 0.0

    def _kill_for_probe(self, pod: Obj, c: ContainerRuntime, which: str) -> None:
        self.store.emit_event(
            pod,
            "Killing",
            f"Container {c.name} failed {which} probe, will be restarted",
            "Normal",
            KUBELET,
        )
        self._terminate(pod, c, 137, "Error", ())

    def _should_restart(self, pod: Obj, c: ContainerRuntime) -> bool:
        policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
        code = int(c.state.get("terminated", {}).get("exitCode", 1))
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    # ---------------------------------------------------------------------- deletion
    def _kill_pod(self, pod: Obj, runtime: PodRuntime | None) -> None:
        key = key_of(pod)
        if runtime is not None:
            for c in runtime.containers.values():
                if c.stage == "running":
                    self.store.emit_event(
                        pod, "Killing", f"Stopping container {c.name}", "Normal", KUBELET
                    )
        self._teardown(key)
        try:
            self.store.finalize_pod(key[0], key[1])
        except NotFound:
            return

    def _teardown(self, key: Key) -> None:
        runtime = self._pods.pop(key, None)
        if runtime is not None:
            for c in runtime.containers.values():
                self._stop_backends(key, c)
        self.network.unbind_pod(key[0], key[1])

    def _evict_lost(self, node_name: str) -> float | None:
        due = self._lost_nodes.get(node_name)
        if due is None:
            return None
        pods, _ = self.store.list(self.pod_rt, field_selector=f"spec.nodeName={node_name}")
        now = time.monotonic()
        for pod in pods:
            key = key_of(pod)
            if key in self._pods:
                self._teardown(key)
            status = dict(pod.get("status") or {})
            ready = get_condition(pod, "Ready")
            if ready is not None and ready.get("status") != "False":
                # The node lifecycle controller's MarkPodsNotReady: only Ready flips (reason and
                # message kept), and only a pod whose Ready changed gets the event.
                status["conditions"] = [
                    {**c, "status": "False", "lastTransitionTime": _stamp()}
                    if c.get("type") == "Ready"
                    else c
                    for c in status.get("conditions") or []
                ]
                pod["status"] = status
                try:
                    pod = self.store.update_status(pod)
                except NotFound:
                    continue
                self.store.emit_event(
                    pod, "NodeNotReady", "Node is not ready", "Warning", "node-controller"
                )
        if now < due:
            return due - now
        for pod in pods:
            status = dict(pod.get("status") or {})
            status["conditions"] = set_condition(
                status.get("conditions") or [],
                "DisruptionTarget",
                "True",
                "DeletionByTaintManager",
                "Taint manager: deleting due to NoExecute taint",
            )
            pod["status"] = status
            try:
                pod = self.store.update_status(pod)
                self.store.emit_event(
                    pod,
                    "TaintManagerEviction",
                    f"Marking for deletion Pod {meta(pod).get('namespace')}/{meta(pod)['name']}",
                    "Normal",
                    "taint-eviction-controller",
                )
                # Nobody on the node can confirm the shutdown: the pod is force-deleted, as the
                # pod GC does for pods on an out-of-service node.
                self.store.delete(
                    self.pod_rt,
                    meta(pod).get("namespace"),
                    meta(pod)["name"],
                    grace_period_seconds=0,
                )
            except NotFound:
                continue
        return None

    # ------------------------------------------------------------------------ status
    def _write_status(self, pod: Obj, runtime: PodRuntime) -> None:
        status = dict(pod.get("status") or {})
        statuses = []
        for spec_c in (pod.get("spec") or {}).get("containers") or []:
            c = runtime.containers[spec_c["name"]]
            state = c.state
            if not runtime.mount_ok:
                state = {"waiting": {"reason": "ContainerCreating"}}
            cs: Obj = {
                "name": c.name,
                "image": c.spec.get("image", ""),
                "imageID": "",
                "ready": c.ready,
                "started": c.started and c.stage == "running",
                "restartCount": c.restart_count,
                "state": state,
                "lastState": c.last_state,
            }
            if c.container_id:
                cs["containerID"] = c.container_id
                cs["imageID"] = f"{c.spec.get('image', '')}@sha256:{'0' * 64}"
            statuses.append(cs)
        all_ready = bool(statuses) and all(s["ready"] for s in statuses)
        unready = [s["name"] for s in statuses if not s["ready"]]
        conds = status.get("conditions") or []
        conds = set_condition(
            conds, "PodReadyToStartContainers", "True" if runtime.mount_ok else "False"
        )
        conds = set_condition(conds, "Initialized", "True")
        msg = "" if all_ready else f"containers with unready status: [{' '.join(unready)}]"
        conds = set_condition(
            conds,
            "Ready",
            "True" if all_ready else "False",
            "" if all_ready else "ContainersNotReady",
            msg,
        )
        conds = set_condition(
            conds,
            "ContainersReady",
            "True" if all_ready else "False",
            "" if all_ready else "ContainersNotReady",
            msg,
        )
        for cond in conds:
            if cond["type"] in ("Ready", "ContainersReady") and all_ready:
                cond.pop("reason", None)
                cond.pop("message", None)
        conds = set_condition(conds, "PodScheduled", "True")
        order = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ]
        conds.sort(key=lambda x: order.index(x["type"]) if x["type"] in order else len(order))
        policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
        ever_ran = any(c.container_id for c in runtime.containers.values())
        all_terminated = all(c.stage == "terminated" for c in runtime.containers.values())
        if all_terminated and policy != "Always" and ever_ran:
            failed = any(
                c.state.get("terminated", {}).get("exitCode", 0) != 0
                for c in runtime.containers.values()
            )
            phase = "Failed" if failed else "Succeeded"
        elif ever_ran:
            phase = "Running"
        else:
            phase = "Pending"
        status.update(
            {
                "phase": phase,
                "conditions": conds,
                "hostIP": self._host_ip(runtime.node),
                "hostIPs": [{"ip": self._host_ip(runtime.node)}],
                "podIP": runtime.pod_ip,
                "podIPs": [{"ip": runtime.pod_ip}],
                "startTime": runtime.start_iso,
                "containerStatuses": statuses,
                "qosClass": "Burstable",
            }
        )
        if status == pod.get("status"):
            return
        # Timestamps of untouched conditions were recomputed equal; only real changes are written.
        new = dict(pod)
        new["status"] = status
        fresh = self.store.update_status(new)
        pod["metadata"] = fresh["metadata"]
        pod["status"] = fresh.get("status")

    def _host_ip(self, node_name: str) -> str:
        node = try_get(self.store, self.node_rt, None, node_name)
        return node_ip(node) if node is not None else "127.0.1.1"


def _http_get(url: str, path: str, timeout: float, headers: list[tuple[str, str]]) -> int:
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers) | {"User-Agent": "kube-probe/1.32"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _tcp_ok(url: str, timeout: float) -> bool:
    host, _, port = url.removeprefix("http://").partition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False
