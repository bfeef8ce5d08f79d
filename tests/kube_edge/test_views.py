"""The typed read-only views (llm_rollout/kube/views.py) over objects as the API server sends
them (JSON round-tripped), without a cluster. Field names and optionality from k8s.io/api
core/v1 types.go (PodSpec.NodeName, PodStatus.Phase/Conditions/ContainerStatuses,
ContainerStatus.ContainerID/RestartCount) and apimachinery meta/v1 types.go
(ObjectMeta.Generation, DeletionTimestamp)."""

from __future__ import annotations

import json
from typing import Any

from llm_rollout.kube.views import ObjectView, PodView


def _wire(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def test_a_running_pod_reads_its_node_phase_containers_and_readiness() -> None:
    pod = PodView(
        _wire(
            {
                "metadata": {
                    "name": "w-0",
                    "uid": "u1",
                    "deletionTimestamp": "2026-12-07T05:00:00Z",
                },
                "spec": {"nodeName": "gpu-1"},
                "status": {
                    "phase": "Running",
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "Ready", "status": "True"},
                    ],
                    "containerStatuses": [
                        {"name": "engine", "containerID": "containerd://a", "restartCount": 2}
                    ],
                },
            }
        )
    )
    assert (pod.node_name, pod.phase, pod.is_ready, pod.is_terminating) == (
        "gpu-1",
        "Running",
        True,
        True,
    )
    [engine] = pod.container_statuses
    assert (engine.name, engine.container_id, engine.restart_count) == (
        "engine",
        "containerd://a",
        2,
    )


def test_a_pending_pod_reads_absent_and_null_fields_as_empty() -> None:
    # A pod not yet bound or started: the server omits or nulls what is not known yet.
    pod = PodView(
        _wire(
            {
                "metadata": {"name": "w-1"},
                "spec": {"nodeName": None},
                "status": {
                    "containerStatuses": None,
                    "conditions": [{"type": "Ready", "status": "False"}],
                },
            }
        )
    )
    assert (pod.node_name, pod.phase, pod.is_ready, pod.is_terminating) == (
        None,
        None,
        False,
        False,
    )
    assert pod.container_statuses == ()
    unstarted = PodView(_wire({"status": {"containerStatuses": [{"name": "engine"}]}}))
    [engine] = unstarted.container_statuses
    assert (engine.container_id, engine.restart_count) == ("", 0)


def test_generations_are_read_as_integers_and_absent_as_none() -> None:
    seen = ObjectView(_wire({"metadata": {"generation": 3}, "status": {"observedGeneration": 2}}))
    assert (seen.metadata.generation, seen.observed_generation) == (3, 2)
    fresh = ObjectView(_wire({"metadata": {}, "status": {}}))
    assert (fresh.metadata.generation, fresh.observed_generation) == (None, None)
