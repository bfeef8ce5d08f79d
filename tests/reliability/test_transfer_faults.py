"""Transfer faults: each class survives seeded trials with at most the expected bytes re-sent."""

from __future__ import annotations

import pytest

from bench.reliability import (
    PART,
    TRANSFER_CLASSES,
    TransferLab,
    TransferRowSpec,
    run_transfer_class,
)

TRIALS = 2
# kill -9 loses the parts in flight: at most the part window (--max-parallel-parts 3).
MAX_PARTS_PER_FAULT = {"transfer: kill -9 of sync": 3}


@pytest.mark.parametrize("spec", TRANSFER_CLASSES, ids=lambda s: s.name.split(": ")[1])
def test_transfer_fault_class_survives(lab: TransferLab, spec: TransferRowSpec) -> None:
    _, results = run_transfer_class(lab, spec, TRIALS, seed=1)

    # Each trial itself (the mirror verified complete), not the table row counting them.
    assert len(results) == TRIALS
    assert [r.detail for r in results if not r.survived] == []
    limit = MAX_PARTS_PER_FAULT.get(spec.name, 1) * PART
    for result in results:
        # OSS read at least the model's bytes (less would mean a file never arrived).
        assert result.oss_resent >= 0, result
        assert result.oss_resent <= max(1, result.faults) * limit, result
    if spec.name == "transfer: kill -9 of sync":
        assert [r.leaks for r in results] == [0] * TRIALS  # keys never in its output
        # A kill that landed after completion counts zero; at least as many landed as trials.
        assert sum(r.faults for r in results) >= TRIALS
    else:
        # Each trial's scripted fault fired (a trial whose fault never fired proves nothing).
        assert all(r.faults >= 1 for r in results), results
