"""Two first deploys racing for the rollout Lease of a service whose namespace does not exist
yet (``llm_rollout/locking.py`` ``try_acquire``).

The loser's first create answers 404 (no namespace), it creates the namespace, and its second
create answers 409 because the winner created the namespace and the Lease in between. That
409 is the lost compare-and-swap, as on the first create: the loser must learn who holds the
Lease, not fail the run. The fresh-clone CI run on 82a2a7e hit exactly this interleaving in
tests/reliability/test_deploy_trials.py (``ConflictError: POST Lease ... already exists``).
The interleaving is made deterministic by letting the winner act inside the loser's
namespace creation, the one window in which the race happens.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from llm_rollout import locking
from llm_rollout.kube.errors import ConflictError
from llm_rollout.kube.objects import get
from llm_rollout.locking import LeaseState, try_acquire
from sandbox.cluster.control_plane import Cluster
from tests.cluster.faults_support import product_client

SERVICE = "qwen"


@pytest.fixture
def absent_namespace(admin: k8s.ApiClient) -> Iterator[str]:
    """A namespace name nothing created yet; deleted afterwards if the test created it."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    core = k8s.CoreV1Api(admin)
    if any(ns.metadata.name == name for ns in core.list_namespace().items):
        core.delete_namespace(name)


def test_a_create_lost_after_creating_the_namespace_reports_the_holder(
    cluster: Cluster, absent_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = product_client(cluster.admin_kubeconfig)
    ensure_namespace = locking._ensure_namespace
    winner: list[tuple[bool, LeaseState, bool]] = []

    def namespace_then_winner(api_: k8s.ApiClient, namespace: str) -> None:
        ensure_namespace(api_, namespace)
        winner.append(try_acquire(api_, namespace, SERVICE, holder="run-b", owner="b"))

    monkeypatch.setattr(locking, "_ensure_namespace", namespace_then_winner)

    taken, state, reentrant = try_acquire(api, absent_namespace, SERVICE, holder="run-a", owner="a")

    assert [(w[0], w[1].holder) for w in winner] == [(True, "run-b")]
    assert (taken, reentrant) == (False, False)
    assert (state.holder, state.owner) == ("run-b", "b")


def test_a_replace_lost_to_another_take_of_a_free_lease_reports_the_holder(
    cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other compare-and-swap: a free Lease is taken by a replace guarded by the
    resourceVersion read. Run B takes it between A's read and A's replace; the API server
    answers A's replace 409 (optimistic concurrency on resourceVersion), and A learns B holds
    it instead of believing it took it."""
    api = product_client(cluster.admin_kubeconfig)
    assert try_acquire(api, namespace, SERVICE, holder="run-c", owner="c", duration_s=30)[0]
    assert locking.release(api, namespace, SERVICE, owner="c")  # free, the object kept
    lease_body = locking._lease_body
    winner: list[tuple[bool, LeaseState, bool]] = []
    calls: list[str] = []

    def body_then_winner(*args: Any, **kwargs: Any) -> dict[str, Any]:
        body = lease_body(*args, **kwargs)
        calls.append(str(args[2]))
        if len(calls) == 1:  # A's body, with the resourceVersion A read: B acts once
            winner.append(try_acquire(api, namespace, SERVICE, holder="run-b", owner="b"))
        return body

    monkeypatch.setattr(locking, "_lease_body", body_then_winner)

    taken, state, reentrant = try_acquire(api, namespace, SERVICE, holder="run-a", owner="a")

    assert calls == ["run-a", "run-b"]
    assert [(w[0], w[1].holder) for w in winner] == [(True, "run-b")]
    assert (taken, reentrant) == (False, False)
    assert (state.holder, state.owner) == ("run-b", "b")


def test_a_release_raced_by_a_renewal_reads_again_and_releases(
    cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder's own renewer moves renewTime (a new resourceVersion) between the release's
    read and its replace: the replace answers 409, and the release reads again and clears the
    holder rather than leaving the hold to expire."""
    api = product_client(cluster.admin_kubeconfig)
    assert try_acquire(api, namespace, SERVICE, holder="run-a", owner="a", duration_s=30)[0]
    write = locking._write
    puts: list[int] = []

    def renewal_then_put(api_: k8s.ApiClient, method: str, body: dict[str, Any]) -> Any:
        if method == "PUT" and body["spec"].get("holderIdentity") == "" and not puts:
            puts.append(1)
            locking.renew(api, namespace, SERVICE, owner="a")
        return write(api_, method, body)

    monkeypatch.setattr(locking, "_write", renewal_then_put)

    assert locking.release(api, namespace, SERVICE, owner="a") is True
    assert puts == [1]
    stored = get(api, locking.lease_ref(namespace, SERVICE))
    assert stored is not None and stored["spec"]["holderIdentity"] == ""


def test_a_release_that_loses_every_race_reports_it_did_not_release(
    cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal lands between every read and replace of the release: the API server answers
    all three replaces 409 (optimistic concurrency on resourceVersion), and the release gives
    up and says it did not release, so the caller (``service_lock``) neither believes the
    Lease free nor reports a loss; the hold stays the renewer's, and lapses at its expiry if
    nobody renews it."""
    api = product_client(cluster.admin_kubeconfig)
    assert try_acquire(api, namespace, SERVICE, holder="run-a", owner="a", duration_s=30)[0]
    write = locking._write
    conflicts: list[str] = []

    def renewal_then_put(api_: k8s.ApiClient, method: str, body: dict[str, Any]) -> Any:
        if method == "PUT" and body["spec"].get("holderIdentity") == "":
            renewed = locking.renew(api, namespace, SERVICE, owner="a")
            try:
                return write(api_, method, body)
            except ConflictError:
                conflicts.append(renewed.resource_version)
                raise
        return write(api_, method, body)

    monkeypatch.setattr(locking, "_write", renewal_then_put)

    assert locking.release(api, namespace, SERVICE, owner="a") is False
    assert len(conflicts) == 3  # three real 409s, one per attempt
    stored = get(api, locking.lease_ref(namespace, SERVICE))
    assert stored is not None
    state = LeaseState.of(stored)
    # Neither cleared nor anyone else's: the last renewal's hold, as it was written.
    assert (state.holder, state.owner) == ("run-a", "a")
    assert state.resource_version == conflicts[-1]
