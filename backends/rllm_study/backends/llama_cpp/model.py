"""The llama.cpp model and context setup: loading a GGUF (`LlamaModel`: weights, vocabulary,
tokenizer, chat template), KV-cache types and budgets, a request's sampler chain
(`make_sampler`) and the context the engine decodes in (`new_context`). llama.cpp's log goes
to a tail (`last_log`) that error messages quote. See the engine's module docstring for what
the options mean (batch invariance, where tokens are drawn).
"""

from __future__ import annotations

import ctypes
from collections import deque
from functools import lru_cache
from pathlib import Path

import llama_cpp as lc

from rllm_study.backends.base import Request
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.backends.phases import THINK_CLOSE, THINK_OPEN
from rllm_study.backends.sampling import TEMPERATURE_FIRST
from rllm_study.errors import UserError

# KV-cache element types by name, with their size in bytes per element (block size folded in).
KV_TYPES = {
    "f32": (lc.GGML_TYPE_F32, 4.0),
    "f16": (lc.GGML_TYPE_F16, 2.0),
    "bf16": (30, 2.0),
    "q8_0": (lc.GGML_TYPE_Q8_0, 34 / 32),
    "q5_1": (lc.GGML_TYPE_Q5_1, 24 / 32),
    "q5_0": (lc.GGML_TYPE_Q5_0, 22 / 32),
    "q4_1": (lc.GGML_TYPE_Q4_1, 20 / 32),
    "q4_0": (lc.GGML_TYPE_Q4_0, 18 / 32),
}
FLASH_ATTN_AUTO, FLASH_ATTN_OFF, FLASH_ATTN_ON = -1, 0, 1

_log_tail: deque[str] = deque(maxlen=30)


@lc.llama_log_callback
def _log_to_tail(level, text, user_data):  # keeps llama.cpp quiet; the tail explains failures
    if text:
        _log_tail.append(text.decode("utf-8", "replace"))


_backend_ready = False


def init_backend() -> None:
    """Initialise llama.cpp once per process, with its log kept in a tail (see _last_log);
    anything that loads a model through llama.cpp calls this first."""
    global _backend_ready
    if not _backend_ready:
        lc.llama_log_set(_log_to_tail, ctypes.c_void_p(0))  # module-level reference keeps the callback alive
        lc.llama_backend_init()
        _backend_ready = True


def last_log() -> str:
    lines = [line.strip() for line in _log_tail if line.strip()]
    return lines[-1] if lines else "no details from llama.cpp"


def load_model_file(path: Path, params, what: str = "this model"):
    """llama_model_load_from_file after init_backend; a file llama.cpp cannot load is a UserError
    naming the path, `what` was being loaded and llama.cpp's last log line."""
    init_backend()
    ptr = lc.llama_model_load_from_file(str(path).encode(), params)
    if not ptr:
        raise UserError(f"{path}: llama.cpp could not load {what} ({last_log()})")
    return ptr


def check_kv_type(name: str, field: str) -> int:
    if name not in KV_TYPES:
        raise UserError(f"{field}: unknown KV-cache type {name!r}; choose one of {', '.join(KV_TYPES)}")
    return KV_TYPES[name][0]


@lru_cache(maxsize=8)
def _chat_formatter(template: str, eos: str, bos: str, add_generation_prompt: bool):
    """llama-cpp-python's Jinja2 chat formatter for a template, compiled once (12 ms a compile: a
    study of thousands of cells renders its prompts through a handful of templates)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=add_generation_prompt)


class LlamaModel:
    """A loaded GGUF model: weights, vocabulary, tokenizer, chat template.

    weight_repack: llama.cpp's runtime repacking of quantized weights for its CPU kernels (on by
    default; see "Batch invariance" in the module docstring).
    """

    def __init__(self, path: Path, n_gpu_layers: int = 0, weight_repack: bool = True):
        self.path = Path(path)
        params = lc.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = weight_repack
        self.ptr = load_model_file(self.path, params)
        self.vocab = lc.llama_model_get_vocab(self.ptr)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: list[bytes | None] = [None] * self.n_vocab  # piece() per token id, filled on first use
        self._eog: list[bool | None] = [None] * self.n_vocab  # is_eog() per token id, filled on first use
        self.think_open_id = self._single_token(THINK_OPEN)
        self.think_close_id = self._single_token(THINK_CLOSE)

    def _single_token(self, text: str) -> int | None:
        toks = self.tokenize(text, add_special=False)
        return toks[0] if len(toks) == 1 else None

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (lc.llama_token * n_max)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, True)
        if n < 0:
            buf = (lc.llama_token * -n)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The token's text bytes (special tokens rendered), from the per-model table."""
        piece = self._pieces[token]
        if piece is None:
            n = lc.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, True)
            if n < 0:
                big = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self.vocab, token, big, -n, 0, True)
                piece = big.raw[:n]
            else:
                piece = self._piece_buf.raw[:n]
            self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        """End of generation (EOS, EOT, ...), from the per-model table."""
        eog = self._eog[token]
        if eog is None:
            eog = self._eog[token] = bool(lc.llama_vocab_is_eog(self.vocab, token))
        return eog

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, 4096)
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def chat_template(self) -> str | None:
        tmpl = lc.llama_model_chat_template(self.ptr, None)
        return tmpl.decode("utf-8", "replace") if tmpl else None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        template = self.chat_template()
        if not template:
            raise UserError(f"{self.path}: the model has no chat template; send raw prompts instead (--raw)")
        bos = self.piece(lc.llama_vocab_bos(self.vocab)).decode("utf-8", "replace")
        eos = self.piece(lc.llama_vocab_eos(self.vocab)).decode("utf-8", "replace")
        formatter = _chat_formatter(template, eos, bos, add_generation_prompt)
        prompt = formatter(messages=messages).prompt
        # The tokenizer adds BOS itself; a template that also writes it would double it.
        if bos and prompt.startswith(bos) and lc.llama_vocab_get_add_bos(self.vocab):
            prompt = prompt[len(bos) :]
        return prompt

    def kv_bytes_per_token(self, type_k: str, type_v: str) -> float:
        """KV bytes per token = n_layer * n_head_kv * (key_length * bytes/elem K + value_length * bytes/elem V);
        key/value_length from the GGUF (`ARCH.attention.key_length`), else n_embd / n_head."""
        n_layer = lc.llama_model_n_layer(self.ptr)
        arch = self.meta("general.architecture")
        head_dim = lc.llama_model_n_embd(self.ptr) // lc.llama_model_n_head(self.ptr)
        k_len = int(self.meta(f"{arch}.attention.key_length") or head_dim)
        v_len = int(self.meta(f"{arch}.attention.value_length") or head_dim)
        n_head_kv = lc.llama_model_n_head_kv(self.ptr)
        return n_layer * n_head_kv * (k_len * KV_TYPES[type_k][1] + v_len * KV_TYPES[type_v][1])

    def same_vocab(self, other: LlamaModel) -> bool:
        """Same token count, same text for every token id, same BOS and EOS: a valid draft/target pair."""
        a, b = self.vocab, other.vocab
        if (
            self.n_vocab != other.n_vocab
            or lc.llama_vocab_bos(a) != lc.llama_vocab_bos(b)
            or lc.llama_vocab_eos(a) != lc.llama_vocab_eos(b)
        ):
            return False
        return all(lc.llama_vocab_get_text(a, i) == lc.llama_vocab_get_text(b, i) for i in range(self.n_vocab))

    def facts(self) -> dict:
        desc = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self.ptr, desc, 256)
        return {
            "path": str(self.path),
            "description": desc.value.decode(),
            "n_params": lc.llama_model_n_params(self.ptr),
            "size_bytes": lc.llama_model_size(self.ptr),
            "n_layer": lc.llama_model_n_layer(self.ptr),
            "n_ctx_train": lc.llama_model_n_ctx_train(self.ptr),
            "n_vocab": self.n_vocab,
            "think_tokens": [self.think_open_id, self.think_close_id],
        }

    def close(self) -> None:
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None


def make_sampler(model: LlamaModel, request: Request):
    """A request's llama.cpp sampler chain: [grammar ->] greedy (temperature 0), or [grammar ->]
    [top-k ->] temperature and top-p in the request's order -> draw seeded with the request's
    seed: the distribution of `rllm_study.backends.sampling`. A grammar request samples through
    it on the host; with sample_on "device" every other request's chain runs in the decode graph
    (see "Where tokens are drawn" in the module docstring)."""
    s = request.sampling
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    if request.grammar:
        grammar = lc.llama_sampler_init_grammar(model.vocab, request.grammar.encode(), b"root")
        if not grammar:
            lc.llama_sampler_free(chain)
            raise UserError(f"request {request.id}: the GBNF grammar does not parse ({last_log()})")
        lc.llama_sampler_chain_add(chain, grammar)
    if s.temperature == 0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        return chain
    if s.top_k > 0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(s.top_k))
    steps = [lc.llama_sampler_init_temp(s.temperature), lc.llama_sampler_init_top_p(s.top_p, 1)]
    for step in steps if s.order == TEMPERATURE_FIRST else steps[::-1]:
        lc.llama_sampler_chain_add(chain, step)
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))
    return chain


def kv_budget_cells(budget_mib: float, bytes_per_token: float) -> int:
    """KV cells (tokens, all sequences together) a budget of `budget_mib` MiB holds at
    `bytes_per_token`: floor(budget_mib x 2^20 / bytes_per_token); a smaller cache type holds more."""
    cells = int(budget_mib * 2**20 // bytes_per_token)
    if cells < 16:
        raise UserError(
            f"kv_budget_mib = {budget_mib:g} holds {cells} tokens at {bytes_per_token:g} bytes each; give at least "
            f"{16 * bytes_per_token / 2**20:.3f} MiB"
        )
    return cells


def new_context(model: LlamaModel, o: LlamaCppOptions, type_k: int, type_v: int):
    params = lc.llama_context_default_params()
    params.n_ctx = o.n_ctx
    params.n_batch = o.n_batch
    params.n_ubatch = min(o.n_batch, 512)
    params.n_seq_max = o.max_seqs
    params.n_threads = o.n_threads
    params.n_threads_batch = o.n_threads
    params.type_k = type_k
    params.type_v = type_v
    params.flash_attn_type = {None: FLASH_ATTN_AUTO, True: FLASH_ATTN_ON, False: FLASH_ATTN_OFF}[o.flash_attn]
    params.kv_unified = o.kv_unified
    params.no_perf = False
    ctx = lc.llama_init_from_model(model.ptr, params)
    if not ctx:
        raise UserError(f"{model.path}: llama.cpp could not create a context with these options ({last_log()})")
    return ctx
