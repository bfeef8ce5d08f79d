"""Offline validation against the real upstream CRD schemas and the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from llm_rollout.crds import (
    CrdDirError,
    configured_crds,
    crd_dir,
    crds_from_dir,
    structural_to_jsonschema,
)
from llm_rollout.errors import ManifestValidationError, PermanentError
from llm_rollout.render import RbgFlavor, render
from llm_rollout.spec import spec_from_dict
from llm_rollout.validation import validate_objects

from .conftest import example_dict


def _objects(example: str, flavor: RbgFlavor = "v0.6") -> list[dict[str, Any]]:
    spec = spec_from_dict(example_dict(example))
    return render(spec, release="r1", rbg_flavor=flavor).all()


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(obj for obj in objects if obj["kind"] == kind)


def _problems(objects: list[dict[str, Any]]) -> str:
    with pytest.raises(ManifestValidationError) as info:
        validate_objects(objects)
    return str(info.value)


def test_crd_dir_comes_from_env_and_missing_dir_is_permanent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_crds: Path
) -> None:
    assert crd_dir() == shared_crds
    monkeypatch.setenv("LLM_ROLLOUT_CRD_DIR", str(tmp_path / "nowhere"))
    assert crd_dir() == tmp_path / "nowhere"
    with pytest.raises(CrdDirError, match=r"nowhere from \$LLM_ROLLOUT_CRD_DIR") as info:
        configured_crds()
    assert isinstance(info.value, PermanentError)
    with pytest.raises(CrdDirError):
        validate_objects(_objects_without_env_check())


def _objects_without_env_check() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "leaderworkerset.x-k8s.io/v1",
            "kind": "LeaderWorkerSet",
            "metadata": {"name": "x", "namespace": "ns"},
            "spec": {"leaderWorkerTemplate": {"workerTemplate": {}}},
        }
    ]


def test_every_served_crd_version_is_loaded(shared_crds: Path) -> None:
    crd_schemas = crds_from_dir(shared_crds).for_kind
    lws = crd_schemas("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    assert sorted(s.source for s in lws) == [
        "leaderworkerset.x-k8s.io_leaderworkersets.v0.10.0.yaml",
        "leaderworkerset.x-k8s.io_leaderworkersets.v0.6.0.yaml",
    ]
    assert len(crd_schemas("workloads.x-k8s.io/v1alpha2", "RoleBasedGroup")) == 1
    assert len(crd_schemas("workloads.x-k8s.io/v1alpha1", "RoleBasedGroup")) == 2
    assert len(crd_schemas("ray.io/v1", "RayCluster")) == 1


def test_structural_schema_translation() -> None:
    converted = structural_to_jsonschema(
        {
            "type": "object",
            "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "maybe": {"type": "string", "nullable": True},
            },
        }
    )
    assert converted["additionalProperties"] is False
    assert converted["properties"]["port"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert "additionalProperties" not in converted["properties"]["free"]
    assert converted["properties"]["maybe"]["type"] == ["string", "null"]


def test_wrong_type_in_custom_resource_is_caught() -> None:
    objects = _objects("seed-vllm-lws")
    _by_kind(objects, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["size"] = "2"
    text = _problems(objects)
    assert "LeaderWorkerSet llm-serving/qwen3-32b-vllm-r1: spec.leaderWorkerTemplate.size" in text
    assert "is not of type 'integer'" in text
    # Checked against both LWS releases the cluster may run.
    assert "v0.6.0.yaml" in text and "v0.10.0.yaml" in text


def test_unknown_field_in_custom_resource_is_caught() -> None:
    objects = _objects("seed-sglang-pd-rbg", "v0.7")
    rbg = _by_kind(objects, "RoleBasedGroup")
    rbg["spec"]["roles"][0]["standalonePattern"]["replicaz"] = 2
    text = _problems(objects)
    assert "spec.roles[0].standalonePattern" in text
    assert "'replicaz' was unexpected" in text


def test_v1alpha1_fields_are_rejected_under_v1alpha2() -> None:
    objects = _objects("seed-sglang-pd-rbg", "v0.6")
    _by_kind(objects, "RoleBasedGroup")["apiVersion"] = "workloads.x-k8s.io/v1alpha2"
    text = _problems(objects)
    assert "'template'" in text and "'workload'" in text


def test_ray_start_params_must_be_strings() -> None:
    objects = _objects("seed-vllm-ray-tp8-pp2")
    _by_kind(objects, "RayCluster")["spec"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = 8
    assert "rayStartParams.num-gpus: 8 is not of type 'string'" in _problems(objects)


def test_unknown_field_and_wrong_type_in_core_kind_are_caught() -> None:
    objects = _objects("seed-vllm-single-gpu")
    deployment = _by_kind(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    deployment["spec"]["replicas"] = "one"
    text = _problems(objects)
    assert "spec.template.spec.containers[0]: Additional properties are not allowed" in text
    assert "'imagePullPolcy' was unexpected" in text
    assert "spec.replicas: 'one' is not of type 'integer'" in text


def test_pv_name_must_equal_volume_handle() -> None:
    objects = _objects("seed-vllm-lws")
    pv = _by_kind(objects, "PersistentVolume")
    pv["spec"]["csi"]["volumeHandle"] = "model-oss"
    text = _problems(objects)
    assert f"PersistentVolume {pv['metadata']['name']}: spec.csi.volumeHandle" in text
    assert "must equal the PV name" in text


def test_volume_attributes_must_be_strings() -> None:
    objects = _objects("seed-vllm-lws")
    _by_kind(objects, "PersistentVolume")["spec"]["csi"]["volumeAttributes"]["path"] = 7
    assert "volumeAttributes.path: 7 is not of type 'string'" in _problems(objects)


def test_lws_size_must_be_positive() -> None:
    objects = _objects("seed-sglang-lws")
    _by_kind(objects, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["size"] = 0
    assert "spec.leaderWorkerTemplate.size: must be >= 1, got 0" in _problems(objects)


def test_rbg_roles_unique_and_dependencies_exist() -> None:
    objects = _objects("seed-sglang-pd-rbg")
    roles = _by_kind(objects, "RoleBasedGroup")["spec"]["roles"]
    roles[1]["name"] = "prefill"
    roles[2]["dependencies"] = ["prefill", "scheduler"]
    text = _problems(objects)
    assert "spec.roles[1].name: duplicate role name 'prefill'" in text
    assert "spec.roles[2].dependencies: 'scheduler' is not a role of this group" in text


def test_rbg_dependency_cycle_is_caught() -> None:
    objects = _objects("seed-sglang-pd-rbg")
    roles = _by_kind(objects, "RoleBasedGroup")["spec"]["roles"]
    roles[0]["dependencies"] = ["router"]
    assert "dependencies form a cycle" in _problems(objects)


def test_cross_object_references_must_resolve() -> None:
    objects = _objects("seed-vllm-tp4")
    secret = _by_kind(objects, "Secret")
    objects.remove(secret)
    stable = objects[-1]
    stable["spec"]["selector"] = {**stable["spec"]["selector"], "llm-rollout.io/release": "r0"}
    text = _problems(objects)
    assert f"Secret '{secret['metadata']['name']}' not in the set" in text
    assert "Service llm-serving/qwen3-32b-tp4: spec.selector: selects no pod template" in text


def test_missing_namespace_and_bad_label_are_caught() -> None:
    objects = _objects("seed-vllm-single-gpu")
    deployment = _by_kind(objects, "Deployment")
    del deployment["metadata"]["namespace"]
    deployment["spec"]["template"]["metadata"]["labels"]["team"] = "a b"
    text = _problems(objects)
    assert "metadata.namespace: required" in text
    assert "spec.template.metadata.labels.team: 'a b' is not a valid label value" in text


def test_unknown_custom_kind_is_reported() -> None:
    obj = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "x", "namespace": "ns"},
    }
    assert "no CRD defines serving.kserve.io InferenceService" in _problems([obj])


def test_every_problem_is_listed_not_just_the_first() -> None:
    objects = _objects("seed-qwen14b-ray-tp2")
    broken = copy.deepcopy(objects)
    _by_kind(broken, "PersistentVolume")["spec"]["csi"]["volumeHandle"] = "other"
    _by_kind(broken, "RayCluster")["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 1
    _by_kind(broken, "PersistentVolumeClaim")["spec"]["accessModes"] = "ReadOnlyMany"
    text = _problems(broken)
    assert text.startswith("3 problem(s)")
    validate_objects(objects)
