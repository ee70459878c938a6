"""GGUF -> MLX model folder (Hugging Face layout), offline and without torch.

mlx-lm reads Hugging Face-style folders (config.json, model.safetensors, tokenizer.json), not
GGUF. `convert_to_mlx` writes one from a GGUF so the embedded models run on MLX with no hub:
  - weights: every tensor is read with the `gguf` package, dequantized to float32 (Q4_K, Q5_0,
    Q8_0 ... all work) and stored as float16 or float32; names are mapped to the HF layout.
    For llama-architecture files llama.cpp's converter permuted the Q/K rows (to use its
    interleaved RoPE); that permutation is undone here, so the folder is a plain HF checkpoint
    that runs with the usual (non-traditional) RoPE.
  - config.json from the GGUF metadata, with the end-of-generation ids llama.cpp uses.
  - tokenizer.json built with `tokenizers` from the GGUF vocabulary, merges and pre-tokenizer
    (the split rules llama.cpp applies for that `tokenizer.ggml.pre`), checked token for token
    against llama.cpp's own tokenizer on probe texts; tokenizer_config.json carries the chat
    template from the GGUF.
Supported: architectures llama, qwen2, qwen3 with a byte-level BPE (gpt2) vocabulary, which
covers SmolLM2, Qwen2.5, DeepSeek-R1-Distill-Qwen, QwQ and Qwen3. Anything else is a UserError.
The folder is cached in the model cache (`<cache>/mlx/<gguf stem>-<path hash>-<dtype>/`) and
reused while the GGUF is unchanged (same path, size and modification time).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
from pathlib import Path

import numpy as np

from rllm_study.errors import UserError

CONVERTER_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
MARKER = "rllm_convert.json"  # written last: a folder without it is incomplete

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

# Pre-tokenizer split rules per `tokenizer.ggml.pre`, as llama.cpp applies them (llama-vocab.cpp):
# each regex splits the pieces of the one before, keeping matches as pieces of their own.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {  # pre -> (regexes, ignore_merges)
    "gpt-2": ((_GPT2,), False),
    "smollm": ((r"\p{N}", _GPT2), False),
    "starcoder": ((r"\p{N}", _GPT2), False),
    "llama-bpe": ((_LLAMA3,), True),
    "llama3": ((_LLAMA3,), True),
    "qwen2": ((_QWEN2,), False),
    "deepseek-r1-qwen": ((_QWEN2,), False),
}
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4  # llama.cpp token types (gguf TokenType)

PROBE_TEXTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "<think>\nLet me compute 12345 * 678 = 8369910.</think>\nThe answer is \\boxed{8369910}.",
    "def f(x):\n\treturn x**2  # square\n\n\n    print(f'{x:>10}')",
    "Ünïcödé — naïve café, 東京, Привет, emoji 🙂, tabs\tand  double  spaces.  ",
    "I'm sure they'll say it's fine; WE'RE DONE. 3.14159, -2e10, 1,000,000",
)


def default_dtype() -> str:
    """float16 on Apple Silicon (Metal), float32 elsewhere: mlx's CPU float16 matmuls are slower
    than float32 ones on x86 (docs/engines.md, "MLX (Apple Silicon)", has the measurement)."""
    return "float16" if platform.system() == "Darwin" and platform.machine() == "arm64" else "float32"


def mlx_dir_for(gguf_path: Path, dtype: str) -> Path:
    """Where the converted folder of a GGUF lives in the model cache."""
    from rllm_study.models import cache_dir

    tag = hashlib.sha256(str(gguf_path.resolve()).encode()).hexdigest()[:8]
    return cache_dir() / "mlx" / f"{gguf_path.stem}-{tag}-{dtype}"


def convert_to_mlx(ref, dtype: str | None = None) -> Path:
    """The MLX folder for a resolved model (`ref.path` is a GGUF), converting it once
    (dtype: float16 or float32; default `default_dtype()`)."""
    return convert_gguf(Path(ref.path), dtype)


def convert_gguf(gguf_path: Path, dtype: str | None = None, out_dir: Path | None = None) -> Path:
    """Convert `gguf_path` into `out_dir` (default `mlx_dir_for`); reuse a complete, current one."""
    dtype = dtype or default_dtype()
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported for MLX conversion; use one of {', '.join(DTYPES)}")
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: no such GGUF file")
    out = Path(out_dir) if out_dir else mlx_dir_for(gguf_path, dtype)
    source = {
        "gguf": str(gguf_path.resolve()),
        "size": gguf_path.stat().st_size,
        "mtime_ns": gguf_path.stat().st_mtime_ns,
        "dtype": dtype,
        "converter": CONVERTER_VERSION,
    }
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return out

    try:
        import gguf
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as err:
        raise UserError(f"converting to MLX needs {err.name}: pip install 'rllm-study[mlx]'") from None

    reader = gguf.GGUFReader(str(gguf_path))
    meta = _metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UserError(
            f"{gguf_path}: architecture {arch!r} cannot be converted to MLX; "
            f"supported: {', '.join(ARCHITECTURES)} (or pass an MLX/HF folder instead)"
        )
    weights = _weights(reader, meta, arch, gguf_path, DTYPES[dtype])
    with _LlamaVocab(gguf_path) as vocab:
        config = _config(meta, arch, tied="lm_head.weight" not in weights, eos_ids=vocab.eog_ids())
        tokenizer_json, tokenizer_config = _tokenizer(meta, gguf_path, vocab)

    tmp = out.with_name(out.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        from safetensors.numpy import save_file

        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": config["eos_token_id"]}))
        tokenizer_json.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        (tmp / MARKER).write_text(json.dumps(source))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"{out}: cannot write the MLX folder ({err.strerror}); set RLLM_STUDY_CACHE to a writable folder"
        ) from err
    return out


def export_tokenizer(gguf_path: Path, out_dir: Path) -> Path:
    """Only the tokenizer of a GGUF, as a Hugging Face tokenizer folder (tokenizer.json and
    tokenizer_config.json with the chat template; no weights, a few MB), for tools that count
    tokens with `transformers.AutoTokenizer` (AIPerf, GuideLLM). Built and checked against
    llama.cpp exactly as `convert_gguf` builds the MLX folder's tokenizer."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: no such GGUF file")
    try:
        import gguf
        import tokenizers  # noqa: F401
    except ImportError as err:
        raise UserError(f"exporting a tokenizer needs {err.name}: pip install 'rllm-study[mlx]'") from None
    meta = _metadata(gguf.GGUFReader(str(gguf_path)))
    with _LlamaVocab(gguf_path) as vocab:
        tokenizer_json, tokenizer_config = _tokenizer(meta, gguf_path, vocab)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer_json.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    except OSError as err:
        raise UserError(f"{out}: cannot write the tokenizer folder ({err.strerror})") from None
    return out


def _metadata(reader) -> dict:
    meta = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        meta[name] = field.contents()
    return meta


def _unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation: rows (head, 2, half) were stored as (head, half, 2)."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _weights(reader, meta: dict, arch: str, path: Path, dtype) -> dict[str, np.ndarray]:
    from gguf import GGMLQuantizationType, dequantize

    n_head = meta[f"{arch}.attention.head_count"]
    n_head_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    out = {}
    for t in reader.tensors:
        base, _, kind = t.name.rpartition(".")
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
        if m and m.group(2) in LAYER_TENSORS:
            name = f"model.layers.{m.group(1)}.{LAYER_TENSORS[m.group(2)]}.{kind}"
        elif base in GLOBAL_TENSORS:
            name = f"{GLOBAL_TENSORS[base]}.{kind}"
        else:
            hint = " (llama3-style RoPE scaling)" if base == "rope_freqs" else ""
            raise UserError(
                f"{path}: tensor {t.name!r}{hint} has no MLX counterpart in this converter; "
                f"use an MLX/HF folder of this model instead"
            )
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w = np.asarray(t.data, dtype=np.float32)
        else:
            w = dequantize(t.data, t.tensor_type)
        if arch == "llama" and m and m.group(2) in ("attn_q", "attn_k"):
            w = _unpermute_rows(w, n_head if m.group(2) == "attn_q" else n_head_kv)
        out[name] = np.ascontiguousarray(w.astype(dtype))
    return out


def _config(meta: dict, arch: str, tied: bool, eos_ids: list[int]) -> dict:
    def key(name, default=None):
        return meta.get(f"{arch}.{name}", default)

    scaling = key("rope.scaling.type")
    if scaling not in (None, "none"):
        raise UserError(f"RoPE scaling {scaling!r} in this GGUF is not converted to MLX; use an MLX/HF folder instead")
    n_head = key("attention.head_count")
    config = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": key("embedding_length"),
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": key("attention.head_count_kv", n_head),
        "head_dim": key("attention.key_length", key("embedding_length") // n_head),
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
        "rope_theta": key("rope.freq_base", 10000.0),
        "max_position_embeddings": key("context_length"),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "tie_word_embeddings": tied,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos_ids,
    }
    return config


def _tokenizer(meta: dict, gguf_path: Path, vocab: _LlamaVocab):
    """(tokenizers.Tokenizer, tokenizer_config dict) equivalent to llama.cpp's for this GGUF."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise UserError(f"{gguf_path}: tokenizer {kind!r} cannot be converted to MLX (byte-level BPE 'gpt2' only)")
    if pre not in PRE_TOKENIZERS:
        raise UserError(
            f"{gguf_path}: pre-tokenizer {pre!r} is not known to the MLX converter; known: {', '.join(PRE_TOKENIZERS)}"
        )
    regexes, ignore_merges = PRE_TOKENIZERS[pre]
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL]
    )
    tok.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_USER_DEFINED]
    )

    def special(name):
        i = meta.get(f"tokenizer.ggml.{name}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos = special("bos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", ignore_merges))  # llama.cpp: llama3 types add BOS
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
        )
    _check_against_llama_cpp(tok, gguf_path, vocab)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": special("eos"),
        "unk_token": special("unknown"),
        "pad_token": special("padding"),
        "add_bos_token": add_bos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.get(f"{meta['general.architecture']}.context_length"),
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    return tok, {k: v for k, v in config.items() if v is not None}


def _check_against_llama_cpp(tok, gguf_path: Path, vocab: _LlamaVocab) -> None:
    """Raise unless the built tokenizer gives llama.cpp's token ids on every probe text."""
    for text in PROBE_TEXTS:
        ours, theirs = tok.encode(text).ids, vocab.tokenize(text)
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            raise UserError(
                f"{gguf_path}: the MLX tokenizer built from this GGUF differs from llama.cpp's "
                f"at token {at} of probe {text[:30]!r}; this vocabulary is not supported"
            )


class _LlamaVocab:
    """llama.cpp's tokenizer for a GGUF, loaded vocabulary-only (no weights)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import llama_cpp as lc

        from rllm_study.backends.llama_cpp.model import load_model_file

        params = lc.llama_model_default_params()
        params.vocab_only = True
        self._lc = lc
        self.model = load_model_file(self.path, params, "this GGUF's vocabulary")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_tokens = lc.llama_vocab_n_tokens(self.vocab)
        return self

    def __exit__(self, *exc):
        self._lc.llama_model_free(self.model)

    def eog_ids(self) -> list[int]:
        """End-of-generation token ids, exactly as llama.cpp decides them."""
        return [i for i in range(self.n_tokens) if self._lc.llama_vocab_is_eog(self.vocab, i)]

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        buf = (self._lc.llama_token * (len(data) + 8))()
        n = self._lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, True)
        return list(buf[:n])
