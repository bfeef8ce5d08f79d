"""What every workload kind answers, and the registry callers ask instead of naming kinds.

One class per kind (its module in this package), in the manner of kr8s's per-kind classes
(`kr8s/_objects.py`: class attributes for the API and methods such as `ready()`): API group,
versions and plural; the templates it renders per (engine, shape); the labels its controller
puts on pods and the selector that finds them; its readiness rule; the pods (and GPUs) a
rendered object will create; webhook-style validation rules; and the operator quirks that
decide whether a change of its pod template rolls its pods.

Callers use `kind_for(spec)` (the kind a spec renders), `kind_of(obj)` (the kind of an object
read or rendered, None for non-workloads) and `rendered_kinds()`; none of them branch on a kind
name. Adding a kind means one module here plus its templates in `manifests/`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from llm_rollout.errors import PermanentError
from llm_rollout.kube.views import ObjectView, items_at, mapping_at

if TYPE_CHECKING:
    from llm_rollout.crds import CrdCatalog
    from llm_rollout.spec import ServiceSpec

JsonDict = dict[str, Any]
PodFilter = Callable[[JsonDict], bool]
RbgFlavor = Literal["v0.6", "v0.7"]
# The RoleBasedGroup convention rendered when no cluster says which one it runs: `llm-rollout
# plan` offline, and `render()` called without one. A deploy never needs it for an RBG shape:
# preflight refuses the shape when the cluster serves no RBG API, and otherwise renders the
# flavour the served versions name (kinds/rbg.py `flavor_from_versions`); other shapes render
# nothing that depends on it. v0.6, because its v1alpha1 API is the one every supported
# controller serves (v0.7+ keeps v1alpha1 beside v1alpha2, which a v0.6 cluster refuses), and
# its name limits are the stricter (`derived_statefulsets`: only v0.6 runs roles as
# StatefulSets named "<rbg>-<role>"), so a name `plan` accepts fits either controller.
DEFAULT_RBG_FLAVOR: RbgFlavor = "v0.6"
# What a redeploy changes in the pod templates: annotations only, container images (with
# annotations), or other pod-spec fields such as the engine's arguments.
TemplateChange = Literal["metadata", "image", "spec"]

GPU_RESOURCE = "nvidia.com/gpu"
ERDMA_RESOURCE = "aliyun/erdma"


class UnsupportedKindError(PermanentError):
    """A kind or shape no module of this package describes."""


@dataclass(frozen=True)
class PodDemand:
    """What one pod of a release asks the scheduler for."""

    gpus: int
    erdma: int = 0


@dataclass(frozen=True)
class ApiRequirement:
    """An API group/kind a shape's objects need, and the versions that would do."""

    group: str
    kind: str
    versions: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class ChildKind:
    """Objects a workload's controllers make between the workload and its pods (a
    Deployment's ReplicaSets, a LeaderWorkerSet's StatefulSets, RBG v0.7's RoleInstanceSets
    and RoleInstances). Readiness lists and watches them, narrowed by `label_selector`, to know
    which of them the workload controls now (`PodCreator.owner`); the worker's RBAC grants
    `list` and `watch` on each kind's `plural`."""

    api_version: str
    kind: str
    plural: str
    label_selector: str | None = None

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def matching(self, label_selector: str) -> ChildKind:
        return replace(self, label_selector=label_selector)


@dataclass(frozen=True)
class PodCreator:
    """Objects that create a workload's pods, as their controller's events name them.

    `kind` and `names` (a full match of the name) pick the events' `involvedObject`;
    `outcomes` maps each Warning reason the controller records when a pod create fails to the
    Normal reason it records when one succeeds (a later success means the failure cleared).

    Names come back: a release deployed again under the same name, or a group recreated, has
    new objects under the old names, and the old objects' events stay for their TTL
    (kube-apiserver --event-ttl, 1 h); an old object may even outlive its owner and record new
    events (Background propagation deletes the owner first and its dependents after it,
    kubernetes pkg/controller/garbagecollector/garbagecollector.go attemptToDeleteItem; an
    orphaned one is never collected). So an event counts by the identity of the object it is
    about, never by its name or time alone: client-go's recorders copy `involvedObject.uid`
    from the object (tools/reference/ref.go GetReference) and key their events on it
    (tools/record/events_cache.go getEventKey).
    - `uid`: the workload is the creator; the event's uid must be its own.
    - `owner`: the creators are objects the workload's controllers make (`ChildKind`); the
      event's uid must be that of an object whose chain of controller references
      (`ownerReferences` with `controller: true`) leads to the workload with this uid
      (`readiness_rules.descendants`), read from the objects readiness watches, as kubectl
      judges a Deployment's ReplicaSets by ControllerRef, not by name (k8s.io/kubectl
      pkg/util/deployment/deployment.go listReplicaSets). An old child being collected or
      orphaned is controlled by no one or by the earlier workload's uid. A child readiness
      does not hold (not listed yet, or without the labels its controller sets) decides
      nothing until it is held: at worst a refusal waits out the timeout, never a wrong
      failure.
    - `since`: the workload's creationTimestamp, for a child it adopted rather than made (one
      created before it: the Deployment controller adopts orphaned ReplicaSets its selector
      matches, pkg/controller/controller_ref_manager.go ClaimReplicaSets): only its events
      first seen from then on count, the earlier ones being its previous owner's.
    A deploy under a reused name does not wait for the earlier workload's children to be
    collected (see `stages.apply_release`): ownership makes their events harmless.
    """

    kind: str
    names: re.Pattern[str]
    outcomes: Mapping[str, str]
    uid: str = ""
    owner: str = ""
    since: str = ""


# The reasons kube-controller-manager's pod-creating controllers record on their own object:
# `FailedCreatePodReason` / `SuccessfulCreatePodReason` (kubernetes
# pkg/controller/controller_utils.go RealPodControl.createPods, used by the ReplicaSet
# controller) and `Failed<Verb>` / `Successful<Verb>` for verb "create" (kubernetes
# pkg/controller/statefulset/stateful_pod_control.go recordPodEvent).
KUBE_CREATE_OUTCOMES: Mapping[str, str] = {"FailedCreate": "SuccessfulCreate"}


def names_matching(*patterns: str) -> re.Pattern[str]:
    """One pattern that fully matches any of `patterns` (regular expressions)."""
    return re.compile("|".join(f"(?:{p})" for p in patterns))


# --- small readers shared by the kinds -----------------------------------------------------------


def as_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def quantity_int(value: Any) -> int:
    """Extended resources are integers; tolerate the string form Kubernetes returns."""
    if value is None:
        return 0
    try:
        return int(str(value))
    except ValueError:
        return 0


def container_demand(pod_spec: Mapping[str, Any]) -> PodDemand:
    """Sum GPU and eRDMA requests of a pod spec (limits count: extended resources need both)."""
    gpus = 0
    erdma = 0
    for container in items_at(pod_spec, "containers"):
        resources = mapping_at(container, "resources")
        amounts = {**mapping_at(resources, "limits"), **mapping_at(resources, "requests")}
        gpus += quantity_int(amounts.get(GPU_RESOURCE))
        erdma += quantity_int(amounts.get(ERDMA_RESOURCE))
    return PodDemand(gpus=gpus, erdma=erdma)


def template_demand(template: Mapping[str, Any] | None) -> PodDemand:
    if not template:
        return PodDemand(gpus=0)
    return container_demand(mapping_at(template, "spec"))


def replicas_of(holder: Mapping[str, Any]) -> int:
    """`replicas` of a spec or role; absent (or null) means the API default 1."""
    value = holder.get("replicas")
    return int(value) if value is not None else 1


def conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in items_at(obj, "status", "conditions")}


def generation_missing(obj: Mapping[str, Any]) -> list[str]:
    view = ObjectView(obj)
    generation, observed = view.metadata.generation, view.observed_generation
    if generation is not None and as_int(observed, -1) < generation:
        return [f"controller has not observed generation {generation} (observed {observed})"]
    return []


def replicas_missing(obj: Mapping[str, Any], what: str = "readyReplicas") -> list[str]:
    view = ObjectView(obj)
    want = as_int(view.spec.get("replicas"), 1)
    have = as_int(view.status.get("readyReplicas"))
    return [] if have >= want else [f"{what} {have}/{want}"]


def condition_missing(obj: Mapping[str, Any], name: str) -> list[str]:
    cond = conditions(obj).get(name)
    if cond is None:
        return [f"condition {name} not reported"]
    if str(cond.get("status")) != "True":
        why = cond.get("reason") or cond.get("message") or ""
        return [f"condition {name}={cond.get('status')}" + (f" ({why})" if why else "")]
    return []


def accept_all(pod: JsonDict) -> bool:
    return True


def name_of(obj: Mapping[str, Any]) -> str:
    return ObjectView(obj).metadata.name


def uid_of(obj: Mapping[str, Any]) -> str:
    return ObjectView(obj).metadata.uid


def created_at(obj: Mapping[str, Any]) -> str:
    """The object's creationTimestamp (RFC 3339, whole seconds), "" when not created yet."""
    return str(mapping_at(obj, "metadata").get("creationTimestamp") or "")


# --- the kind ------------------------------------------------------------------------------------


class WorkloadKind:
    """One workload kind. Subclasses set the class attributes and override what differs."""

    kind: ClassVar[str]
    group: ClassVar[str]  # "" never: workloads live in named groups ("apps" included)
    versions: ClassVar[tuple[str, ...]]  # newest first: what we render and accept
    plural: ClassVar[str]
    # serving.shape values rendered as this kind, and the template of each (engine, shape).
    shapes: ClassVar[tuple[str, ...]] = ()
    templates: ClassVar[Mapping[tuple[str, str], str]] = {}
    # A custom resource: preflight checks its API is served (core kinds always are).
    custom: ClassVar[bool] = False
    describe: ClassVar[str] = ""  # how preflight names the need, e.g. "multi-node (LWS)"
    # Its name becomes a DNS label (Service names, pod hostnames) rather than a subdomain.
    name_is_dns_label: ClassVar[bool] = False
    # Label key prefixes the controller adds to pods (absent from our templates).
    controller_label_prefixes: ClassVar[tuple[str, ...]] = ()
    # Pod labels that tell one incarnation of a stable-named pod from a rolled one.
    revision_labels: ClassVar[tuple[str, ...]] = ()
    # Rendering depends on the installed CRD's schema (`crd_features`): preflight reads it.
    reads_crd_schema: ClassVar[bool] = False
    # Every kind `children` may name (without selector): what the worker's RBAC must list.
    child_kinds: ClassVar[tuple[ChildKind, ...]] = ()

    # -- API ------------------------------------------------------------------------------------

    @classmethod
    def api_versions(cls) -> tuple[str, ...]:
        return tuple(f"{cls.group}/{version}" for version in cls.versions)

    @classmethod
    def required_api(cls) -> ApiRequirement | None:
        if not cls.custom:
            return None
        return ApiRequirement(cls.group, cls.kind, cls.versions, cls.describe)

    def flavor_from_versions(self, versions: Iterable[str]) -> RbgFlavor | None:
        """The convention the installed operator follows, from its served versions."""
        return None

    # -- rendering -----------------------------------------------------------------------------

    def entry_selector(self, workload: str, rbg_flavor: RbgFlavor) -> dict[str, str]:
        """Labels the controller sets on the entry pods, narrowing the release Service."""
        return {}

    def derived_statefulsets(
        self, spec: ServiceSpec, workload: str, rbg_flavor: RbgFlavor
    ) -> list[tuple[str, str]]:
        """The longest StatefulSet names the controller creates, with who makes them."""
        return []

    def controller_services(self, workload: str, rbg_flavor: RbgFlavor) -> list[str]:
        """Names of the Services the controller creates for the workload (ours must differ)."""
        return []

    def plan_checks(self, spec: ServiceSpec) -> list[str]:
        """What rendering checked for this kind's operator, in words (`llm-rollout plan`)."""
        return []

    def crd_features(self, catalog: CrdCatalog | None) -> tuple[frozenset[str], str]:
        """Operator-version features the installed CRD's schema shows, as the names the
        templates test (`c.crd_features`), and what was found, in words for the plan and
        preflight ("" for a kind whose rendering reads no CRD)."""
        return frozenset(), ""

    # -- reading objects -----------------------------------------------------------------------

    def pod_templates(self, obj: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """Every pod template inside the workload, with its field path."""
        yield "spec.template", mapping_at(obj, "spec", "template")

    def pod_selector(self, obj: Mapping[str, Any]) -> tuple[str | None, PodFilter]:
        """A server-side label selector for the workload's pods and a client-side filter."""
        raise NotImplementedError

    def ready_missing(self, obj: Mapping[str, Any]) -> list[str]:
        """What the workload's own status still lacks before it counts as ready ([] = ready)."""
        raise NotImplementedError

    def pod_demands(self, obj: Mapping[str, Any]) -> list[PodDemand]:
        """The pods the object will create, with their GPU/eRDMA asks."""
        spec = ObjectView(obj).spec
        return [template_demand(spec.get("template"))] * replicas_of(spec)

    def validation_problems(self, obj: Mapping[str, Any]) -> Iterator[str]:
        """Admission-webhook style rules the CRD schema cannot express."""
        return iter(())

    def pod_roll(self, obj: Mapping[str, Any], change: TemplateChange) -> PodRoll:
        """What a change of the pod templates does to the running pods (see `PodRoll`)."""
        return PodRoll("replace")

    def pod_creators(self, obj: Mapping[str, Any]) -> tuple[PodCreator, ...]:
        """The objects whose controller creates the workload's pods (readiness reads their
        pod-creation events: a quota, an invalid label or an admission denial leaves the
        workload without pods and says so only there)."""
        return ()

    def children(self, obj: Mapping[str, Any]) -> tuple[ChildKind, ...]:
        """The objects between the workload and its pods in its controllers' ownership chain
        (pods are watched anyway), each narrowed by a label selector the controllers set;
        readiness watches them to follow `PodCreator.owner`."""
        return ()


@dataclass(frozen=True)
class PodRoll:
    """What the controller does to running pods when their template changes.

    `replace`: new pods (new UIDs) run the new template; `in-place`: the same pods are
    updated, containers restarted when their image changed (so the proof is a restarted
    container, not a new UID); `none`: running pods keep the old template, and `advice` says
    what to do instead.
    """

    mode: Literal["replace", "in-place", "none"]
    advice: str = ""


# --- registry ------------------------------------------------------------------------------------

_REGISTRY: dict[str, WorkloadKind] = {}


def register(cls: type[WorkloadKind]) -> type[WorkloadKind]:
    """Class decorator: one instance of each kind, keyed by `kind`."""
    _REGISTRY[cls.kind] = cls()
    return cls


def all_kinds() -> tuple[WorkloadKind, ...]:
    return tuple(_REGISTRY.values())


def rendered_kinds() -> tuple[WorkloadKind, ...]:
    """The kinds a spec can render (others, such as StatefulSet, are only read)."""
    return tuple(k for k in _REGISTRY.values() if k.shapes)


def kind_named(name: str) -> WorkloadKind | None:
    return _REGISTRY.get(name)


def kind_of(obj: Mapping[str, Any]) -> WorkloadKind | None:
    """The kind of a workload object, None for anything else (Services, Secrets...)."""
    return _REGISTRY.get(str(obj.get("kind")))


def kind_for_shape(shape: str) -> WorkloadKind:
    for kind in _REGISTRY.values():
        if shape in kind.shapes:
            return kind
    raise UnsupportedKindError(f"no workload kind renders shape {shape}")


def kind_for(spec: ServiceSpec) -> WorkloadKind:
    """The kind `spec` renders its workload as."""
    return kind_for_shape(spec.serving.shape)
