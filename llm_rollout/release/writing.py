"""What the stages write besides the plan's objects (the namespace), the plan's annotations
merged into a rendered object, and applying with a dry-run of everything first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client as k8s_client

from llm_rollout.kube.objects import FIELD_MANAGER, apply_all
from llm_rollout.kube.resources import JsonDict
from llm_rollout.kube.views import ObjectView, mapping_at
from llm_rollout.vocabulary import MANAGED_BY_LABEL


def namespace_object(namespace: str) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace,
            "labels": {MANAGED_BY_LABEL: FIELD_MANAGER},
        },
    }


def with_annotations(obj: Mapping[str, Any], annotations: Mapping[str, str]) -> JsonDict:
    """A copy of a rendered object with `annotations` merged into its metadata."""
    copy = dict(obj)
    metadata = dict(mapping_at(obj, "metadata"))
    metadata["annotations"] = {**ObjectView(obj).metadata.annotations, **annotations}
    copy["metadata"] = metadata
    return copy


def apply_checked(
    api: k8s_client.ApiClient, objects: Sequence[Mapping[str, Any]]
) -> list[JsonDict]:
    """Dry-run every object first, then apply them in order: a rejected object stops the
    stage before anything of it was written."""
    apply_all(api, objects, field_manager=FIELD_MANAGER, dry_run=True)
    return apply_all(api, objects, field_manager=FIELD_MANAGER)
