"""config.json fields of real models, for the KV-cache fit tests."""

from __future__ import annotations

from typing import Any

# The fields of Qwen3-8B's config.json (ModelScope Qwen/Qwen3-8B) the KV cache depends on.
QWEN3_8B: dict[str, Any] = {
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_size": 4096,
    "max_position_embeddings": 40960,
    "torch_dtype": "bfloat16",
}
QWEN3_8B_BYTES = 16_381_470_720
