"""Redeploy's plain decisions: which requests are valid, and what a change does to a workload
read back from the cluster (update replacing an engine flag's value, restart annotation, image,
replicas, what is stripped before a whole-object apply), without a cluster."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from llm_rollout.errors import PermanentError
from llm_rollout.redeploy import (
    RedeployRequest,
    applyable,
    changed_workload,
    pod_templates,
    served_model,
)
from llm_rollout.spec import SecretKeyRef
from llm_rollout.vocabulary import RESTARTED_AT_ANNOTATION

NOW = datetime(2026, 12, 6, 18, 5, 9, tzinfo=UTC)
STAMP = "2026-12-06T18:05:09Z"


def _request(action: str, **fields: Any) -> RedeployRequest:
    return RedeployRequest(service="qwen", namespace="llm", action=action, **fields)


def _container(args: list[str] | None, **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "engine", "image": "vllm/vllm-openai:v0.10.0", **extra}
    if args is not None:
        container["args"] = args
    return container


def _deployment(args: list[str] | None = None, **container: Any) -> dict[str, Any]:
    engine_args = ["--served-model-name", "qwen", "--max-model-len", "2048", "--port", "8000"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "qwen-r1",
            "namespace": "llm",
            "labels": {"app": "qwen"},
            "resourceVersion": "41",
            "uid": "u-1",
            "managedFields": [{"manager": "llm-rollout"}],
            "creationTimestamp": "2026-12-06T17:00:00Z",
            "generation": 3,
            "selfLink": "/apis/apps/v1/namespaces/llm/deployments/qwen-r1",
            "ownerReferences": [{"kind": "X", "name": "y"}],
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "qwen"}},
            "template": {
                "metadata": {"labels": {"app": "qwen"}},
                "spec": {
                    "containers": [
                        _container(engine_args if args is None else args, **container),
                        {"name": "sidecar", "image": "busybox:1", "args": ["--keep"]},
                    ]
                },
            },
        },
        "status": {"readyReplicas": 2},
    }


def _lws() -> dict[str, Any]:
    template = {"spec": {"containers": [_container(["--served-model-name", "qwen"])]}}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "qwen-r1", "namespace": "llm"},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "leaderTemplate": copy.deepcopy(template),
                "workerTemplate": copy.deepcopy(template),
            },
        },
    }


def _engine(obj: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]
    return container


# --- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "fields", "problem"),
    [
        ("update", {}, "action update needs image, engine_args or replicas"),
        ("scale", {}, "action scale takes replicas only"),
        ("scale", {"replicas": 2, "image": "vllm/vllm-openai:v1"}, "takes replicas only"),
        ("scale", {"replicas": 2, "engine_args": ["--x"]}, "takes replicas only"),
        ("restart", {"replicas": 2}, "action restart takes no image"),
        ("rollback", {"image": "vllm/vllm-openai:v1"}, "action rollback takes no image"),
        ("rollback", {"engine_args": ["--x"]}, "action rollback takes no image"),
        ("update", {"engine_args": ["4096"]}, "must start with a flag"),
        ("update", {"engine_args": ["--x", "a b"]}, "entry 1 contains whitespace"),
    ],
)
def test_request_refuses_changes_that_do_not_fit_the_action(
    action: str, fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        _request(action, **fields)


@pytest.mark.parametrize(
    ("action", "fields", "restarts"),
    [
        ("restart", {}, True),
        ("rollback", {}, False),
        ("scale", {"replicas": 3}, False),
        ("update", {"replicas": 3}, False),
        ("update", {"image": "vllm/vllm-openai:v1"}, True),
        ("update", {"engine_args": ["--enforce-eager"]}, True),
    ],
)
def test_only_changes_to_the_pods_restart_them(
    action: str, fields: dict[str, Any], restarts: bool
) -> None:
    assert _request(action, **fields).restarts_pods is restarts


# --- what a change does -----------------------------------------------------------------------


def test_update_replaces_an_existing_flag_value_and_appends_new_flags() -> None:
    workload = _deployment()
    before = copy.deepcopy(workload)
    request = _request(
        "update", engine_args=["--max-model-len", "4096", "--enforce-eager", "--seed", "7"]
    )
    changed = changed_workload(workload, request, NOW)
    assert _engine(changed)["args"] == [
        "--served-model-name",
        "qwen",
        "--max-model-len",
        "4096",
        "--port",
        "8000",
        "--enforce-eager",
        "--seed",
        "7",
    ]
    # Only the engine container; the input is left as it was.
    assert changed["spec"]["template"]["spec"]["containers"][1]["args"] == ["--keep"]
    assert workload == before


def test_update_flag_without_value_drops_the_old_value_and_a_bare_flag_gets_one() -> None:
    args = ["--served-model-name", "qwen", "--quantization", "fp8", "--enforce-eager"]
    request = _request("update", engine_args=["--quantization", "--enforce-eager", "yes"])
    changed = changed_workload(_deployment(args), request, NOW)
    assert _engine(changed)["args"] == [
        "--served-model-name",
        "qwen",
        "--quantization",
        "--enforce-eager",
        "yes",
    ]


def test_update_of_a_last_bare_flag_keeps_it_bare() -> None:
    args = ["--served-model-name", "qwen", "--enforce-eager"]
    request = _request("update", engine_args=["--enforce-eager"])
    changed = changed_workload(_deployment(args), request, NOW)
    assert _engine(changed)["args"] == args


def test_update_of_a_flag_at_an_odd_position() -> None:
    # Positions right after a bare flag: the value is the next token, wherever the flag is.
    args = ["--enforce-eager", "--max-model-len", "2048", "--served-model-name", "qwen"]
    request = _request("update", engine_args=["--max-model-len", "4096"])
    assert _engine(changed_workload(_deployment(args), request, NOW))["args"] == [
        "--enforce-eager",
        "--max-model-len",
        "4096",
        "--served-model-name",
        "qwen",
    ]
    request = _request("update", engine_args=["--max-model-len"])
    assert _engine(changed_workload(_deployment(args), request, NOW))["args"] == [
        "--enforce-eager",
        "--max-model-len",
        "--served-model-name",
        "qwen",
    ]


def test_update_of_the_only_flag_and_of_a_last_flag_with_value() -> None:
    request = _request("update", engine_args=["--enforce-eager", "true"])
    changed = changed_workload(_deployment(["--enforce-eager"]), request, NOW)
    assert _engine(changed)["args"] == ["--enforce-eager", "true"]
    args = ["--served-model-name", "qwen", "--seed", "1"]
    changed = changed_workload(
        _deployment(args), _request("update", engine_args=["--seed", "2"]), NOW
    )
    assert _engine(changed)["args"] == ["--served-model-name", "qwen", "--seed", "2"]


def test_update_with_bare_flags_first_keeps_later_values_in_place() -> None:
    args = ["--seed", "1", "--served-model-name", "qwen"]
    request = _request("update", engine_args=["--enforce-eager", "--seed", "7"])
    assert _engine(changed_workload(_deployment(args), request, NOW))["args"] == [
        "--seed",
        "7",
        "--served-model-name",
        "qwen",
        "--enforce-eager",
    ]
    request = _request("update", engine_args=["--enforce-eager", "--trust-remote-code"])
    assert _engine(changed_workload(_deployment(args), request, NOW))["args"] == [
        *args,
        "--enforce-eager",
        "--trust-remote-code",
    ]


def test_update_flag_at_the_end_gets_its_value_inserted() -> None:
    args = ["--served-model-name", "qwen", "--enforce-eager"]
    request = _request("update", engine_args=["--enforce-eager", "true"])
    changed = changed_workload(_deployment(args), request, NOW)
    assert _engine(changed)["args"] == [*args, "true"]


def test_update_image_restarts_every_template_and_changes_every_container() -> None:
    changed = changed_workload(_lws(), _request("update", image="vllm/vllm-openai:v0.11.0"), NOW)
    templates = pod_templates(changed)
    assert len(templates) == 2
    for template in templates:
        assert template["metadata"]["annotations"] == {RESTARTED_AT_ANNOTATION: STAMP}
        assert [c["image"] for c in template["spec"]["containers"]] == ["vllm/vllm-openai:v0.11.0"]


def test_restart_stamps_the_template_and_keeps_existing_annotations() -> None:
    workload = _deployment()
    workload["spec"]["template"]["metadata"]["annotations"] = {"a": "b"}
    changed = changed_workload(workload, _request("restart"), NOW)
    template = changed["spec"]["template"]
    assert template["metadata"]["annotations"] == {"a": "b", RESTARTED_AT_ANNOTATION: STAMP}
    assert _engine(changed) == _engine(workload)
    assert changed["spec"]["replicas"] == 2


def test_scale_changes_replicas_only_and_does_not_restart() -> None:
    workload = _deployment()
    changed = changed_workload(workload, _request("scale", replicas=5), NOW)
    assert changed["spec"]["replicas"] == 5
    assert "annotations" not in changed["spec"]["template"]["metadata"]
    assert changed["spec"]["template"] == workload["spec"]["template"]


def test_replicas_on_a_kind_without_spec_replicas_is_refused() -> None:
    ray = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "qwen-r1"},
        "spec": {"headGroupSpec": {"template": {"spec": {"containers": [_container([])]}}}},
    }
    with pytest.raises(PermanentError, match=r"RayCluster has no spec\.replicas"):
        changed_workload(ray, _request("scale", replicas=2), NOW)


def test_engine_args_on_a_shell_script_engine_are_refused() -> None:
    script = _deployment(args=["vllm serve /models/qwen"], command=["sh", "-c"])
    with pytest.raises(PermanentError, match="starts from a shell script"):
        changed_workload(script, _request("update", engine_args=["--seed", "1"]), NOW)
    no_args = _deployment()
    del _engine(no_args)["args"]
    with pytest.raises(PermanentError, match="starts from a shell script"):
        changed_workload(no_args, _request("update", engine_args=["--seed", "1"]), NOW)


def test_engine_args_with_a_non_shell_command_are_changed() -> None:
    workload = _deployment(args=["--served-model-name", "qwen"], command=["vllm", "serve"])
    changed = changed_workload(workload, _request("update", engine_args=["--seed", "1"]), NOW)
    assert _engine(changed)["args"] == ["--served-model-name", "qwen", "--seed", "1"]


def test_a_workload_without_pod_template_is_refused_by_name() -> None:
    empty = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": {}}
    with pytest.raises(PermanentError, match="Deployment w has no pod template"):
        changed_workload(empty, _request("restart"), NOW)


def test_applyable_drops_status_and_server_metadata_only() -> None:
    workload = _deployment()
    result = applyable(workload)
    assert "status" not in result
    assert result["metadata"] == {"name": "qwen-r1", "namespace": "llm", "labels": {"app": "qwen"}}
    assert result["spec"] == workload["spec"]
    assert "status" in workload and "uid" in workload["metadata"]
    assert applyable({"kind": "X"}) == {"kind": "X", "metadata": {}}


def test_pod_templates_are_found_at_any_depth_and_in_lists() -> None:
    rbg = {
        "kind": "RoleBasedGroup",
        "spec": {
            "roles": [
                {"name": "prefill", "template": {"spec": {"containers": [{"name": "a"}]}}},
                {"name": "decode", "template": {"spec": {"containers": [{"name": "b"}]}}},
                {"name": "odd", "template": {"spec": {"containers": "not a list"}}},
            ]
        },
    }
    names = [t["spec"]["containers"][0]["name"] for t in pod_templates(rbg)]
    assert names == ["a", "b"]
    assert pod_templates({"kind": "X"}) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--enforce-eager", "--served-model-name", "qwen"],
        ["--port", "8000", "--served-model-name", "qwen"],
        ["--served-model-name", "qwen"],
    ],
)
def test_served_model_name_is_the_token_after_its_flag(args: list[str]) -> None:
    assert served_model(_deployment(args=args)) == ("qwen", None)


def test_served_model_and_api_key_are_read_from_the_engine_container() -> None:
    env = [
        {"name": "HF_HOME", "value": "/tmp"},
        {"name": "OTHER", "valueFrom": {"secretKeyRef": {"name": "s0", "key": "k0"}}},
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "api"}}},
        {"name": "NO_API_KEY", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
    ]
    name, key = served_model(_deployment(env=env))
    assert name == "qwen"
    assert key == SecretKeyRef(secret_name="keys", key="api")
    assert served_model(_deployment()) == ("qwen", None)


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "8000"],
        ["--port", "8000", "--served-model-name"],
        ["--enforce-eager", "--served-model-name"],
        ["--served-model-name"],
        None,
    ],
)
def test_served_model_without_a_name_is_refused(args: list[str] | None) -> None:
    workload = _deployment(args=args or [])
    if args is None:
        workload["spec"] = {}
    with pytest.raises(PermanentError, match="cannot tell the served model name"):
        served_model(workload)
