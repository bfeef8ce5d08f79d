"""The rollout Lease's takeover count, which the mutation run (bench/mutation.py, "locking")
found checked only from an even count: each takeover adds one to `leaseTransitions`
(k8s.io/api coordination/v1 types.go: "The number of transitions of a lease between
holders"), whatever the count was. No cluster."""

from __future__ import annotations

import pytest

from llm_rollout.locking import _lease_body


@pytest.mark.parametrize(("before", "after"), [(1, 2), (5, 6), (6, 7)])
def test_each_takeover_counts_one_more_transition(before: int, after: int) -> None:
    previous = {
        "metadata": {"resourceVersion": "9"},
        "spec": {"holderIdentity": "run-A", "leaseTransitions": before},
    }
    body = _lease_body("llm", "qwen", "run-B", "B", 30, previous=previous)
    assert body["spec"]["leaseTransitions"] == after
