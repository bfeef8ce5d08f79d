"""Read a serving engine's Prometheus `/metrics` and summarize what a rollout report needs.

`parse_prometheus` reads the text exposition format (version 0.0.4: `# HELP`/`# TYPE` comments,
`name{label="value",...} value [timestamp]`, escaped label values). `summarize_metrics` turns
vLLM's metrics into a `MetricsSummary`: finished requests, prompt and generation tokens, and
the time-to-first-token and end-to-end latency histograms as count, sum, average and quantile
estimates (interpolated within buckets, as PromQL's `histogram_quantile` does). Counters are
cumulative since the server started and are summed over their label sets (model, engine,
finished reason). `fetch_metrics` reads `/metrics` through any httpx client (e.g. the API
server's service proxy); a missing or unreadable endpoint is reported, never raised: metrics
describe a rollout, they do not gate it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import httpx

from llm_rollout.interruptible_http import InterruptibleCalls
from llm_rollout.kube.watching import Interrupt

__all__ = [
    "HistogramSummary",
    "MetricsReading",
    "MetricsSummary",
    "Sample",
    "fetch_metrics",
    "histogram_quantile",
    "parse_prometheus",
    "summarize_metrics",
]

QUANTILES = (0.5, 0.9, 0.99)
VLLM_PREFIX = "vllm:"
MAX_METRICS_BYTES = 4 << 20  # a busy vLLM exposes ~100 KB; anything far larger is not metrics

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class MetricsFormatError(ValueError):
    """The text is not in the Prometheus exposition format."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def _parse_labels(line: str, pos: int, lineno: int) -> tuple[dict[str, str], int]:
    """Labels starting after `{` at `pos`; returns them and the position after `}`."""
    labels: dict[str, str] = {}
    while True:
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == "}":
            return labels, pos + 1
        match = _LABEL_NAME.match(line, pos)
        if match is None:
            raise MetricsFormatError(f"line {lineno}: bad label name at column {pos + 1}")
        name = match.group()
        pos = match.end()
        if line[pos : pos + 2] != '="':
            raise MetricsFormatError(f'line {lineno}: expected =" after label {name!r}')
        pos += 2
        value: list[str] = []
        while True:
            if pos >= len(line):
                raise MetricsFormatError(f"line {lineno}: unterminated value of label {name!r}")
            char = line[pos]
            if char == "\\" and pos + 1 < len(line):
                value.append(_ESCAPES.get(line[pos + 1], "\\" + line[pos + 1]))
                pos += 2
            elif char == '"':
                pos += 1
                break
            else:
                value.append(char)
                pos += 1
        labels[name] = "".join(value)
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == ",":
            pos += 1


def _parse_value(text: str, lineno: int) -> float:
    lowered = text.lower()
    if lowered in ("+inf", "inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    if lowered == "nan":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise MetricsFormatError(f"line {lineno}: {text!r} is not a sample value") from None


def parse_prometheus(text: str) -> list[Sample]:
    """Every sample in a Prometheus text exposition, in order (comments skipped)."""
    samples: list[Sample] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _NAME.match(line)
        if match is None:
            raise MetricsFormatError(f"line {lineno}: no metric name")
        name, pos = match.group(), match.end()
        labels: dict[str, str] = {}
        if pos < len(line) and line[pos] == "{":
            labels, pos = _parse_labels(line, pos + 1, lineno)
        fields = line[pos:].split()
        if not fields or len(fields) > 2:
            raise MetricsFormatError(f"line {lineno}: expected a value (and a timestamp)")
        samples.append(Sample(name, labels, _parse_value(fields[0], lineno)))
    return samples


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Estimate quantile `q` from cumulative `(upper bound, count)` buckets, like PromQL: the
    rank is located in its bucket and interpolated linearly within it; a rank in the +Inf
    bucket yields the highest finite bound. None when there are no observations."""
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        return None
    total = ordered[-1][1]
    if total <= 0 or math.isnan(total):
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                finite = [b for b, _ in ordered if not math.isinf(b)]
                return finite[-1] if finite else None
            if bound <= 0 or count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return None


@dataclass(frozen=True)
class HistogramSummary:
    """One latency histogram (seconds): observations, their sum and estimated quantiles."""

    count: int
    sum_s: float
    avg_s: float | None
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None


@dataclass(frozen=True)
class MetricsSummary:
    """What the engine counted since it started (all label sets added up)."""

    requests: int | None  # finished successfully, any finish reason
    prompt_tokens: int | None
    generation_tokens: int | None
    ttft: HistogramSummary | None
    e2e_latency: HistogramSummary | None
    metric_families: int

    def as_rows(self) -> list[dict[str, object]]:
        """One row per figure (for a table artifact)."""
        rows: list[dict[str, object]] = [
            {"metric": "requests finished", "value": self.requests},
            {"metric": "prompt tokens", "value": self.prompt_tokens},
            {"metric": "generation tokens", "value": self.generation_tokens},
        ]
        for label, hist in (("TTFT", self.ttft), ("e2e latency", self.e2e_latency)):
            if hist is None:
                rows.append({"metric": f"{label}", "value": None})
                continue
            rows.append({"metric": f"{label} count", "value": hist.count})
            rows.append({"metric": f"{label} sum (s)", "value": round(hist.sum_s, 6)})
            for name in ("avg_s", "p50_s", "p90_s", "p99_s"):
                value = asdict(hist)[name]
                shown = None if value is None else round(float(value), 6)
                rows.append({"metric": f"{label} {name[:-2]} (s)", "value": shown})
        return rows


@dataclass(frozen=True)
class MetricsReading:
    """The outcome of reading `/metrics`: a summary, or why there is none."""

    url: str
    summary: MetricsSummary | None = None
    error: str | None = None


def _total(samples: Iterable[Sample], name: str) -> float | None:
    values = [s.value for s in samples if s.name == name]
    return sum(values) if values else None


def _histogram(samples: list[Sample], name: str) -> HistogramSummary | None:
    count = _total(samples, f"{name}_count")
    if count is None:
        return None
    total = _total(samples, f"{name}_sum") or 0.0
    per_bound: dict[float, float] = {}
    for sample in samples:
        if sample.name == f"{name}_bucket" and "le" in sample.labels:
            bound = _parse_value(sample.labels["le"], 0)
            per_bound[bound] = per_bound.get(bound, 0.0) + sample.value
    buckets = list(per_bound.items())
    q50, q90, q99 = (histogram_quantile(q, buckets) for q in QUANTILES)
    return HistogramSummary(
        count=int(count),
        sum_s=total,
        avg_s=total / count if count else None,
        p50_s=q50,
        p90_s=q90,
        p99_s=q99,
    )


def _int_or_none(value: float | None) -> int | None:
    return None if value is None or math.isnan(value) else int(value)


def summarize_metrics(text: str) -> MetricsSummary:
    """Summarize vLLM's `/metrics` text; MetricsFormatError when it has no vLLM metrics."""
    samples = [s for s in parse_prometheus(text) if s.name.startswith(VLLM_PREFIX)]
    if not samples:
        raise MetricsFormatError("no vLLM metrics (vllm:*) in the exposition")
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", s.name) for s in samples}
    return MetricsSummary(
        requests=_int_or_none(_total(samples, "vllm:request_success_total")),
        prompt_tokens=_int_or_none(_total(samples, "vllm:prompt_tokens_total")),
        generation_tokens=_int_or_none(_total(samples, "vllm:generation_tokens_total")),
        ttft=_histogram(samples, "vllm:time_to_first_token_seconds"),
        e2e_latency=_histogram(samples, "vllm:e2e_request_latency_seconds"),
        metric_families=len(families),
    )


def fetch_metrics(
    client: httpx.Client, base_url: str, *, timeout_s: float, interrupt: Interrupt | None = None
) -> MetricsReading:
    """GET `{base_url}/metrics` and summarize it; failures are described in `error`. Once
    `interrupt` fires (a rollout Lease lost), the read is cut and its error raised."""
    url = f"{base_url.rstrip('/')}/metrics"
    with InterruptibleCalls(interrupt).armed() as calls:
        try:
            response = client.get(url, timeout=timeout_s, extensions=calls.extensions)
        except httpx.TransportError as exc:
            calls.check(exc)
            return MetricsReading(url, error=f"no answer ({type(exc).__name__})")
    if response.status_code != 200:
        return MetricsReading(url, error=f"HTTP {response.status_code}")
    if len(response.content) > MAX_METRICS_BYTES:
        return MetricsReading(url, error=f"{len(response.content)} bytes: too large for metrics")
    try:
        return MetricsReading(url, summary=summarize_metrics(response.text))
    except MetricsFormatError as exc:
        return MetricsReading(url, error=str(exc))
