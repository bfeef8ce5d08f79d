"""What a rollout leaves behind: annotations on the cluster objects, the run summary (its
markdown is built in `llm_rollout.artifacts`), and the payload of the Prefect event announcing
the outcome.

The cluster annotations are the source of truth for `status` and `rollback` (which release
serves, which served before, which revision and spec hash), so a later command on another
machine reads the same facts without any local state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from llm_rollout.smoke import SmokeReport, SmokeVerdict
from llm_rollout.vocabulary import (
    ANN_DEPLOYED_AT,
    ANN_MODEL,
    ANN_PREVIOUS_RELEASE,
    ANN_RELEASE,
    ANN_REVISION,
    ANN_SPEC_HASH,
    ANN_STRATEGY,
)

EVENT_READY = "llm-rollout.service.ready"
EVENT_FAILED = "llm-rollout.service.failed"

Outcome = Literal["promoted", "rolled-back", "failed"]


def deployment_annotations(
    *,
    release: str,
    previous_release: str | None,
    model: str,
    revision: str,
    spec_hash: str,
    strategy: str,
    deployed_at_iso: str,
) -> dict[str, str]:
    """Annotations written on the stable Service (and the workload) when a release is promoted."""
    annotations = {
        ANN_RELEASE: release,
        ANN_MODEL: model,
        ANN_REVISION: revision,
        ANN_SPEC_HASH: spec_hash,
        ANN_STRATEGY: strategy,
        ANN_DEPLOYED_AT: deployed_at_iso,
    }
    # Only the promoted release's predecessor matters to `rollback`; an empty value would look
    # like a release named "".
    if previous_release:
        annotations[ANN_PREVIOUS_RELEASE] = previous_release
    return annotations


def service_resource_id(namespace: str, name: str) -> str:
    """The Prefect event resource id of a model service."""
    return f"llm-rollout.service.{namespace}.{name}"


@dataclass(frozen=True)
class StageTiming:
    stage: str
    duration_s: float
    outcome: str  # "ok", "skipped", "failed" with a short reason
    detail: str = ""


@dataclass(frozen=True)
class SmokeSummary:
    """The smoke test as the summary shows it (no request/response bodies beyond the answer)."""

    passed: bool
    answer: str
    ttft_s: float | None
    latency_s: float | None
    checks: Sequence[tuple[str, bool, str]] = ()  # (expectation, passed, observed)


@dataclass(frozen=True)
class RunSummary:
    kind: str  # the workload kind
    service: str
    namespace: str
    model: str
    revision: str
    engine: str
    shape: str
    requested_strategy: str
    strategy: str | None
    release: str | None
    previous_release: str | None
    spec_hash: str
    outcome: Outcome
    message: str
    objects_applied: Sequence[str] = ()
    timings: Sequence[StageTiming] = ()
    smoke: SmokeSummary | None = None
    warnings: Sequence[str] = ()
    extra: Mapping[str, str] = field(default_factory=dict)


def event_payload(summary: RunSummary) -> dict[str, str]:
    """The event payload: identifiers and outcome only, never spec contents or credentials."""
    payload = {
        "outcome": summary.outcome,
        "model": summary.model,
        "revision": summary.revision,
        "engine": summary.engine,
        "shape": summary.shape,
        "strategy": summary.strategy or "",
        "release": summary.release or "",
        "spec_hash": summary.spec_hash,
        "message": summary.message[:500],
    }
    if summary.smoke is not None and summary.smoke.ttft_s is not None:
        payload["ttft_s"] = f"{summary.smoke.ttft_s:.3f}"
    return payload


def smoke_summary(report: SmokeReport, verdict: SmokeVerdict) -> SmokeSummary:
    """The smoke test as the summary and the CLI show it: answer, TTFT, each expectation."""
    stream = report.call("stream")
    chat = report.call("chat")
    ttft_ms = stream.ttft_ms if stream is not None else None
    latency_ms = chat.latency_ms if chat is not None else None
    checks = [(failure, False, "failed") for failure in verdict.failures]
    failed_text = " ".join(verdict.failures)
    checks += [(check, True, "ok") for check in verdict.checked if check not in failed_text]
    return SmokeSummary(
        passed=verdict.passed,
        answer=report.answer,
        ttft_s=ttft_ms / 1000 if ttft_ms is not None else None,
        latency_s=latency_ms / 1000 if latency_ms is not None else None,
        checks=checks,
    )
