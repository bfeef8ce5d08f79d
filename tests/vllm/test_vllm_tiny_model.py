"""The generated model's files, checked offline (no engine): tokenizer, template, weights."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from sandbox.vllm.tiny_model import (
    IM_END,
    IM_START,
    SEED_ANSWER,
    SPECIAL_TOKENS,
    TinyModelError,
    TinyModelInfo,
    generate_tiny_model,
    read_safetensors_header,
    render_chat,
)

SEED_MESSAGES = [{"role": "user", "content": "測試一下"}]


def test_files_in_modelscope_layout(tiny_model: Path) -> None:
    names = {p.name for p in tiny_model.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "configuration.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    } <= names


def test_tokenizer_loads_and_vocab_matches_config(tiny_model: Path) -> None:
    tok = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["vocab_size"] == tok.get_vocab_size(with_added_tokens=True)
    assert 400 <= config["vocab_size"] <= 600
    for special in SPECIAL_TOKENS:
        token_id = tok.token_to_id(special)
        assert token_id is not None
        assert tok.encode(special).ids == [token_id]
    tok_config = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_config["eos_token"] == IM_END
    gen = json.loads((tiny_model / "generation_config.json").read_text())
    assert tok.token_to_id(IM_END) in gen["eos_token_id"]


def test_chat_template_renders_qwen_turns(tiny_model: Path) -> None:
    tok = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    prompt = render_chat(SEED_MESSAGES)
    assert prompt.endswith(f"{IM_START}user\n測試一下{IM_END}\n{IM_START}assistant\n")
    assert prompt.startswith(f"{IM_START}system\n")
    encoded = tok.encode(prompt)
    assert encoded.tokens.count(IM_START) == 3
    # Byte-level: the CJK user text survives the round trip.
    assert tok.decode(encoded.ids, skip_special_tokens=False) == prompt


def test_answer_tokens_unique_and_recorded(tiny_model: Path, tiny_info: TinyModelInfo) -> None:
    tok = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    assert tiny_info.answer == SEED_ANSWER
    ids = tok.encode(SEED_ANSWER, add_special_tokens=False).ids
    assert ids == tiny_info.answer_token_ids
    assert len(set(ids)) == len(ids)
    # The source runbook asks for 30 tokens: the answer and <|im_end|> must fit.
    assert len(ids) + 1 <= 30
    assert tok.decode(ids) == SEED_ANSWER


def test_safetensors_header_and_shapes_match_config(tiny_model: Path) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    path = tiny_model / "model.safetensors"
    header = read_safetensors_header(path)
    hidden, heads, kv = (
        config["hidden_size"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
    )
    head_dim, inter, vocab = config["head_dim"], config["intermediate_size"], config["vocab_size"]
    expected = {
        "model.embed_tokens.weight": [vocab, hidden],
        "lm_head.weight": [vocab, hidden],
        "model.norm.weight": [hidden],
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        expected |= {
            p + "input_layernorm.weight": [hidden],
            p + "post_attention_layernorm.weight": [hidden],
            p + "self_attn.q_proj.weight": [heads * head_dim, hidden],
            p + "self_attn.k_proj.weight": [kv * head_dim, hidden],
            p + "self_attn.v_proj.weight": [kv * head_dim, hidden],
            p + "self_attn.o_proj.weight": [hidden, heads * head_dim],
            p + "self_attn.q_norm.weight": [head_dim],
            p + "self_attn.k_norm.weight": [head_dim],
            p + "mlp.gate_proj.weight": [inter, hidden],
            p + "mlp.up_proj.weight": [inter, hidden],
            p + "mlp.down_proj.weight": [hidden, inter],
        }
    assert {name: t.shape for name, t in header.tensors.items()} == expected
    # Offsets tile the data section exactly, 2 bytes per bf16 value.
    spans = sorted((t.start, t.end) for t in header.tensors.values())
    assert spans[0][0] == 0
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end == start
    assert header.header_len % 8 == 0
    assert path.stat().st_size == header.data_start + spans[-1][1]
    for t in header.tensors.values():
        assert t.dtype == "BF16"
        assert t.end - t.start == 2 * int(np.prod(t.shape))


def _load_bf16(path: Path, name: str) -> np.ndarray:
    header = read_safetensors_header(path)
    entry = header.tensors[name]
    with path.open("rb") as f:
        f.seek(header.data_start + entry.start)
        raw = np.frombuffer(f.read(entry.end - entry.start), dtype="<u2")
    as_f32 = (raw.astype("<u4") << 16).view("<f4")
    return as_f32.reshape(entry.shape)


def test_weights_decode_the_answer_greedily(tiny_model: Path, tiny_info: TinyModelInfo) -> None:
    """Run the model's math by hand: zeroed layer outputs leave the embedding, so the final
    norm and the head alone pick each next token."""
    path = tiny_model / "model.safetensors"
    embed = _load_bf16(path, "model.embed_tokens.weight")
    head = _load_bf16(path, "lm_head.weight")
    for layer in range(2):
        assert not _load_bf16(path, f"model.layers.{layer}.self_attn.o_proj.weight").any()
        assert not _load_bf16(path, f"model.layers.{layer}.mlp.down_proj.weight").any()
    tok = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    token = tok.encode(render_chat(SEED_MESSAGES)).ids[-1]
    out: list[int] = []
    for _ in range(40):
        x = embed[token]
        x = x / np.sqrt(np.mean(x * x) + 1e-6)
        logits = head @ x
        top2 = np.sort(logits)[-2:]
        assert top2[1] - top2[0] >= 60  # no sampling temperature can overturn this margin
        token = int(np.argmax(logits))
        out.append(token)
        if token in tiny_info.eos_token_ids:
            break
    assert out == [*tiny_info.answer_token_ids, tok.token_to_id(IM_END)]


def test_custom_answer_and_served_name(tmp_path: Path) -> None:
    dest = generate_tiny_model(tmp_path / "m", answer="hello world", served_name="hello-model")
    info = TinyModelInfo.load(dest)
    assert info.answer == "hello world"
    assert info.served_name == "hello-model"
    tok = Tokenizer.from_file(str(dest / "tokenizer.json"))
    assert tok.decode(info.answer_token_ids) == "hello world"


def test_answer_too_long_is_refused(tmp_path: Path) -> None:
    answer = "".join(chr(0x4E00 + i) for i in range(400))
    with pytest.raises(TinyModelError, match="tokens"):
        generate_tiny_model(tmp_path / "m", answer=answer)
    assert not (tmp_path / "m" / "model.safetensors").exists()
