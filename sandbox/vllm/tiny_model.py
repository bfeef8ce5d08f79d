"""A tiny Qwen3-architecture model that real vLLM serves on a CPU and that answers a fixed text.

The files are written in ModelScope/Hugging Face layout (``config.json``, ``tokenizer.json``,
``model.safetensors``, ...) so that the sandbox hub serves them and the mirror moves them like any
other model. Runs in the project venv: ``tokenizers`` trains the tokenizer and the weights are
written with numpy, without torch.

How the answer becomes deterministic: ``o_proj`` and ``down_proj`` are zero, so every layer adds
nothing and the final hidden state is the token's own embedding. The model is then a bigram
table: the untied ``lm_head`` maps the previous token straight to the next one. Each answer token
gets its own basis direction in the embedding space; every other token shares direction 0. The
head sends direction 0 to the first answer token, answer token ``k`` to ``k + 1`` and the last
one to ``<|im_end|>``. Whatever the prompt, the model therefore says the answer and stops, with
a logit margin of 64 that no temperature a smoke test uses can overturn.

A bigram chain only depends on the previous token, so the answer's tokens must all differ. The
tokenizer is trained so that the answer splits into short, unique pieces (each piece is a
training sequence of its own, repeated often enough that BPE merges it into a single token);
the result is verified, never assumed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import jinja2.sandbox
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

# The expected answer of the source runbook's verification request (Qwen3-32B answering
# "測試一下"), so that the smoke test's default request and expectation hold on the sandbox.
SEED_ANSWER = (
    "<think>\n好的,使用者發來“測試一下”,我需要先確認他們的需求。"
    "可能是在測試我的功能,或者想看看我的反應。"
)
DEFAULT_ANSWER = SEED_ANSWER
DEFAULT_SERVED_NAME = "tiny-qwen3"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
# The CPU attention kernel rejects head_dim 16 at the first request; 32 works.
HEAD_DIM = 32
INTERMEDIATE = 128
VOCAB_TARGET = 512
MAX_POSITIONS = 2048
# Answer tokens need their own embedding direction; direction 0 is shared by all other tokens.
MAX_ANSWER_TOKENS = HIDDEN - 1
# The source runbook's request asks for 30 tokens; the answer plus <|im_end|> must fit in them
# for the reply to end with finish_reason "stop".
PIECE_CHARS = 3
# RMSNorm scales a unit basis vector to sqrt(HIDDEN) = 8; 8 * 8 = 64 logits of margin.
HEAD_GAIN = 8.0

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Ordinary text so that the vocabulary holds more than the answer and the template words.
_GENERAL_TEXT = (
    "The quick brown fox jumps over the lazy dog. A model is served by an engine on a node; "
    "the engine reads its weights from a volume, answers requests and reports metrics. "
    "Hello, how are you today? Please summarize the following text in one sentence. "
    "Tokens are produced one at a time until the end of the turn. 0123456789 + - * / = ( ) "
)


class TinyModelError(ValueError):
    """The requested answer cannot be encoded as a deterministic bigram chain."""


@dataclass(frozen=True)
class TinyModelInfo:
    """What a generated model answers; written next to the weights as ``tiny_model.json``."""

    served_name: str
    answer: str
    answer_token_ids: list[int]
    vocab_size: int
    eos_token_ids: list[int]

    @classmethod
    def load(cls, model_dir: Path) -> TinyModelInfo:
        data = json.loads((model_dir / INFO_FILE).read_text())
        return cls(
            served_name=str(data["served_name"]),
            answer=str(data["answer"]),
            answer_token_ids=[int(i) for i in data["answer_token_ids"]],
            vocab_size=int(data["vocab_size"]),
            eos_token_ids=[int(i) for i in data["eos_token_ids"]],
        )


INFO_FILE = "tiny_model.json"


def split_answer(answer: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Short pieces covering ``answer``, each distinct from all the others."""
    pieces: list[str] = []
    start = 0
    while start < len(answer):
        end = min(start + piece_chars, len(answer))
        while answer[start:end] in pieces and end < len(answer):
            end += 1
        piece = answer[start:end]
        if piece in pieces:
            raise TinyModelError(f"answer repeats its ending {piece!r}; no unique split exists")
        pieces.append(piece)
        start = end
    return pieces


def _train_tokenizer(pieces: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    # No regex split: merges may cross spaces and punctuation, so that a piece like ",使用" can
    # become one token. Byte-level, so any text (CJK included) encodes without unknowns.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    turns = [
        "system\nYou are a helpful assistant.",
        "user\n",
        "assistant\n",
        "\n",
    ]
    # Each piece is its own training sequence, so no merge can join two pieces; repeated far
    # more often than anything else, so their merges come first within the vocabulary budget.
    corpus = [p for p in pieces for _ in range(64)]
    corpus += [t for t in turns for _ in range(16)]
    corpus += _GENERAL_TEXT.split(". ") * 2
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    return tokenizer


def render_chat(messages: list[dict[str, str]]) -> str:
    """The prompt text the chat template makes of ``messages`` (with the generation prompt)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)


def _bf16_bytes(array: np.ndarray) -> bytes:
    as_f32 = np.ascontiguousarray(array, dtype="<f4")
    # bfloat16 is the upper half of a float32; truncation is exact for the values that matter
    # here (0, 1, powers of two) and fine for the small random ones.
    upper = (as_f32.view("<u4") >> 16).astype("<u2")
    return upper.tobytes()


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write bfloat16 tensors in the safetensors layout (header length, JSON header, data)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        blob = _bf16_bytes(tensors[name])
        header[name] = {
            "dtype": "BF16",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    # Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for blob in blobs:
            out.write(blob)


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: list[int]
    start: int  # byte offsets relative to the data section
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    header_len: int
    tensors: dict[str, TensorEntry]

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        raw: dict[str, dict[str, object]] = json.loads(f.read(length))
    raw.pop("__metadata__", None)
    tensors = {}
    for name, entry in raw.items():
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
            raise ValueError(f"{path}: malformed header entry for {name}: {entry}")
        tensors[name] = TensorEntry(
            dtype=str(entry["dtype"]),
            shape=[int(d) for d in shape],
            start=int(offsets[0]),
            end=int(offsets[1]),
        )
    return SafetensorsHeader(header_len=int(length), tensors=tensors)


def _weights(vocab_size: int, answer_ids: list[int], im_end: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240601)

    def noise(*shape: int) -> np.ndarray:
        # Real work for the kernels to do; it cannot reach the output (o_proj/down_proj are 0).
        return rng.standard_normal(shape).astype(np.float32) * 0.02

    embed = np.zeros((vocab_size, HIDDEN), dtype=np.float32)
    embed[:, 0] = 1.0
    head = np.zeros((vocab_size, HIDDEN), dtype=np.float32)
    head[answer_ids[0], 0] = HEAD_GAIN
    for k, token in enumerate(answer_ids):
        direction = k + 1
        embed[token] = 0.0
        embed[token, direction] = 1.0
        successor = answer_ids[k + 1] if k + 1 < len(answer_ids) else im_end
        head[successor, direction] = HEAD_GAIN

    tensors: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": embed,
        "model.norm.weight": np.ones(HIDDEN, dtype=np.float32),
        "lm_head.weight": head,
    }
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        tensors[p + "input_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
        tensors[p + "self_attn.q_proj.weight"] = noise(HEADS * HEAD_DIM, HIDDEN)
        tensors[p + "self_attn.k_proj.weight"] = noise(KV_HEADS * HEAD_DIM, HIDDEN)
        tensors[p + "self_attn.v_proj.weight"] = noise(KV_HEADS * HEAD_DIM, HIDDEN)
        tensors[p + "self_attn.o_proj.weight"] = np.zeros((HIDDEN, HEADS * HEAD_DIM), np.float32)
        tensors[p + "self_attn.q_norm.weight"] = np.ones(HEAD_DIM, dtype=np.float32)
        tensors[p + "self_attn.k_norm.weight"] = np.ones(HEAD_DIM, dtype=np.float32)
        tensors[p + "mlp.gate_proj.weight"] = noise(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.up_proj.weight"] = noise(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = np.zeros((HIDDEN, INTERMEDIATE), np.float32)
    return tensors


def _config(vocab_size: int, served_name: str, eos: list[int], pad: int) -> dict[str, object]:
    return {
        "_name_or_path": served_name,
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "vocab_size": vocab_size,
        "max_position_embeddings": MAX_POSITIONS,
        "max_window_layers": LAYERS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "initializer_range": 0.02,
        "bos_token_id": pad,
        "eos_token_id": eos[0],
        "pad_token_id": pad,
    }


def generate_tiny_model(
    dest: Path,
    *,
    answer: str = DEFAULT_ANSWER,
    served_name: str = DEFAULT_SERVED_NAME,
) -> Path:
    """Write the model into ``dest`` (created if needed) and return ``dest``.

    Every chat completion the model serves is exactly ``answer`` followed by ``<|im_end|>``.
    Raises TinyModelError when ``answer`` cannot be encoded that way (too long, or a split whose
    pieces repeat).
    """
    if not answer:
        raise TinyModelError("the answer must not be empty")
    pieces = split_answer(answer)
    tokenizer = _train_tokenizer(pieces)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    ids: dict[str, int] = {}
    for special in SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(special)
        if token_id is None:
            raise TinyModelError(f"the trained tokenizer lacks {special}")
        ids[special] = token_id

    answer_ids = tokenizer.encode(answer, add_special_tokens=False).ids
    if len(answer_ids) > MAX_ANSWER_TOKENS:
        raise TinyModelError(
            f"answer encodes to {len(answer_ids)} tokens; at most {MAX_ANSWER_TOKENS} fit"
        )
    if len(set(answer_ids)) != len(answer_ids):
        raise TinyModelError(f"answer tokens repeat ({answer_ids}); the bigram chain would loop")
    if tokenizer.decode(answer_ids, skip_special_tokens=False) != answer:
        raise TinyModelError("answer does not survive an encode/decode round trip")
    # Every prompt ends with the generation prompt after a special token, so one conversation
    # shows the last token of all of them; it must lead into the answer, not into its middle.
    prompt = tokenizer.encode(render_chat([{"role": "user", "content": answer}])).ids
    if prompt[-1] in answer_ids:
        raise TinyModelError("the prompt's last token is also an answer token")

    dest.mkdir(parents=True, exist_ok=True)
    eos = [ids[IM_END], ids[ENDOFTEXT]]
    tensors = _weights(vocab_size, answer_ids, ids[IM_END])
    write_safetensors(dest / "model.safetensors", tensors)
    tokenizer.save(str(dest / "tokenizer.json"))
    _write_json(dest / "config.json", _config(vocab_size, served_name, eos, ids[ENDOFTEXT]))
    _write_json(
        dest / "generation_config.json",
        {"bos_token_id": ids[ENDOFTEXT], "eos_token_id": eos, "pad_token_id": ids[ENDOFTEXT]},
    )
    _write_json(dest / "tokenizer_config.json", _tokenizer_config(ids))
    _write_json(
        dest / "special_tokens_map.json",
        {
            "eos_token": IM_END,
            "pad_token": ENDOFTEXT,
            "additional_special_tokens": [IM_START, IM_END],
        },
    )
    # ModelScope's own descriptor; the hub lists it like any repo file.
    _write_json(dest / "configuration.json", {"framework": "pytorch", "task": "text-generation"})
    info = TinyModelInfo(
        served_name=served_name,
        answer=answer,
        answer_token_ids=answer_ids,
        vocab_size=vocab_size,
        eos_token_ids=eos,
    )
    _write_json(dest / INFO_FILE, info.__dict__)
    return dest


def _tokenizer_config(ids: dict[str, int]) -> dict[str, object]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {
            str(ids[t]): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "split_special_tokens": False,
    }


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
