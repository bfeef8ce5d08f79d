"""The release plan (issue 17 point 1): built once from what preflight rendered and found, one
set of annotations with one deploy time, no secret values, and a late binding that changes the
PD router only."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from llm_rollout import render as rendering
from llm_rollout.errors import PermanentError
from llm_rollout.kinds import RbgFlavor
from llm_rollout.kinds.rbg import RoleBasedGroup
from llm_rollout.plan import ReleasePlan, bind_role_services, new_release, plan_release, render_for
from llm_rollout.preflight import PreflightReport
from llm_rollout.release.writing import with_annotations
from llm_rollout.spec import ServiceSpec, load_spec, spec_hash
from llm_rollout.strategy import StrategyDecision, new_release_id
from llm_rollout.vocabulary import ANN_DEPLOYED_AT, ANN_PREVIOUS_RELEASE, ANN_SPEC_HASH

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RELEASE = "rplan0001"
NOW = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)


def _plan(spec: ServiceSpec, *, flavor: str | None = None) -> ReleasePlan:
    report = PreflightReport(
        rbg_flavor=flavor,  # type: ignore[arg-type]
        decision=StrategyDecision(requested="auto", strategy="blue-green"),
        namespace_exists=True,
        serving_release="rold0001",
        rendered=render_for(spec, RELEASE, flavor, None, spec_hash=spec_hash(spec)),  # type: ignore[arg-type]
    )
    return plan_release(spec, release=RELEASE, spec_hash=spec_hash(spec), report=report, now=NOW)


def test_the_plan_carries_one_set_of_annotations_and_the_smoke_target() -> None:
    spec = load_spec(EXAMPLES / "seed-sglang-lws.yaml")
    plan = _plan(spec)
    assert plan.deployed_at == "2026-12-07T01:02:03Z"
    assert plan.annotations[ANN_SPEC_HASH] == spec_hash(spec)
    assert plan.annotations[ANN_PREVIOUS_RELEASE] == "rold0001"
    # The workload and its Services record the very annotations promote puts on the stable
    # Service: one deploy time for the whole release.
    for obj in plan.workload_objects():
        assert obj["metadata"]["annotations"][ANN_DEPLOYED_AT] == plan.deployed_at
    assert (
        plan.workload.kind == "LeaderWorkerSet" and plan.workload.name == f"{spec.name}-{RELEASE}"
    )
    assert plan.smoke.service == rendering.release_service_name(spec, RELEASE)
    assert (plan.smoke.port, plan.smoke.model) == (spec.serving.port, spec.served_model_name)
    assert plan.smoke.smoke == spec.smoke and plan.strategy == "blue-green"
    assert plan.service_id.kind == "LeaderWorkerSet" and not plan.needs_binding


def test_the_plan_holds_no_secret_value() -> None:
    spec = load_spec(EXAMPLES / "seed-vllm-single-gpu.yaml")
    assert spec.uses_access_keys  # the example mounts with AccessKeys: a Secret is rendered
    plan = _plan(spec)
    (secret,) = [o for o in plan.rendered.storage_objects if o["kind"] == "Secret"]
    assert "data" not in secret and "stringData" not in secret


def test_a_report_without_strategy_or_rendering_is_not_planned() -> None:
    spec = load_spec(EXAMPLES / "seed-sglang-lws.yaml")
    with pytest.raises(PermanentError, match="strategy"):
        plan_release(spec, release=RELEASE, spec_hash="x", report=PreflightReport(), now=NOW)
    decided = PreflightReport(decision=StrategyDecision(requested="auto", strategy="recreate"))
    with pytest.raises(PermanentError, match="rendering"):
        plan_release(spec, release=RELEASE, spec_hash="x", report=decided, now=NOW)


def test_a_rendering_is_reused_only_for_the_same_flavor_and_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = load_spec(EXAMPLES / "seed-sglang-pd-rbg.yaml")
    calls: list[str] = []
    real = rendering.render

    def counting(*args: object, **kwargs: object) -> rendering.RenderedRelease:
        calls.append(str(kwargs.get("rbg_flavor")))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rendering, "render", counting)
    digest = spec_hash(spec)
    first = render_for(spec, RELEASE, "v0.6", None, spec_hash=digest)
    assert render_for(spec, RELEASE, "v0.6", None, spec_hash=digest, reuse=first) is first
    assert (
        render_for(spec, RELEASE, "v0.7", None, spec_hash=digest, reuse=first).rbg_flavor == "v0.7"
    )
    assert (
        render_for(spec, "rplan0002", "v0.6", None, spec_hash=digest, reuse=first).release
        == "rplan0002"
    )
    # No RBG API on the cluster: the one default (kinds/base.py DEFAULT_RBG_FLAVOR), as `plan`
    # and `render()` use it.
    assert render_for(spec, RELEASE, None, None, spec_hash=digest).rbg_flavor == "v0.6"
    assert calls == ["v0.6", "v0.7", "v0.6", "v0.6"]


@pytest.mark.parametrize("flavor", ["v0.6", "v0.7"])
def test_the_late_binding_changes_the_router_only(flavor: RbgFlavor) -> None:
    spec = load_spec(EXAMPLES / "seed-sglang-pd-rbg.yaml")
    plan = _plan(spec, flavor=flavor)
    assert plan.needs_binding and plan.binding() == ""
    services = {"prefill": "legacy-prefill", "decode": "legacy-decode"}
    bound = bind_role_services(plan, services)
    assert (
        not bound.needs_binding
        and bound.binding() == "decode: legacy-decode, prefill: legacy-prefill"
    )
    # Everything but the RoleBasedGroup is the plan's own, annotations and deploy time included.
    assert bound.annotations == plan.annotations and bound.smoke == plan.smoke
    assert bound.rendered.storage_objects == plan.rendered.storage_objects
    assert bound.rendered.stable_service == plan.rendered.stable_service
    before = {o["kind"]: o for o in plan.workload_objects()}
    after = {o["kind"]: o for o in bound.workload_objects()}
    assert {k: v for k, v in after.items() if k != RoleBasedGroup.kind} == {
        k: v for k, v in before.items() if k != RoleBasedGroup.kind
    }
    group = json.dumps(after[RoleBasedGroup.kind])
    assert "legacy-prefill" in group and "legacy-decode" in group
    assert "legacy-prefill" not in json.dumps(before[RoleBasedGroup.kind])
    # The same objects the full render gives for that binding.
    full = rendering.render(
        spec,
        release=RELEASE,
        rbg_flavor=flavor,
        rbg_role_services=services,
    )
    assert bound.rendered.workload_objects == full.workload_objects
    assert after[RoleBasedGroup.kind] == with_annotations(full.workload, plan.annotations)


def test_a_deploy_run_hashes_its_spec_once(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(EXAMPLES / "seed-vllm-single-gpu.yaml")
    named = new_release(spec, 1_765_000_000_000)
    assert named.spec_hash == spec_hash(spec)
    assert named.release == new_release_id(named.spec_hash, 1_765_000_000_000)

    def no_second_hash(spec: ServiceSpec) -> str:
        raise AssertionError("render hashed the spec again")

    # Everything after `new_release` takes the hash it computed: rendering and the Secret with
    # its values never hash the spec themselves.
    monkeypatch.setattr(rendering, "hash_of_spec", no_second_hash)
    rendered = render_for(spec, named.release, None, None, spec_hash=named.spec_hash)
    bound = rendering.bind_role_services(spec, rendered, {})
    assert rendering.render_oss_secret(spec, "id", "key", spec_hash=named.spec_hash)
    # The PV and the PVC record the hash (the Secret records none).
    recorded = [o for o in rendered.storage_objects if o["kind"] != "Secret"]
    assert [o["kind"] for o in recorded] == ["PersistentVolume", "PersistentVolumeClaim"]
    for obj in [*recorded, *bound.storage_objects[1:]]:
        assert obj["metadata"]["annotations"][ANN_SPEC_HASH] == named.spec_hash


def test_a_rendering_of_another_spec_is_not_planned() -> None:
    spec = load_spec(EXAMPLES / "seed-sglang-lws.yaml")
    report = PreflightReport(
        decision=StrategyDecision(requested="auto", strategy="blue-green"),
        rendered=render_for(spec, RELEASE, None, None, spec_hash="0" * 64),
    )
    with pytest.raises(PermanentError, match="rendered from a spec hashed"):
        plan_release(spec, release=RELEASE, spec_hash=spec_hash(spec), report=report, now=NOW)
