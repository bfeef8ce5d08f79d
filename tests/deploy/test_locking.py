"""The rollout Lease's decisions: what a Lease says (holder, owner, expiry), the body written to
take it, and the compare-and-swap steps (take, re-enter, refuse while held, take over once
expired, renew, release) against the sandbox API server with the real client.

Lease fields as in k8s.io/api coordination/v1 types.go (holderIdentity, leaseDurationSeconds,
acquireTime/renewTime as MicroTime, leaseTransitions)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.objects import apply, get
from llm_rollout.locking import (
    LEASE_API_VERSION,
    OWNER_ANNOTATION,
    LeaseLostError,
    LeaseState,
    _lease_body,
    _parse_micro,
    lease_name,
    lease_ref,
    release,
    renew,
    try_acquire,
)
from sandbox.kube.cluster import ClusterConfig, SandboxCluster

T0 = datetime(2026, 12, 6, 18, 0, 0, 250000, tzinfo=UTC)


def _lease(
    holder: str = "run-A", owner: str = "A", renewed: str | None = "2026-12-06T18:00:00.250000Z"
) -> dict[str, object]:
    spec: dict[str, object] = {
        "holderIdentity": holder,
        "leaseDurationSeconds": 60,
        "acquireTime": "2026-12-06T17:59:00Z",
        "leaseTransitions": 4,
    }
    if renewed is not None:
        spec["renewTime"] = renewed
    return {
        "metadata": {"resourceVersion": "17", "annotations": {OWNER_ANNOTATION: owner}},
        "spec": spec,
    }


# --- plain ------------------------------------------------------------------------------------


def test_lease_is_named_after_the_service() -> None:
    assert lease_name("qwen") == "llm-rollout-qwen"
    ref = lease_ref("llm", "qwen")
    assert (ref.api_version, ref.kind, ref.namespace, ref.name) == (
        "coordination.k8s.io/v1",
        "Lease",
        "llm",
        "llm-rollout-qwen",
    )


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("2026-12-06T18:00:00.250000Z", T0),
        ("2026-12-06T18:00:00Z", T0.replace(microsecond=0)),
        ("", None),
        (None, None),
        ("yesterday", None),
    ],
)
def test_micro_time_parses_both_server_formats(value: str | None, parsed: datetime | None) -> None:
    assert _parse_micro(value) == parsed


def test_lease_state_reads_holder_owner_times_and_version() -> None:
    state = LeaseState.of(_lease())
    assert state == LeaseState(
        holder="run-A",
        owner="A",
        acquired_at=datetime(2026, 12, 6, 17, 59, tzinfo=UTC),
        renewed_at=T0,
        duration_s=60,
        resource_version="17",
    )
    assert LeaseState.of({}) == LeaseState("", "", None, None, 0, "")


def test_a_hold_expires_duration_after_its_last_renewal() -> None:
    state = LeaseState.of(_lease())
    assert state.expires_in_s(T0 + timedelta(seconds=15)) == 45.0
    assert state.expires_in_s(T0 + timedelta(seconds=75)) == -15.0
    assert LeaseState.of(_lease(holder="")).expires_in_s(T0) == 0.0
    assert LeaseState.of(_lease(renewed=None)).expires_in_s(T0) == 0.0


def test_describe_names_holder_since_and_time_left() -> None:
    state = LeaseState.of(_lease())
    assert state.describe(T0 + timedelta(seconds=15)) == (
        "held by 'run-A' since 2026-12-06T17:59:00+00:00, expires in 45s unless renewed"
    )
    assert LeaseState.of(_lease(renewed=None)).describe(T0).endswith("expires in 0s unless renewed")
    no_time = LeaseState("run-B", "B", None, T0, 60, "1")
    assert no_time.describe(T0 + timedelta(seconds=100)) == (
        "held by 'run-B' since unknown time, expires in 0s unless renewed"
    )


def test_lease_body_first_take_and_takeover() -> None:
    first = _lease_body("llm", "qwen", "run-A", "A", 30, previous=None)
    assert first["apiVersion"] == LEASE_API_VERSION and first["kind"] == "Lease"
    assert first["metadata"] == {
        "name": "llm-rollout-qwen",
        "namespace": "llm",
        "labels": {
            "app.kubernetes.io/managed-by": "llm-rollout",
            "app.kubernetes.io/part-of": "qwen",
        },
        "annotations": {OWNER_ANNOTATION: "A"},
    }
    spec = first["spec"]
    assert spec["holderIdentity"] == "run-A"
    assert spec["leaseDurationSeconds"] == 30
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"]
    stamped = _parse_micro(spec["renewTime"])
    assert stamped is not None and abs((datetime.now(UTC) - stamped).total_seconds()) < 60
    takeover = _lease_body("llm", "qwen", "run-B", "B", 30, previous=_lease())
    assert takeover["spec"]["leaseTransitions"] == 5
    assert takeover["metadata"]["resourceVersion"] == "17"
    assert takeover["metadata"]["annotations"] == {OWNER_ANNOTATION: "B"}
    fresh = _lease_body("llm", "qwen", "run-B", "B", 30, previous={"metadata": {}})
    assert fresh["spec"]["leaseTransitions"] == 1


# --- against the API server -------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[k8s_client.ApiClient]:
    with SandboxCluster(ClusterConfig(), tmp_path / "kube") as cluster:
        yield load_api_client(cluster.kubeconfig)


def _stored(api: k8s_client.ApiClient) -> dict[str, object]:
    lease = get(api, lease_ref("locks", "svc"))
    assert lease is not None
    return lease


def _age_renewal(api: k8s_client.ApiClient, seconds: float) -> None:
    """Move the stored renewTime back, as if the holder had stopped renewing that long ago."""
    then = (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease = {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": {"name": lease_name("svc"), "namespace": "locks"},
        "spec": {"renewTime": then},
    }
    apply(api, lease, field_manager="test-clock", force=True)


def test_take_reenter_refuse_and_take_over_after_expiry(api: k8s_client.ApiClient) -> None:
    # The namespace does not exist yet: the first take creates it.
    taken, state, reentrant = try_acquire(
        api, "locks", "svc", holder="run-A", owner="A", duration_s=30
    )
    assert (taken, reentrant, state.holder, state.owner) == (True, False, "run-A", "A")
    assert get(api, lease_ref("locks", "svc")) is not None
    version = state.resource_version
    # The same owner re-enters without writing.
    taken, state, reentrant = try_acquire(api, "locks", "svc", holder="run-A2", owner="A")
    assert (taken, reentrant, state.holder) == (True, True, "run-A")
    assert _stored(api)["metadata"]["resourceVersion"] == version  # type: ignore[index]
    # Another owner is refused while the hold lasts, and told who holds it.
    taken, state, reentrant = try_acquire(api, "locks", "svc", holder="run-B", owner="B")
    assert (taken, reentrant, state.holder) == (False, False, "run-A")
    assert _stored(api)["spec"]["holderIdentity"] == "run-A"  # type: ignore[index]
    # Once the hold lapsed, the other owner takes it over (one more transition).
    _age_renewal(api, 31)
    taken, state, reentrant = try_acquire(
        api, "locks", "svc", holder="run-B", owner="B", duration_s=30
    )
    assert (taken, reentrant, state.holder, state.owner) == (True, False, "run-B", "B")
    assert _stored(api)["spec"]["leaseTransitions"] == 1  # type: ignore[index]


def test_a_hold_still_inside_its_duration_is_not_taken_over(api: k8s_client.ApiClient) -> None:
    assert try_acquire(api, "locks", "svc", holder="run-A", owner="A", duration_s=30)[0]
    _age_renewal(api, 20)
    taken, state, _ = try_acquire(api, "locks", "svc", holder="run-B", owner="B")
    assert not taken and state.holder == "run-A"


def test_renew_moves_renew_time_and_fails_once_taken_over(api: k8s_client.ApiClient) -> None:
    assert try_acquire(api, "locks", "svc", holder="run-A", owner="A", duration_s=30)[0]
    _age_renewal(api, 20)
    aged = LeaseState.of(_stored(api))
    renewed = renew(api, "locks", "svc", owner="A")
    assert aged.renewed_at is not None and renewed.renewed_at is not None
    assert renewed.renewed_at > aged.renewed_at + timedelta(seconds=10)
    assert renewed.holder == "run-A"
    with pytest.raises(LeaseLostError, match="no longer ours \\(run-A\\)"):
        renew(api, "locks", "svc", owner="B")
    _age_renewal(api, 31)
    assert try_acquire(api, "locks", "svc", holder="run-B", owner="B")[0]
    with pytest.raises(LeaseLostError, match="no longer ours \\(run-B\\)"):
        renew(api, "locks", "svc", owner="A")


def test_renew_of_a_missing_or_released_lease_fails(api: k8s_client.ApiClient) -> None:
    with pytest.raises(LeaseLostError, match="no longer ours \\(free\\)"):
        renew(api, "locks", "svc", owner="A")
    assert try_acquire(api, "locks", "svc", holder="run-A", owner="A")[0]
    assert release(api, "locks", "svc", owner="A")
    with pytest.raises(LeaseLostError, match="no longer ours \\(free\\)"):
        renew(api, "locks", "svc", owner="A")


def test_release_clears_only_our_own_hold(api: k8s_client.ApiClient) -> None:
    assert not release(api, "locks", "svc", owner="A")  # no Lease yet
    assert try_acquire(api, "locks", "svc", holder="run-A", owner="A")[0]
    assert not release(api, "locks", "svc", owner="B")
    assert _stored(api)["spec"]["holderIdentity"] == "run-A"  # type: ignore[index]
    assert release(api, "locks", "svc", owner="A")
    assert not _stored(api)["spec"].get("holderIdentity")  # type: ignore[attr-defined]
    assert not release(api, "locks", "svc", owner="A")  # already free
    # A released Lease is free for anyone at once, and taking it is one more transition.
    taken, state, _ = try_acquire(api, "locks", "svc", holder="run-B", owner="B")
    assert taken and state.holder == "run-B"
    assert _stored(api)["spec"]["leaseTransitions"] == 1  # type: ignore[index]
