"""Smoke test of an OpenAI-compatible endpoint, judged with great-expectations.

`run_smoke` performs the three calls a person would make after a rollout (list models, one
chat completion, one streamed chat completion timing the first token) and records what came
back; `validate_smoke` turns that record into a pass/fail verdict listing every failed
expectation. Neither puts credentials in its output: the API key only travels in a header.

`smoke_endpoint` opens the route the calls take (`SmokeSpec.route`): the API server's service
proxy, a port-forward to one Ready pod, or a direct base URL. An API key is never sent through
the service proxy: the API server authenticates the caller with the Authorization header and
deletes it before proxying, so the key could not reach the server and would instead be offered
to the API server as a credential.

Under a rollout Lease the calls take the hold as their `interrupt`: once the Lease is lost, the
call in progress is cut (its connection shut, see `llm_rollout.interruptible_http`) and the
smoke test ends with `LeaseLostError` rather than waiting for the endpoint or its timeout; no
further call is made, and a cut call is never made again nor judged.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx
from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.interruptible_http import InterruptibleCalls
from llm_rollout.kube.objects import secret_value
from llm_rollout.kube.portforward import forward_service
from llm_rollout.kube.proxy import (
    ApiServerClient,
    httpx_client_for,
    is_api_server_proxy,
    service_proxy_url,
)
from llm_rollout.kube.watching import Interrupt
from llm_rollout.metrics import MetricsReading, fetch_metrics
from llm_rollout.spec import SecretKeyRef, SmokeExpectations, SmokeSpec

__all__ = [
    "CallResult",
    "SmokeEndpoint",
    "SmokeExpectations",
    "SmokeReport",
    "SmokeRoute",
    "SmokeTarget",
    "SmokeUnreachable",
    "SmokeVerdict",
    "run_smoke",
    "smoke_endpoint",
    "smoke_release",
    "validate_smoke",
]

MAX_RECORDED_CHARS = 2000
# Gateways answer these while the backend is still being wired: try the whole smoke test later.
UNREACHABLE_STATUSES = frozenset({502, 503, 504})


class SmokeUnreachable(TransientError):
    """The endpoint could not be reached at all (no answer to GET /v1/models)."""


@dataclass
class CallResult:
    """One HTTP call of the smoke test. `status` 0 means no HTTP answer (transport error)."""

    call: str
    status: int = 0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    content: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    error: str | None = None
    # Attempts made: a call whose connection broke is made once more (_made_again_if_broken).
    attempts: int = 1


@dataclass
class SmokeReport:
    """Everything the smoke test observed; `base_url` is the endpoint, without credentials."""

    base_url: str
    model: str
    served_models: list[str] = field(default_factory=list)
    calls: list[CallResult] = field(default_factory=list)

    def call(self, name: str) -> CallResult | None:
        return next((c for c in self.calls if c.call == name), None)

    @property
    def answer(self) -> str:
        """The plain chat completion's text (the streamed one when there was no plain call)."""
        for name in ("chat", "stream"):
            found = self.call(name)
            if found is not None and found.content:
                return found.content
        return ""

    def as_rows(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.calls]


@dataclass(frozen=True)
class SmokeVerdict:
    """`passed` and, when not, one human-readable line per failed expectation."""

    passed: bool
    failures: list[str]
    checked: list[str]


def _error_text(response: httpx.Response) -> str:
    # Keep only the server's error message: bodies can be long and are not ours to echo.
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        err = body.get("error", body)
        message = err.get("message") if isinstance(err, dict) else err
        if message:
            return f"HTTP {response.status_code}: {str(message)[:300]}"
    return f"HTTP {response.status_code}"


def _headers(client: httpx.Client, base_url: str, api_key: str | None) -> dict[str, str]:
    if api_key is None:
        return {}
    # Any of these means the request goes to the API server: a client made for it (even one
    # authenticating with a certificate, which carries no header), a client that already has
    # an Authorization header, or a proxy URL.
    if (
        isinstance(client, ApiServerClient)
        or "authorization" in client.headers
        or is_api_server_proxy(base_url)
    ):
        raise PermanentError(
            "an API key cannot be sent through the API server's service proxy (the API server "
            "takes the Authorization header as its own credential and removes it before "
            "proxying); use smoke.via port-forward or a direct base URL"
        )
    return {"Authorization": f"Bearer {api_key}"}


SmokeRoute = Literal["proxy", "port-forward", "base-url"]


@dataclass(frozen=True)
class SmokeEndpoint:
    """Where the smoke calls go: `client` and `base_url` (no credentials), and `route`, a
    description of the way there for logs."""

    client: httpx.Client
    base_url: str
    route: str


@contextmanager
def smoke_endpoint(
    api: k8s_client.ApiClient,
    *,
    namespace: str,
    service: str,
    port: int,
    route: SmokeRoute,
    base_url: str | None,
    timeout_s: float,
) -> Iterator[SmokeEndpoint]:
    """Open `route` to port `port` of Service `namespace/service`; closed on exit.

    `base-url` needs `base_url`; `port-forward` picks one Ready pod behind the Service.
    """
    if route == "base-url":
        if base_url is None:
            raise PermanentError("smoke route base-url needs smoke.base_url")
        with httpx.Client(timeout=timeout_s) as direct:
            yield SmokeEndpoint(direct, base_url.rstrip("/"), "direct URL")
    elif route == "proxy":
        with httpx_client_for(api, timeout_s=timeout_s) as proxied:
            yield SmokeEndpoint(
                proxied,
                service_proxy_url(api, namespace, service, port),
                "API server service proxy",
            )
    else:
        # trust_env off: a proxy from HTTP_PROXY must never see the local tunnel's traffic.
        with (
            forward_service(api, namespace, service, port) as forwarder,
            httpx.Client(timeout=timeout_s, trust_env=False) as local,
        ):
            yield SmokeEndpoint(local, forwarder.base_url, f"port-forward to {forwarder.target}")


def _chat_body(
    model: str, messages: Sequence[Mapping[str, str]], max_tokens: int, extra: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": list(messages), "max_tokens": max_tokens}
    body.update(extra)
    return body


@dataclass(frozen=True)
class _Caller:
    """How every call of one smoke test is made: `client` with `headers`, each call bounded
    by `timeout_s`, under `calls` (checked before each call and on each transport error)."""

    client: httpx.Client
    headers: dict[str, str]
    timeout_s: float
    calls: InterruptibleCalls


def _list_models(caller: _Caller, base_url: str) -> tuple[CallResult, list[str]]:
    result = CallResult(call="models")
    caller.calls.check()
    started = time.perf_counter()
    try:
        response = caller.client.get(
            f"{base_url}/v1/models",
            headers=caller.headers,
            timeout=caller.timeout_s,
            extensions=caller.calls.extensions,
        )
    except httpx.TransportError as exc:
        caller.calls.check(exc)
        raise SmokeUnreachable(
            f"GET {base_url}/v1/models: no answer ({type(exc).__name__})"
        ) from exc
    result.latency_ms = (time.perf_counter() - started) * 1000
    result.status = response.status_code
    if response.status_code in UNREACHABLE_STATUSES:
        raise SmokeUnreachable(f"GET {base_url}/v1/models: {_error_text(response)}")
    served: list[str] = []
    if response.status_code == 200:
        try:
            served = [str(m.get("id")) for m in response.json().get("data") or []]
        except (ValueError, AttributeError):
            result.error = "GET /v1/models: answer is not an OpenAI model list"
    else:
        result.error = _error_text(response)
    return result, served


def _fill_from_completion(result: CallResult, body: Mapping[str, Any]) -> None:
    choices = body.get("choices") or [{}]
    message = choices[0].get("message") or {}
    result.content = str(message.get("content") or "")[:MAX_RECORDED_CHARS]
    result.finish_reason = choices[0].get("finish_reason")
    usage = body.get("usage") or {}
    result.prompt_tokens = usage.get("prompt_tokens")
    result.completion_tokens = usage.get("completion_tokens")
    result.model = body.get("model")


# A connection that broke under the call: closed by the peer before the answer or in the
# middle of it (RemoteProtocolError), or reset (ReadError, WriteError). A timeout or a refused
# connection is not a break: the endpoint itself is slow or away, which the gate must see.
_BROKEN = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def _made_again_if_broken(attempt: Callable[[], tuple[CallResult, bool]]) -> CallResult:
    """One call, made once more when its connection broke; the record says how many attempts.

    A broken connection says nothing about the model: a kept-alive connection that the server
    or a proxy on the way closed just as the call reused it (what Go's net/http resends
    requests for, transport.go ``shouldRetryRequest``), or an answer a proxy cut short (the
    API server's service proxy over HTTP/1.1 did, see llm_rollout/kube/proxy.py
    ``httpx_client_for``). The gate judges the second attempt; a second break is reported as
    it is. ``attempt`` returns its record and whether its connection broke.
    """
    result, broke = attempt()
    if broke:
        result, _ = attempt()
        result.attempts = 2
    return result


def _chat(caller: _Caller, url: str, body: dict[str, Any]) -> CallResult:
    return _made_again_if_broken(lambda: _chat_once(caller, url, body))


def _chat_once(caller: _Caller, url: str, body: dict[str, Any]) -> tuple[CallResult, bool]:
    result = CallResult(call="chat")
    caller.calls.check()
    started = time.perf_counter()
    try:
        response = caller.client.post(
            url,
            json=body,
            headers=caller.headers,
            timeout=caller.timeout_s,
            extensions=caller.calls.extensions,
        )
    except httpx.TransportError as exc:
        caller.calls.check(exc)
        result.error = f"no answer ({type(exc).__name__})"
        return result, isinstance(exc, _BROKEN)
    result.latency_ms = (time.perf_counter() - started) * 1000
    result.status = response.status_code
    if response.status_code != 200:
        result.error = _error_text(response)
        return result, False
    try:
        _fill_from_completion(result, response.json())
    except (ValueError, AttributeError, IndexError) as exc:
        result.error = f"answer is not an OpenAI chat completion ({type(exc).__name__})"
    return result, False


def _sse_payloads(lines: Iterable[str]) -> Iterable[str]:
    for line in lines:
        if line.startswith("data:"):
            payload = line[5:].strip()
            if payload == "[DONE]":
                return
            if payload:
                yield payload


def _stream(caller: _Caller, url: str, body: dict[str, Any]) -> CallResult:
    return _made_again_if_broken(lambda: _stream_once(caller, url, body))


def _stream_once(caller: _Caller, url: str, body: dict[str, Any]) -> tuple[CallResult, bool]:
    result = CallResult(call="stream")
    stream_body = dict(body, stream=True, stream_options={"include_usage": True})
    parts: list[str] = []
    broke = False
    caller.calls.check()
    started = time.perf_counter()
    try:
        request = caller.client.build_request(
            "POST",
            url,
            json=stream_body,
            headers=caller.headers,
            timeout=caller.timeout_s,
            extensions=caller.calls.extensions,
        )
        with closing(caller.client.send(request, stream=True)) as response:
            result.status = response.status_code
            if response.status_code != 200:
                response.read()
                result.error = _error_text(response)
                return result, False
            for payload in _sse_payloads(response.iter_lines()):
                chunk = json.loads(payload)
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = delta.get("content") or delta.get("reasoning_content") or ""
                    if text and result.ttft_ms is None:
                        result.ttft_ms = (time.perf_counter() - started) * 1000
                    if delta.get("content"):
                        parts.append(str(delta["content"]))
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
                usage = chunk.get("usage") or {}
                if usage:
                    result.prompt_tokens = usage.get("prompt_tokens")
                    result.completion_tokens = usage.get("completion_tokens")
                result.model = chunk.get("model") or result.model
    except httpx.TransportError as exc:
        caller.calls.check(exc)
        broke = isinstance(exc, _BROKEN)
        result.error = f"stream broken ({type(exc).__name__})"
    except (ValueError, AttributeError) as exc:
        result.error = f"stream chunk is not an OpenAI chat chunk ({type(exc).__name__})"
    result.latency_ms = (time.perf_counter() - started) * 1000
    result.content = "".join(parts)[:MAX_RECORDED_CHARS]
    return result, broke


def run_smoke(
    client: httpx.Client,
    base_url: str,
    *,
    model: str,
    messages: Sequence[Mapping[str, str]],
    max_tokens: int,
    api_key: str | None,
    timeout_s: float,
    sampling: Mapping[str, Any] | None = None,
    stream: bool = True,
    interrupt: Interrupt | None = None,
) -> SmokeReport:
    """List models, send one chat completion and (with `stream`) one streamed completion.

    `base_url` is the server root (e.g. a service proxy URL); `/v1/...` is appended. An
    `api_key` with a client or URL of the API server is refused (`PermanentError`).
    `sampling` adds request fields such as temperature, top_p, seed. HTTP failures of the chat
    calls are recorded in the report for `validate_smoke` to judge; only an endpoint that
    does not answer at all raises (`SmokeUnreachable`, transient). Once `interrupt` fires
    (a rollout Lease lost), the call in progress is cut and its error is raised.
    """
    base_url = base_url.rstrip("/")
    headers = _headers(client, base_url, api_key)
    report = SmokeReport(base_url=base_url, model=model)
    with InterruptibleCalls(interrupt).armed() as calls:
        caller = _Caller(client, headers, timeout_s, calls)
        models_call, report.served_models = _list_models(caller, base_url)
        report.calls.append(models_call)
        url = f"{base_url}/v1/chat/completions"
        body = _chat_body(model, messages, max_tokens, sampling or {})
        report.calls.append(_chat(caller, url, body))
        if stream:
            report.calls.append(_stream(caller, url, body))
    return report


def _suite_items(
    report: SmokeReport, expect: SmokeExpectations
) -> list[tuple[str, str, dict[str, Any]]]:
    """(description, GX expectation class name, kwargs) for every check to run."""
    items: list[tuple[str, str, dict[str, Any]]] = [
        (
            "every call answered HTTP 200",
            "ExpectColumnValuesToBeInSet",
            {"column": "status", "value_set": [200]},
        ),
        (
            f"model {report.model!r} listed by GET /v1/models",
            "ExpectColumnValuesToBeInSet",
            {"column": "model_listed", "value_set": [True]},
        ),
        (
            "answer is non-empty",
            "ExpectColumnValueLengthsToBeBetween",
            {"column": "content", "min_value": 1},
        ),
        (
            f"finish_reason in {list(expect.finish_reasons)}",
            "ExpectColumnValuesToBeInSet",
            {"column": "finish_reason", "value_set": list(expect.finish_reasons)},
        ),
        (
            f"usage.completion_tokens >= {max(expect.min_completion_tokens, 1)}",
            "ExpectColumnValuesToBeBetween",
            {"column": "completion_tokens", "min_value": max(expect.min_completion_tokens, 1)},
        ),
        (
            "usage.completion_tokens reported",
            "ExpectColumnValuesToNotBeNull",
            {"column": "completion_tokens"},
        ),
    ]
    if expect.equals is not None:
        items.append(
            (
                f"answer equals {expect.equals!r}",
                "ExpectColumnValuesToBeInSet",
                {"column": "content", "value_set": [expect.equals]},
            )
        )
    for text in expect.contains:
        items.append(
            (
                f"answer contains {text!r}",
                "ExpectColumnValuesToMatchRegex",
                {"column": "content", "regex": re.escape(text)},
            )
        )
    if expect.starts_with is not None:
        items.append(
            (
                f"answer starts with {expect.starts_with!r}",
                "ExpectColumnValuesToMatchRegex",
                {"column": "content", "regex": "^" + re.escape(expect.starts_with)},
            )
        )
    if expect.max_latency_ms is not None:
        items.append(
            (
                f"latency <= {expect.max_latency_ms} ms",
                "ExpectColumnValuesToBeBetween",
                {"column": "latency_ms", "max_value": float(expect.max_latency_ms)},
            )
        )
    if expect.max_ttft_ms is not None:
        items.append(
            (
                f"time to first token <= {expect.max_ttft_ms} ms",
                "ExpectColumnValuesToBeBetween",
                {"column": "ttft_ms", "max_value": float(expect.max_ttft_ms)},
            )
        )
        # GX is already imported by the caller (validate_smoke); its typed row conditions
        # replace the pandas query strings it deprecated in 1.9.
        from great_expectations.expectations.row_conditions import Column

        items.append(
            (
                "time to first token measured (streamed call)",
                "ExpectColumnValuesToNotBeNull",
                {"column": "ttft_ms", "row_condition": Column("call") == "stream"},
            )
        )
    return items


def validate_smoke(report: SmokeReport, expectations: SmokeExpectations) -> SmokeVerdict:
    """Judge `report` with great-expectations (ephemeral context, in-memory dataframe).

    One row per completion call (plain, streamed); the GET /v1/models result is a column.
    Every failed expectation is described with the offending values (answers are capped).
    """
    # GX costs seconds to import: only pay it when a verdict is actually needed.
    import great_expectations as gx
    import pandas as pd  # type: ignore[import-untyped]
    from great_expectations.data_context.types.base import ProgressBarsConfig

    models_call = report.call("models")
    model_listed = report.model in report.served_models
    rows = [r for r in report.as_rows() if r["call"] != "models"]
    for row in rows:
        row["model_listed"] = model_listed
    failures: list[str] = []
    if expectations.max_ttft_ms is not None and report.call("stream") is None:
        # The TTFT checks select the streamed row: without one they would pass on nothing.
        failures.append("time to first token measured (streamed call) (got no streamed call)")
    if models_call is None or models_call.status != 200:
        status = models_call.status if models_call else "not called"
        failures.append(f"GET /v1/models answered HTTP 200 (got {status})")
    if not rows:
        failures.append("no chat completion was attempted")
        return SmokeVerdict(passed=False, failures=failures, checked=[])
    frame = pd.DataFrame(rows)
    for column in ("latency_ms", "ttft_ms", "completion_tokens", "prompt_tokens"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("smoke")
        .add_dataframe_asset("results")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    items = _suite_items(report, expectations)
    suite = gx.ExpectationSuite(name="smoke")
    for description, class_name, kwargs in items:
        expectation = getattr(gx.expectations, class_name)(**kwargs, meta={"check": description})
        suite.add_expectation(expectation)
    result = batch.validate(suite)
    # GX does not keep suite order in its results: each check carries its description in meta.
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        meta = (config.meta if config is not None else None) or {}
        description = str(meta.get("check", "unnamed check"))
        got = (outcome.result or {}).get("partial_unexpected_list")
        if (
            got is None
            and outcome.exception_info
            and outcome.exception_info.get("raised_exception")
        ):
            got = "check could not run"
        failures.append(f"{description} (got {_short(got)})")
    for call in report.calls:
        if call.error:
            failures.append(f"{call.call} call: {call.error}")
    return SmokeVerdict(passed=not failures, failures=failures, checked=[d for d, _, _ in items])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass(frozen=True)
class SmokeTarget:
    """What one smoke test calls, and how: Service `namespace/service` on `port` serving
    `model`, for the model service `namespace/name` whose workload is a `kind`. `api_key`
    names the Kubernetes Secret key holding the server's API key (a reference, never the
    value)."""

    kind: str
    namespace: str
    name: str
    service: str
    port: int
    model: str
    smoke: SmokeSpec
    timeout_s: float
    api_key: SecretKeyRef | None = None

    @property
    def route(self) -> SmokeRoute:
        return self.smoke.route(api_key=self.api_key is not None)

    @property
    def base_url(self) -> str | None:
        return str(self.smoke.base_url) if self.smoke.base_url is not None else None

    def sampling(self) -> dict[str, float | int]:
        sampling: dict[str, float | int] = {
            "temperature": self.smoke.temperature,
            "top_p": self.smoke.top_p,
        }
        if self.smoke.seed is not None:
            sampling["seed"] = self.smoke.seed
        return sampling


def smoke_release(
    api: k8s_client.ApiClient,
    target: SmokeTarget,
    *,
    on_route: Callable[[str], None],
    interrupt: Interrupt | None = None,
) -> tuple[SmokeReport, MetricsReading]:
    """The smoke test of `target` along its route (`SmokeSpec.route`), then the server's
    `/metrics` along the same route; `on_route` hears which route was opened. `interrupt`
    (the rollout Lease held) cuts either short with its error once it fires.

    The API key is read from its Secret here and only travels in a request header."""
    key = (
        secret_value(api, target.namespace, target.api_key.secret_name, target.api_key.key)
        if target.api_key is not None
        else None
    )
    with smoke_endpoint(
        api,
        namespace=target.namespace,
        service=target.service,
        port=target.port,
        route=target.route,
        base_url=target.base_url,
        timeout_s=target.timeout_s,
    ) as endpoint:
        on_route(endpoint.route)
        report = run_smoke(
            endpoint.client,
            endpoint.base_url,
            model=target.model,
            messages=[m.model_dump() for m in target.smoke.messages],
            max_tokens=target.smoke.max_tokens,
            api_key=key,
            timeout_s=target.timeout_s,
            sampling=target.sampling(),
            stream=target.smoke.stream,
            interrupt=interrupt,
        )
        metrics = fetch_metrics(
            endpoint.client, endpoint.base_url, timeout_s=target.timeout_s, interrupt=interrupt
        )
    return report, metrics
