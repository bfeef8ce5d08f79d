"""Pod status as the kubelet writes it (k8s.io/kubernetes ``pkg/kubelet/kubelet_pods.go``
generateAPIPodStatus / convertToAPIContainerStatuses, ``pkg/kubelet/status/generate.go`` for
the conditions): container and init-container states, restart counts, ``ready``/``started``,
the pod's conditions with their reasons and messages, its IPs and phase."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# pkg/kubelet/kubelet_pods.go / kuberuntime: the waiting reasons a container shows.
CONTAINER_CREATING = "ContainerCreating"
POD_INITIALIZING = "PodInitializing"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
# pkg/kubelet/images/types.go
ERR_IMAGE_PULL = "ErrImagePull"
IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
# pkg/kubelet/kuberuntime/kuberuntime_container.go (ErrCreateContainerConfig)
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    started_at: str
    finished_at: str
    container_id: str
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        # Runtimes report "Completed" for exit 0 and "Error" otherwise.
        reason = self.reason or ("Completed" if self.exit_code == 0 else "Error")
        return {
            "exitCode": self.exit_code,
            "reason": reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "containerID": self.container_id,
        }


@dataclass
class ContainerRecord:
    """What the node knows of one container, as the status reports it."""

    name: str
    image: str
    init: bool
    restart_count: int = 0
    waiting_reason: str | None = CONTAINER_CREATING
    waiting_message: str = ""
    running_since: str | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    ready: bool = False
    started: bool = False
    container_id: str = ""
    # An init container with restartPolicy Always (a sidecar, pkg/api/v1/pod
    # IsRestartableInitContainer).
    sidecar: bool = False

    @property
    def has_run(self) -> bool:
        return (
            self.running_since is not None
            or self.terminated is not None
            or self.last_terminated is not None
        )

    def as_dict(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.terminated is not None:
            state = {"terminated": self.terminated.as_dict()}
        elif self.running_since is not None:
            state = {"running": {"startedAt": self.running_since}}
        else:
            waiting: dict[str, str] = {"reason": self.waiting_reason or CONTAINER_CREATING}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "restartCount": self.restart_count,
            "ready": self.ready,
            "started": self.started,
            "state": state,
            "lastState": (
                {"terminated": self.last_terminated.as_dict()} if self.last_terminated else {}
            ),
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


@dataclass
class Conditions:
    """Pod conditions with the time each last changed."""

    since: dict[str, tuple[str, str]] = field(default_factory=dict)
    details: dict[str, tuple[str, str]] = field(default_factory=dict)

    def set(self, kind: str, ok: bool, now: str, reason: str = "", message: str = "") -> None:
        status = "True" if ok else "False"
        previous = self.since.get(kind)
        if previous is None or previous[0] != status:
            self.since[kind] = (status, now)
        self.details[kind] = (reason, message)

    def as_list(self) -> list[dict[str, Any]]:
        out = []
        for kind, (status, since) in self.since.items():
            reason, message = self.details.get(kind, ("", ""))
            condition: dict[str, Any] = {
                "type": kind,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": since,
            }
            if reason:
                condition["reason"] = reason
            if message:
                condition["message"] = message
            out.append(condition)
        return out


def pod_conditions(
    conditions: Conditions,
    *,
    now: str,
    sandbox_ready: bool,
    init_records: list[ContainerRecord],
    records: list[ContainerRecord],
    phase: str,
) -> None:
    """The kubelet's conditions (generate.go): reasons and messages name the containers."""
    conditions.set("PodReadyToStartContainers", sandbox_ready, now)
    # isInitContainerInitialized: a sidecar once started, a regular one once completed; and
    # once a regular container has started the pod stays initialized while sidecars restart
    # (HasAnyRegularContainerStarted).
    incomplete = [
        r.name
        for r in init_records
        if (not r.started if r.sidecar else r.terminated is None or r.terminated.exit_code != 0)
    ]
    if any(r.running_since is not None or r.terminated is not None for r in records):
        incomplete = []
    if incomplete:
        conditions.set(
            "Initialized",
            False,
            now,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]",
        )
    else:
        conditions.set("Initialized", True, now)
    # GenerateContainersReadyCondition: sidecars' readiness counts, before the containers'.
    unready = [r.name for r in init_records if r.sidecar and not r.ready]
    unready += [r.name for r in records if not r.ready]
    if phase == "Succeeded":
        # generate.go: a completed pod's containers are not ready, reason PodCompleted.
        conditions.set("ContainersReady", False, now, "PodCompleted")
        conditions.set("Ready", False, now, "PodCompleted")
    elif incomplete:
        message = f"containers with incomplete status: [{' '.join(incomplete)}]"
        conditions.set("ContainersReady", False, now, "ContainersNotInitialized", message)
        conditions.set("Ready", False, now, "ContainersNotInitialized", message)
    elif unready:
        message = f"containers with unready status: [{' '.join(unready)}]"
        conditions.set("ContainersReady", False, now, "ContainersNotReady", message)
        conditions.set("Ready", False, now, "ContainersNotReady", message)
    else:
        conditions.set("ContainersReady", True, now)
        conditions.set("Ready", True, now)


def pod_phase(
    init_records: list[ContainerRecord], records: list[ContainerRecord], restart_policy: str
) -> str:
    """getPhase (kubelet_pods.go), for the cases this node produces."""
    for record in init_records:
        if record.sidecar:
            continue
        if record.terminated is not None and record.terminated.exit_code != 0:
            if restart_policy == "Never":
                return "Failed"
            return "Pending"
        if record.terminated is None:
            return "Pending"
    # A sidecar not yet started (or never run) holds the pod Pending until the pod has
    # initialized once; a running one counts as running.
    initialized = any(r.has_run for r in records)
    sidecars = [r for r in init_records if r.sidecar]
    pending = [
        r
        for r in sidecars
        if (r.running_since is not None and not r.started)
        or (r.running_since is None and r.terminated is None and r.last_terminated is None)
    ]
    if pending and not initialized:
        return "Pending"
    if any(r.running_since is not None for r in records + sidecars):
        return "Running"
    if all(r.terminated is not None for r in records):
        if all(r.terminated is not None and r.terminated.exit_code == 0 for r in records):
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
        # About to be restarted under Always / OnFailure.
        return "Running"
    if any(r.restart_count > 0 or r.last_terminated is not None for r in records):
        # Restarting in back-off: the kubelet keeps the pod Running.
        return "Running"
    return "Pending"
