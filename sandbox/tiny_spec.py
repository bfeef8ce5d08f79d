"""Adapt an example spec to the tiny generated model the sandbox hub publishes.

The examples name 32B models on GPUs; the sandbox serves ``sandbox.vllm.tiny_model``'s tiny
Qwen3 with real vLLM on the CPU (the vLLM image, ``sandbox.cluster.images``) or with the SGLang
stand-in (the SGLang images), both of which answer the tiny model's fixed text. Only what the
tiny model changes is changed: the served name, the smoke expectation, and for vLLM probe
timings a CPU engine can meet, and for the SGLang stand-in a short probe period.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from sandbox.vllm.tiny_model import TinyModelInfo

# A CPU vLLM loads the tiny model in 30-60 s, several minutes on a loaded 2-core machine.
VLLM_STARTUP_BUDGET_S = 600
SGLANG_STANDIN_PERIOD_S = 2


def tiny_model_spec(data: Mapping[str, Any], tiny: TinyModelInfo) -> dict[str, Any]:
    """A copy of spec ``data`` (as loaded from YAML) serving ``tiny``.

    The API key is dropped: the API server's service proxy removes the Authorization header (as
    kube-apiserver does), so a key-protected server cannot be smoke-tested through it. Tests of
    the key set their own route.
    """
    out = copy.deepcopy(dict(data))
    serving = out.setdefault("serving", {})
    serving.pop("api_key", None)
    serving["served_model_name"] = tiny.served_name
    out["smoke"] = {"expect": {"equals": tiny.answer, "finish_reasons": ["stop"]}}
    if serving.get("engine") == "sglang":
        # The stand-in serves as soon as it starts (sandbox/sglang_standin), so probing every
        # 2 s instead of 10 makes each release Ready within seconds.
        serving["probes"] = {**serving.get("probes", {}), "period_s": SGLANG_STANDIN_PERIOD_S}
    if serving.get("engine") == "vllm":
        serving["probes"] = {
            "startup_budget_s": VLLM_STARTUP_BUDGET_S,
            "period_s": 2,
            "timeout_s": 10,
        }
        rollout = out.setdefault("rollout", {})
        rollout["ready_timeout_s"] = max(
            int(rollout.get("ready_timeout_s", 0)), VLLM_STARTUP_BUDGET_S
        )
    return out
