from __future__ import annotations

from llm_rollout.errors import (
    PermanentError,
    PreflightError,
    SpecError,
    TransientError,
    is_transient,
)


def test_transient_and_permanent_are_classified() -> None:
    assert is_transient(TransientError("throttled", retry_after_s=2))
    assert not is_transient(PermanentError("no such bucket"))
    assert not is_transient(ValueError("plain"))


def test_classification_follows_the_cause_chain() -> None:
    try:
        try:
            raise TransientError("connection reset")
        except TransientError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


def test_permanent_wins_over_transient_cause() -> None:
    outer = PermanentError("gave up")
    outer.__cause__ = TransientError("reset")
    assert not is_transient(outer)


def test_spec_error_names_the_field() -> None:
    err = SpecError("serving.tp", "must be at least 1")
    assert str(err) == "serving.tp: must be at least 1"
    assert err.field == "serving.tp"


def test_preflight_error_lists_every_problem() -> None:
    err = PreflightError(["CRD leaderworkersets.leaderworkerset.x-k8s.io missing", "2 GPUs short"])
    assert "- CRD leaderworkersets" in str(err)
    assert "- 2 GPUs short" in str(err)
    assert len(err.problems) == 2
