"""How a held rollout Lease is judged lost, without a cluster: what the Lease as read says
(`_not_ours`), the first loss recorded (`ServiceLock.mark_lost`) and the error naming it
(`lost_error`). Survivors of the locking mutation run (bench/mutation.py, "locking"); the
same steps on the real API server are in tests/cluster/test_lease.py.

Lease fields as in k8s.io/api coordination/v1 types.go (holderIdentity); the owner is our
annotation, compared by value (it comes back from JSON, never the caller's own object)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llm_rollout.locking import ServiceLock, _not_ours
from llm_rollout.vocabulary import OWNER_ANNOTATION


def _lease(holder: str, owner: str) -> dict[str, object]:
    return {
        "metadata": {"resourceVersion": "3", "annotations": {OWNER_ANNOTATION: owner}},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 60},
    }


def _owner(name: str) -> str:
    # Equal to the annotation's value but another object, as a decoded JSON string is.
    return "".join(list(name))


@pytest.mark.parametrize(
    ("current", "owner", "why"),
    [
        (None, "a", "the Lease was deleted"),
        (_lease("", "a"), "a", "the Lease was released by someone else"),
        # Another owner, whichever way the two names sort.
        (_lease("run-b", "b"), "a", "another run holds it now"),
        (_lease("run-a", "a"), "b", "another run holds it now"),
        (_lease("run-a", "run-owner-a"), _owner("run-owner-a"), ""),
    ],
)
def test_a_lease_is_ours_only_while_it_is_held_under_our_owner(
    current: dict[str, object] | None, owner: str, why: str
) -> None:
    assert _not_ours(current, owner) == why


def _lock() -> ServiceLock:
    return ServiceLock("llm", "qwen", "run-a", "a", False, datetime(2026, 12, 7, tzinfo=UTC))


def test_the_first_loss_is_kept_and_wakes_waiters() -> None:
    lock = _lock()
    assert not lock.lost and not lock.lost_event.is_set()
    lock.mark_lost("run-b", "another run holds it now")
    assert lock.lost and lock.lost_event.is_set()
    assert (lock.lost_to, lock.lost_why) == ("run-b", "another run holds it now")
    # A later finding (the exit's release, a renewal) does not rewrite what was seen first.
    lock.mark_lost("", "the Lease was deleted")
    assert (lock.lost_to, lock.lost_why) == ("run-b", "another run holds it now")


@pytest.mark.parametrize(
    ("holder", "now"),
    [
        ("run-b", "it is held by 'run-b' now"),
        ("", "another run may take it over once it expires"),
    ],
)
def test_the_loss_error_names_the_lease_why_and_who_holds_it(holder: str, now: str) -> None:
    lock = _lock()
    lock.mark_lost(holder, "no renewal succeeded for 41s")
    assert str(lock.lost_error()) == (
        "the rollout lease of Service llm/qwen (Lease llm/llm-rollout-qwen) was lost while this "
        f"run held it: no renewal succeeded for 41s; {now}. The run stops here and writes "
        "nothing more; the service may be changed by another run meanwhile"
    )
