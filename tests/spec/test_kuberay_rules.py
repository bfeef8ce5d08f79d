"""Rendered RayClusters against what the real KubeRay operator does to them (issue 16, F1/F2).

Until a real KubeRay runs in the sandbox, each test applies KubeRay's rule, read from
ray-project/kuberay (ray-operator, commit feeaf72fa; same code in v1.1.0-v1.4.0), to our
rendered objects:

- `ray-operator/controllers/ray/common/service.go` `getServicePorts`: head Service ports are
  the head container's ports (index 0) plus `metrics: 8080` when no port is named `metrics`;
  the API server rejects a Service with two equal (port, protocol) pairs
  (kubernetes `pkg/apis/core/validation/validation.go` ValidateService, "Check for duplicate
  Ports").
- `ray-operator/controllers/ray/common/pod.go` `initLivenessAndReadinessProbe`: a Ray container
  (index 0) whose `livenessProbe` / `readinessProbe` is nil gets one probing the dashboard
  agent on 52365.
"""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from llm_rollout.crds import CrdCatalog, crds_from_dir
from llm_rollout.errors import ManifestValidationError
from llm_rollout.kinds import PodRoll
from llm_rollout.kinds.raycluster import RECREATE_UPGRADE, RayCluster
from llm_rollout.kuberay import (
    DASHBOARD_AGENT_PORT,
    KUBERAY_DEFAULT_METRICS_PORT,
    raylet_probe_command,
)
from llm_rollout.render import render
from llm_rollout.spec import InvalidSpecError, spec_from_dict
from llm_rollout.validation import validate_objects

from .conftest import example_dict

RAY_EXAMPLES = ["seed-qwen14b-ray-tp2", "seed-vllm-ray-tp8-pp2"]


def _cluster(example: str, **serving: Any) -> dict[str, Any]:
    data = example_dict(example)
    data["serving"].update(serving)
    workload: dict[str, Any] = render(spec_from_dict(data), release="r1").workload
    return workload


def kuberay_head_service_ports(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    """KubeRay's getServicePorts, applied to our head container."""
    container = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {
        p.get("name") or f"{p['containerPort']}-port": p["containerPort"]
        for p in container.get("ports", [])
    }
    if not ports:
        ports = {"client": 10001, "gcs-server": 6379, "dashboard": 8265, "serve": 8000}
    ports.setdefault("metrics", KUBERAY_DEFAULT_METRICS_PORT)
    return sorted(ports.items())


@pytest.mark.parametrize("example", RAY_EXAMPLES)
@pytest.mark.parametrize("port", [8000, 8080, 8081, 9000])
def test_kuberay_head_service_has_no_duplicate_port(example: str, port: int) -> None:
    ports = kuberay_head_service_ports(_cluster(example, port=port))
    numbers = [number for _, number in ports]
    assert len(numbers) == len(set(numbers)), ports
    assert ("http", port) in ports


def test_qwen14b_example_keeps_the_seed_port_and_moves_ray_metrics() -> None:
    cluster = _cluster("seed-qwen14b-ray-tp2")
    ports = dict(kuberay_head_service_ports(cluster))
    assert ports["http"] == 8080
    assert ports["metrics"] == 8081
    # Ray really exports there: the rendered ray start and rayStartParams agree.
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["metrics-export-port"] == "8081"
    assert "--metrics-export-port=8081" in head["template"]["spec"]["containers"][0]["command"][-1]


@pytest.mark.parametrize("port", [6379, 8265, 10001, DASHBOARD_AGENT_PORT])
@pytest.mark.parametrize("example", [*RAY_EXAMPLES, "seed-vllm-lws"])
def test_server_port_on_a_ray_port_is_refused(example: str, port: int) -> None:
    data = example_dict(example)
    data["serving"]["port"] = port
    with pytest.raises(InvalidSpecError) as caught:
        spec_from_dict(data)
    assert caught.value.field == "serving.port"
    assert str(port) in str(caught.value)


@pytest.mark.parametrize("example", RAY_EXAMPLES)
def test_every_ray_container_declares_both_probes_and_a_metrics_port(example: str) -> None:
    cluster = _cluster(example)
    templates = [cluster["spec"]["headGroupSpec"]["template"]] + [
        group["template"] for group in cluster["spec"]["workerGroupSpecs"]
    ]
    for template in templates:
        ray_container = template["spec"]["containers"][0]
        assert ray_container.get("livenessProbe") is not None
        assert ray_container.get("readinessProbe") is not None
        assert "metrics" in {p["name"] for p in ray_container["ports"]}
        probe_text = repr([ray_container[k] for k in ("livenessProbe", "readinessProbe")])
        assert str(DASHBOARD_AGENT_PORT) not in probe_text


def test_worker_probe_passes_only_while_a_raylet_runs(tmp_path: Path) -> None:
    command = raylet_probe_command()
    assert command[0] == "bash"
    sleep = shutil.which("sleep")
    unshare = shutil.which("unshare")
    assert sleep is not None and unshare is not None
    fake = tmp_path / "raylet"
    shutil.copy(sleep, fake)
    # The probe reads /proc like a container's PID namespace shows it. A PID namespace of its
    # own with its own /proc keeps a raylet of another test or benchmark on this machine out of
    # sight (it made this test skip before). comm is set at exec: the probe is polled until
    # the exec happened (bounded).
    probe = shlex.join(command)
    script = f"""
        probe() {{ {probe} >/dev/null 2>&1; echo $?; }}
        before=$(probe)
        {shlex.quote(str(fake))} 30 & fake=$!
        for _ in $(seq 50); do during=$(probe); [ "$during" = 0 ] && break; done
        kill "$fake"; wait "$fake" 2>/dev/null
        echo "$before $during $(probe)"
    """
    done = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "bash", "-c", script],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # before the raylet, while it runs, after it ended
    assert done.stdout.split() == ["1", "0", "1"]


def _without_upgrade_strategy(catalog: CrdCatalog) -> CrdCatalog:
    """The RayCluster CRD as KubeRay before v1.6 served it: no `spec.upgradeStrategy`
    (ray-operator v1.5.0 `apis/ray/v1/raycluster_types.go` has no UpgradeStrategy)."""
    older = []
    for schema in catalog.schemas:
        if schema.kind == RayCluster.kind:
            body = copy.deepcopy(schema.schema)
            body["properties"]["spec"]["properties"].pop("upgradeStrategy", None)
            schema = replace(schema, source=f"{schema.source} before v1.6", schema=body)
        older.append(schema)
    return CrdCatalog("the CRDs of KubeRay v1.5", tuple(older))


def test_upgrade_strategy_is_rendered_only_where_the_installed_crd_offers_it(
    shared_crds: Path,
) -> None:
    kind = RayCluster()
    spec = spec_from_dict(example_dict("seed-qwen14b-ray-tp2"))
    current = crds_from_dir(shared_crds)
    older = _without_upgrade_strategy(current)

    features, note = kind.crd_features(current)
    assert features == {RECREATE_UPGRADE}
    assert "offers spec.upgradeStrategy Recreate" in note
    assert "ray.io_rayclusters.v1.7.0.yaml" in note
    rendered = render(spec, release="r1", crd_features=features)
    assert rendered.workload["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    assert validate_objects(rendered.all(), current) == []
    # What redeploy decides for it: a template change replaces the pods.
    assert kind.pod_roll(rendered.workload, "spec") == PodRoll("replace")

    features, note = kind.crd_features(older)
    assert features == frozenset()
    assert "has no spec.upgradeStrategy Recreate (KubeRay before v1.6)" in note
    rendered = render(spec, release="r1", crd_features=features)
    assert "upgradeStrategy" not in rendered.workload["spec"]
    # The older schema rejects the field (its spec properties are closed), so rendering it
    # there would fail at the API server.
    with_field = copy.deepcopy(rendered.all())
    (cluster,) = [o for o in with_field if o["kind"] == kind.kind]
    cluster["spec"]["upgradeStrategy"] = {"type": "Recreate"}
    with pytest.raises(ManifestValidationError, match="upgradeStrategy"):
        validate_objects(with_field, older)
    refused = kind.pod_roll(rendered.workload, "spec")
    assert refused.mode == "none" and "spec.upgradeStrategy.type Recreate" in refused.advice

    features, note = kind.crd_features(None)
    assert features == frozenset()
    assert note.startswith("KubeRay upgradeStrategy not checked (no CRD to read)")
