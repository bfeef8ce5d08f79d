"""KV-cache sizing against vLLM's own arithmetic (issue 16, F3/F3b).

Expected numbers are derived by hand from vllm-project/vllm `vllm/v1/kv_cache_interface.py`
(`FullAttentionSpec.real_page_size_bytes = block_size * num_kv_heads * (head_size +
head_size_v) * dtype_size`, `max_memory_usage_bytes = cdiv(max_model_len, block_size) *
page_size_bytes`, per layer) and `vllm/config/model.py` (`get_num_kv_heads = max(1,
total_kv_heads // tp)`). The Qwen3-8B case reproduces vLLM's own start-up error quoted in the
real-cluster audit: "... max seq len (40960), (5.62 GiB KV cache is needed ...".
"""

from __future__ import annotations

from typing import Any

import pytest

from llm_rollout.kv_cache import (
    GIB,
    EngineArgError,
    ModelConfigError,
    check_fit,
    kv_bytes_for_sequence,
    kv_bytes_per_token,
    model_shape_from_config,
)

from .model_configs import QWEN3_8B, QWEN3_8B_BYTES

QWEN3_32B: dict[str, Any] = {**QWEN3_8B, "num_hidden_layers": 64, "num_attention_heads": 64}
QWEN3_32B_BYTES = 65_535_194_824


def test_qwen3_8b_one_full_sequence_is_vllms_5_62_gib() -> None:
    shape = model_shape_from_config(QWEN3_8B)
    # 36 layers x 8 kv heads x (128 + 128) x 2 bytes = 147456 B = 144 KiB per token.
    assert kv_bytes_per_token(shape, tp=1, pp=1, cache_dtype_bytes=2) == 147_456
    need = kv_bytes_for_sequence(shape, tokens=40960, tp=1, pp=1, cache_dtype_bytes=2)
    assert need == 2560 * 16 * 147_456 == 6_039_797_760
    assert f"{need / GIB:.2f}" == "5.62"


def test_tensor_and_pipeline_parallel_split_heads_and_layers() -> None:
    shape = model_shape_from_config(QWEN3_32B)
    # TP=4: 8 // 4 = 2 kv heads per GPU; 64 x 2 x 256 x 2 = 65536 B (64 KiB) per token.
    assert kv_bytes_per_token(shape, tp=4, pp=1, cache_dtype_bytes=2) == 65_536
    # TP=16 replicates: max(1, 8 // 16) = 1 head per GPU.
    assert kv_bytes_per_token(shape, tp=16, pp=1, cache_dtype_bytes=2) == 64 * 1 * 256 * 2
    # PP=3: the largest stage holds ceil(64 / 3) = 22 layers.
    assert kv_bytes_per_token(shape, tp=1, pp=3, cache_dtype_bytes=2) == 22 * 8 * 256 * 2
    # fp8 KV cache halves it.
    assert kv_bytes_per_token(shape, tp=4, pp=1, cache_dtype_bytes=1) == 32_768
    # A partial block costs a whole block.
    assert kv_bytes_for_sequence(shape, tokens=17, tp=4, pp=1, cache_dtype_bytes=2) == (32 * 65_536)


def test_head_dim_falls_back_to_hidden_over_heads() -> None:
    config = {k: v for k, v in QWEN3_8B.items() if k != "head_dim"}
    assert model_shape_from_config(config).head_dim == 4096 // 32


def test_single_gpu_example_without_max_model_len_is_refused() -> None:
    # F3: 24 GiB x 0.8 = 19.2 GiB, minus 15.26 GiB of weights leaves < 3.94 GiB < 5.62 GiB.
    fit = check_fit(
        model_shape_from_config(QWEN3_8B),
        args=["--max-num-batched-tokens", "1024", "--gpu-memory-utilization", "0.8"],
        weights_bytes=QWEN3_8B_BYTES,
        gpus=1,
        tp=1,
        pp=1,
        gpu_memory_gib=24,
    )
    assert not fit.fits
    assert fit.max_len == 40960
    assert fit.utilization == 0.8
    assert fit.budget_bytes == int(24 * GIB * 0.8 - QWEN3_8B_BYTES)
    # Whole 16-token blocks of 144 KiB per token within that budget.
    assert fit.longest_fitting_tokens == fit.budget_bytes // (147_456 * 16) * 16
    assert "--max-model-len" in fit.describe() and "5.62 GiB" in fit.describe()


def test_single_gpu_with_max_model_len_8192_fits() -> None:
    fit = check_fit(
        model_shape_from_config(QWEN3_8B),
        args=["--gpu-memory-utilization=0.8", "--max-model-len", "8192"],
        weights_bytes=QWEN3_8B_BYTES,
        gpus=1,
        tp=1,
        pp=1,
        gpu_memory_gib=24,
    )
    assert fit.fits
    assert fit.need_bytes == 512 * 16 * 147_456
    assert fit.max_len_from == "--max-model-len"


def test_default_utilization_is_used_when_the_flag_is_absent() -> None:
    fit = check_fit(
        model_shape_from_config(QWEN3_32B),
        args=[],
        weights_bytes=QWEN3_32B_BYTES,
        gpus=4,
        tp=4,
        pp=1,
        gpu_memory_gib=24,
    )
    assert fit.utilization == 0.92
    # 40960 x 64 KiB = 2.5 GiB against 24 x 0.92 - 15.26 = 6.82 GiB.
    assert fit.fits and fit.need_bytes == 40960 * 65_536


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"num_hidden_layers": True}, "num_hidden_layers"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"num_hidden_layers": "36"}, "num_hidden_layers"),
        ({"num_key_value_heads": 5}, "num_key_value_heads"),
        ({"num_key_value_heads": 64}, "num_key_value_heads"),
        ({"head_dim": -128}, "head_dim"),
        ({"max_position_embeddings": 10**12}, "max_position_embeddings"),
        ({"torch_dtype": "int3"}, "torch_dtype"),
        ({"kv_lora_rank": 512}, "kv_lora_rank"),
    ],
)
def test_impossible_config_values_are_refused_naming_the_key(
    change: dict[str, Any], key: str
) -> None:
    with pytest.raises(ModelConfigError, match=key):
        model_shape_from_config({**QWEN3_8B, **change})


def test_config_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ModelConfigError, match="JSON object"):
        model_shape_from_config(["not", "a", "mapping"])


@pytest.mark.parametrize(
    "args",
    [
        ["--gpu-memory-utilization", "lots"],
        ["--gpu-memory-utilization", "1.5"],
        ["--max-model-len", "-1"],
        ["--max-model-len"],
        ["--kv-cache-dtype", "int4"],
    ],
)
def test_unusable_engine_flags_are_refused_naming_the_field(args: list[str]) -> None:
    with pytest.raises(EngineArgError, match=r"serving\.extra_args"):
        check_fit(
            model_shape_from_config(QWEN3_8B),
            args=args,
            weights_bytes=QWEN3_8B_BYTES,
            gpus=1,
            tp=1,
            pp=1,
            gpu_memory_gib=24,
        )
