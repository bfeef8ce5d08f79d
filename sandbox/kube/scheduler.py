"""The default scheduler, reduced to the filters this project meets: node readiness and taints,
nodeSelector / required node affinity, resource fit (cpu, memory, GPUs, eRDMA) and bound PVCs.

A pod that fits nowhere stays Pending with PodScheduled=False/Unschedulable and a FailedScheduling
event whose message has the upstream shape (``0/2 nodes are available: 2 Insufficient
nvidia.com/gpu. preemption: ...``). Pending pods are retried whenever something that could make
room happens: a pod goes away or finishes, a node changes, a claim binds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sandbox.kube.controllers._base import (
    Controller,
    Key,
    get_condition,
    is_deleting,
    key_of,
    meta,
    set_condition,
    try_get,
)
from sandbox.kube.nodes import node_ready, parse_quantity
from sandbox.kube.store import Store

Obj = dict[str, Any]
SCHEDULER_NAME = "default-scheduler"


def pod_requests(pod: Mapping[str, Any]) -> dict[str, float]:
    """What a pod asks a node for. Extended resources (GPUs, RDMA) default their request to the
    limit, exactly as the API server defaults them; cpu/memory do the same when only limits are
    set. Init containers run one after another, so they count with their largest request."""

    def container_req(c: Mapping[str, Any]) -> dict[str, float]:
        res = c.get("resources") or {}
        req = dict(res.get("requests") or {})
        for name, value in (res.get("limits") or {}).items():
            req.setdefault(name, value)
        return {k: parse_quantity(v) for k, v in req.items()}

    spec = pod.get("spec") or {}
    total: dict[str, float] = {}
    for c in spec.get("containers") or []:
        for k, v in container_req(c).items():
            total[k] = total.get(k, 0.0) + v
    for c in spec.get("initContainers") or []:
        for k, v in container_req(c).items():
            total[k] = max(total.get(k, 0.0), v)
    total["pods"] = 1.0
    return total


def _tolerates(pod: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    for tol in (pod.get("spec") or {}).get("tolerations") or []:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        op = tol.get("operator", "Equal")
        if not tol.get("key") and op == "Exists":
            return True
        if tol.get("key") != taint.get("key"):
            continue
        if op == "Exists" or tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def _match_expr(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            a, b = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return a > b if op == "Gt" else a < b
    return False


def _affinity_matches(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    labels = meta(node).get("labels") or {}
    spec = pod.get("spec") or {}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    return any(
        all(_match_expr(e, labels) for e in term.get("matchExpressions") or []) for term in terms
    )


class Scheduler(Controller):
    name = "scheduler"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._pending: set[Key] = set()
        self.pod_rt = store.resource_type("v1", "Pod")
        self.node_rt = store.resource_type("v1", "Node")
        self.pvc_rt = store.resource_type("v1", "PersistentVolumeClaim")

    def keys_for(self, event: str, obj: Obj) -> Iterable[Key]:
        kind = obj.get("kind")
        if kind == "Pod":
            spec = obj.get("spec") or {}
            if event != "DELETED" and not spec.get("nodeName") and not is_deleting(obj):
                return [key_of(obj)]
            phase = (obj.get("status") or {}).get("phase")
            if event == "DELETED" or phase in ("Succeeded", "Failed"):
                return list(self._pending)
            return []
        if kind in ("Node", "PersistentVolumeClaim"):
            return list(self._pending)
        return []

    def resync(self) -> None:
        pods, _ = self.store.list(self.pod_rt)
        for pod in pods:
            if not (pod.get("spec") or {}).get("nodeName"):
                self.queue.add(key_of(pod))

    # -----------------------------------------------------------------------------------------
    def reconcile(self, key: Key) -> float | None:
        pod = try_get(self.store, self.pod_rt, key[0], key[1])
        if pod is None or is_deleting(pod) or (pod.get("spec") or {}).get("nodeName"):
            self._pending.discard(key)
            return None
        if (pod.get("spec") or {}).get("schedulerName", SCHEDULER_NAME) != SCHEDULER_NAME:
            return None
        nodes, _ = self.store.list(self.node_rt)
        node, failure = self._choose(pod, nodes)
        if node is None:
            self._pending.add(key)
            self._unschedulable(pod, failure)
            return None
        self._pending.discard(key)
        self._bind(pod, node)
        return None

    def _claims_problem(self, pod: Obj) -> str | None:
        ns = meta(pod).get("namespace")
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            pvc = try_get(self.store, self.pvc_rt, ns, claim)
            if pvc is None:
                return f'persistentvolumeclaim "{claim}" not found'
            if (pvc.get("status") or {}).get("phase") != "Bound":
                return "pod has unbound immediate PersistentVolumeClaims"
        return None

    def _choose(self, pod: Obj, nodes: list[Obj]) -> tuple[Obj | None, str]:
        n = len(nodes)
        claim_problem = self._claims_problem(pod)
        if claim_problem is not None:
            if claim_problem.startswith("persistentvolumeclaim"):
                return None, f"0/{n} nodes are available: {claim_problem}."
            return None, (
                f"0/{n} nodes are available: {claim_problem}. preemption: 0/{n} nodes are "
                f"available: {n} Preemption is not helpful for scheduling."
            )
        want = pod_requests(pod)
        used = self._used_by_node()
        reasons: Counter[str] = Counter()
        fits: list[tuple[float, str, Obj]] = []
        for node in nodes:
            name = meta(node)["name"]
            why = self._filter(pod, node, want, used.get(name, {}))
            if why:
                for w in why:
                    reasons[w] += 1
                continue
            fits.append((self._score(node, want, used.get(name, {})), name, node))
        if fits:
            fits.sort(key=lambda t: (t[0], t[1]))
            return fits[0][2], ""
        detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
        only_resources = all(r.startswith("Insufficient") for r in reasons)
        preempt = (
            f"{n} No preemption victims found for incoming pod"
            if only_resources
            else f"{n} Preemption is not helpful for scheduling"
        )
        return None, (
            f"0/{n} nodes are available: {detail}. "
            f"preemption: 0/{n} nodes are available: {preempt}."
        )

    def _filter(
        self, pod: Obj, node: Obj, want: dict[str, float], used: dict[str, float]
    ) -> list[str]:
        taints = list((node.get("spec") or {}).get("taints") or [])
        if not node_ready(node) and not any(
            t.get("key", "").startswith("node.kubernetes.io/") for t in taints
        ):
            taints.append({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"})
        for taint in taints:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(pod, taint):
                value = taint.get("value", "")
                return [f"node(s) had untolerated taint {{{taint.get('key')}: {value}}}"]
        if (node.get("spec") or {}).get("unschedulable"):
            return ["node(s) were unschedulable"]
        if not _affinity_matches(pod, node):
            return ["node(s) didn't match Pod's node affinity/selector"]
        alloc = {
            k: parse_quantity(v)
            for k, v in ((node.get("status") or {}).get("allocatable") or {}).items()
        }
        short = []
        for res, amount in sorted(want.items()):
            if amount <= 0:
                continue
            if used.get(res, 0.0) + amount > alloc.get(res, 0.0) + 1e-9:
                short.append("Too many pods" if res == "pods" else f"Insufficient {res}")
        return short

    def _score(self, node: Obj, want: dict[str, float], used: dict[str, float]) -> float:
        """LeastAllocated: prefer the emptiest node, which spreads replicas across nodes."""
        alloc = (node.get("status") or {}).get("allocatable") or {}
        fractions = []
        for res in ("cpu", "memory", "nvidia.com/gpu", "pods"):
            cap = parse_quantity(alloc.get(res, 0))
            if cap > 0:
                fractions.append((used.get(res, 0.0) + want.get(res, 0.0)) / cap)
        return sum(fractions) / len(fractions) if fractions else 0.0

    def _used_by_node(self) -> dict[str, dict[str, float]]:
        pods, _ = self.store.list(self.pod_rt)
        used: dict[str, dict[str, float]] = {}
        for p in pods:
            node = (p.get("spec") or {}).get("nodeName")
            if not node or (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            slot = used.setdefault(node, {})
            for k, v in pod_requests(p).items():
                slot[k] = slot.get(k, 0.0) + v
        return used

    def _bind(self, pod: Obj, node: Obj) -> None:
        node_name = meta(node)["name"]
        bound = dict(pod)
        bound["spec"] = dict(pod.get("spec") or {})
        bound["spec"]["nodeName"] = node_name
        bound = self.store.update(bound)
        status = dict(bound.get("status") or {})
        status.setdefault("phase", "Pending")
        status["conditions"] = set_condition(
            status.get("conditions") or [], "PodScheduled", "True", probe_time=True
        )
        for cond in status["conditions"]:
            if cond["type"] == "PodScheduled":
                cond.pop("reason", None)
                cond.pop("message", None)
        bound["status"] = status
        self.store.update_status(bound)
        m = meta(pod)
        self.store.emit_event(
            bound,
            "Scheduled",
            f"Successfully assigned {m.get('namespace')}/{m['name']} to {node_name}",
            "Normal",
            SCHEDULER_NAME,
        )

    def _unschedulable(self, pod: Obj, message: str) -> None:
        status = dict(pod.get("status") or {})
        status["phase"] = "Pending"
        before = get_condition(pod, "PodScheduled")
        status["conditions"] = set_condition(
            status.get("conditions") or [],
            "PodScheduled",
            "False",
            "Unschedulable",
            message,
            probe_time=True,
        )
        if before is None or before.get("message") != message or before.get("status") != "False":
            updated = dict(pod)
            updated["status"] = status
            self.store.update_status(updated)
        self.store.emit_event(pod, "FailedScheduling", message, "Warning", SCHEDULER_NAME)
