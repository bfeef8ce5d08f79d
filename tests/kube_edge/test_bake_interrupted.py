"""A rollout Lease lost during the bake ends it at once with `LeaseLostError`
(llm_rollout/release/bake.py `bake(interrupt=...)`, given the held lease by the bake task),
rather than at the end of its window: the flow's rollback after it then writes nothing
(`tasks.policy.api_task` checks the lease first). Against the session's real cluster: a
Deployment whose pod is Ready behind a Service routing to its release, baked for an hour
(the test's own bound is far shorter); the hold is lost from another thread once the bake
holds, as the lease keeper does (`locking.ServiceLock.mark_lost`).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client as k8s_client

from llm_rollout.kube.objects import apply
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.views import ObjectView
from llm_rollout.kube.watching import Done, Verdict, Waiting, wait_until
from llm_rollout.locking import LeaseLostError, ServiceLock
from llm_rollout.release.bake import bake
from llm_rollout.vocabulary import RELEASE_LABEL

NAME = "baked"
RELEASE = "r1"
WINDOW_S = 3600.0
READY_TIMEOUT_S = 60.0


def _workload(namespace: str) -> dict[str, Any]:
    labels = {"app": NAME, RELEASE_LABEL: RELEASE}
    # No probe: the busybox container is Ready once it runs.
    container = {
        "name": "server",
        "image": "docker.io/library/busybox:1.36",
        "command": ["sh", "-c", "exec sleep 3600"],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                # sleep as PID 1 ignores SIGTERM: the namespace's removal need not wait 30 s.
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
            },
        },
    }


def _service(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {"selector": {RELEASE_LABEL: RELEASE}, "ports": [{"port": 8000}]},
    }


@pytest.mark.timeout(120)
def test_a_lost_lease_ends_a_bake_in_progress(api: k8s_client.ApiClient, namespace: str) -> None:
    apply(api, _workload(namespace))
    apply(api, _service(namespace))
    ref = ObjectRef("apps/v1", "Deployment", namespace, NAME)

    def ready(obj: ObjectView | None) -> Verdict[None]:
        if obj is not None and obj.status.get("readyReplicas") == 1:
            return Done(None)
        return Waiting(("1 ready replica",))

    wait_until(api, ref, ready, READY_TIMEOUT_S)

    lock = ServiceLock(namespace, NAME, "run a", "a", False, datetime.now(UTC))
    keeper = threading.Thread(target=lock.mark_lost, args=("run b", "another run holds it now"))
    heard: list[str] = []

    def on_event(message: str) -> None:
        # The first full picture held (a failing one ends the bake as ReleaseDegraded at
        # once): the bake is under way.
        heard.append(message)
        keeper.start()

    with pytest.raises(LeaseLostError, match="it is held by 'run b' now"):
        bake(
            api,
            ref,
            WINDOW_S,
            stable_service=NAME,
            release=RELEASE,
            on_event=on_event,
            interrupt=lock,
        )
    keeper.join()
    assert heard == [f"baking {ref} with 1 pod(s) for {WINDOW_S:.0f}s"]
    assert lock._wakers == []
