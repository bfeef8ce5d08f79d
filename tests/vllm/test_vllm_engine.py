"""Real vLLM serving the tiny model: one engine for the whole module."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from tokenizers import Tokenizer

from sandbox.vllm.engine import VllmEngine
from sandbox.vllm.tiny_model import TinyModelInfo

# Generous: the module fixture starts the engine (~25-35 s here) inside the first test.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

# The verification request of the source runbook, verbatim apart from the model name.
SEED_REQUEST = {
    "messages": [{"role": "user", "content": "測試一下"}],
    "max_tokens": 30,
    "temperature": 0.7,
    "top_p": 0.9,
    "seed": 10,
}


def test_models_lists_the_served_model(engine: VllmEngine, tiny_info: TinyModelInfo) -> None:
    resp = httpx.get(f"{engine.url}/v1/models", timeout=10)
    assert resp.status_code == 200
    (model,) = resp.json()["data"]
    assert model["id"] == tiny_info.served_name
    assert model["max_model_len"] == 512
    assert model["root"] == str(engine.model_dir)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {"temperature": 1.0, "top_p": 1.0, "seed": 1234, "max_tokens": 100},
    ],
    ids=["seed-request", "other-prompt", "hot-sampling"],
)
def test_chat_completion_is_exactly_the_answer(
    engine: VllmEngine, tiny_info: TinyModelInfo, overrides: dict[str, object]
) -> None:
    body = {**SEED_REQUEST, "model": tiny_info.served_name, **overrides}
    resp = httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    choice = data["choices"][0]
    assert choice["message"]["content"] == tiny_info.answer
    assert choice["finish_reason"] == "stop"
    # The answer's tokens plus <|im_end|>.
    assert data["usage"]["completion_tokens"] == len(tiny_info.answer_token_ids) + 1


def test_max_tokens_cuts_the_answer(
    engine: VllmEngine, tiny_model_tokenizer: Tokenizer, tiny_info: TinyModelInfo
) -> None:
    body = {**SEED_REQUEST, "model": tiny_info.served_name, "max_tokens": 3}
    resp = httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=60)
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == tiny_model_tokenizer.decode(
        tiny_info.answer_token_ids[:3]
    )


def test_streaming_chat_completion(engine: VllmEngine, tiny_info: TinyModelInfo) -> None:
    body = {
        **SEED_REQUEST,
        "model": tiny_info.served_name,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    contents: list[str] = []
    finishes: list[str] = []
    usage: dict[str, int] | None = None
    done = False
    with httpx.stream("POST", f"{engine.url}/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line.removeprefix("data: ")
            if payload == "[DONE]":
                done = True
                break
            chunk = json.loads(payload)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    contents.append(choice["delta"]["content"])
                if choice.get("finish_reason"):
                    finishes.append(choice["finish_reason"])
    assert done
    assert "".join(contents) == tiny_info.answer
    assert len(contents) > 1  # streamed token by token, not in one piece
    assert finishes == ["stop"]
    assert usage is not None
    assert usage["completion_tokens"] == len(tiny_info.answer_token_ids) + 1


def test_metrics_count_time_to_first_token(engine: VllmEngine, tiny_info: TinyModelInfo) -> None:
    body = {**SEED_REQUEST, "model": tiny_info.served_name}
    assert httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=60).is_success
    text = httpx.get(f"{engine.url}/metrics", timeout=10).text
    assert "vllm:time_to_first_token_seconds" in text
    counts = re.findall(
        r'^vllm:time_to_first_token_seconds_count\{[^}]*model_name="([^"]+)"[^}]*\} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert counts, "no TTFT histogram count in /metrics"
    assert {name for name, _ in counts} == {tiny_info.served_name}
    assert sum(float(v) for _, v in counts) >= 1


def test_engine_error_body_for_unknown_model(engine: VllmEngine) -> None:
    body = {**SEED_REQUEST, "model": "no-such-model"}
    resp = httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 404
    assert "no-such-model" in resp.json()["error"]["message"]
