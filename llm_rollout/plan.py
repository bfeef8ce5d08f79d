"""The release plan: what one deploy run decided about its release, settled once, right after
preflight, and frozen.

`new_release` names the run's release and hashes its spec, once: the hash goes into the release
id, the storage objects' annotations (through `render_for`) and the plan's record annotations.
`plan_release` adopts the objects preflight rendered to size the cluster (the RBG flavour the
cluster serves, the sequence length the KV fit was checked for) and adds what the later stages
read: the strategy and the serving release, one set of annotations with one `deployed-at`
(the workload and the stable Service record the same deploy), the workload reference and the
smoke target. Volumes, rollout, promote, bake, rollback and smoke take the plan; nothing
renders again. The rendered objects hold no secret value: the OSS AccessKeys are resolved when
the Secret is applied (`llm_rollout.render.render_oss_secret`).

What can only be known once objects exist is bound late, into a new plan: the PD router's
backend URLs name each RoleBasedGroup role's headless Service, whose name depends on the
controller's version (`bind_role_services`, recorded in `RenderedRelease.role_services` and
in the run record).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from llm_rollout import render as rendering
from llm_rollout.artifacts import ServiceId
from llm_rollout.errors import PermanentError
from llm_rollout.kinds import DEFAULT_RBG_FLAVOR, RbgFlavor
from llm_rollout.kinds.rbg import RoleBasedGroup
from llm_rollout.kube.resources import JsonDict, ObjectRef
from llm_rollout.preflight import PreflightReport
from llm_rollout.record import deployment_annotations
from llm_rollout.release.writing import with_annotations
from llm_rollout.render import RenderedRelease
from llm_rollout.smoke import SmokeTarget
from llm_rollout.spec import ServiceSpec, spec_hash
from llm_rollout.strategy import Strategy, new_release_id
from llm_rollout.vocabulary import ANN_DEPLOYED_AT, WORKLOAD_KINDS


@dataclass(frozen=True)
class NewRelease:
    """A deploy run's release id and the hash of the spec it deploys (`spec.spec_hash`)."""

    release: str
    spec_hash: str


def new_release(spec: ServiceSpec, now_ms: int) -> NewRelease:
    """The run's release, named from its spec's hash and the time (`strategy.new_release_id`);
    the one place a deploy run hashes its spec."""
    digest = spec_hash(spec)
    return NewRelease(release=new_release_id(digest, now_ms), spec_hash=digest)


def render_for(
    spec: ServiceSpec,
    release: str,
    rbg_flavor: RbgFlavor | None,
    max_model_len: int | None,
    crd_features: frozenset[str] = frozenset(),
    *,
    spec_hash: str,
    reuse: RenderedRelease | None = None,
) -> RenderedRelease:
    """`release` of the spec hashed `spec_hash` rendered for `rbg_flavor`, `max_model_len` and
    the CRD's `crd_features`; `reuse` when it was rendered for the same (a second preflight
    under the lease renders nothing new)."""
    flavor = rbg_flavor or DEFAULT_RBG_FLAVOR
    wanted = (release, spec_hash, flavor, max_model_len, crd_features)
    if (
        reuse is not None
        and (
            reuse.release,
            reuse.spec_hash,
            reuse.rbg_flavor,
            reuse.max_model_len,
            reuse.crd_features,
        )
        == wanted
    ):
        return reuse
    return rendering.render(
        spec,
        release=release,
        rbg_flavor=flavor,
        max_model_len=max_model_len,
        crd_features=crd_features,
        spec_hash=spec_hash,
    )


@dataclass(frozen=True)
class ReleasePlan:
    """One release of one service, as every stage after preflight applies and checks it."""

    spec: ServiceSpec
    release: str
    spec_hash: str
    strategy: Strategy
    serving_release: str | None
    # The RBG flavour the cluster serves (None: the shape needs no RBG API).
    rbg_flavor: RbgFlavor | None
    create_namespace: bool
    rendered: RenderedRelease
    annotations: Mapping[str, str]
    workload: ObjectRef
    smoke: SmokeTarget

    @property
    def service_id(self) -> ServiceId:
        return ServiceId(self.workload.kind, self.spec.namespace, self.spec.name)

    @property
    def deployed_at(self) -> str:
        return self.annotations[ANN_DEPLOYED_AT]

    @property
    def needs_binding(self) -> bool:
        """The router's backends are not bound to the controller's role Services yet."""
        return self.workload.kind == RoleBasedGroup.kind and not self.rendered.role_services

    def workload_objects(self) -> list[JsonDict]:
        """The release's workload and Services, with the plan's annotations."""
        return [with_annotations(o, self.annotations) for o in self.rendered.workload_objects]

    def binding(self) -> str:
        """The late binding in words, for logs and the run record ("" when none)."""
        bound = sorted(self.rendered.role_services.items())
        return ", ".join(f"{role}: {service}" for role, service in bound)


def _release_service(rendered: RenderedRelease) -> JsonDict:
    return next(o for o in rendered.workload_objects if o.get("kind") == "Service")


def plan_release(
    spec: ServiceSpec,
    *,
    release: str,
    spec_hash: str,
    report: PreflightReport,
    now: datetime,
) -> ReleasePlan:
    """The plan of `release` from what preflight found; `now` is the deploy time recorded."""
    strategy = report.decision.strategy if report.decision is not None else None
    if strategy is None:
        raise PermanentError("preflight passed without choosing a strategy")
    rendered = report.rendered
    if rendered is None or rendered.release != release:
        raise PermanentError(f"preflight passed without rendering release {release}")
    if rendered.spec_hash != spec_hash:
        raise PermanentError(
            f"release {release} was rendered from a spec hashed {rendered.spec_hash}, "
            f"not the deployed one ({spec_hash})"
        )
    source = spec.model.modelscope
    annotations = deployment_annotations(
        release=release,
        previous_release=report.serving_release,
        model=source.model_id
        if source
        else f"oss://{spec.model_bucket}/{spec.model_object_prefix}",
        revision=spec.model_revision,
        spec_hash=spec_hash,
        strategy=strategy,
        deployed_at_iso=now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    workload = next(
        ObjectRef.of(o) for o in rendered.workload_objects if o.get("kind") in WORKLOAD_KINDS
    )
    service = _release_service(rendered)
    smoke = SmokeTarget(
        kind=workload.kind,
        namespace=spec.namespace,
        name=spec.name,
        service=str(service["metadata"]["name"]),
        port=int(service["spec"]["ports"][0]["port"]),
        model=spec.served_model_name,
        smoke=spec.smoke,
        timeout_s=float(spec.rollout.smoke_timeout_s),
        api_key=spec.serving.api_key,
    )
    return ReleasePlan(
        spec=spec,
        release=release,
        spec_hash=spec_hash,
        strategy=strategy,
        serving_release=report.serving_release,
        rbg_flavor=report.rbg_flavor,
        create_namespace=not report.namespace_exists,
        rendered=rendered,
        annotations=annotations,
        workload=workload,
        smoke=smoke,
    )


def bind_role_services(plan: ReleasePlan, role_services: Mapping[str, str]) -> ReleasePlan:
    """The late binding: a new plan whose router names the role Services the controller
    created (`role_services`, read from its pods)."""
    bound = rendering.bind_role_services(plan.spec, plan.rendered, role_services)
    return replace(plan, rendered=bound)
