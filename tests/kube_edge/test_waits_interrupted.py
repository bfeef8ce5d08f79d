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
test runs into its timeout. The last test runs the prove-rolled task's body inside a real hold
(`locking.service_lock`), so what is checked there is that the task hands its wait the lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from llm_rollout.kinds import PodRoll
from llm_rollout.kube.objects import apply, get
from llm_rollout.kube.resources import JsonDict, ObjectRef
from llm_rollout.kube.session import reset_process_session
from llm_rollout.kube.views import ObjectView
from llm_rollout.kube.watching import Done, Selector, Verdict, Waiting, wait_until
from llm_rollout.locking import LeaseLostError, ServiceLock, service_lock
from llm_rollout.plan import new_release, plan_release
from llm_rollout.redeploy import PodIncarnations, wait_rolled, workload_incarnations
from llm_rollout.release.removal import remove_release
from llm_rollout.spec import load_spec
from llm_rollout.vocabulary import PART_OF_LABEL, RELEASE_LABEL
from sandbox.cluster.control_plane import Cluster
from tasks.kubernetes import rollback
from tasks.preflight import preflight
from tasks.redeploy import AppliedChange, prove_rolled
from tests.kube_edge.conftest import deployment
from tests.real_deploy import RealStores, write_real_spec

NAME = "held"
RELEASE = "r-old"
NEVER_S = 3600.0
POD_TIMEOUT_S = 30.0
# No node carries this label: the scheduler never binds the pod, so no kubelet runs or removes
# it, and no controller deletes a bare pod.
UNSCHEDULABLE = {"llm-rollout.test/no-such-node": "true"}


def _lost_once_waiting(lock: ServiceLock, monkeypatch: pytest.MonkeyPatch) -> threading.Thread:
    """Have the hold lost from another thread (the lease keeper's part) as soon as a wait
    subscribes to it, so the loss reaches a wait in progress; returns that thread."""
    keeper = threading.Thread(target=lock.mark_lost, args=("run b", "another run holds it now"))
    subscribe = lock.subscribe

    def subscribe_then_lose(wake: Callable[[], None]) -> Callable[[], None]:
        unsubscribe = subscribe(wake)
        keeper.start()
        return unsubscribe

    monkeypatch.setattr(lock, "subscribe", subscribe_then_lose)
    return keeper


def _unheld(namespace: str) -> ServiceLock:
    """A hold as the lease keeper holds it, without a Lease written (the waits only listen)."""
    return ServiceLock(namespace, NAME, "run a", "a", False, datetime.now(UTC))


def _pod_spec() -> dict[str, Any]:
    container = {
        "name": "server",
        "image": "docker.io/library/busybox:1.36",
        "command": ["sh", "-c", "exec sleep 3600"],
    }
    return {"nodeSelector": UNSCHEDULABLE, "containers": [container]}


def _release_pod(namespace: str, name: str, release: str) -> JsonDict:
    """A pod of `release` of service `name` that nothing ever removes."""
    labels = {PART_OF_LABEL: name, RELEASE_LABEL: release}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-{release}-left", "namespace": namespace, "labels": labels},
        "spec": _pod_spec(),
    }


def _pod_exists(pods: list[ObjectView]) -> Verdict[None]:
    return Done(None) if pods else Waiting(("a pod",))


@pytest.mark.timeout(60, func_only=True)
def test_a_lost_lease_ends_the_wait_for_a_removed_releases_pods(
    api: k8s_client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = {PART_OF_LABEL: NAME, RELEASE_LABEL: RELEASE}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{NAME}-{RELEASE}", "namespace": namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [{"port": 8000}]},
    }
    pod = _release_pod(namespace, NAME, RELEASE)
    apply(api, service)
    apply(api, pod)
    lock = _unheld(namespace)
    keeper = _lost_once_waiting(lock, monkeypatch)

    with pytest.raises(LeaseLostError, match="it is held by 'run b' now"):
        remove_release(api, namespace, NAME, RELEASE, wait_timeout_s=NEVER_S, interrupt=lock)
    keeper.join()
    # The removal deleted the release's objects before it waited; the pod it waited for stays.
    assert get(api, ObjectRef.of(service)) is None
    assert get(api, ObjectRef.of(pod)) is not None
    assert lock._wakers == []  # the wait unsubscribed on the way out


def _never_rolling(api: k8s_client.ApiClient, namespace: str) -> tuple[JsonDict, PodIncarnations]:
    """A Deployment whose one pod is never scheduled, and its pods as they are: no change is
    applied, so the pod stays the one from before and the roll never comes."""
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
    before = workload_incarnations(api, stored)
    assert len(before) == 1
    return stored, before


@pytest.mark.timeout(60, func_only=True)
def test_a_lost_lease_ends_the_wait_for_a_roll(
    api: k8s_client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored, before = _never_rolling(api, namespace)
    lock = _unheld(namespace)
    keeper = _lost_once_waiting(lock, monkeypatch)

    with pytest.raises(LeaseLostError, match="it is held by 'run b' now"):
        wait_rolled(api, stored, before, PodRoll("replace"), NEVER_S, interrupt=lock)
    keeper.join()
    assert lock._wakers == []


@pytest.mark.timeout(60, func_only=True)
def test_the_prove_rolled_task_waits_under_the_lease_it_runs_in(
    api: k8s_client.ApiClient,
    namespace: str,
    real_cluster: Cluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The task body (tasks/redeploy.py, as the redeploy flow runs it under `rollout_lease`):
    # it finds the hold itself (`held_lease`), through a real Lease taken for the block.
    stored, before = _never_rolling(api, namespace)
    change = AppliedChange(
        release="r1",
        workload=ObjectRef.of(stored),
        before=stored,
        service_name=NAME,
        service_port=8000,
        model="tiny",
        api_key=None,
        roll=PodRoll("replace"),
        pods_before=before,
    )
    monkeypatch.setenv("KUBECONFIG", str(real_cluster.admin_kubeconfig))
    with _lost_in_a_real_hold(api, namespace, NAME, monkeypatch):
        prove_rolled.fn(change, timeout_s=NEVER_S)


@pytest.mark.timeout(60, func_only=True)
@pytest.mark.usefixtures("prefect_server")
def test_the_rollback_task_waits_for_the_release_pods_under_the_lease_it_runs_in(
    real_deploy_env: RealStores,
    api: k8s_client.ApiClient,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # The deploy flow's rollback task (tasks/kubernetes.py), removing a release whose pod never
    # goes: the stages take the interrupt from the task (llm_rollout/stages.py); rollout's
    # recreate removal and retire-previous hand over the same `held_lease()`.
    path, _ = write_real_spec(real_deploy_env, "seed-sglang-lws", tmp_path, namespace=namespace)
    spec = load_spec(path)
    named = new_release(spec, int(time.time() * 1000))
    report = preflight(spec, named.release, named.spec_hash)
    plan = plan_release(
        spec, release=named.release, spec_hash=named.spec_hash, report=report, now=datetime.now(UTC)
    )
    pod = _release_pod(namespace, spec.name, plan.release)
    apply(api, pod)
    with _lost_in_a_real_hold(api, namespace, spec.name, monkeypatch):
        rollback(plan)
    assert get(api, ObjectRef.of(pod)) is not None


@contextmanager
def _lost_in_a_real_hold(
    api: k8s_client.ApiClient, namespace: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Run the block (a task body finding the hold itself, `held_lease`) inside a real hold of
    the service's Lease (`locking.service_lock`, as the flows take it), lost as soon as a wait
    subscribes to it; the block must end with `LeaseLostError`, and so must the hold."""
    reset_process_session()  # the task's session reads the KUBECONFIG set for the test
    try:
        # Leaving the hold says it was lost too (`service_lock`).
        with (
            pytest.raises(LeaseLostError),
            service_lock(api, namespace, service, holder="run a", owner="a", wait_s=0) as lock,
        ):
            keeper = _lost_once_waiting(lock, monkeypatch)
            with pytest.raises(LeaseLostError, match="it is held by 'run b' now"):
                yield
        keeper.join()
    finally:
        reset_process_session()
    assert lock._wakers == []
