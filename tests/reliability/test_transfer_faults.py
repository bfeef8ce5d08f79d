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
    row, results = run_transfer_class(lab, spec, TRIALS, seed=1)

    assert row.survived == TRIALS, row.failures
    limit = MAX_PARTS_PER_FAULT.get(spec.name, 1) * PART
    for result in results:
        assert result.oss_resent >= 0, result
        assert result.oss_resent <= max(1, result.faults) * limit, result
    if spec.name == "transfer: kill -9 of sync":
        assert row.leaks == 0  # the keys were in its environment, never in its output
        # A kill that landed after completion counts zero; at least as many landed as trials.
        assert sum(r.faults for r in results) >= TRIALS
    else:
        # Each trial's scripted fault fired (a trial whose fault never fired proves nothing).
        assert all(r.faults >= 1 for r in results), results
