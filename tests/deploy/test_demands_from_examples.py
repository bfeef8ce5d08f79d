"""The capacity preflight counts GPUs from the rendered objects of every example shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_rollout.render import render
from llm_rollout.spec import load_spec
from llm_rollout.strategy import pod_demands

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("seed-*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("flavor", ["v0.6", "v0.7"])
def test_rendered_gpu_demand_matches_the_layout(path: Path, flavor: str) -> None:
    spec = load_spec(path)
    rendered = render(spec, release="rtest0001", rbg_flavor=flavor)  # type: ignore[arg-type]
    demands = pod_demands(rendered.workload_objects)
    serving = spec.serving
    if serving.pd is not None:
        pd = serving.pd
        expected = pd.prefill_replicas * pd.prefill_tp + pd.decode_replicas * pd.decode_tp
        assert sum(d.erdma for d in demands) > 0  # PD pods ask for eRDMA
    else:
        expected = serving.replicas * serving.tp * serving.pp
    assert sum(d.gpus for d in demands) == expected
    # No single pod asks for more GPUs than one node has.
    per_pod = serving.gpus_per_node if serving.pd is None else max(pd.prefill_tp, pd.decode_tp)
    assert max(d.gpus for d in demands) == per_pod
