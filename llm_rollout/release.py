"""Releases as the cluster sees them: which one serves, which objects and pods belong to one,
and the two writes that move traffic (switch the stable Service) or remove a release.

The cluster is the only source of truth: the stable Service's selector names the serving
release, its annotations name the one before it. Nothing here keeps local state, so `status`
and `rollback` from another machine see exactly what the deploy flow left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.kinds import RbgFlavor, rendered_kinds
from llm_rollout.kinds.rbg import role_labels, role_services_from_pods
from llm_rollout.kube.errors import NotFoundError
from llm_rollout.kube.objects import FIELD_MANAGER, apply, apply_all, delete, get
from llm_rollout.kube.resources import JsonDict, ObjectRef, list_objects
from llm_rollout.kube.session import process_session
from llm_rollout.kube.views import ObjectView, items_at, mapping_at
from llm_rollout.kube.watching import (
    Done,
    Selector,
    Verdict,
    Waiting,
    WaitTimeout,
    WatchSpec,
    call_with_retry,
    wait_until,
    watching,
)
from llm_rollout.preflight import ServingRelease, pods_by_node
from llm_rollout.readiness import pod_selector_for, workload_missing
from llm_rollout.record import (
    ANN_PREVIOUS_RELEASE,
    ANN_RELEASE,
    ANN_REVISION,
    ANN_SPEC_HASH,
    ANNOTATION_PREFIX,
)
from llm_rollout.render import PART_OF_LABEL, RELEASE_LABEL
from llm_rollout.strategy import ReleaseState

log = logging.getLogger(__name__)

# Kinds a release may own, in dependency order (a release's Services select its pods, so they
# go after the workload when applying and before it when deleting).
RELEASE_KINDS: tuple[tuple[str, str], ...] = (
    *((api_version, k.kind) for k in rendered_kinds() for api_version in k.api_versions()),
    ("v1", "Service"),
)


@contextmanager
def cluster_api() -> Iterator[k8s_client.ApiClient]:
    """The client of the process's Kubernetes session (`kube.session.process_session`: the
    standard sources, KUBECONFIG else in-cluster), shared by every task of the process and
    left open for the next one."""
    yield process_session().api


def stable_service_ref(namespace: str, name: str) -> ObjectRef:
    return ObjectRef("v1", "Service", namespace, name)


def read_release_state(api: k8s_client.ApiClient, namespace: str, name: str) -> ReleaseState:
    """The serving release of service `name`, from its stable Service (None when absent)."""
    service = get(api, stable_service_ref(namespace, name))
    if service is None:
        return ReleaseState(service=name, namespace=namespace, current_release=None)
    view = ObjectView(service)
    selector = view.at("spec", "selector")
    annotations = dict(view.metadata.annotations)
    return ReleaseState(
        service=name,
        namespace=namespace,
        current_release=selector.get(RELEASE_LABEL),
        previous_release=annotations.get(ANN_PREVIOUS_RELEASE),
        revision=annotations.get(ANN_REVISION),
        spec_hash=annotations.get(ANN_SPEC_HASH),
        annotations=annotations,
    )


def release_selector(name: str, release: str) -> str:
    return f"{PART_OF_LABEL}={name},{RELEASE_LABEL}={release}"


def release_objects(
    api: k8s_client.ApiClient, namespace: str, name: str, release: str
) -> list[JsonDict]:
    """Every workload and Service labelled as `release` of service `name`, in apply order.

    Kinds whose API the cluster does not serve are skipped: a cluster without KubeRay cannot
    hold a RayCluster of this release. The stable Service carries no release label.
    """
    found: list[JsonDict] = []
    seen: set[tuple[str, str]] = set()
    for api_version, kind in RELEASE_KINDS:
        try:
            items, _ = list_objects(
                api, api_version, kind, namespace, label_selector=release_selector(name, release)
            )
        except NotFoundError:
            continue
        for item in items:
            key = (kind, ObjectView(item).metadata.name)
            if key not in seen:  # an RBG listed under both served versions is one object
                seen.add(key)
                found.append(item)
    return found


def release_pods(
    api: k8s_client.ApiClient, namespace: str, name: str, release: str
) -> list[JsonDict]:
    pods, _ = list_objects(
        api, "v1", "Pod", namespace, label_selector=release_selector(name, release)
    )
    return pods


def find_serving_release(api: k8s_client.ApiClient, namespace: str, name: str) -> ServingRelease:
    """The serving release and the GPUs its pods hold per node (what recreate would free)."""
    state = read_release_state(api, namespace, name)
    if state.current_release is None:
        return ServingRelease(release=None, pods_by_node={})
    pods = release_pods(api, namespace, name, state.current_release)
    return ServingRelease(release=state.current_release, pods_by_node=pods_by_node(pods))


def _applyable(obj: Mapping[str, Any]) -> JsonDict:
    """Strip what the server owns from an object read back, so it can be re-applied."""
    view = ObjectView(obj)
    metadata = view.metadata
    spec = dict(view.spec)
    for server_field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        spec.pop(server_field, None)
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {
            "name": view.ref.name,
            "namespace": metadata.namespace,
            "labels": dict(metadata.labels),
            "annotations": dict(metadata.annotations),
        },
        "spec": spec,
    }


def point_stable_service(
    api: k8s_client.ApiClient,
    stable_service: Mapping[str, Any],
    release: str,
    annotations: Mapping[str, str],
) -> JsonDict:
    """Apply the stable Service selecting `release`'s pods, with `annotations` merged in.

    `stable_service` is either the freshly rendered one or the live one read back (rollback);
    the result is applied whole by the single field manager, so nothing we set is dropped.
    """
    desired = _applyable({"apiVersion": "v1", "kind": "Service", **dict(stable_service)})
    desired["spec"]["selector"] = {
        **mapping_at(desired, "spec", "selector"),
        RELEASE_LABEL: release,
    }
    desired["metadata"]["annotations"].update(annotations)
    desired["metadata"]["annotations"][ANN_RELEASE] = release
    ref = ObjectRef.of(desired)
    result = apply(api, desired, field_manager=FIELD_MANAGER, force=True)
    log.info("%s now selects release %s", ref, release)
    return result


@dataclass(frozen=True)
class StrandedPod:
    """A deleted pod of a removed release that no kubelet will confirm gone, so the removal
    does not wait for it (issue 16 B4). Nothing here force-deletes it: upstream leaves that to
    the node's return, the Node's deletion or a person (kubernetes/kubernetes#54368)."""

    pod: ObjectRef
    node: str
    # metadata.deletionTimestamp: the API server sets it to the request time plus the grace
    # period (k8s.io/apiserver pkg/registry/rest/delete.go BeforeDelete), so it is when the
    # grace period ends, not when the deletion was asked for.
    grace_ends: str
    cause: str
    remedy: str

    def describe(self) -> str:
        return (
            f"{self.pod} on Node {self.node} was not waited for (deleted, grace period ending "
            f"{self.grace_ends}): {self.cause}; {self.remedy}"
        )


@dataclass(frozen=True)
class Removal:
    """What `remove_release` did: the objects it deleted, and the pods it left to the cluster."""

    removed: list[ObjectRef]
    stranded: tuple[StrandedPod, ...] = ()

    def lines(self) -> list[str]:
        """One line per removed object, then one per pod not waited for."""
        return [*(str(ref) for ref in self.removed), *(s.describe() for s in self.stranded)]


# Taint keys from k8s.io/api core/v1 well_known_taints.go.
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"


def _node_ready(node: Mapping[str, Any]) -> JsonDict:
    conditions = (node.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if isinstance(c, dict) and c.get("type") == "Ready"), {})


def _tainted(node: Mapping[str, Any], key: str) -> bool:
    return any(t.get("key") == key for t in (node.get("spec") or {}).get("taints") or [])


def unconfirmable_deletion(
    pod: Mapping[str, Any], nodes: Mapping[str, Mapping[str, Any]]
) -> StrandedPod | None:
    """The pod as a `StrandedPod` when it is being deleted and no kubelet will confirm it;
    None when waiting for it is right (not deleted yet, unbound, or its node is working).

    `nodes` is the cluster's Node list by name, read after the pod was bound: a Node must exist
    for the scheduler to bind to it, so one missing there was deleted since.

    A graceful delete ends only when the pod's kubelet, having stopped its containers, deletes
    it with grace 0 (pkg/kubelet/status/status_manager.go). Three node states never bring that:
    - the Node is gone: pkg/controller/podgc/gc_controller.go gcOrphaned force-deletes pods
      bound to a missing Node, after its 40 s quarantine, on its 20 s pass;
    - the Node is not Ready and tainted node.kubernetes.io/out-of-service (set by a person
      after a non-graceful shutdown): gcTerminating force-deletes its terminating pods on
      the same pass;
    - the Node is not Ready and tainted node.kubernetes.io/unreachable: pkg/controller/
      nodelifecycle/node_lifecycle_controller.go taints a node so once its Ready turns Unknown
      (the kubelet stopped posting status past the grace period), and lifts the taint when
      the node reports again, or when every node is unreachable (its full-disruption mode,
      which assumes the fault is the control plane's: then the pod is waited for). Nothing
      force-deletes such a pod until the node returns, its Node is deleted or it is tainted
      out-of-service.
    A Node that is NotReady while its kubelet still reports (Ready=False) confirms deletions
    itself and is waited for, as is every pod not yet marked for deletion (the garbage
    collector marks a removed workload's pods within moments).
    """
    metadata = pod.get("metadata") or {}
    grace_ends = metadata.get("deletionTimestamp")
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not grace_ends or not node_name:
        return None
    ref = ObjectRef("v1", "Pod", metadata.get("namespace"), str(metadata.get("name")))
    node = nodes.get(str(node_name))
    if node is None:
        return StrandedPod(
            ref,
            str(node_name),
            str(grace_ends),
            f"Node {node_name} no longer exists, so no kubelet will confirm the deletion",
            "the pod GC controller force-deletes pods of a missing Node within about a minute "
            "(its 40 s quarantine, then its 20 s pass); nothing to do",
        )
    ready = _node_ready(node)
    if str(ready.get("status")) == "True":
        return None
    why = ": ".join(str(ready[k]) for k in ("reason", "message") if ready.get(k))
    state = f"Ready={ready.get('status', 'absent')}" + (f" ({why})" if why else "")
    if _tainted(node, OUT_OF_SERVICE_TAINT):
        return StrandedPod(
            ref,
            str(node_name),
            str(grace_ends),
            f"Node {node_name} is not ready ({state}) and tainted {OUT_OF_SERVICE_TAINT}",
            "the pod GC controller force-deletes its terminating pods on its next 20 s pass; "
            "nothing to do",
        )
    if _tainted(node, UNREACHABLE_TAINT):
        # The taint's value and effect are those of the non-graceful shutdown example in
        # kubernetes.io/docs/concepts/cluster-administration/node-shutdown/.
        return StrandedPod(
            ref,
            str(node_name),
            str(grace_ends),
            f"Node {node_name} is unreachable ({state}; tainted {UNREACHABLE_TAINT}), so its "
            "kubelet cannot confirm the deletion and the pod stays Terminating until the node "
            "returns",
            f"if the machine is gone for good, delete the Node (kubectl delete node "
            f"{node_name}) or, after making sure it is shut down, taint it "
            f"(kubectl taint nodes {node_name} {OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute); "
            "the pod GC controller then force-deletes the pod",
        )
    return None


def remove_release(
    api: k8s_client.ApiClient,
    namespace: str,
    name: str,
    release: str,
    *,
    wait_timeout_s: float | None,
) -> Removal:
    """Delete every object of `release` (Services first, then the workload).

    With `wait_timeout_s`, also wait until the release's pods are gone: only then are their
    GPUs free and the shared claim unused. A pod no kubelet will confirm gone is not waited
    for but returned in `Removal.stranded` (see `unconfirmable_deletion`).
    """
    if not release:
        raise PermanentError("remove_release: an empty release id would match nothing safely")
    refs = [ObjectRef.of(obj) for obj in release_objects(api, namespace, name, release)]
    removed = _delete_in_order(api, list(reversed(refs)), wait_timeout_s)
    stranded: list[StrandedPod] = []
    if wait_timeout_s is not None:
        stranded = wait_pods_gone(api, namespace, release_selector(name, release), wait_timeout_s)
    return Removal(removed, tuple(stranded))


def _delete_in_order(
    api: k8s_client.ApiClient, refs: Sequence[ObjectRef], wait_timeout_s: float | None
) -> list[ObjectRef]:
    # Background propagation: the owner goes at once and the garbage collector removes what
    # it owns; callers wait for the pods themselves, which is what frees GPUs and volumes.
    return [
        ref
        for ref in refs
        if delete(api, ref, propagation="Background", wait_timeout_s=wait_timeout_s)
    ]


def wait_pods_gone(
    api: k8s_client.ApiClient, namespace: str, label_selector: str, timeout_s: float
) -> list[StrandedPod]:
    """Return once every pod in `namespace` matching `label_selector` is gone, or stranded on
    a node whose kubelet will never confirm its deletion (`unconfirmable_deletion`): those are
    returned, by name. `WaitTimeout` when any other pod outlasts `timeout_s`.

    Nodes are watched with the pods: a node lost during the wait is seen when the
    node-lifecycle controller marks it, and its pods stop being waited for then.
    """
    pod_spec = WatchSpec("v1", "Pod", namespace, label_selector=label_selector)
    node_spec = WatchSpec("v1", "Node", None)
    deadline = time.monotonic() + timeout_s
    with watching(api, [pod_spec, node_spec]) as group:
        while True:
            pods = group.cache[pod_spec]
            waiting = sorted(pods)
            stranded: dict[str, StrandedPod] = {}
            if group.all_synced:
                nodes = group.cache[node_spec]
                for pod_name, pod in pods.items():
                    found = unconfirmable_deletion(pod, nodes)
                    if found is not None:
                        stranded[pod_name] = found
                waiting = [p for p in waiting if p not in stranded]
                if not waiting:
                    for found in stranded.values():
                        log.warning("%s", found.describe())
                    return [stranded[p] for p in sorted(stranded)]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [
                    f"Pod {namespace}/{pod} still exists{_why_left(pods[pod])}" for pod in waiting
                ] or [f"pods matching {label_selector} in {namespace} not listed"]
                raise WaitTimeout(
                    f"timed out after {timeout_s:.0f}s waiting for pods to go: "
                    + "; ".join(missing),
                    missing=missing,
                )
            group.next(remaining)


def _why_left(pod: Mapping[str, Any]) -> str:
    """Why a deleted pod may stay although its node is not lost: its deletion is confirmed by
    the kubelet of its node once the containers stopped (pkg/kubelet/status/status_manager.go),
    and that kubelet is slow or its node not ready while still reporting."""
    deleting = (pod.get("metadata") or {}).get("deletionTimestamp")
    if not deleting:
        return ""
    node = (pod.get("spec") or {}).get("nodeName")
    where = f" on Node {node}" if node else ""
    return (
        f" (Terminating{where}, grace period ending {deleting}: its kubelet has not confirmed "
        "the deletion)"
    )


def ordered_refs(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Human-readable "Kind namespace/name" lines for the summary, in the given order."""
    return [str(ObjectRef.of(obj)) for obj in objects]


# Shared by every release and removed only by teardown, in reverse dependency order.
STORAGE_KINDS_REVERSED: tuple[tuple[str, str], ...] = (
    ("v1", "PersistentVolumeClaim"),
    ("v1", "PersistentVolume"),
    ("v1", "Secret"),
)


def service_objects(api: k8s_client.ApiClient, namespace: str, name: str) -> list[ObjectRef]:
    """Every object of service `name` (all releases, stable Service, PVC, PV, Secret), in the
    order to delete them: release Services and workloads, then storage."""
    selector = f"{PART_OF_LABEL}={name}"
    refs: list[ObjectRef] = []
    seen: set[tuple[str, str]] = set()
    for api_version, kind in (*reversed(RELEASE_KINDS), *STORAGE_KINDS_REVERSED):
        scope = None if kind == "PersistentVolume" else namespace
        try:
            items, _ = list_objects(api, api_version, kind, scope, label_selector=selector)
        except NotFoundError:
            continue
        for item in items:
            ref = ObjectRef.of(item)
            if (kind, ref.name) not in seen:
                seen.add((kind, ref.name))
                refs.append(ref)
    return refs


def namespace_object(namespace: str) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
    }


def with_annotations(obj: Mapping[str, Any], annotations: Mapping[str, str]) -> JsonDict:
    """A copy of a rendered object with `annotations` merged into its metadata."""
    copy = dict(obj)
    metadata = dict(mapping_at(obj, "metadata"))
    metadata["annotations"] = {**ObjectView(obj).metadata.annotations, **annotations}
    copy["metadata"] = metadata
    return copy


def apply_checked(
    api: k8s_client.ApiClient, objects: Sequence[Mapping[str, Any]]
) -> list[JsonDict]:
    """Dry-run every object first, then apply them in order: a rejected object stops the
    stage before anything of it was written."""
    apply_all(api, objects, field_manager=FIELD_MANAGER, dry_run=True)
    return apply_all(api, objects, field_manager=FIELD_MANAGER)


def wait_rbg_role_services(
    api: k8s_client.ApiClient,
    namespace: str,
    workload: str,
    rbg_flavor: RbgFlavor,
    roles: Sequence[str],
    timeout_s: float,
) -> dict[str, str]:
    """The headless Service of each of `roles`, read from the pods the RBG controller created
    for them (their `spec.subdomain`, `kinds.rbg.role_services_from_pods`), once every role
    has a pod. Roles without dependencies get their pods at once, whatever the controller's
    version; a role that waits on them (the PD router) is not created before they are Ready,
    so its template can still be bound to what was read."""
    name_label = next(iter(role_labels(workload, roles[0], rbg_flavor)))

    def every_role_has_a_pod(pods: list[ObjectView]) -> Verdict[dict[str, str]]:
        services = role_services_from_pods([p.raw for p in pods], workload, rbg_flavor, roles)
        if set(services) >= set(roles):
            return Done(services)
        return Waiting(
            tuple(
                f"RoleBasedGroup {namespace}/{workload}: no pod of role {role} yet"
                for role in roles
                if role not in services
            )
        )

    pods = Selector("v1", "Pod", namespace, label_selector=f"{name_label}={workload}")
    return wait_until(api, pods, every_role_has_a_pod, timeout_s)


@dataclass(frozen=True)
class WorkloadStatus:
    ref: ObjectRef
    ready: bool
    missing: tuple[str, ...]


@dataclass(frozen=True)
class ServiceStatus:
    """What `llm-rollout status` shows, all read from the cluster."""

    state: ReleaseState
    workloads: tuple[WorkloadStatus, ...]
    previous_release_present: bool


WORKLOAD_KINDS = frozenset(k.kind for k in rendered_kinds())


def release_workloads(
    api: k8s_client.ApiClient, namespace: str, name: str, release: str
) -> list[WorkloadStatus]:
    """Readiness of each workload of `release`, from the workloads' own status."""
    result: list[WorkloadStatus] = []
    for obj in release_objects(api, namespace, name, release):
        if obj.get("kind") not in WORKLOAD_KINDS:
            continue
        missing = workload_missing(obj)
        result.append(WorkloadStatus(ObjectRef.of(obj), not missing, tuple(missing)))
    return result


def service_status(api: k8s_client.ApiClient, namespace: str, name: str) -> ServiceStatus:
    state = read_release_state(api, namespace, name)
    workloads: list[WorkloadStatus] = []
    if state.current_release:
        workloads = release_workloads(api, namespace, name, state.current_release)
    previous_present = bool(
        state.previous_release and release_objects(api, namespace, name, state.previous_release)
    )
    return ServiceStatus(state, tuple(workloads), previous_present)


def rollback_to_previous(api: k8s_client.ApiClient, namespace: str, name: str) -> str:
    """Point the stable Service back at the previous release if its workload still exists.

    Returns what happened; raises `PermanentError` saying plainly what is possible when it
    cannot (no stable Service, no previous release recorded, or its workload already removed).
    """
    service = get(api, stable_service_ref(namespace, name))
    if service is None:
        raise PermanentError(f"Service {namespace}/{name} does not exist: nothing to roll back")
    state = read_release_state(api, namespace, name)
    previous = state.previous_release
    if not previous:
        raise PermanentError(
            f"Service {namespace}/{name} records no previous release; redeploy an earlier "
            "spec with `llm-rollout deploy` instead"
        )
    if not release_workloads(api, namespace, name, previous):
        raise PermanentError(
            f"the workload of previous release {previous} of Service {namespace}/{name} was "
            "already removed (after the promote grace period); redeploy the earlier spec with "
            "`llm-rollout deploy` to bring that revision back"
        )
    annotations = {ANN_PREVIOUS_RELEASE: state.current_release or ""}
    if not state.current_release:
        annotations = {}
    point_stable_service(api, service, previous, annotations)
    return (
        f"Service {namespace}/{name} now routes to release {previous} "
        f"(was {state.current_release or 'none'})"
    )


def teardown(
    api: k8s_client.ApiClient, namespace: str, name: str, *, wait_timeout_s: float
) -> list[ObjectRef]:
    """Remove every release, the stable Service, PVC, PV and Secret of a service (never the
    OSS data). Workloads and Services go first and their pods are waited for, so the claim is
    unused when it is deleted; each object is waited for before the next."""
    refs = service_objects(api, namespace, name)
    storage_kinds = {kind for _, kind in STORAGE_KINDS_REVERSED}
    removed = _delete_in_order(
        api, [r for r in refs if r.kind not in storage_kinds], wait_timeout_s
    )
    stranded = wait_pods_gone(api, namespace, f"{PART_OF_LABEL}={name}", wait_timeout_s)
    if stranded:
        # The claim's pvc-protection finalizer stays while a pod bound to a node uses it
        # (pkg/controller/volume/pvcprotection podUsesPVC): deleting storage now would only
        # wait out its bound.
        raise PermanentError(
            f"teardown of {namespace}/{name} stopped before its storage: "
            + "; ".join(s.describe() for s in stranded)
            + "; run teardown again once they are gone"
        )
    return removed + _delete_in_order(
        api, [r for r in refs if r.kind in storage_kinds], wait_timeout_s
    )


# -- bake: the promoted release watched while the previous one can still take traffic back -----

# Waiting reasons of a container that is merely starting, not failing.
_STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})
# A bake that cannot even list what it watches within this much extra time gives up.
BAKE_SYNC_SLACK_S = 30.0


class ReleaseDegraded(PermanentError):
    """The promoted release stopped being healthy during its bake window."""

    def __init__(self, workload: ObjectRef, reason: str, after_s: float) -> None:
        super().__init__(f"{workload} degraded {after_s:.1f}s into its bake window: {reason}")
        self.workload = workload
        self.reason = reason
        self.after_s = after_s


@dataclass(frozen=True)
class BakeReport:
    """A bake window that passed: the workload and its pods stayed ready throughout."""

    workload: ObjectRef
    window_s: float
    pods: tuple[ObjectRef, ...]


def _pod_name(pod: Mapping[str, Any]) -> str:
    return str(ObjectView(pod).metadata.name or None)


def _restarts(pod: Mapping[str, Any]) -> dict[str, int]:
    statuses = items_at(pod, "status", "containerStatuses")
    return {str(cs.get("name")): int(cs.get("restartCount") or 0) for cs in statuses}


def pod_degradation(pod: Mapping[str, Any], baseline_restarts: Mapping[str, int]) -> str | None:
    """Why a pod that was ready no longer counts as serving, or None while it still does."""
    view = ObjectView(pod)
    ref = f"Pod {view.metadata.namespace}/{view.metadata.name or None}"
    if view.metadata.deletion_timestamp:
        return f"{ref} is being deleted"
    for cs in items_at(pod, "status", "containerStatuses"):
        name = cs.get("name")
        running_now = mapping_at(cs, "state", "terminated")
        terminated = running_now or mapping_at(cs, "lastState", "terminated")
        restarted = int(cs.get("restartCount") or 0) > baseline_restarts.get(str(name), 0)
        if running_now or restarted:
            why = terminated.get("reason") or "terminated"
            code = terminated.get("exitCode")
            return f"{ref} container {name} exited ({why}, exit code {code})"
        waiting = mapping_at(cs, "state", "waiting")
        reason = waiting.get("reason")
        if reason and reason not in _STARTING_REASONS:
            message = waiting.get("message") or ""
            return f"{ref} container {name}: {reason}" + (f" ({message})" if message else "")
    ready = view.condition("Ready")
    if ready is not None and not ready.is_true:
        return f"{ref} not Ready ({ready.reason or 'no reason given'})"
    return None


def bake(
    api: k8s_client.ApiClient,
    workload: ObjectRef,
    window_s: float,
    *,
    stable_service: str,
    release: str,
    on_event: Callable[[str], None] | None = None,
) -> BakeReport:
    """Watch a promoted `workload` and its pods for `window_s`; raise `ReleaseDegraded` at the
    first sign it no longer serves (a pod not Ready, a container exiting or restarting, a pod
    deleted, the workload's own status not ready), or when the stable Service stops selecting
    `release` (someone ran `llm-rollout rollback` meanwhile: retiring the previous release
    then would take down what serves).

    Watch-based: a failure is noticed when the API server reports it, not at the end of the
    window, so the caller can hand traffic back to the previous release at once.
    """
    if workload.namespace is None:
        raise PermanentError(f"{workload}: serving workloads are namespaced; namespace missing")
    notify = on_event or (lambda message: None)
    initial = call_with_retry(lambda: get(api, workload))
    if initial is None:
        raise ReleaseDegraded(workload, "the workload no longer exists", 0.0)
    selector, pod_filter = pod_selector_for(initial)
    workload_spec = WatchSpec(
        workload.api_version, workload.kind, workload.namespace, name=workload.name
    )
    pod_spec = WatchSpec("v1", "Pod", workload.namespace, label_selector=selector)
    service_spec = WatchSpec("v1", "Service", workload.namespace, name=stable_service)
    started = time.monotonic()
    deadline = started + window_s
    baseline: dict[str, dict[str, int]] | None = None
    with watching(api, [workload_spec, pod_spec, service_spec]) as group:
        while True:
            now = time.monotonic()
            if group.all_synced:
                obj = group.cache[workload_spec].get(workload.name)
                pods = {name: pod for name, pod in group.cache[pod_spec].items() if pod_filter(pod)}
                if baseline is None:
                    baseline = {name: _restarts(pod) for name, pod in pods.items()}
                    notify(f"baking {workload} with {len(pods)} pod(s) for {window_s:.0f}s")
                service = group.cache[service_spec].get(stable_service)
                selected = mapping_at(service, "spec", "selector")
                reason = _bake_problem(workload, obj, pods, baseline)
                if selected.get(RELEASE_LABEL) != release:
                    reason = (
                        f"Service {workload.namespace}/{stable_service} no longer routes to "
                        f"release {release} (now: {selected.get(RELEASE_LABEL) or 'nothing'})"
                    )
                if reason is not None:
                    raise ReleaseDegraded(workload, reason, now - started)
                if now >= deadline:
                    return BakeReport(
                        workload,
                        window_s,
                        tuple(
                            ObjectRef("v1", "Pod", workload.namespace, name)
                            for name in sorted(pods)
                        ),
                    )
            elif now >= deadline + BAKE_SYNC_SLACK_S:
                raise TransientError(f"could not list {workload} and its pods to bake it")
            remaining = deadline - now if group.all_synced else deadline + BAKE_SYNC_SLACK_S - now
            group.next(max(remaining, 0.0))


def _bake_problem(
    workload: ObjectRef,
    obj: JsonDict | None,
    pods: Mapping[str, JsonDict],
    baseline: Mapping[str, Mapping[str, int]],
) -> str | None:
    if obj is None:
        return f"{workload} was deleted"
    gone = sorted(set(baseline) - set(pods))
    if gone:
        return f"Pod {workload.namespace}/{gone[0]} disappeared"
    if not pods:
        return f"{workload} has no pods"
    for name in sorted(pods):
        problem = pod_degradation(pods[name], baseline.get(name, {}))
        if problem:
            return problem
    missing = workload_missing(obj)
    if missing:
        return f"{workload}: " + "; ".join(missing)
    return None


def restore_stable_service(
    api: k8s_client.ApiClient, namespace: str, name: str, release: str
) -> bool:
    """Point the stable Service back at `release`, with that release's own record annotations
    (taken from its workload), so `status` describes what serves again. False when there is
    no stable Service or no workload of `release` left to route to."""
    service = get(api, stable_service_ref(namespace, name))
    workloads = [
        o for o in release_objects(api, namespace, name, release) if o.get("kind") in WORKLOAD_KINDS
    ]
    if service is None or not workloads:
        return False
    recorded = {
        k: v
        for k, v in ObjectView(workloads[0]).metadata.annotations.items()
        if k.startswith(ANNOTATION_PREFIX)
    }
    kept = {
        k: v
        for k, v in ObjectView(service).metadata.annotations.items()
        if not k.startswith(ANNOTATION_PREFIX)
    }
    base = dict(service)
    base["metadata"] = {**mapping_at(service, "metadata"), "annotations": kept}
    point_stable_service(api, base, release, recorded)
    return True
