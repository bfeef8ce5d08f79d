"""The rollout Lease (``llm_rollout/locking.py``) on the real API server: renewal keeps a hold
past its duration, a holder that stops renewing is taken over after expiry, and the first
holder then learns it lost the lock and its work stops at its next check (issue 19, "renewal
and loss of the rollout Lease").

Durations are shortened through the product's own ``duration_s`` parameter. The real
coordination.k8s.io/v1 Lease validation (pkg/apis/coordination/validation/validation.go)
requires leaseDurationSeconds > 0, so 2-3 s holds are legal objects. Nothing here compares
wall-clock durations: expiry and renewal are judged from the timestamps the Lease records.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kubernetes import client as k8s

from llm_rollout.kube.objects import get
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.watching import Selector, watching
from llm_rollout.locking import (
    LeaseLostError,
    LeaseState,
    acquire,
    check_lease,
    lease_name,
    lease_ref,
    release,
    renew,
    service_lock,
    try_acquire,
)
from llm_rollout.vocabulary import OWNER_ANNOTATION
from sandbox.cluster.api_proxy import ApiFaultProxy, FaultRule
from sandbox.cluster.control_plane import Cluster
from tests.cluster.faults_support import admin_via, faults, product_client, proxy, seen

__all__ = ["faults", "proxy"]

SERVICE = "qwen"
# Generous against a loaded 2-core machine; each wait ends as soon as its event arrives.
WAIT_S = 45.0


def _lease(api: k8s.ApiClient, namespace: str) -> LeaseState:
    obj = get(api, lease_ref(namespace, SERVICE))
    assert obj is not None
    return LeaseState.of(obj)


def _wait_lease(api: k8s.ApiClient, namespace: str, what: str, done: object) -> LeaseState:
    """Watch the Lease until ``done(state)`` holds (bounded)."""
    assert callable(done)
    spec = Selector("coordination.k8s.io/v1", "Lease", namespace, name=lease_name(SERVICE))
    deadline = time.monotonic() + WAIT_S
    with watching(api, [spec]) as group:
        while True:
            obj = group.cache[spec].get(lease_name(SERVICE))
            if obj is not None and done(LeaseState.of(obj)):
                return LeaseState.of(obj)
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what}: not seen within {WAIT_S:.0f} s; last {obj}"
            group.next(remaining)


def test_renewal_keeps_the_hold_past_its_duration(cluster: Cluster, namespace: str) -> None:
    api = product_client(cluster.admin_kubeconfig)
    duration_s = 3
    with service_lock(
        api, namespace, SERVICE, holder="run-a", owner="a", wait_s=0, duration_s=duration_s
    ) as lock:
        first = _lease(api, namespace)
        assert (first.holder, first.owner, first.duration_s) == ("run-a", "a", duration_s)
        # Renewed until its recorded renewTime is more than one duration after it was taken.
        renewed = _wait_lease(
            api,
            namespace,
            "a renewal more than one duration after the acquisition",
            lambda s: (
                s.renewed_at is not None
                and s.acquired_at is not None
                and (s.renewed_at - s.acquired_at).total_seconds() > duration_s
            ),
        )
        assert renewed.holder == "run-a" and renewed.acquired_at == first.acquired_at
        # Still held: another run is refused, with the holder named.
        taken, state, _ = try_acquire(
            api, namespace, SERVICE, holder="run-b", owner="b", duration_s=duration_s
        )
        assert not taken and state.holder == "run-a"
        assert not lock.lost
    after = _lease(api, namespace)
    assert after.holder == "" and after.owner == "a"  # released, the object kept
    api.close()  # type: ignore[no-untyped-call]


def test_a_holder_that_stops_renewing_is_taken_over_and_learns_it_lost(
    cluster: Cluster, namespace: str
) -> None:
    api = product_client(cluster.admin_kubeconfig)
    # `acquire` alone takes the hold without a renewer: a run that stopped (crashed, paused).
    state_a, _ = acquire(api, namespace, SERVICE, holder="run-a", owner="a", wait_s=0, duration_s=2)
    # Run B waits (watching the Lease, retrying at its expiry) and takes it over.
    state_b, reentrant = acquire(
        api, namespace, SERVICE, holder="run-b", owner="b", wait_s=WAIT_S, duration_s=2
    )
    assert not reentrant and state_b.holder == "run-b" and state_b.owner == "b"
    lease = _lease(api, namespace)
    assert lease.holder == "run-b"
    # The takeover happened only once A's hold had lapsed by the Lease's own record.
    assert state_a.renewed_at is not None and lease.acquired_at is not None
    assert (lease.acquired_at - state_a.renewed_at).total_seconds() >= state_a.duration_s
    obj = k8s.CoordinationV1Api(api).read_namespaced_lease(lease_name(SERVICE), namespace)
    assert obj.spec.lease_transitions == 1

    with pytest.raises(LeaseLostError, match="no longer ours"):
        renew(api, namespace, SERVICE, owner="a")
    assert release(api, namespace, SERVICE, owner="a") is False
    assert _lease(api, namespace).holder == "run-b"  # A's release left B's hold alone
    assert release(api, namespace, SERVICE, owner="b") is True
    api.close()  # type: ignore[no-untyped-call]


def test_a_lock_whose_renewals_fail_is_lost_before_it_expires_and_stops_its_work(
    cluster: Cluster, faults: ApiFaultProxy, namespace: str
) -> None:
    """Run A's renewals are refused (500 on its Lease writes, through the fault proxy).

    As client-go's leader election does (tools/leaderelection/leaderelection.go ``renew``:
    ``RenewDeadline`` < ``LeaseDuration``), A gives the hold up once no renewal succeeded for
    its renew deadline (2/3 of the duration), while the Lease still names A, so it stops
    before B may take over at expiry. From then on ``check_lease`` (run before each API stage
    of a flow) raises ``LeaseLostError`` naming the Lease, and the block ends in it.
    """
    a_api = admin_via(cluster, faults)
    b_api = product_client(cluster.admin_kubeconfig)
    lease_path = rf"/namespaces/{namespace}/leases/{lease_name(SERVICE)}$"
    faults.plan.add(FaultRule("error", lease_path, method="PUT", status=500, times=None))
    ref = lease_ref(namespace, SERVICE)
    with (
        pytest.raises(LeaseLostError, match="no renewal succeeded") as ended,
        service_lock(
            a_api, namespace, SERVICE, holder="run-a", owner="a", wait_s=0, duration_s=3
        ) as lock,
    ):
        check_lease()  # held: the stage may run
        assert lock.lost_event.wait(WAIT_S), "run A never noticed its renewals failing"
        # A gave up while its hold was still on record (B could not take it yet).
        still = _lease(b_api, namespace)
        assert still.holder == "run-a"
        with pytest.raises(LeaseLostError) as stopped:
            check_lease()
        message = str(stopped.value)
        assert f"Lease {ref.namespace}/{ref.name}" in message
        assert "another run may take it over once it expires" in message
        # B takes over once A's hold expired by the Lease's record.
        state_b, _ = acquire(
            b_api, namespace, SERVICE, holder="run-b", owner="b", wait_s=WAIT_S, duration_s=30
        )
        assert state_b.holder == "run-b"
    assert "writes nothing more" in str(ended.value)
    puts = seen(faults, path_suffix=f"/leases/{lease_name(SERVICE)}", method="PUT")
    assert puts and {r.status for r in puts} == {500}  # every renewal of A was refused
    lease = _lease(b_api, namespace)
    assert lease.holder == "run-b"  # A's exit did not release B's hold
    a_api.close()  # type: ignore[no-untyped-call]
    b_api.close()  # type: ignore[no-untyped-call]


def test_a_takeover_stops_the_holder_at_its_next_check(cluster: Cluster, namespace: str) -> None:
    """Another run replaces the holder (as a second run does once the hold lapsed): the next
    ``check_lease`` of the first holder raises, naming the Lease and the new holder, without
    waiting for a renewal; leaving the block does not release the new holder's hold."""
    a_api = product_client(cluster.admin_kubeconfig)
    b_api = product_client(cluster.admin_kubeconfig)
    ref = lease_ref(namespace, SERVICE)
    with (
        pytest.raises(LeaseLostError, match="run-b"),
        service_lock(
            a_api, namespace, SERVICE, holder="run-a", owner="a", wait_s=0, duration_s=60
        ) as lock,
    ):
        check_lease()
        current = get(b_api, ref)
        assert current is not None
        current["metadata"]["annotations"] = {OWNER_ANNOTATION: "b"}
        current["spec"] = {**current["spec"], "holderIdentity": "run-b"}
        k8s.CustomObjectsApi(b_api).replace_namespaced_custom_object(
            "coordination.k8s.io", "v1", namespace, "leases", ref.name, current
        )
        with pytest.raises(LeaseLostError) as stopped:
            check_lease()
        assert lock.lost and lock.lost_to == "run-b"
        message = str(stopped.value)
        assert f"Lease {namespace}/{ref.name}" in message and "held by 'run-b'" in message
    assert _lease(b_api, namespace).holder == "run-b"
    check_lease()  # outside a hold: nothing to check
    a_api.close()  # type: ignore[no-untyped-call]
    b_api.close()  # type: ignore[no-untyped-call]


def test_a_failed_lease_read_before_a_stage_is_no_loss(
    cluster: Cluster, faults: ApiFaultProxy, namespace: str
) -> None:
    """``check_lease`` reads the Lease before a stage; a read the API server fails (500 on
    every GET of it, through the fault proxy) is no evidence that the hold was lost: the stage
    runs and the renewer's deadline decides, as client-go's ``renew`` loop does."""
    a_api = admin_via(cluster, faults)
    lease_path = rf"/namespaces/{namespace}/leases/{lease_name(SERVICE)}$"
    with service_lock(
        a_api, namespace, SERVICE, holder="run-a", owner="a", wait_s=0, duration_s=60
    ) as lock:
        rule = FaultRule("error", lease_path, method="GET", watch=False, status=500, times=None)
        faults.plan.add(rule)
        check_lease()
        assert rule.hits >= 1  # the read was made and failed
        assert not lock.lost
        faults.plan.clear()
    assert _lease(a_api, namespace).holder == ""  # released on exit as usual
    a_api.close()  # type: ignore[no-untyped-call]


def test_the_first_take_creates_the_namespace_and_the_owner_reenters_without_writing(
    cluster: Cluster, admin: k8s.ApiClient
) -> None:
    """A first deploy may take its lock before anything created the namespace: the real
    server answers the Lease POST with 404 and the product creates the namespace first."""
    api = product_client(cluster.admin_kubeconfig)
    fresh = f"lease-first-take-{uuid.uuid4().hex[:8]}"
    namespace_ref = ObjectRef("v1", "Namespace", None, fresh)
    assert get(admin, namespace_ref) is None
    try:
        taken, state, reentrant = try_acquire(
            api, fresh, SERVICE, holder="run-a", owner="a", duration_s=30
        )
        assert (taken, reentrant, state.holder, state.owner) == (True, False, "run-a", "a")
        created = get(admin, namespace_ref)
        assert created is not None
        assert created["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "llm-rollout"
        # The same owner (another task of the same run) re-enters: nothing is written.
        taken, again, reentrant = try_acquire(api, fresh, SERVICE, holder="run-a2", owner="a")
        assert (taken, reentrant, again.holder) == (True, True, "run-a")
        assert _lease(api, fresh).resource_version == state.resource_version
    finally:
        k8s.CoreV1Api(admin).delete_namespace(fresh)
        api.close()  # type: ignore[no-untyped-call]


def test_renew_and_release_act_only_on_our_own_hold(cluster: Cluster, namespace: str) -> None:
    api = product_client(cluster.admin_kubeconfig)
    with pytest.raises(LeaseLostError, match="no longer ours \\(free\\)"):
        renew(api, namespace, SERVICE, owner="a")  # no Lease at all
    assert release(api, namespace, SERVICE, owner="a") is False
    assert try_acquire(api, namespace, SERVICE, holder="run-a", owner="a", duration_s=30)[0]
    # Another owner can neither renew nor release A's live hold, and is told who holds it.
    with pytest.raises(LeaseLostError, match="no longer ours \\(run-a\\)"):
        renew(api, namespace, SERVICE, owner="b")
    assert release(api, namespace, SERVICE, owner="b") is False
    held = _lease(api, namespace)
    assert held.holder == "run-a"
    assert release(api, namespace, SERVICE, owner="a") is True
    # Only the holder is cleared: the rest of the spec (when it was taken, renewed, for how
    # long) stays as the hold left it.
    released = _lease(api, namespace)
    assert released.holder == ""
    assert (released.acquired_at, released.renewed_at, released.duration_s) == (
        held.acquired_at,
        held.renewed_at,
        held.duration_s,
    )
    assert release(api, namespace, SERVICE, owner="a") is False  # already free
    with pytest.raises(LeaseLostError, match="no longer ours \\(free\\)"):
        renew(api, namespace, SERVICE, owner="a")  # released: the object stays, unheld
    # A released Lease is free at once (no expiry to wait for); the take is one transition.
    taken, state, reentrant = try_acquire(api, namespace, SERVICE, holder="run-b", owner="b")
    assert (taken, reentrant, state.holder) == (True, False, "run-b")
    stored = get(api, lease_ref(namespace, SERVICE))
    assert stored is not None and stored["spec"]["leaseTransitions"] == 1
    api.close()  # type: ignore[no-untyped-call]


def test_a_live_hold_is_refused_to_every_other_owner_whichever_way_it_sorts(
    cluster: Cluster, namespace: str
) -> None:
    """Owners are flow run ids (UUIDs), so another run's owner may sort before or after the
    holder's: only the holder's own owner re-enters, and every other one is refused without a
    write, with the holder named."""
    api = product_client(cluster.admin_kubeconfig)
    holder_owner = "5d0c9f2e-0000-4000-8000-000000000000"
    assert try_acquire(api, namespace, SERVICE, holder="run-m", owner=holder_owner, duration_s=30)[
        0
    ]
    held = _lease(api, namespace)
    before, after = "0" + holder_owner[1:], "f" + holder_owner[1:]
    assert before < holder_owner < after
    for asker in (before, after):
        taken, state, reentrant = try_acquire(
            api, namespace, SERVICE, holder=f"run-{asker[0]}", owner=asker, duration_s=30
        )
        assert (taken, reentrant, state.holder, state.owner) == (
            False,
            False,
            "run-m",
            holder_owner,
        ), asker
    assert _lease(api, namespace).resource_version == held.resource_version
    api.close()  # type: ignore[no-untyped-call]
