"""Does one GPU hold its shard of the weights plus the KV cache of one max-length sequence?

vLLM (V1) refuses to start when the KV cache it can allocate is smaller than what one request
of `max_model_len` tokens needs ("To serve at least one request with the models's max seq
len ..."). The numbers below follow vLLM's own arithmetic, read from vllm-project/vllm:

- `vllm/v1/kv_cache_interface.py` `FullAttentionSpec`: a page (block) of one layer holds
  `block_size * num_kv_heads * (head_size + head_size_v) * dtype_size` bytes, and
  `max_memory_usage_bytes = cdiv(max_model_len, block_size) * page_size_bytes`;
- `vllm/config/model.py` `get_total_num_kv_heads` (`num_key_value_heads`, else
  `num_attention_heads`), `get_num_kv_heads` = `max(1, total_kv_heads // tensor_parallel_size)`,
  `get_head_size` (`head_dim`, else `hidden_size // num_attention_heads`), and the layers of
  a pipeline stage (`num_hidden_layers` split over `pipeline_parallel_size`, so the largest
  stage holds `ceil(layers / pp)`);
- `vllm/config/cache.py` `CacheConfig`: `DEFAULT_BLOCK_SIZE = 16`, `cache_dtype` "auto" (the
  model's dtype; "fp8*" is one byte), `gpu_memory_utilization` 0.92 by default there (older
  releases used 0.9; the larger one is assumed when the flag is absent, so a refusal holds
  for either).

What vLLM can give the KV cache is `total_gpu_memory * gpu_memory_utilization` minus the
weights, activations and non-torch memory. We subtract the weights only, so our budget is an
upper bound: a refusal here is certain to match vLLM's, while a pass still leaves activation
memory (typically a GiB or less) to chance; the margin is reported.

`config.json` is upstream data: `model_shape_from_config` checks every field it uses (types,
ranges, consistency) and raises `ModelConfigError` naming the key instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_rollout.errors import PermanentError

GIB = 1024**3
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
VLLM_CUDA_BLOCK_SIZE = 16

# Bytes per element of the model dtypes vLLM serves. float32 checkpoints are served in half
# precision with `--dtype auto` (vllm/config/model.py `_get_and_verify_dtype`), so 2 bytes.
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 2, "float": 2}

# Bounds that no real checkpoint crosses; values outside are a broken or hostile config.json.
_MAX_LAYERS = 1_000
_MAX_HEADS = 4_096
_MAX_HEAD_DIM = 16_384
_MAX_POSITIONS = 100_000_000
_MAX_HIDDEN = 1_000_000


class ModelConfigError(PermanentError):
    """The model's config.json cannot be used to size the KV cache."""


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache size depends on, from config.json."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    max_position_embeddings: int


def _int_field(config: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = config.get(key)
    # bool is an int subclass in Python; a JSON true is not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelConfigError(f"config.json: {key} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ModelConfigError(f"config.json: {key} = {value} is outside {low}..{high}")
    return value


def model_shape_from_config(data: Any) -> ModelShape:
    """Check and extract the KV-relevant fields of a Hugging Face style config.json."""
    if not isinstance(data, Mapping):
        raise ModelConfigError("config.json: must be a JSON object")
    # Multimodal configs nest the language model's fields (vLLM's hf_text_config).
    config: Mapping[str, Any] = data
    if isinstance(data.get("text_config"), Mapping):
        config = data["text_config"]
    if "kv_lora_rank" in config:
        raise ModelConfigError(
            "config.json: multi-head latent attention (kv_lora_rank) is not sized by this check"
        )
    layers = _int_field(config, "num_hidden_layers", 1, _MAX_LAYERS)
    heads = _int_field(config, "num_attention_heads", 1, _MAX_HEADS)
    kv_heads = heads
    if config.get("num_key_value_heads") is not None:
        kv_heads = _int_field(config, "num_key_value_heads", 1, _MAX_HEADS)
    if kv_heads > heads or heads % kv_heads:
        raise ModelConfigError(
            f"config.json: num_key_value_heads = {kv_heads} must divide "
            f"num_attention_heads = {heads}"
        )
    if config.get("head_dim") is not None:
        head_dim = _int_field(config, "head_dim", 1, _MAX_HEAD_DIM)
    else:
        hidden = _int_field(config, "hidden_size", 1, _MAX_HIDDEN)
        if hidden % heads:
            raise ModelConfigError(
                f"config.json: hidden_size = {hidden} is not a multiple of "
                f"num_attention_heads = {heads} (and no head_dim is given)"
            )
        head_dim = hidden // heads
    positions = _int_field(config, "max_position_embeddings", 1, _MAX_POSITIONS)
    dtype_key = "torch_dtype" if "torch_dtype" in config else "dtype"
    dtype = config.get(dtype_key, data.get("torch_dtype"))
    if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
        known = ", ".join(sorted(_DTYPE_BYTES))
        raise ModelConfigError(f"config.json: {dtype_key} must be one of {known}")
    return ModelShape(
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype_bytes=_DTYPE_BYTES[dtype],
        max_position_embeddings=positions,
    )


def kv_bytes_per_token(shape: ModelShape, *, tp: int, pp: int, cache_dtype_bytes: int) -> int:
    """KV bytes one token occupies on the most loaded GPU (largest pipeline stage)."""
    kv_heads_per_gpu = max(1, shape.kv_heads // tp)
    layers_per_gpu = math.ceil(shape.layers / pp)
    return layers_per_gpu * kv_heads_per_gpu * 2 * shape.head_dim * cache_dtype_bytes


def kv_bytes_for_sequence(
    shape: ModelShape,
    *,
    tokens: int,
    tp: int,
    pp: int,
    cache_dtype_bytes: int,
    block_size: int = VLLM_CUDA_BLOCK_SIZE,
) -> int:
    """KV bytes one sequence of `tokens` needs on the most loaded GPU (whole blocks)."""
    blocks = math.ceil(tokens / block_size)
    per_token = kv_bytes_per_token(shape, tp=tp, pp=pp, cache_dtype_bytes=cache_dtype_bytes)
    return blocks * block_size * per_token


# --- the engine flags the check depends on ------------------------------------------------------


class EngineArgError(PermanentError):
    """An engine flag in serving.extra_args has a value the check cannot use."""


def engine_flag(args: Sequence[str], flag: str) -> str | None:
    """Value of `--flag VALUE` or `--flag=VALUE` in an argument list (the last one wins)."""
    value: str | None = None
    for index, arg in enumerate(args):
        if arg == flag:
            if index + 1 >= len(args):
                raise EngineArgError(f"serving.extra_args: {flag} has no value")
            value = args[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def gpu_memory_utilization(args: Sequence[str]) -> float:
    """vLLM's --gpu-memory-utilization from extra_args, else its default."""
    raw = engine_flag(args, "--gpu-memory-utilization")
    if raw is None:
        return VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
    try:
        value = float(raw)
    except ValueError as exc:
        raise EngineArgError(
            f"serving.extra_args: --gpu-memory-utilization {raw!r} is not a number"
        ) from exc
    if not 0 < value <= 1:
        raise EngineArgError(
            f"serving.extra_args: --gpu-memory-utilization {value:g} must be in (0, 1]"
        )
    return value


def max_model_len(args: Sequence[str]) -> int | None:
    """vLLM's --max-model-len from extra_args (a plain token count), or None when not set."""
    raw = engine_flag(args, "--max-model-len")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise EngineArgError(
            f"serving.extra_args: --max-model-len {raw!r} must be a positive integer"
        )
    return int(raw)


def cache_dtype_bytes(args: Sequence[str], shape: ModelShape) -> int:
    """Bytes per KV element: --kv-cache-dtype fp8* is one byte, auto is the model's dtype."""
    raw = engine_flag(args, "--kv-cache-dtype")
    if raw is None or raw == "auto":
        return shape.dtype_bytes
    if raw.startswith("fp8"):
        return 1
    raise EngineArgError(f"serving.extra_args: --kv-cache-dtype {raw!r} is not sized by this check")


# --- the fit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KvFit:
    """Outcome of the check on one GPU of the layout."""

    fits: bool
    max_len: int
    max_len_from: str  # "--max-model-len" or "config.json max_position_embeddings"
    need_bytes: int
    budget_bytes: int
    utilization: float
    longest_fitting_tokens: int

    def describe(self) -> str:
        need, budget = self.need_bytes / GIB, self.budget_bytes / GIB
        if self.fits:
            return (
                f"KV fit: one {self.max_len}-token sequence ({self.max_len_from}) needs "
                f"{need:.2f} GiB of KV cache per GPU; at most {budget:.2f} GiB is left after "
                f"the weights at --gpu-memory-utilization {self.utilization:g}"
            )
        return (
            f"one {self.max_len}-token sequence ({self.max_len_from}) needs {need:.2f} GiB of "
            f"KV cache per GPU, but at most {budget:.2f} GiB is left after the weights at "
            f"--gpu-memory-utilization {self.utilization:g}, so vLLM refuses to start; "
            f"even ignoring activation memory at most {self.longest_fitting_tokens} tokens "
            "fit: set a smaller --max-model-len in serving.extra_args (or a larger "
            "--gpu-memory-utilization, more GPUs or larger GPUs)"
        )


def check_fit(
    shape: ModelShape,
    *,
    args: Sequence[str],
    weights_bytes: int,
    gpus: int,
    tp: int,
    pp: int,
    gpu_memory_gib: float,
) -> KvFit:
    """Weights shard plus one max-length sequence against one GPU at the chosen utilization."""
    utilization = gpu_memory_utilization(args)
    user_len = max_model_len(args)
    max_len = user_len if user_len is not None else shape.max_position_embeddings
    source = "--max-model-len" if user_len is not None else "config.json max_position_embeddings"
    element_bytes = cache_dtype_bytes(args, shape)
    need = kv_bytes_for_sequence(
        shape, tokens=max_len, tp=tp, pp=pp, cache_dtype_bytes=element_bytes
    )
    budget = int(gpu_memory_gib * GIB * utilization - weights_bytes / gpus)
    per_token = kv_bytes_per_token(shape, tp=tp, pp=pp, cache_dtype_bytes=element_bytes)
    longest = 0
    if budget > 0:
        # Whole blocks only, as vLLM allocates them.
        longest = budget // (per_token * VLLM_CUDA_BLOCK_SIZE) * VLLM_CUDA_BLOCK_SIZE
    return KvFit(
        fits=need <= budget,
        max_len=max_len,
        max_len_from=source,
        need_bytes=need,
        budget_bytes=max(budget, 0),
        utilization=utilization,
        longest_fitting_tokens=longest,
    )
