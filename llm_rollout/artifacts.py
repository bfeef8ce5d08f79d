"""What a run publishes to the Prefect UI: every artifact key and every markdown body.

Prefect keeps one history per artifact key (a keyed artifact gets a new version each time it
is created, ``prefect/artifacts.py``), so each key names the service it is about,
``<stage>-<kind>-<namespace>-<name>``: with global keys every service's results would land in
one history and the newest service would hide the others'. The kind is the service's workload
kind, so two services of one name in one namespace cannot exist and the key is stable across
releases (the history of a service is the history of its releases).

The markdown is built here and only here; the tasks hand it to Prefect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llm_rollout.kinds import kind_for
from llm_rollout.metrics import MetricsReading
from llm_rollout.record import RunSummary
from llm_rollout.smoke import SmokeReport, SmokeVerdict
from llm_rollout.spec import ServiceSpec

# Stages that publish artifacts; a key is one of these plus the service.
MIRROR_PROGRESS = "mirror"
MIRROR_FILES = "mirror-files"
REFRESH_COPIES = "refresh-copies"
READINESS = "readiness"
SMOKE_CALLS = "smoke-calls"
SMOKE_METRICS = "smoke-metrics"
SMOKE_VERDICT = "smoke-verdict"
RUN_SUMMARY = "rollout"


@dataclass(frozen=True)
class ServiceId:
    """The model service an artifact is about: its workload kind, namespace and name."""

    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, spec: ServiceSpec) -> ServiceId:
        return cls(kind=kind_for(spec).kind, namespace=spec.namespace, name=spec.name)

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def artifact_key(stage: str, service: ServiceId) -> str:
    """``<stage>-<kind>-<namespace>-<name>`` in the alphabet Prefect allows for keys (lowercase
    letters, digits and dashes, ``prefect/types/names.py``)."""
    raw = f"{stage}-{service.kind}-{service.namespace}-{service.name}".lower()
    return "".join(ch if ch.isalnum() else "-" for ch in raw)


def _cell(text: str) -> str:
    """Keep a value inside one markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(summary: RunSummary) -> str:
    """The run summary: what was deployed, how, how long each stage took, and whether the model
    answered."""
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


def readiness_failure_markdown(
    workload: str, reason: str, pod: str, event: str, log_lines: Sequence[str]
) -> str:
    lines = [
        f"## {workload} failed: {reason}",
        "",
        "| field | value |",
        "|---|---|",
        f"| pod | {_cell(pod)} |",
        f"| reason | {_cell(reason)} |",
        f"| event | {_cell(event) or '-'} |",
    ]
    if log_lines:
        lines += ["", "Last container log lines:", "", "```", *log_lines, "```"]
    return "\n".join(lines)


def readiness_timeout_markdown(workload: str, timeout_s: float, missing: Sequence[str]) -> str:
    return f"## {workload} not ready after {timeout_s:.0f}s\n\n" + "\n".join(
        f"- {m}" for m in missing
    )


def smoke_verdict_markdown(
    namespace: str,
    service: str,
    report: SmokeReport,
    verdict: SmokeVerdict,
    metrics: MetricsReading | None = None,
) -> str:
    status = "passed" if verdict.passed else "FAILED"
    lines = [
        f"## Smoke test of Service {namespace}/{service}: {status}",
        "",
        f"Model `{report.model}`; answer: `{report.answer[:300]}`",
        "",
    ]
    if verdict.failures:
        lines += ["Failed expectations:", "", *(f"- {f}" for f in verdict.failures), ""]
    lines += ["Checked:", "", *(f"- {c}" for c in verdict.checked)]
    if metrics is not None:
        lines += ["", *_metrics_markdown(metrics)]
    return "\n".join(lines)


def _seconds_as_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _metrics_markdown(metrics: MetricsReading) -> list[str]:
    summary = metrics.summary
    if summary is None:
        return [f"Engine metrics: not available ({metrics.error})"]
    lines = [
        "### Engine metrics (cumulative since the server started, one pod behind the Service)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests finished | {summary.requests} |",
        f"| prompt tokens | {summary.prompt_tokens} |",
        f"| generation tokens | {summary.generation_tokens} |",
    ]
    for label, hist in (
        ("time to first token", summary.ttft),
        ("e2e latency", summary.e2e_latency),
    ):
        if hist is None:
            lines.append(f"| {label} | not exposed |")
            continue
        lines.append(
            f"| {label} | {hist.count} requests, avg {_seconds_as_ms(hist.avg_s)}, "
            f"p50 ~{_seconds_as_ms(hist.p50_s)}, p90 ~{_seconds_as_ms(hist.p90_s)}, "
            f"p99 ~{_seconds_as_ms(hist.p99_s)} |"
        )
    return lines
