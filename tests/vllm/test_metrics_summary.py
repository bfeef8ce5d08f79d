"""Prometheus text parsing and the vLLM /metrics summary (no engine needed)."""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from llm_rollout.metrics import (
    MetricsFormatError,
    fetch_metrics,
    histogram_quantile,
    parse_prometheus,
    summarize_metrics,
)

# The shape vLLM 0.32 exposes: counters per model/engine (request_success per finish reason),
# histograms with cumulative buckets, `_created` samples from prometheus_client.
VLLM_TEXT = """\
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny-qwen3"} 3.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny-qwen3"} 1.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="tiny-qwen3"} 0.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny-qwen3"} 40.0
vllm:prompt_tokens_created{engine="0",model_name="tiny-qwen3"} 1.7e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny-qwen3"} 76.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="tiny-qwen3"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="tiny-qwen3"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="tiny-qwen3"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.08",model_name="tiny-qwen3"} 4.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny-qwen3"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny-qwen3"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny-qwen3"} 0.1
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 1234.0
"""


def test_parse_reads_labels_with_escapes_and_special_values() -> None:
    text = (
        '# TYPE x gauge\nx{path="C:\\\\dir",msg="say \\"hi\\"\\nbye",} +Inf 1700000000\n'
        "y NaN\nz -1.5e-3\n"
    )
    x, y, z = parse_prometheus(text)
    assert x.name == "x" and x.labels == {"path": "C:\\dir", "msg": 'say "hi"\nbye'}
    assert math.isinf(x.value)
    assert math.isnan(y.value) and y.labels == {}
    assert z.value == -0.0015


@pytest.mark.parametrize(
    "bad", ['x{a="1"', 'x{1a="v"} 1', 'x{a="1"} one', "{} 1", 'x{a="1"} 1 2 3']
)
def test_parse_rejects_what_is_not_the_text_format(bad: str) -> None:
    with pytest.raises(MetricsFormatError):
        parse_prometheus(bad)


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = [(0.01, 0.0), (0.02, 2.0), (0.04, 3.0), (0.08, 4.0), (math.inf, 4.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.02)  # rank 2 ends bucket 2
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.015)
    assert histogram_quantile(0.9, buckets) == pytest.approx(0.04 + 0.04 * 0.6)
    # A rank in the +Inf bucket: the highest finite bound, as PromQL answers.
    assert histogram_quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.5, [(0.1, 3.0)]) is None  # no +Inf bucket: not a histogram


def test_summary_adds_label_sets_and_ignores_other_metrics() -> None:
    summary = summarize_metrics(VLLM_TEXT)
    assert summary.requests == 4
    assert summary.prompt_tokens == 40
    assert summary.generation_tokens == 76
    assert summary.ttft is not None
    assert summary.ttft.count == 4
    assert summary.ttft.avg_s == pytest.approx(0.025)
    assert summary.ttft.p50_s == pytest.approx(0.02)
    assert summary.e2e_latency is None
    rows = {r["metric"]: r["value"] for r in summary.as_rows()}
    assert rows["requests finished"] == 4 and rows["TTFT count"] == 4
    assert rows["e2e latency"] is None


def test_summary_refuses_text_without_vllm_metrics() -> None:
    with pytest.raises(MetricsFormatError, match="no vLLM metrics"):
        summarize_metrics("# TYPE up gauge\nup 1\n")


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        bodies = {"/ok/metrics": VLLM_TEXT, "/sglang/metrics": "# TYPE up gauge\nup 1\n"}
        body = bodies.get(self.path)
        data = (body or "Not Found").encode()
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def metrics_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_fetch_reports_problems_instead_of_raising(metrics_server: str) -> None:
    with httpx.Client() as client:
        ok = fetch_metrics(client, f"{metrics_server}/ok/", timeout_s=5)
        missing = fetch_metrics(client, f"{metrics_server}/none", timeout_s=5)
        other = fetch_metrics(client, f"{metrics_server}/sglang", timeout_s=5)
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        refused = fetch_metrics(client, f"http://127.0.0.1:{port}", timeout_s=5)
    assert ok.url == f"{metrics_server}/ok/metrics" and ok.summary is not None
    assert ok.error is None and ok.summary.requests == 4
    assert missing.summary is None and missing.error == "HTTP 404"
    assert other.summary is None and other.error is not None and "no vLLM" in other.error
    assert refused.summary is None and refused.error == "no answer (ConnectError)"
