"""A successful blue-green rollout under traffic (`bench/reliability.py`, one trial): requests
through the stable Service never fail, answers switch from release A to B exactly once, and A
is gone at the end. Its own module (so its own sandbox): two releases of 4 GPUs side by side
must fit next to the services the other deploy trials leave running."""

from __future__ import annotations

import random

import pytest

from bench.reliability import BAKE_S, InputWorld, trial_blue_green

# A deploy on the shared 2-core machine: the whole flow with a real pod (see the figures in
# bench/reliability.py's table); the session cluster's start is outside (func_only).
pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.timeout(240, func_only=True)]


def test_blue_green_promotion_under_traffic_never_fails(world: InputWorld) -> None:
    result = trial_blue_green(world, random.Random("blue-green"), "t-bg")
    assert result.survived, result.detail
    assert result.fired > 0  # requests went through the Service during the rollout
    assert "0 failed" in result.detail and "A/B " in result.detail
    assert result.seconds >= BAKE_S  # the run baked before removing A
    assert result.leaks == 0
