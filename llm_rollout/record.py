"""What a rollout leaves behind: annotations on the cluster objects, a markdown run summary, and
the payload of the Prefect event announcing the outcome.

The cluster annotations are the source of truth for `status` and `rollback` (which release
serves, which served before, which revision and spec hash), so a later command on another
machine reads the same facts without any local state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from llm_rollout.smoke import SmokeReport, SmokeVerdict

ANNOTATION_PREFIX = "llm-rollout.io/"
ANN_RELEASE = ANNOTATION_PREFIX + "release"
ANN_PREVIOUS_RELEASE = ANNOTATION_PREFIX + "previous-release"
ANN_REVISION = ANNOTATION_PREFIX + "model-revision"
ANN_MODEL = ANNOTATION_PREFIX + "model-source"
ANN_SPEC_HASH = ANNOTATION_PREFIX + "spec-hash"
ANN_STRATEGY = ANNOTATION_PREFIX + "strategy"
ANN_DEPLOYED_AT = ANNOTATION_PREFIX + "deployed-at"

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


def _cell(text: str) -> str:
    """Keep a value inside one markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(summary: RunSummary) -> str:
    """The run summary artifact: what was deployed, how, how long each stage took, and whether
    the model answered."""
    verdict = {
        "promoted": "SERVING",
        "rolled-back": "ROLLED BACK",
        "failed": "FAILED",
    }[summary.outcome]
    lines = [
        f"# {summary.namespace}/{summary.service}: {verdict}",
        "",
        _cell(summary.message),
        "",
        "| | |",
        "|---|---|",
        f"| model | `{_cell(summary.model)}` |",
        f"| revision | `{_cell(summary.revision)}` |",
        f"| engine / shape | {summary.engine} / {summary.shape} |",
        f"| strategy | {summary.strategy or '-'} (requested {summary.requested_strategy}) |",
        f"| release | {summary.release or '-'} |",
        f"| previous release | {summary.previous_release or '-'} |",
        f"| spec hash | `{summary.spec_hash}` |",
    ]
    for key, value in summary.extra.items():
        lines.append(f"| {_cell(key)} | {_cell(value)} |")
    if summary.warnings:
        lines += ["", "## Warnings", ""]
        lines += [f"- {_cell(w)}" for w in summary.warnings]
    if summary.timings:
        total = sum(t.duration_s for t in summary.timings)
        lines += [
            "",
            "## Stages",
            "",
            "| stage | seconds | outcome | detail |",
            "|---|---:|---|---|",
        ]
        lines += [
            f"| {t.stage} | {t.duration_s:.2f} | {_cell(t.outcome)} | {_cell(t.detail)} |"
            for t in summary.timings
        ]
        lines.append(f"| **total** | {total:.2f} | | |")
    if summary.smoke is not None:
        smoke = summary.smoke
        ttft = f"{smoke.ttft_s * 1000:.0f} ms" if smoke.ttft_s is not None else "-"
        latency = f"{smoke.latency_s * 1000:.0f} ms" if smoke.latency_s is not None else "-"
        lines += [
            "",
            "## Smoke test",
            "",
            f"- result: {'passed' if smoke.passed else 'FAILED'}",
            f"- answer: `{_cell(smoke.answer)}`",
            f"- time to first token: {ttft}",
            f"- completion latency: {latency}",
        ]
        if smoke.checks:
            lines += ["", "| expectation | passed | observed |", "|---|---|---|"]
            lines += [
                f"| {_cell(name)} | {'yes' if ok else 'NO'} | {_cell(observed)} |"
                for name, ok, observed in smoke.checks
            ]
    if summary.objects_applied:
        lines += ["", "## Objects applied", ""]
        lines += [f"- {_cell(o)}" for o in summary.objects_applied]
    return "\n".join(lines) + "\n"


def artifact_key(namespace: str, service: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    raw = f"rollout-{namespace}-{service}".lower()
    return "".join(ch if ch.isalnum() else "-" for ch in raw)


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
