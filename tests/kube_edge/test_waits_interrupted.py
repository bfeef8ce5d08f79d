"""A rollout Lease lost while redeploy waits for its roll (llm_rollout/redeploy.py `wait_rolled`)
or while a release removal waits for its pods to go (llm_rollout/release/removal.py
`remove_release` / `wait_pods_gone`) ends the wait at once with `LeaseLostError`, as it ends
readiness, the smoke call and the bake: the tasks running them under the Lease (tasks/redeploy.py
`prove_rolled`; tasks/kubernetes.py rollout, retire and rollback through llm_rollout/stages.py)
give it the held lease (`locking.held_lease`) as `interrupt`.

Against the session's real cluster, each wait is for something that never comes, bounded by an
hour (the test's own bound is far shorter): a pod no node can take (a nodeSelector no node
matches) is neither rolled nor removed by anyone. The hold is lost from another thread as soon
as the wait subscribes to it (after its watches started), as the lease keeper does
(`locking.ServiceLock.mark_lost`); without the interrupt passed in, no wait subscribes and the
test runs into its timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client as k8s_client

from llm_rollout.errors import RolloutError
from llm_rollout.kinds import PodRoll
from llm_rollout.kube.objects import apply, get
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.views import ObjectView
from llm_rollout.kube.watching import Done, Selector, Verdict, Waiting, wait_until
from llm_rollout.locking import LeaseLostError, ServiceLock
from llm_rollout.redeploy import wait_rolled, workload_incarnations
from llm_rollout.release.removal import remove_release
from llm_rollout.vocabulary import PART_OF_LABEL, RELEASE_LABEL
from tests.kube_edge.conftest import deployment

NAME = "held"
RELEASE = "r-old"
NEVER_S = 3600.0
POD_TIMEOUT_S = 30.0
# No node carries this label: the scheduler never binds the pod, so no kubelet runs or removes
# it, and no controller deletes a bare pod.
UNSCHEDULABLE = {"llm-rollout.test/no-such-node": "true"}


class _LostOnceWaiting:
    """The hold as the wait's `Interrupt`, lost from another thread (the lease keeper's part)
    as soon as a wait subscribes to it, so the loss reaches a wait in progress."""

    def __init__(self, namespace: str) -> None:
        self.lock = ServiceLock(namespace, NAME, "run a", "a", False, datetime.now(UTC))
        self.keeper = threading.Thread(
            target=self.lock.mark_lost, args=("run b", "another run holds it now")
        )

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        unsubscribe = self.lock.subscribe(wake)
        self.keeper.start()
        return unsubscribe

    def interrupted(self) -> RolloutError | None:
        return self.lock.interrupted()


def _pod_spec() -> dict[str, Any]:
    container = {
        "name": "server",
        "image": "docker.io/library/busybox:1.36",
        "command": ["sh", "-c", "exec sleep 3600"],
    }
    return {"nodeSelector": UNSCHEDULABLE, "containers": [container]}


def _pod_exists(pods: list[ObjectView]) -> Verdict[None]:
    return Done(None) if pods else Waiting(("a pod",))


@pytest.mark.timeout(60)
def test_a_lost_lease_ends_the_wait_for_a_removed_releases_pods(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    labels = {PART_OF_LABEL: NAME, RELEASE_LABEL: RELEASE}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{NAME}-{RELEASE}", "namespace": namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [{"port": 8000}]},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{NAME}-{RELEASE}-0", "namespace": namespace, "labels": labels},
        "spec": _pod_spec(),
    }
    apply(api, service)
    apply(api, pod)
    interrupt = _LostOnceWaiting(namespace)

    with pytest.raises(LeaseLostError, match="it is held by 'run b' now"):
        remove_release(api, namespace, NAME, RELEASE, wait_timeout_s=NEVER_S, interrupt=interrupt)
    interrupt.keeper.join()
    # The removal deleted the release's objects before it waited; the pod it waited for stays.
    assert get(api, ObjectRef.of(service)) is None
    assert get(api, ObjectRef.of(pod)) is not None
    assert interrupt.lock._wakers == []  # the wait unsubscribed on the way out


@pytest.mark.timeout(60)
def test_a_lost_lease_ends_the_wait_for_a_roll(api: k8s_client.ApiClient, namespace: str) -> None:
    workload = deployment(namespace, NAME)
    workload["spec"]["template"]["spec"]["nodeSelector"] = UNSCHEDULABLE
    apply(api, workload)
    wait_until(
        api,
        Selector("v1", "Pod", namespace, label_selector="app=" + NAME),
        _pod_exists,
        POD_TIMEOUT_S,
    )
    stored = get(api, ObjectRef.of(workload))
    assert stored is not None
    # No change is applied: the pod seen now stays the one from before, so the roll never comes.
    before = workload_incarnations(api, stored)
    assert len(before) == 1
    interrupt = _LostOnceWaiting(namespace)

    with pytest.raises(LeaseLostError, match="it is held by 'run b' now"):
        wait_rolled(api, stored, before, PodRoll("replace"), NEVER_S, interrupt=interrupt)
    interrupt.keeper.join()
    assert interrupt.lock._wakers == []
