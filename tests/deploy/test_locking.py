"""The rollout Lease's decisions without a cluster: what a Lease says (holder, owner, expiry)
and the body written to take it. The compare-and-swap steps (take, re-enter, refuse while held,
take over once expired, renew, release) run on the real API server in tests/cluster/test_lease.py.

Lease fields as in k8s.io/api coordination/v1 types.go (holderIdentity, leaseDurationSeconds,
acquireTime/renewTime as MicroTime, leaseTransitions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llm_rollout.locking import (
    LEASE_API_VERSION,
    LeaseState,
    _lease_body,
    _parse_micro,
    lease_name,
    lease_ref,
)
from llm_rollout.vocabulary import OWNER_ANNOTATION

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
