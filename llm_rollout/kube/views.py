"""Typed read-only views of objects as the API server answers them (JSON dicts).

A view reads through to the dict it wraps and never copies or changes it; a field that is
absent or null reads as an empty mapping, an empty tuple or None, so callers stop writing
`(obj.get("metadata") or {}).get(...)` chains. The shape follows kopf's
`kopf/_cogs/structs/bodies.py` (nolar/kopf: `Body` with `.metadata`/`.spec`/`.status`, `Meta`
with `.labels`, `.annotations`, `.deletion_timestamp`), written for our needs: conditions are
typed too (`Condition`), pods have their own view (`PodView`: node, phase, container statuses
as `ContainerStatus`, readiness, deletion), and a nested mapping is reached with `mapping_at`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from llm_rollout.kube.resources import ObjectRef

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def mapping_at(obj: Mapping[str, Any] | None, *keys: str) -> Mapping[str, Any]:
    """The mapping found by following `keys` from `obj`; empty when a step is absent, null
    or not a mapping."""
    current: Any = obj
    for key in keys:
        if not isinstance(current, Mapping):
            return _EMPTY
        current = current.get(key)
    return current if isinstance(current, Mapping) else _EMPTY


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def items_at(obj: Mapping[str, Any] | None, *keys: str) -> tuple[Mapping[str, Any], ...]:
    """The mapping entries of the list found by following `keys`; empty when a step is absent."""
    *path, last = keys
    found = mapping_at(obj, *path).get(last)
    if not isinstance(found, list):
        return ()
    return tuple(item for item in found if isinstance(item, Mapping))


@dataclass(frozen=True)
class Condition:
    """One entry of `status.conditions` (type, status "True"/"False"/"Unknown", reason, message)."""

    type: str
    status: str
    reason: str
    message: str

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Condition:
        return cls(
            type=str(raw.get("type") or ""),
            status=str(raw.get("status") or ""),
            reason=str(raw.get("reason") or ""),
            message=str(raw.get("message") or ""),
        )

    @property
    def is_true(self) -> bool:
        return self.status == "True"


class Meta:
    """`metadata` of an object."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = raw

    @property
    def name(self) -> str:
        return str(self._raw.get("name") or "")

    @property
    def namespace(self) -> str | None:
        namespace = self._raw.get("namespace")
        return str(namespace) if namespace else None

    @property
    def labels(self) -> Mapping[str, str]:
        return mapping_at(self._raw, "labels")

    @property
    def annotations(self) -> Mapping[str, str]:
        return mapping_at(self._raw, "annotations")

    @property
    def finalizers(self) -> tuple[str, ...]:
        return tuple(str(f) for f in self._raw.get("finalizers") or ())

    @property
    def deletion_timestamp(self) -> str | None:
        stamp = self._raw.get("deletionTimestamp")
        return str(stamp) if stamp else None

    @property
    def resource_version(self) -> str:
        return str(self._raw.get("resourceVersion") or "")

    @property
    def generation(self) -> int | None:
        """The spec generation the server counts (None before the server assigned one)."""
        return _int_or_none(self._raw.get("generation"))

    @property
    def uid(self) -> str:
        return str(self._raw.get("uid") or "")


class ObjectView:
    """A read-only view of one object; `raw` is the dict itself, for code that needs it."""

    __slots__ = ("raw",)

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind} {self.metadata.namespace}/{self.metadata.name})"

    @property
    def api_version(self) -> str:
        return str(self.raw.get("apiVersion") or "")

    @property
    def kind(self) -> str:
        return str(self.raw.get("kind") or "")

    @property
    def metadata(self) -> Meta:
        return Meta(mapping_at(self.raw, "metadata"))

    @property
    def spec(self) -> Mapping[str, Any]:
        return mapping_at(self.raw, "spec")

    @property
    def status(self) -> Mapping[str, Any]:
        return mapping_at(self.raw, "status")

    @property
    def observed_generation(self) -> int | None:
        """`status.observedGeneration`: the generation the controller last acted on (None when
        the controller does not report one, or has not yet)."""
        return _int_or_none(self.status.get("observedGeneration"))

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return tuple(Condition.of(c) for c in items_at(self.raw, "status", "conditions"))

    def condition(self, type_: str) -> Condition | None:
        """The condition of type `type_`, or None when the object does not report it."""
        return next((c for c in self.conditions if c.type == type_), None)

    def at(self, *keys: str) -> Mapping[str, Any]:
        """The nested mapping at `keys` (e.g. `at("spec", "selector")`), empty when absent."""
        return mapping_at(self.raw, *keys)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef.of(self.raw)


class ContainerStatus:
    """One entry of a pod's `status.containerStatuses`."""

    __slots__ = ("raw",)

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    @property
    def name(self) -> str:
        return str(self.raw.get("name") or "")

    @property
    def container_id(self) -> str:
        """The runtime's id of the current container ("" before one was created): what an
        in-place restart changes."""
        return str(self.raw.get("containerID") or "")

    @property
    def restart_count(self) -> int:
        return int(self.raw.get("restartCount") or 0)


class PodView(ObjectView):
    """A read-only view of a Pod (core/v1): where it runs, its phase, its container statuses
    and readiness."""

    __slots__ = ()

    @property
    def node_name(self) -> str | None:
        """`spec.nodeName`, None while the pod is not bound to a node."""
        node = self.spec.get("nodeName")
        return str(node) if node else None

    @property
    def phase(self) -> str | None:
        phase = self.status.get("phase")
        return str(phase) if phase else None

    @property
    def container_statuses(self) -> tuple[ContainerStatus, ...]:
        return tuple(ContainerStatus(c) for c in items_at(self.raw, "status", "containerStatuses"))

    @property
    def is_ready(self) -> bool:
        """Whether the pod reports condition Ready=True."""
        return any(c.type == "Ready" and c.is_true for c in self.conditions)

    @property
    def is_terminating(self) -> bool:
        """Deletion has begun (`metadata.deletionTimestamp` is set): the pod is going away."""
        return self.metadata.deletion_timestamp is not None
