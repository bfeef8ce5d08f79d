"""The serving release of a service, read from its stable Service: its selector names the
release that serves, its annotations the one before it, the revision and the spec hash."""

from __future__ import annotations

from kubernetes import client as k8s_client

from llm_rollout.kube.objects import get
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.views import ObjectView
from llm_rollout.strategy import ReleaseState
from llm_rollout.vocabulary import (
    ANN_PREVIOUS_RELEASE,
    ANN_REVISION,
    ANN_SPEC_HASH,
    RELEASE_LABEL,
)


def stable_service_ref(namespace: str, name: str) -> ObjectRef:
    return ObjectRef("v1", "Service", namespace, name)


def read_release_state(api: k8s_client.ApiClient, namespace: str, name: str) -> ReleaseState:
    """The serving release of service `name`, from its stable Service (None when absent)."""
    service = get(api, stable_service_ref(namespace, name))
    if service is None:
        return ReleaseState(service=name, namespace=namespace, current_release=None)
    view = ObjectView(service)
    selector = view.at("spec", "selector")
    annotations = dict(view.metadata.annotations)
    return ReleaseState(
        service=name,
        namespace=namespace,
        current_release=selector.get(RELEASE_LABEL),
        previous_release=annotations.get(ANN_PREVIOUS_RELEASE),
        revision=annotations.get(ANN_REVISION),
        spec_hash=annotations.get(ANN_SPEC_HASH),
        annotations=annotations,
    )
