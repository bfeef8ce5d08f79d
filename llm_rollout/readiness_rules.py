"""The readiness verdict as pure functions: observed state + when each signal was seen -> verdict.

`wait_ready` (readiness.py) only watches and feeds these; nothing here talks to a cluster or
reads a clock, so each rule is tested over sequences of observed states.

A *signal* is one thing that may fail the rollout (a pull error on one container, a pod that
cannot be scheduled, a lost node, ...), with a key that stays the same across snapshots while
the cause is the same. `track` keeps, per key, when it was first and last seen; a signal absent
from a snapshot has cleared and starts afresh if it comes back. `decide` fails on a signal once
it has persisted past its tolerance (0 for causes that cannot clear by themselves), waits while
any is tolerated, and is ready only when nothing is missing and no signal is present.

Which signals clear by themselves, from upstream behaviour:
- image pulls: the kubelet retries with back-off (pkg/kubelet/kubelet.go backOffPeriod 10 s,
  MaxContainerBackOff 300 s), so rate limits and i/o timeouts clear; a missing image or denied
  access does not (containerd's resolver reports `not found`, remotes/docker/resolver.go).
  InvalidImageName and ErrImageNeverPull are decided from the pod spec and never change
  (pkg/kubelet/images/image_manager.go).
- mounts: the volume manager retries (podAttachAndMountTimeout 2m3s in
  pkg/kubelet/volumemanager/volume_manager.go). A FailedMount event matters only while the
  pod's containers have not started: the kubelet mounts every volume before starting any
  container, so an event on a pod with a started container is from an earlier, recovered try
  (and the `kube-root-ca.crt not registered` race, kubernetes/kubernetes#105204, clears).
  A Secret or ConfigMap that does not exist does not appear by itself during a rollout.
- scheduling: an Unschedulable pod clears when a node is added. cluster-autoscaler says so per
  pod with Normal events `TriggeredScaleUp` / `NotTriggerScaleUp`
  (cluster-autoscaler/processors/status/eventing_scale_up_processor.go) and cluster-wide in the
  `cluster-autoscaler-status` ConfigMap (cluster-autoscaler/clusterstate/utils/status.go).
- nodes: NotReady/Unknown clears when the kubelet reports again; a deleted node does not.
- container crashes: CrashLoopBackOff already means the kubelet saw repeated exits; OOMKilled,
  CreateContainerConfigError/CreateContainerError/RunContainerError repeat on every start.
- group recreation: LWS with RecreateGroupOnPodRestart deletes the group's leader (Foreground)
  as soon as any container of the group has restartCount > 0 (lws
  pkg/controllers/pod_controller.go handleRestartPolicy, pkg/utils/pod/pod_utils.go
  ContainerRestarted); its StatefulSets recreate the pods under the same names with new UIDs,
  so the kubelet's CrashLoopBackOff never shows. Recreations are counted per stable pod name.
  RBG's RecreateRBGOnPodRestart does the same for the whole group (sgl-project/rbg
  api/workloads/v1alpha1/rolebasedgroup_types.go RestartPolicyType) and runs LWS roles with
  RecreateGroupOnPodRestart, so its StatefulSet- and LWS-backed roles are counted alike. Pods
  no StatefulSet owns (Deployment-backed roles, RBG v0.7 RoleInstances, RayCluster pods) are
  not counted. KubeRay leaves a pod whose Ray container exited to the kubelet's restart, so
  CrashLoopBackOff shows, unless the pod's restartPolicy is Never (which it sets itself only
  with autoscaler v2, our template enables no autoscaling): then it deletes the pod and
  creates another under a new name (ray-operator v1.6.2 controllers/ray/raycluster_controller.go
  shouldDeletePod, common/pod.go), which is not counted here as a recreation.
- pod creation: a controller whose pod create the API server refuses records a Warning on its
  own object (the objects each kind names in `WorkloadKind.pod_creators`) and retries with
  back-off; the workload then has no pod to show anything. An exceeded ResourceQuota clears
  when quota is freed; a refusal of the pod itself repeats on every retry: an invalid pod
  (apimachinery pkg/api/errors/errors.go NewInvalid, `<kind> "<name>" is invalid: ...`), an
  admission webhook's denial (apiserver pkg/admission/plugin/webhook/errors/statuserror.go
  `admission webhook "<name>" denied the request`), a PodSecurity violation
  (pod-security-admission admission/admission.go `violates PodSecurity`), a quota that demands
  requests or limits the pod lacks (apiserver pkg/admission/plugin/resourcequota/controller.go
  `failed quota: <quota>: must specify ...`). A failure is current while no success came after
  it on the same object: the controllers record a Normal event per created pod, and
  client-go's event spam filter keys on the event type (tools/record/events_cache.go
  getSpamKey), so a burst of refusals does not silence the success that ends them.
- stale events: events outlive their objects (kube-apiserver --event-ttl, 1 h) and names come
  back (a release deployed again under its name, a recreated LWS group's StatefulSets, a
  Deployment's ReplicaSet named after the template's hash). A pod's events count only with
  its uid (`readiness._events_for`), and those that describe an attempt, not a state, only
  while the state agrees (a FailedMount only before any container started); a pod creator's
  only when about the current object: the workload itself by uid, or an object the workload
  controls through controller references (`PodCreator`, `descendants`), which an earlier
  workload's child, collected late or orphaned, is not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import yaml

from llm_rollout.kinds import PodCreator, all_kinds
from llm_rollout.kube.views import PodView, items_at, mapping_at
from llm_rollout.spec import RolloutSpec

JsonDict = dict[str, Any]

Bound = Literal["none", "image_pull", "mount", "node", "scale_up", "pod_create"]

IMAGE_RETRIED_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff"})
IMAGE_FINAL_REASONS = frozenset({"InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
MOUNT_EVENT_REASONS = frozenset({"FailedMount", "FailedAttachVolume"})
SCALE_UP_EVENT_REASONS = frozenset({"TriggeredScaleUp", "NotTriggerScaleUp"})
NODE_LOST = "NodeLost"
GROUP_CRASH_LOOP = "GroupCrashLoop"

# A registry answer that retrying does not change: the reference does not exist, or the
# credentials do not reach it (containerd wraps both in "failed to resolve reference").
_PULL_FINAL = re.compile(
    r"(: not found|manifest unknown|pull access denied|insufficient_scope|unauthorized"
    r"|repository does not exist)",
    re.IGNORECASE,
)
# A volume that names an object which does not exist; the kube-root-ca.crt race reads
# `object "ns"/"kube-root-ca.crt" not registered` and is not matched.
_MOUNT_FINAL = re.compile(r'\b(secrets?|configmaps?) "[^"]+" not found', re.IGNORECASE)

# A refusal of the pod itself, which the controller's next try repeats (module docstring).
_CREATE_FINAL = re.compile(
    r'( is invalid: |admission webhook "[^"]*" denied the request|violates PodSecurity'
    r"|failed quota: [^:]+: must specify)"
)
# RBG v0.7's RoleInstance appends the refused pod, as JSON, to its FailedCreate message
# ("failed to create pod: <error>, pod: <json>", sgl-project/rbg pkg/reconciler/roleinstance/
# sync/instance_scale.go createOnePod): the error is kept, the pod's spec is not repeated.
_DUMPED_POD = re.compile(r", pod: \{.*\Z", re.DOTALL)


def _creation_message(event: Mapping[str, Any]) -> str:
    return _DUMPED_POD.sub("", str(event.get("message") or ""))


# Labels that tell one incarnation of a stable-named pod from a rolled one, each kind's own
# (`WorkloadKind.revision_labels`); an operator's template revision outranks the StatefulSet's
# `controller-revision-hash`, which it changes by itself.
_REVISION_LABELS = tuple(
    label
    for kind in sorted(all_kinds(), key=lambda kind: not kind.custom)
    for label in kind.revision_labels
)


@dataclass(frozen=True)
class Tolerances:
    """How long each kind of clearing signal may persist (s), and the group recreation count."""

    image_pull_s: float
    mount_s: float
    node_not_ready_s: float
    scale_up_wait_s: float
    pod_create_s: float
    group_recreations: int

    def bound_s(self, bound: Bound) -> float:
        return {
            "none": 0.0,
            "image_pull": self.image_pull_s,
            "mount": self.mount_s,
            "node": self.node_not_ready_s,
            "scale_up": self.scale_up_wait_s,
            "pod_create": self.pod_create_s,
        }[bound]


def tolerances_of(rollout: RolloutSpec) -> Tolerances:
    return Tolerances(
        image_pull_s=float(rollout.image_pull_tolerance_s),
        mount_s=float(rollout.mount_tolerance_s),
        node_not_ready_s=float(rollout.node_not_ready_tolerance_s),
        scale_up_wait_s=float(rollout.scale_up_wait_s),
        pod_create_s=float(rollout.pod_create_tolerance_s),
        group_recreations=rollout.crash_loop_group_recreations,
    )


DEFAULT_TOLERANCES = tolerances_of(RolloutSpec())
# Every signal fails on first sight (the behaviour before tolerances existed).
AT_ONCE = Tolerances(0.0, 0.0, 0.0, 0.0, 0.0, 1)


@dataclass(frozen=True)
class Signal:
    """One observed cause that may fail the rollout, on a pod or, where `kind` says so, on
    another object of the workload (a ReplicaSet that cannot create its pods)."""

    key: str
    reason: str
    pod: str  # the object's name: a pod's unless `kind` says otherwise ("" for none)
    container: str | None
    detail: str
    bound: Bound
    log_lines: tuple[str, ...] = ()  # already captured (group crash loops)
    kind: str = "Pod"
    api_version: str = "v1"


@dataclass(frozen=True)
class Seen:
    first_s: float
    last_s: float


@dataclass(frozen=True)
class Ready:
    pass


@dataclass(frozen=True)
class Waiting:
    """Not ready yet; `tolerated` are signals inside their bound, `recheck_in_s` when the
    first of them runs out (None: only a watch event can change the verdict)."""

    missing: tuple[str, ...]
    tolerated: tuple[tuple[Signal, float, float], ...] = ()  # (signal, elapsed_s, bound_s)
    recheck_in_s: float | None = None


@dataclass(frozen=True)
class Failed:
    signal: Signal
    persisted_s: float


Verdict = Ready | Waiting | Failed


@dataclass(frozen=True)
class Nodes:
    """The cluster's Nodes as last seen, and those seen before that no longer exist."""

    current: Mapping[str, JsonDict]
    deleted: Set[str]


@dataclass(frozen=True)
class Autoscaler:
    """What cluster-autoscaler says cluster-wide: present (its status ConfigMap exists) and
    its cluster-wide scale-up status ("InProgress", "NoActivity", "Backoff", ...; "" unknown)."""

    present: bool
    scale_up: str = ""


NO_AUTOSCALER = Autoscaler(present=False)


@dataclass(frozen=True)
class Crash:
    """A container exit seen on a pod before its controller deleted it."""

    pod: str
    container: str
    exit_code: int | None
    reason: str
    log_lines: tuple[str, ...] = ()


@dataclass
class Incarnations:
    """UIDs seen per stable pod name (and revision), oldest first, and the last crash seen."""

    uids: dict[str, list[str]] = field(default_factory=dict)
    last_crash: Crash | None = None


# ------------------------------------------------------------------------------ parsing


def _conditions(obj: Mapping[str, Any]) -> dict[str, JsonDict]:
    status = obj.get("status") or {}
    return {str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, dict)}


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def autoscaler_from_configmap(configmap: Mapping[str, Any] | None) -> Autoscaler:
    """Read kube-system/cluster-autoscaler-status (None: no autoscaler).

    Its `status` key holds YAML (`clusterWide.scaleUp.status`, cluster-autoscaler 1.30+,
    clusterstate/utils/status_test.yaml) or, in older releases, text with a `ScaleUp: <status>`
    line under `Cluster-wide:`.
    """
    if configmap is None:
        return NO_AUTOSCALER
    text = str(mapping_at(configmap, "data").get("status") or "")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None
    if isinstance(doc, dict):
        scale_up = mapping_at(doc, "clusterWide", "scaleUp").get("status")
        if isinstance(scale_up, str):
            return Autoscaler(present=True, scale_up=scale_up)
    match = re.search(r"^\s*ScaleUp:\s*(\w+)", text, re.MULTILINE)
    return Autoscaler(present=True, scale_up=match.group(1) if match else "")


def _started(pod: Mapping[str, Any]) -> bool:
    """Some container of the pod has run: its volumes were mounted."""
    status = pod.get("status") or {}
    for cs in list(status.get("initContainerStatuses") or []) + list(
        status.get("containerStatuses") or []
    ):
        state = cs.get("state") or {}
        if (
            state.get("running")
            or state.get("terminated")
            or cs.get("lastState", {}).get("terminated")
        ):
            return True
        if int(cs.get("restartCount") or 0) > 0:
            return True
    return False


def _ready(pod: Mapping[str, Any]) -> bool:
    return str(_conditions(pod).get("Ready", {}).get("status")) == "True"


def _node_signal(pod: Mapping[str, Any], uid: str, name: str, nodes: Nodes) -> Signal | None:
    node = PodView(pod).node_name or ""
    if not node:
        return None
    if node in nodes.deleted:
        return Signal(
            f"node-deleted:{node}:{uid}", NODE_LOST, name, None, f"Node {node} was deleted", "none"
        )
    ready = _conditions(nodes.current.get(node) or {}).get("Ready")
    if ready is None or str(ready.get("status")) == "True":
        return None
    why = ": ".join(str(ready[k]) for k in ("reason", "message") if ready.get(k))
    detail = f"Node {node} is not ready: Ready={ready.get('status')}" + (f" ({why})" if why else "")
    return Signal(f"node:{node}:{uid}", NODE_LOST, name, None, detail, "node")


def _about_container(event: Mapping[str, Any], container: str) -> bool:
    """The event names this container, or no container at all. The kubelet's container
    events carry `spec.containers{<name>}` (or initContainers, ephemeralContainers) as
    `involvedObject.fieldPath` (kubernetes pkg/kubelet/container/ref.go fieldPath)."""
    path = str(_involved(event).get("fieldPath") or "")
    return not path.endswith("}") or path.endswith("{" + container + "}")


def _pull_error(message: str, pod_events: Sequence[JsonDict], container: str) -> str:
    """The registry's answer to the container's last pull: the ErrImagePull message, or else
    the kubelet's `Failed to pull image "<image>": <error>` event about it
    (pkg/kubelet/images/image_manager.go); during ImagePullBackOff the waiting message only
    says `Back-off pulling image`. Another container's pull, of another image, says nothing
    about this one."""
    if message.startswith("Failed to pull image") or _PULL_FINAL.search(message):
        return message
    event = next(
        (
            e
            for e in reversed(pod_events)
            if e.get("reason") == "Failed"
            and str(e.get("message") or "").startswith("Failed to pull image")
            and _about_container(e, container)
        ),
        None,
    )
    return str(event.get("message")) if event is not None else message


def _container_signals(
    pod: Mapping[str, Any], uid: str, name: str, pod_events: Sequence[JsonDict]
) -> list[Signal]:
    status = pod.get("status") or {}
    found: list[Signal] = []
    for cs in list(status.get("initContainerStatuses") or []) + list(
        status.get("containerStatuses") or []
    ):
        cname = str(cs.get("name"))
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        message = str(waiting.get("message") or "")
        if reason in IMAGE_RETRIED_REASONS:
            # One key for both reasons: the kubelet alternates them on each retry.
            error = _pull_error(message, pod_events, cname)
            bound: Bound = "none" if _PULL_FINAL.search(error) else "image_pull"
            found.append(Signal(f"image:{uid}:{cname}", reason, name, cname, error, bound))
            continue
        if reason in IMAGE_FINAL_REASONS or reason in CONFIG_REASONS:
            found.append(Signal(f"config:{uid}:{cname}", reason, name, cname, message, "none"))
            continue
        oom = next(
            (
                t
                for t in (mapping_at(cs, "lastState").get("terminated"), state.get("terminated"))
                if isinstance(t, dict) and t.get("reason") == "OOMKilled"
            ),
            None,
        )
        if oom is not None:
            detail = f"container {cname} OOMKilled (exit {oom.get('exitCode')})"
            found.append(Signal(f"oom:{uid}:{cname}", "OOMKilled", name, cname, detail, "none"))
            continue
        if reason == "CrashLoopBackOff":
            detail = message or f"container {cname} keeps crashing"
            found.append(Signal(f"crash:{uid}:{cname}", reason, name, cname, detail, "none"))
    return found


def _scale_up_signal(
    uid: str, name: str, message: str, pod_events: Sequence[JsonDict], autoscaler: Autoscaler
) -> Signal:
    latest = next(
        (e for e in reversed(pod_events) if e.get("reason") in SCALE_UP_EVENT_REASONS), None
    )
    key = f"sched:{uid}"
    if latest is not None and latest.get("reason") == "NotTriggerScaleUp":
        detail = f"{message}; cluster-autoscaler: {latest.get('message') or 'no scale-up'}"
        return Signal(key, "Unschedulable", name, None, detail, "none")
    if latest is not None:
        detail = f"{message}; cluster-autoscaler: {latest.get('message') or 'scale-up triggered'}"
        return Signal(key, "Unschedulable", name, None, detail, "scale_up")
    if autoscaler.present:
        what = f"scale-up {autoscaler.scale_up}" if autoscaler.scale_up else "present"
        return Signal(
            key, "Unschedulable", name, None, f"{message}; cluster-autoscaler {what}", "scale_up"
        )
    return Signal(key, "Unschedulable", name, None, message, "none")


def pod_signals(
    pod: Mapping[str, Any],
    pod_events: Sequence[JsonDict],
    nodes: Nodes,
    autoscaler: Autoscaler = NO_AUTOSCALER,
) -> list[Signal]:
    """The failure signals one live pod shows now. `pod_events` are this pod's events
    (same uid), Warning and the autoscaler's Normal ones, oldest first."""
    meta = _meta(pod)
    if meta.get("deletionTimestamp"):
        return []
    uid, name = str(meta.get("uid") or meta.get("name")), str(meta.get("name"))
    node = _node_signal(pod, uid, name, nodes)
    if node is not None:
        # Container states on such a node are stale (nobody reports them).
        return [node]
    found = _container_signals(pod, uid, name, pod_events)
    scheduled = _conditions(pod).get("PodScheduled") or {}
    bound_to_node = PodView(pod).node_name is not None
    if str(scheduled.get("status")) == "False" and scheduled.get("reason") == "Unschedulable":
        message = str(scheduled.get("message") or "")
        found.append(_scale_up_signal(uid, name, message, pod_events, autoscaler))
    elif not bound_to_node:
        failed_scheduling = next(
            (e for e in reversed(pod_events) if e.get("reason") == "FailedScheduling"), None
        )
        if failed_scheduling is not None:
            message = str(failed_scheduling.get("message") or "")
            found.append(_scale_up_signal(uid, name, message, pod_events, autoscaler))
    if not _started(pod) and not _ready(pod):
        mount = next(
            (e for e in reversed(pod_events) if e.get("reason") in MOUNT_EVENT_REASONS), None
        )
        if mount is not None:
            message = str(mount.get("message") or "")
            bound: Bound = "none" if _MOUNT_FINAL.search(message) else "mount"
            found.append(Signal(f"mount:{uid}", "FailedMount", name, None, message, bound))
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        reason = str(status.get("reason") or "PodFailed")
        found.append(
            Signal(f"failed:{uid}", reason, name, None, str(status.get("message") or ""), "none")
        )
    return found


# ------------------------------------------------------------------- group recreation


def stable_slot(pod: Mapping[str, Any]) -> str | None:
    """A stable-named pod's identity across recreations: its name and template revision.

    Only pods a StatefulSet owns keep their name when recreated (LWS leaders and workers,
    RBG roles on StatefulSets); other pods get new names and are not counted.
    """
    meta = _meta(pod)
    owners = meta.get("ownerReferences") or []
    if not any(o.get("kind") == "StatefulSet" for o in owners if isinstance(o, dict)):
        return None
    labels = meta.get("labels") or {}
    revision = next((str(labels[k]) for k in _REVISION_LABELS if labels.get(k)), "")
    return f"{meta.get('name')}@{revision}"


def observe_incarnations(seen: Incarnations, pods: Iterable[Mapping[str, Any]]) -> Incarnations:
    """`seen` with the UIDs of `pods` (all pods, deleting ones too) added per slot."""
    uids = {slot: list(values) for slot, values in seen.uids.items()}
    for pod in pods:
        slot = stable_slot(pod)
        uid = str(_meta(pod).get("uid") or "")
        if slot is None or not uid:
            continue
        known = uids.setdefault(slot, [])
        if uid not in known:
            known.append(uid)
    return Incarnations(uids, seen.last_crash)


def crash_to_capture(pod: Mapping[str, Any]) -> tuple[str, int | None, str, bool] | None:
    """The container whose exit triggers a group recreation, if any: (name, exit code,
    reason, previous) where `previous` says its log is the previous instance's.

    LWS acts on restartCount > 0 (ContainerRestarted); a terminated, non-zero state is caught
    too, for a pod the kubelet will not restart, unless the pod is being deleted: then the
    deletion stopped it (the group's recreation kills the other pods' containers, exit 137
    after their grace period, as seen on the real cluster), and it is an effect, not a cause.
    """
    deleting = bool(_meta(pod).get("deletionTimestamp"))
    status = pod.get("status") or {}
    for cs in list(status.get("initContainerStatuses") or []) + list(
        status.get("containerStatuses") or []
    ):
        last = mapping_at(cs, "lastState").get("terminated")
        if int(cs.get("restartCount") or 0) > 0 and isinstance(last, dict):
            return (
                str(cs.get("name")),
                last.get("exitCode"),
                str(last.get("reason") or "Error"),
                True,
            )
        now = mapping_at(cs, "state").get("terminated")
        if not deleting and isinstance(now, dict) and now.get("exitCode") not in (0, None):
            return (
                str(cs.get("name")),
                now.get("exitCode"),
                str(now.get("reason") or "Error"),
                False,
            )
    return None


def group_signals(seen: Incarnations, tolerances: Tolerances) -> list[Signal]:
    """A crash-loop signal once a stable-named pod was recreated `group_recreations` times."""
    worst = max(seen.uids.items(), key=lambda kv: len(kv[1]), default=None)
    if worst is None or len(worst[1]) - 1 < tolerances.group_recreations:
        return []
    slot, uids = worst
    name = slot.split("@", 1)[0]
    crash = seen.last_crash
    detail = (
        f"pod {name} was recreated {len(uids) - 1} times by its controller "
        f"(group recreation on a container restart)"
    )
    if crash is not None:
        code = f" with exit code {crash.exit_code}" if crash.exit_code is not None else ""
        detail += f"; last crash: container {crash.container} of pod {crash.pod} {crash.reason}"
        detail += code
        return [
            Signal(
                f"group:{slot}",
                GROUP_CRASH_LOOP,
                crash.pod,
                crash.container,
                detail,
                "none",
                crash.log_lines,
            )
        ]
    detail += "; no container exit was seen before the pods were deleted"
    return [Signal(f"group:{slot}", GROUP_CRASH_LOOP, name, None, detail, "none")]


# ------------------------------------------------------------------------ pod creation


def _involved(event: Mapping[str, Any]) -> Mapping[str, Any]:
    involved = event.get("involvedObject") or event.get("regarding") or {}
    return involved if isinstance(involved, dict) else {}


def timestamp_s(value: object) -> float | None:
    """An API time (RFC 3339 in UTC, whole seconds or a MicroTime's fraction) as epoch
    seconds; None when absent or not a time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _event_times(event: Mapping[str, Any]) -> list[float]:
    series = event.get("series")
    times = [
        timestamp_s(value)
        for value in (
            event.get("firstTimestamp"),
            event.get("lastTimestamp"),
            series.get("lastObservedTime") if isinstance(series, dict) else None,
            event.get("eventTime"),
            mapping_at(event, "metadata").get("creationTimestamp"),
        )
    ]
    return [t for t in times if t is not None]


def event_order(event: Mapping[str, Any]) -> float:
    """When the event last occurred (epoch seconds; -inf when it says nothing).

    core/v1 events from client-go's tools/record carry `firstTimestamp` and `lastTimestamp`,
    the latter moved forward on each repeat (events_cache.go eventObserve); events.k8s.io/v1
    ones from tools/events carry `eventTime` (the first occurrence) and, once repeated,
    `series.lastObservedTime` (events/event_broadcaster.go recordToSink), both MicroTimes.
    """
    return max(_event_times(event), default=-math.inf)


def _first_second(event: Mapping[str, Any]) -> float:
    """When the event first occurred, at the grain of a whole second (inf when unknown)."""
    first = min(_event_times(event), default=math.inf)
    return math.floor(first) if math.isfinite(first) else first


def _event_second(event: Mapping[str, Any]) -> float:
    """The event's last occurrence at the grain of a whole second, which is all lastTimestamp
    and creationTimestamp keep."""
    last = event_order(event)
    return math.floor(last) if math.isfinite(last) else last


def _outcome_order(event: Mapping[str, Any]) -> tuple[float, bool]:
    """Latest first; within the same second (event times have no finer grain) a refusal no
    retry can change outranks one that may clear, which it can follow (a fresh namespace's
    pods are refused until its `default` ServiceAccount exists) but never precede."""
    return _event_second(event), bool(_CREATE_FINAL.search(_creation_message(event)))


def descendants(root_uid: str, objects: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The uid and creationTimestamp of each of `objects` whose chain of controller references
    (the `ownerReferences` entry with `controller: true`, at most one per object: apimachinery
    pkg/api/validation/objectmeta.go ValidateOwnerReferences) leads to `root_uid`, through
    other objects of `objects`.

    This is how the garbage collector and the controllers themselves tell an object's
    dependents (apimachinery pkg/apis/meta/v1/controller_ref.go GetControllerOf): not by
    name, which comes back, nor by time."""
    controller_of: dict[str, str] = {}
    created: dict[str, str] = {}
    for obj in objects:
        meta = mapping_at(obj, "metadata")
        uid = str(meta.get("uid") or "")
        refs = items_at(obj, "metadata", "ownerReferences")
        owner = next((str(r.get("uid") or "") for r in refs if r.get("controller") is True), "")
        if uid and owner:
            controller_of[uid] = owner
            created[uid] = str(meta.get("creationTimestamp") or "")
    found: dict[str, str] = {}
    for uid in controller_of:
        seen = {uid}
        ancestor = controller_of[uid]
        while ancestor in controller_of and ancestor not in seen:
            seen.add(ancestor)
            ancestor = controller_of[ancestor]
        if ancestor == root_uid:
            found[uid] = created[uid]
    return found


def _about_current(
    creator: PodCreator, event: Mapping[str, Any], lineage: Mapping[str, str]
) -> bool:
    """The event is about the creator as it is now, not an earlier object of its name.

    With `uid`, the event's object must be the workload itself. With `owner`, it must be one
    of `lineage` (the workload's `descendants`, uid -> creationTimestamp); if that object was
    created before the workload (adopted, not made by it), its events count only from the
    workload's creation second on (`since`), the earlier ones being its previous life's.
    Both creationTimestamps come from the API server's clock; event times are compared at a
    whole second, all that creationTimestamp and lastTimestamp keep.
    """
    uid = str(_involved(event).get("uid") or "")
    if creator.uid and uid and uid != creator.uid:
        return False
    if creator.owner:
        if uid not in lineage:
            return False
        workload_created = timestamp_s(creator.since)
        child_created = timestamp_s(lineage[uid])
        if (
            workload_created is not None
            and child_created is not None
            and child_created < math.floor(workload_created)
        ):
            return _first_second(event) >= math.floor(workload_created)
    return True


def creation_signals(
    creators: Sequence[PodCreator],
    events: Iterable[Mapping[str, Any]],
    objects: Iterable[Mapping[str, Any]],
) -> list[Signal]:
    """A signal per object of `creators` (and failure reason) whose latest pod-create outcome
    is a failure; a success at the same second or later clears it.

    `objects` are what the caller holds of the workload's chain (its `children` and pods),
    from which an `owner` creator's current objects are found (`descendants`)."""
    held = list(objects)
    lineages = {c.owner: descendants(c.owner, held) for c in creators if c.owner}
    latest: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for event in events:
        involved = _involved(event)
        kind, name = str(involved.get("kind") or ""), str(involved.get("name") or "")
        reason = str(event.get("reason") or "")
        for creator in creators:
            if kind != creator.kind or not creator.names.fullmatch(name):
                continue
            if not _about_current(creator, event, lineages.get(creator.owner, {})):
                continue
            if reason in creator.outcomes or reason in creator.outcomes.values():
                key = (kind, name, reason)
                if key not in latest or _outcome_order(event) >= _outcome_order(latest[key]):
                    latest[key] = event
    found: list[Signal] = []
    for (kind, name, reason), event in sorted(latest.items()):
        succeeded = next(
            (c.outcomes[reason] for c in creators if c.kind == kind and reason in c.outcomes),
            None,
        )
        if succeeded is None:
            continue  # a success, read as the failures' counterpart
        success = latest.get((kind, name, succeeded))
        if event.get("type") != "Warning" or (
            success is not None and _event_second(success) >= _event_second(event)
        ):
            continue
        message = _creation_message(event)
        bound: Bound = "none" if _CREATE_FINAL.search(message) else "pod_create"
        involved = _involved(event)
        found.append(
            Signal(
                f"create:{kind}/{name}:{reason}",
                reason,
                name,
                None,
                message,
                bound,
                kind=kind,
                api_version=str(involved.get("apiVersion") or "v1"),
            )
        )
    return found


# ------------------------------------------------------------------------- the verdict


def track(previous: Mapping[str, Seen], signals: Iterable[Signal], now_s: float) -> dict[str, Seen]:
    """When each present signal was first and last seen; absent ones have cleared."""
    tracked: dict[str, Seen] = {}
    for signal in signals:
        before = previous.get(signal.key)
        tracked[signal.key] = Seen(before.first_s if before else now_s, now_s)
    return tracked


def decide(
    signals: Sequence[Signal],
    seen: Mapping[str, Seen],
    tolerances: Tolerances,
    now_s: float,
    missing: Sequence[str],
) -> Verdict:
    """Failed on the first signal (by pod name) past its bound; else waiting or ready."""
    tolerated: list[tuple[Signal, float, float]] = []
    for signal in sorted(signals, key=lambda s: (s.pod, s.key)):
        first = seen[signal.key].first_s if signal.key in seen else now_s
        elapsed, bound = now_s - first, tolerances.bound_s(signal.bound)
        if elapsed >= bound:
            return Failed(signal, elapsed)
        tolerated.append((signal, elapsed, bound))
    if not tolerated and not missing:
        return Ready()
    recheck = min((bound - elapsed for _, elapsed, bound in tolerated), default=None)
    return Waiting(tuple(missing), tuple(tolerated), recheck)
