"""A release removed (after promote, or a failed new one), or every object of a service
(teardown), waiting for the pods to go so their GPUs and the shared claim are free; pods no
kubelet will ever confirm gone are reported, not waited for (issue 16 B4)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError
from llm_rollout.kube.objects import delete
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.views import ObjectView, PodView, items_at
from llm_rollout.kube.watching import Done, Interrupt, Selector, Verdict, Waiting, wait_until
from llm_rollout.release.inventory import release_objects, service_objects
from llm_rollout.vocabulary import STORAGE_KINDS_REVERSED, release_selector, service_selector

log = logging.getLogger(__name__)


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


def _node_ready(node: Mapping[str, Any]) -> Mapping[str, Any]:
    conditions = items_at(node, "status", "conditions")
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def _tainted(node: Mapping[str, Any], key: str) -> bool:
    return any(t.get("key") == key for t in items_at(node, "spec", "taints"))


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
    node_name = PodView(pod).node_name
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
    interrupt: Interrupt | None = None,
) -> Removal:
    """Delete every object of `release` (Services first, then the workload).

    With `wait_timeout_s`, also wait until the release's pods are gone: only then are their
    GPUs free and the shared claim unused. A pod no kubelet will confirm gone is not waited
    for but returned in `Removal.stranded` (see `unconfirmable_deletion`). An `interrupt`
    (the rollout lease the caller holds) ends that wait with its error as soon as it fires.
    """
    if not release:
        raise PermanentError("remove_release: an empty release id would match nothing safely")
    refs = [ObjectRef.of(obj) for obj in release_objects(api, namespace, name, release)]
    removed = _delete_in_order(api, list(reversed(refs)), wait_timeout_s)
    stranded: list[StrandedPod] = []
    if wait_timeout_s is not None:
        stranded = wait_pods_gone(
            api, namespace, release_selector(name, release), wait_timeout_s, interrupt=interrupt
        )
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
    api: k8s_client.ApiClient,
    namespace: str,
    label_selector: str,
    timeout_s: float,
    *,
    interrupt: Interrupt | None = None,
) -> list[StrandedPod]:
    """Return once every pod in `namespace` matching `label_selector` is gone, or stranded on
    a node whose kubelet will never confirm its deletion (`unconfirmable_deletion`): those are
    returned, by name. `WaitTimeout` when any other pod outlasts `timeout_s`; an `interrupt`
    (a rollout lease lost meanwhile) ends the wait with its error as soon as it fires.

    Nodes are watched with the pods: a node lost during the wait is seen when the
    node-lifecycle controller marks it, and its pods stop being waited for then.
    """
    pod_spec = Selector("v1", "Pod", namespace, label_selector=label_selector)
    node_spec = Selector("v1", "Node", None)

    def gone(
        picture: tuple[list[ObjectView], list[ObjectView]],
    ) -> Verdict[list[StrandedPod]]:
        pods, nodes = picture
        by_name = {node.metadata.name: node.raw for node in nodes}
        stranded: list[StrandedPod] = []
        missing: list[str] = []
        for pod in pods:
            found = unconfirmable_deletion(pod.raw, by_name)
            if found is not None:
                stranded.append(found)
            else:
                missing.append(
                    f"Pod {namespace}/{pod.metadata.name} still exists{_why_left(pod.raw)}"
                )
        return Waiting(tuple(missing)) if missing else Done(stranded)

    stranded = wait_until(
        api,
        (pod_spec, node_spec),
        gone,
        timeout_s,
        waiting_for="pods to go",
        interrupt=interrupt,
    )
    for found in stranded:
        log.warning("%s", found.describe())
    return stranded


def _why_left(pod: Mapping[str, Any]) -> str:
    """Why a deleted pod may stay although its node is not lost: its deletion is confirmed by
    the kubelet of its node once the containers stopped (pkg/kubelet/status/status_manager.go),
    and that kubelet is slow or its node not ready while still reporting."""
    view = PodView(pod)
    deleting = view.metadata.deletion_timestamp
    if not deleting:
        return ""
    node = view.node_name
    where = f" on Node {node}" if node else ""
    return (
        f" (Terminating{where}, grace period ending {deleting}: its kubelet has not confirmed "
        "the deletion)"
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
    stranded = wait_pods_gone(api, namespace, service_selector(name), wait_timeout_s)
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
