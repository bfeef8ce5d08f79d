"""The kind registry: every shape renders through exactly one kind, whose templates exist, and
the names llm-rollout gives its own Services stay clear of those the controllers create."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_rollout.kinds import (
    UnsupportedKindError,
    kind_for,
    kind_for_shape,
    kind_named,
    kind_of,
    rendered_kinds,
)
from llm_rollout.render import release_service_name, render
from llm_rollout.spec import load_spec
from llm_rollout.vocabulary import RELEASE_KINDS, WORKLOAD_KINDS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("seed-*.yaml"))
SHAPES = ("single-gpu", "tensor-parallel", "multi-node", "pd-disaggregated", "ray-cluster")


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_has_one_kind_and_its_templates_exist(shape: str) -> None:
    owners = [k for k in rendered_kinds() if shape in k.shapes]
    assert len(owners) == 1 and kind_for_shape(shape) is owners[0]
    for (engine, template_shape), template in owners[0].templates.items():
        assert engine in ("vllm", "sglang") and template_shape in owners[0].shapes
        assert (ROOT / "manifests" / template).is_file(), template


def test_unknown_shapes_and_kinds_are_named() -> None:
    with pytest.raises(UnsupportedKindError, match="no workload kind renders shape gpu-farm"):
        kind_for_shape("gpu-farm")
    assert kind_named("CronJob") is None and kind_of({"kind": "Service"}) is None


def test_release_inventory_follows_the_registry() -> None:
    assert {"Deployment", "LeaderWorkerSet", "RoleBasedGroup", "RayCluster"} == WORKLOAD_KINDS
    # Every served version of every rendered kind is listed, Services last.
    assert RELEASE_KINDS[-1] == ("v1", "Service")
    for kind in rendered_kinds():
        for api_version in kind.api_versions():
            assert (api_version, kind.kind) in RELEASE_KINDS


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("flavor", ["v0.6", "v0.7"])
def test_our_services_never_take_a_controllers_service_name(example: Path, flavor: str) -> None:
    spec = load_spec(example)
    rendered = render(spec, release="r1", rbg_flavor=flavor)  # type: ignore[arg-type]
    kind = kind_for(spec)
    assert kind_of(rendered.workload) is kind
    taken = set(kind.controller_services(rendered.workload["metadata"]["name"], flavor))  # type: ignore[arg-type]
    ours = {s["metadata"]["name"] for s in rendered.all() if s["kind"] == "Service"}
    assert release_service_name(spec, "r1") in ours
    assert not ours & taken
