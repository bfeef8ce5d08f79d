"""Synthetic ModelScope-layout models for tests and benchmarks.

``make_synthetic_model(dest, shards=8, shard_size_bytes=256 << 20, seed=0)`` writes::

    config.json  generation_config.json  tokenizer.json  tokenizer_config.json
    model-00001-of-00008.safetensors ... model-00008-of-00008.safetensors
    model.safetensors.index.json   (weight_map naming every shard)

Each shard is a valid safetensors file (8-byte little-endian header length, JSON header
with one U8 tensor covering the payload, ``__metadata__.format = "pt"``) of exactly
``shard_size_bytes`` bytes. The payload is pseudo-random and fast to generate: one 4 MiB block
from ``random.Random(seed, shard)`` is written repeatedly, each copy stamped with its block
counter, so no two blocks (and no two shards or seeds) are equal yet 2 GB take seconds.

``derive_changed_revision(src, dest, changed_shards=[2], seed=1)`` makes a new revision in
which only the listed shard numbers (1-based) differ; every other file is hardlinked (copied
when the filesystem refuses links).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path

_BLOCK = 4 * 1024 * 1024
_TENSOR = "weight"
_MIN_HEADER_PAD = 8


def shard_name(index: int, total: int) -> str:
    return f"model-{index:05d}-of-{total:05d}.safetensors"


def _header(payload_len: int, tensor: str) -> bytes:
    header = {
        "__metadata__": {"format": "pt"},
        tensor: {"dtype": "U8", "shape": [payload_len], "data_offsets": [0, payload_len]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    # safetensors pads the header with spaces to an 8-byte boundary.
    raw += b" " * (-len(raw) % 8)
    return raw


def _shard_layout(size: int, tensor: str) -> tuple[bytes, int]:
    """Header bytes and payload length such that 8 + header + payload == size exactly."""
    payload = size - 8 - _MIN_HEADER_PAD
    for _ in range(4):
        header = _header(max(payload, 0), tensor)
        payload = size - 8 - len(header)
    header = _header(payload, tensor)
    if payload < 0 or 8 + len(header) + payload != size:
        raise ValueError(f"shard size {size} is too small for a safetensors header")
    return header, payload


def write_shard(path: Path, size: int, *, seed: int, index: int, tensor: str = _TENSOR) -> None:
    header, payload = _shard_layout(size, tensor)
    block = bytearray(random.Random(f"{seed}:{index}").randbytes(_BLOCK))
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(header)))
        fh.write(header)
        written, counter = 0, 0
        while written < payload:
            # Stamping the counter makes every block distinct at no generation cost.
            block[:8] = struct.pack("<Q", counter)
            n = min(_BLOCK, payload - written)
            fh.write(block if n == _BLOCK else block[:n])
            written += n
            counter += 1


def _tensor_name(index: int) -> str:
    return f"model.layers.{index - 1}.{_TENSOR}"


def make_synthetic_model(dest: Path, *, shards: int, shard_size_bytes: int, seed: int = 0) -> Path:
    if shards < 1:
        raise ValueError("need at least one shard")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 64,
        "num_hidden_layers": shards,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "intermediate_size": 128,
        "vocab_size": 512,
        "max_position_embeddings": 512,
        "torch_dtype": "bfloat16",
        "synthetic_seed": seed,
    }
    _write_json(dest / "config.json", config)
    _write_json(
        dest / "generation_config.json",
        {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 16, "do_sample": False},
    )
    _write_json(
        dest / "tokenizer.json",
        {
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<|endoftext|>", "special": True},
                {"id": 1, "content": "<|im_start|>", "special": True},
                {"id": 2, "content": "<|im_end|>", "special": True},
            ],
            "model": {"type": "BPE", "vocab": {"hello": 3, "world": 4}, "merges": []},
        },
    )
    _write_json(
        dest / "tokenizer_config.json",
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>"},
    )
    weight_map: dict[str, str] = {}
    for i in range(1, shards + 1):
        name = shard_name(i, shards)
        write_shard(dest / name, shard_size_bytes, seed=seed, index=i, tensor=_tensor_name(i))
        weight_map[_tensor_name(i)] = name
    _write_json(
        dest / "model.safetensors.index.json",
        {"metadata": {"total_size": shards * shard_size_bytes}, "weight_map": weight_map},
    )
    return dest


def derive_changed_revision(
    src: Path, dest: Path, *, changed_shards: Sequence[int], seed: int
) -> Path:
    src, dest = Path(src), Path(dest)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    total = len(shard_files)
    changed = set(changed_shards)
    bad = [n for n in changed if not 1 <= n <= total]
    if bad:
        raise ValueError(f"shard numbers {bad} outside 1..{total}")
    dest.mkdir(parents=True, exist_ok=True)
    changed_names = {shard_name(n, total): n for n in changed}
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(src)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        n = changed_names.get(rel.as_posix())
        if n is not None:
            write_shard(target, path.stat().st_size, seed=seed, index=n, tensor=_tensor_name(n))
            continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    return dest


def _write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


__all__ = ["derive_changed_revision", "make_synthetic_model", "shard_name", "write_shard"]
