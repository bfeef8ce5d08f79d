"""Release ids, the rollout-strategy decision, and promote/rollback plans as plain data.

Everything here is pure: callers gather facts from the cluster (node capacity, the pods of the
currently serving release, the rendered objects of the new release) and these functions decide.
That keeps the decision testable without a cluster and identical in preflight and rollout.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from llm_rollout.kinds import kind_of
from llm_rollout.kinds.base import ERDMA_RESOURCE as ERDMA_RESOURCE
from llm_rollout.kinds.base import GPU_RESOURCE as GPU_RESOURCE
from llm_rollout.kinds.base import PodDemand as PodDemand
from llm_rollout.kinds.base import container_demand as container_demand

RequestedStrategy = Literal["auto", "blue-green", "recreate"]
Strategy = Literal["blue-green", "recreate"]

_BASE36 = string.digits + string.ascii_lowercase


def _base36(value: int) -> str:
    if value <= 0:
        return "0"
    digits: list[str] = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_BASE36[rem])
    return "".join(reversed(digits))


def new_release_id(spec_hash: str, now_ms: int) -> str:
    """A short DNS-1123 label unique per rollout: the time orders releases, the hash names content.

    Kept to 12 characters because workload names are `<service>-<release>` and LWS/RBG derive
    longer child names from them, all under the 63-character label limit.
    """
    digest = "".join(ch for ch in spec_hash.lower() if ch in _BASE36)[:4] or "0000"
    return f"r{_base36(now_ms)[-7:]}{digest}"


# -- capacity -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCapacity:
    """A schedulable node's allocatable extended resources and what bound pods already request."""

    name: str
    gpus_allocatable: int
    gpus_requested: int = 0
    erdma_allocatable: int = 0
    erdma_requested: int = 0

    @property
    def gpus_free(self) -> int:
        return max(self.gpus_allocatable - self.gpus_requested, 0)

    @property
    def erdma_free(self) -> int:
        return max(self.erdma_allocatable - self.erdma_requested, 0)


def pod_demands(objects: Iterable[Mapping[str, Any]]) -> list[PodDemand]:
    """The pods a set of rendered workload objects will create, with their GPU/eRDMA asks.

    Each workload kind counts its own pods (`llm_rollout.kinds`); other kinds (Services...)
    create no pods.
    """
    demands: list[PodDemand] = []
    for obj in objects:
        kind = kind_of(obj)
        if kind is not None:
            demands += kind.pod_demands(obj)
    return demands


def fits(demands: Sequence[PodDemand], nodes: Sequence[NodeCapacity]) -> bool:
    """First-fit-decreasing bin packing of pods onto the nodes' free GPUs and eRDMA.

    Pods that ask for nothing scarce always fit (CPU/memory are not the constraint here).
    """
    free = {n.name: [n.gpus_free, n.erdma_free] for n in nodes}
    order = sorted(
        (d for d in demands if d.gpus or d.erdma), key=lambda d: (d.gpus, d.erdma), reverse=True
    )
    for demand in order:
        for node_free in sorted(free.values(), key=lambda f: (f[0], f[1])):
            if node_free[0] >= demand.gpus and node_free[1] >= demand.erdma:
                node_free[0] -= demand.gpus
                node_free[1] -= demand.erdma
                break
        else:
            return False
    return True


def release_freed(
    nodes: Sequence[NodeCapacity], freed_by_node: Mapping[str, PodDemand]
) -> list[NodeCapacity]:
    """Node capacities as they would be once the pods summed in `freed_by_node` are gone."""
    result: list[NodeCapacity] = []
    for node in nodes:
        freed = freed_by_node.get(node.name, PodDemand(gpus=0))
        result.append(
            NodeCapacity(
                name=node.name,
                gpus_allocatable=node.gpus_allocatable,
                gpus_requested=max(node.gpus_requested - freed.gpus, 0),
                erdma_allocatable=node.erdma_allocatable,
                erdma_requested=max(node.erdma_requested - freed.erdma, 0),
            )
        )
    return result


@dataclass(frozen=True)
class StrategyDecision:
    """The strategy a rollout will use, or the problems that make it impossible."""

    requested: RequestedStrategy
    strategy: Strategy | None
    warnings: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def _need(demands: Sequence[PodDemand]) -> str:
    gpus = sum(d.gpus for d in demands)
    erdma = sum(d.erdma for d in demands)
    pods = sum(1 for d in demands if d.gpus or d.erdma)
    text = f"{gpus} {GPU_RESOURCE} over {pods} pod(s)"
    return text + (f" and {erdma} {ERDMA_RESOURCE}" if erdma else "")


def _free(nodes: Sequence[NodeCapacity]) -> str:
    if not nodes:
        return "no schedulable nodes"
    return ", ".join(f"{n.name}={n.gpus_free}" for n in nodes) + f" free {GPU_RESOURCE}"


def choose_strategy(
    requested: RequestedStrategy,
    demands: Sequence[PodDemand],
    nodes: Sequence[NodeCapacity],
    old_release_by_node: Mapping[str, PodDemand] | None,
) -> StrategyDecision:
    """Decide blue-green or recreate from the capacity the cluster has right now.

    `old_release_by_node` is what the serving release's pods hold per node (None when nothing
    serves yet, in which case there is nothing to replace and side by side is the only case).
    Blue-green needs room for the new release next to the old one; recreate only needs room
    once the old one is gone. `auto` prefers blue-green and falls back with a warning; an
    explicitly requested strategy that cannot fit is refused rather than silently changed.
    """
    side_by_side = fits(demands, nodes)
    if old_release_by_node is None:
        if side_by_side:
            return StrategyDecision(
                requested, "blue-green" if requested != "recreate" else "recreate"
            )
        return StrategyDecision(
            requested,
            None,
            problems=(f"capacity: the release needs {_need(demands)}; nodes have {_free(nodes)}",),
        )
    after_removal = fits(demands, release_freed(nodes, old_release_by_node))
    if requested == "blue-green":
        if side_by_side:
            return StrategyDecision(requested, "blue-green")
        return StrategyDecision(
            requested,
            None,
            problems=(
                "capacity: rollout.strategy is blue-green but the new release "
                f"({_need(demands)}) does not fit beside the serving one ({_free(nodes)}); "
                "use strategy auto or recreate, or add GPU nodes",
            ),
        )
    if requested == "auto" and side_by_side:
        return StrategyDecision(requested, "blue-green")
    if after_removal:
        warnings: tuple[str, ...] = ()
        if requested == "auto":
            warnings = (
                "not enough free GPUs to run the new release beside the serving one "
                f"({_need(demands)} needed; {_free(nodes)}): falling back to recreate, "
                "the service will not answer between removal of the old release and "
                "readiness of the new one",
            )
        return StrategyDecision(requested, "recreate", warnings=warnings)
    return StrategyDecision(
        requested,
        None,
        problems=(
            f"capacity: the release needs {_need(demands)}, which does not fit even after "
            f"removing the serving release ({_free(nodes)})",
        ),
    )


# -- promote / rollback plans ---------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseState:
    """What the cluster says about a service: read from the stable Service, not local state."""

    service: str
    namespace: str
    current_release: str | None
    previous_release: str | None = None
    revision: str | None = None
    spec_hash: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GatePlan:
    """What the gate does: point the stable Service at `serve_release` and remove releases."""

    action: Literal["promote", "rollback"]
    serve_release: str | None
    remove_releases: tuple[str, ...]
    remove_after_s: float
    serving_during_rollout: bool
    message: str


def plan_promote(old_release: str | None, new_release: str, grace_s: float) -> GatePlan:
    """Switch traffic to the new release; the old workload goes after the grace period."""
    removal = (old_release,) if old_release and old_release != new_release else ()
    msg = f"promote release {new_release}"
    if removal:
        msg += f"; release {old_release} is removed after {grace_s:g} s"
    return GatePlan("promote", new_release, removal, grace_s, True, msg)


def plan_rollback(
    old_release: str | None, new_release: str, strategy: Strategy, old_workload_exists: bool
) -> GatePlan:
    """Remove the new release; keep (or, for recreate, admit the loss of) the old one."""
    if old_release and old_workload_exists:
        return GatePlan(
            "rollback",
            old_release,
            (new_release,),
            0.0,
            True,
            f"rolled back: release {new_release} removed; release {old_release} keeps serving",
        )
    if strategy == "recreate" and old_release:
        reason = (
            f"rolled back: release {new_release} removed; the strategy was recreate, so the "
            f"previous release {old_release} was already removed and NOTHING IS SERVING"
        )
    else:
        reason = (
            f"rolled back: release {new_release} removed; no previous release, NOTHING IS SERVING"
        )
    return GatePlan("rollback", None, (new_release,), 0.0, False, reason)
