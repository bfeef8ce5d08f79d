"""The process's Kubernetes session (llm_rollout/kube/session.py) and `wait_until` against the
session's real cluster: one client per process, the verbs keep SSA / dry-run / error
translation, and a wait ends on done, on failed-with-reason and on its deadline.

`wait_until`'s checks below change the cluster themselves the first time they run, so each
wait sees a real change arrive through its watch without a timer in the test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from llm_rollout.errors import TransientError
from llm_rollout.kube.client import shared_api_client
from llm_rollout.kube.errors import InvalidObjectError, KubeTransientError, NotFoundError
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.session import RetryPolicy, Session, process_session, reset_process_session
from llm_rollout.kube.views import ObjectView
from llm_rollout.kube.watching import (
    Done,
    Failed,
    Selector,
    Verdict,
    WaitFailed,
    Waiting,
    WaitTimeout,
)
from llm_rollout.locking import LeaseLostError, ServiceLock
from llm_rollout.release.cluster import cluster_api
from sandbox.cluster.control_plane import Cluster
from tests.kube_edge.conftest import configmap


@pytest.fixture
def session(real_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Session]:
    """The process session over the real cluster's admin kubeconfig, dropped afterwards."""
    monkeypatch.setenv("KUBECONFIG", str(real_cluster.admin_kubeconfig))
    reset_process_session()
    yield process_session()
    reset_process_session()


def test_one_client_per_process_shared_by_every_entry(
    session: Session,
    real_cluster: Cluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    built: list[k8s_client.ApiClient] = []
    original_init = k8s_client.ApiClient.__init__

    def counting_init(self: k8s_client.ApiClient, *args: object, **kwargs: object) -> None:
        built.append(self)
        original_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(k8s_client.ApiClient, "__init__", counting_init)
    for _ in range(3):
        with cluster_api() as api:
            assert api is session.api
        assert shared_api_client() is session.api
        assert process_session() is session
    # Closing the shared client, as tasks written for a client of their own do, keeps it usable.
    session.api.close()  # type: ignore[no-untyped-call]
    assert session.get(ObjectRef("v1", "Namespace", None, "default")) is not None
    assert built == []

    # KUBECONFIG naming another file is another cluster as far as the process knows.
    other = tmp_path / "kubeconfig"
    other.write_bytes(Path(real_cluster.admin_kubeconfig).read_bytes())
    monkeypatch.setenv("KUBECONFIG", str(other))
    moved = process_session()
    assert moved is not session and moved.api is not session.api
    assert len(built) == 1 and built[0] is moved.api


def test_verbs_apply_as_our_field_manager_and_translate_errors(
    session: Session, namespace: str
) -> None:
    obj = configmap(namespace, "verbs", {"k": "v"})
    ref = ObjectRef.of(obj)
    preview = session.apply(obj, dry_run=True)
    assert preview["data"] == {"k": "v"}
    assert session.get(ref) is None
    session.apply({**obj, "metadata": {**obj["metadata"], "labels": {"team": "llm"}}})
    found = session.get(ref)
    assert found is not None
    assert found.metadata.labels == {"team": "llm"}
    assert found.metadata.annotations == {}
    managers = {m["manager"] for m in found.raw["metadata"]["managedFields"]}
    assert managers == {session.field_manager} == {"llm-rollout"}
    listed = session.list(Selector("v1", "ConfigMap", namespace, label_selector="team=llm"))
    assert [view.metadata.name for view in listed] == ["verbs"]

    with pytest.raises(InvalidObjectError, match=f"ConfigMap {namespace}/Bad_Name"):
        session.apply(configmap(namespace, "Bad_Name", {}))
    with pytest.raises(NotFoundError, match=r"does not serve API example\.com/v9"):
        session.get(ObjectRef("example.com/v9", "Widget", namespace, "w"))

    assert session.delete(ref, wait_timeout_s=60) is True
    assert session.get(ref) is None
    assert session.delete(ref) is False


def test_wait_until_one_object_done_after_a_change(session: Session, namespace: str) -> None:
    ref = ObjectRef("v1", "ConfigMap", namespace, "phase")
    seen: list[str | None] = []

    def ready(obj: ObjectView | None) -> Verdict[str]:
        phase = str(obj.raw.get("data", {}).get("phase")) if obj is not None else None
        seen.append(phase)
        if obj is None:
            session.apply(configmap(namespace, "phase", {"phase": "starting"}))
            return Waiting(("not created",))
        if phase == "starting":
            session.apply(configmap(namespace, "phase", {"phase": "ready"}))
            return Waiting(("still starting",))
        return Done(obj.metadata.resource_version)

    version = session.wait_until(ref, ready, timeout_s=60)
    assert version and seen[0] is None and seen[-1] == "ready" and "starting" in seen


def test_wait_until_ends_on_a_failure_with_its_reason(session: Session, namespace: str) -> None:
    session.apply(configmap(namespace, "broken", {"phase": "Lost"}))

    def bound(obj: ObjectView | None) -> Verdict[None]:
        if obj is not None and obj.raw.get("data", {}).get("phase") == "Lost":
            return Failed(f"{obj.ref}: phase Lost")
        return Waiting(("not bound",))

    with pytest.raises(WaitFailed) as info:
        session.wait_until(ObjectRef.of(configmap(namespace, "broken", {})), bound, 60)
    assert info.value.reason == f"ConfigMap {namespace}/broken: phase Lost"
    # The wait ended on the first list, while its watch request was still being opened: the
    # stream was shut with it rather than left reading until the watch window ends.
    streams = [t for t in threading.enumerate() if t.name == f"watch ConfigMap {namespace}/broken"]
    assert not [t for t in streams if t.is_alive()]


def test_wait_until_times_out_naming_what_was_missing(session: Session, namespace: str) -> None:
    stuck = configmap(namespace, "stuck", {"phase": "Pending"})
    stuck["metadata"]["labels"] = {"stuck": "yes"}
    session.apply(stuck)

    def never(objs: list[ObjectView]) -> Verdict[None]:
        return Waiting(tuple(f"{o.ref} is {o.raw['data']['phase']}" for o in objs))

    selector = Selector("v1", "ConfigMap", namespace, label_selector="stuck=yes")
    with pytest.raises(WaitTimeout) as info:
        session.wait_until(selector, never, 1.0, waiting_for="the stuck one")
    assert info.value.missing == [f"ConfigMap {namespace}/stuck is Pending"]
    assert str(info.value).startswith("timed out after 1s waiting for the stuck one: ")


def test_wait_until_a_selector_sees_objects_arrive(session: Session, namespace: str) -> None:
    labelled = {"app.kubernetes.io/part-of": "waiting"}

    def labelled_map(name: str) -> dict[str, object]:
        obj = configmap(namespace, name, {})
        obj["metadata"]["labels"] = labelled
        return obj

    def both(objs: list[ObjectView]) -> Verdict[list[str]]:
        names = [o.metadata.name for o in objs]
        if len(names) == 2:
            return Done(names)
        session.apply(labelled_map(f"m{len(names)}"))
        return Waiting((f"{len(names)} of 2",))

    selector = Selector("v1", "ConfigMap", namespace, "app.kubernetes.io/part-of=waiting")
    assert session.wait_until(selector, both, timeout_s=60) == ["m0", "m1"]


def test_a_lost_lease_ends_a_wait_in_progress(session: Session, namespace: str) -> None:
    # The hold is lost from another thread while the wait blocks on its watch: the lease
    # keeper's `mark_lost` (llm_rollout/locking.py) wakes the wait, which ends with the
    # lease's error instead of running to its timeout (an hour: the test's own bound is 60 s).
    session.apply(configmap(namespace, "never-done", {"phase": "Pending"}))
    lock = ServiceLock(namespace, "svc", "run a", "a", False, datetime.now(UTC))
    keeper = threading.Thread(target=lock.mark_lost, args=("run b", "another run holds it now"))
    checks: list[ObjectView | None] = []

    def pending(obj: ObjectView | None) -> Verdict[None]:
        checks.append(obj)
        if len(checks) == 1:
            keeper.start()
        return Waiting(("still Pending",))

    ref = ObjectRef("v1", "ConfigMap", namespace, "never-done")
    with pytest.raises(LeaseLostError, match="it is held by 'run b' now"):
        session.wait_until(ref, pending, timeout_s=3600, interrupt=lock)
    keeper.join()
    assert len(checks) == 1  # woken by the loss, not by a change of the object
    # A wait that starts after the loss ends before its first check.
    with pytest.raises(LeaseLostError):
        session.wait_until(ref, pending, timeout_s=3600, interrupt=lock)
    assert len(checks) == 1
    assert lock._wakers == []  # every wait unsubscribed on the way out


def test_retry_policy_retries_transient_failures_only() -> None:
    answers: list[Exception | str] = [KubeTransientError("GET x: HTTP 503"), "ok"]

    def flaky() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert RetryPolicy(attempts=2).call(flaky) == "ok"
    answers[:] = [KubeTransientError("a"), KubeTransientError("b"), "never"]
    with pytest.raises(TransientError, match="b"):
        RetryPolicy(attempts=2).call(flaky)
    answers[:] = [NotFoundError("gone", ref=None, status=404, server_message=""), "never"]
    with pytest.raises(NotFoundError):
        RetryPolicy(attempts=5).call(flaky)
    assert answers == ["never"]
