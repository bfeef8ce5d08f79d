"""Server-side apply: field ownership, conflicts naming the manager, force, removal."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client import ApiException

APPLY = "application/apply-patch+yaml"


def _cm(data: dict[str, str], labels: dict[str, str] | None = None) -> dict:
    meta: dict = {"name": "owned"}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def _apply(core: client.CoreV1Api, ns: str, body: dict, manager: str, force: bool = False):
    return core.patch_namespaced_config_map(
        "owned", ns, body, field_manager=manager, force=force, _content_type=APPLY
    )


def _owners(obj: client.V1ConfigMap) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for entry in obj.metadata.managed_fields or []:
        out[entry.manager] = set((entry.fields_v1 or {}).get("f:data", {}))
    return out


def test_apply_creates_and_records_ownership(core: client.CoreV1Api, ns: str) -> None:
    created = _apply(core, ns, _cm({"a": "1", "b": "2"}), "rollout")
    assert created.data == {"a": "1", "b": "2"}
    entry = created.metadata.managed_fields[0]
    assert entry.manager == "rollout" and entry.operation == "Apply"
    assert entry.fields_type == "FieldsV1"
    assert _owners(created) == {"rollout": {"f:a", "f:b"}}


def test_conflict_names_manager_and_field_then_force(core: client.CoreV1Api, ns: str) -> None:
    _apply(core, ns, _cm({"a": "1", "b": "2"}), "rollout")
    # Same value from another manager: no conflict, the field becomes shared.
    shared = _apply(core, ns, _cm({"a": "1"}), "helper")
    assert _owners(shared) == {"rollout": {"f:a", "f:b"}, "helper": {"f:a"}}

    with pytest.raises(ApiException) as err:
        _apply(core, ns, _cm({"b": "changed"}), "intruder")
    assert err.value.status == 409
    body = json.loads(err.value.body)
    assert body["reason"] == "Conflict"
    assert 'conflict with "rollout"' in body["message"] and ".data.b" in body["message"]
    assert body["details"]["causes"] == [
        {
            "reason": "FieldManagerConflict",
            "message": 'conflict with "rollout" using v1: .data.b',
            "field": ".data.b",
        }
    ]
    assert core.read_namespaced_config_map("owned", ns).data["b"] == "2"

    forced = _apply(core, ns, _cm({"b": "changed"}), "intruder", force=True)
    assert forced.data["b"] == "changed"
    owners = _owners(forced)
    assert owners["intruder"] == {"f:b"} and "f:b" not in owners["rollout"]


def test_fields_no_longer_applied_are_removed_unless_shared(
    core: client.CoreV1Api, ns: str
) -> None:
    _apply(core, ns, _cm({"a": "1", "b": "2", "c": "3"}, labels={"x": "1"}), "rollout")
    _apply(core, ns, _cm({"c": "3"}), "helper")
    after = _apply(core, ns, _cm({"a": "1"}), "rollout")
    # b was only rollout's: gone. c is still helper's: kept. The label went with rollout too.
    assert after.data == {"a": "1", "c": "3"}
    assert not after.metadata.labels


def test_update_takes_ownership_and_apply_then_conflicts(core: client.CoreV1Api, ns: str) -> None:
    _apply(core, ns, _cm({"a": "1"}), "rollout")
    edited = core.patch_namespaced_config_map(
        "owned", ns, {"data": {"a": "hand-edit"}}, field_manager="kubectl-edit"
    )
    owners = {e.manager: e.operation for e in edited.metadata.managed_fields}
    assert owners["kubectl-edit"] == "Update"
    with pytest.raises(ApiException) as err:
        _apply(core, ns, _cm({"a": "1"}), "rollout")
    assert err.value.status == 409
    assert 'conflict with "kubectl-edit"' in json.loads(err.value.body)["message"]


def test_apply_to_deployment_merges_containers_by_name(apps: client.AppsV1Api, ns: str) -> None:
    def dep(image: str, with_sidecar: bool) -> dict:
        containers = [{"name": "engine", "image": image}]
        if with_sidecar:
            containers.append({"name": "metrics", "image": "exporter:1"})
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "svc"},
            "spec": {
                "selector": {"matchLabels": {"app": "svc"}},
                "template": {
                    "metadata": {"labels": {"app": "svc"}},
                    "spec": {"containers": containers},
                },
            },
        }

    def apply(body: dict, manager: str, force: bool = False) -> client.V1Deployment:
        return apps.patch_namespaced_deployment(
            "svc", ns, body, field_manager=manager, force=force, _content_type=APPLY
        )

    first = apply(dep("vllm:1", True), "rollout")
    assert [c.name for c in first.spec.template.spec.containers] == ["engine", "metrics"]
    assert first.metadata.generation == 1
    second = apply(dep("vllm:2", False), "rollout")
    assert [(c.name, c.image) for c in second.spec.template.spec.containers] == [
        ("engine", "vllm:2")
    ]
    assert second.metadata.generation == 2
    with pytest.raises(ApiException) as err:
        apply(dep("vllm:3", False), "other")
    assert err.value.status == 409
    assert (
        '.spec.template.spec.containers[name="engine"].image'
        in json.loads(err.value.body)["message"]
    )
