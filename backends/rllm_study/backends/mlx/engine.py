"""MLX backend (mlx-lm), in process: Metal on Apple Silicon, the CPU elsewhere.

Batched mode (the default) is continuous batching on mlx-lm's `BatchGenerator`, the scheduler
behind `mlx_lm.server`: requests join and leave between steps. One `step()` is one
`BatchGenerator.next()`: one decode step for every running sequence, then, while there is
room, one prefill chunk (`n_batch` tokens) of the newly admitted prompts. At most `max_seqs`
requests are admitted at a time; each may hold n_ctx / max_seqs tokens, prompt + output
(ctx_per_seq unless n_ctx is set), and ends with `length` when that is full.

Per request, in batched mode: temperature, top_p, top_k, order and seed (each request draws from its own
PRNG key, so its samples do not depend on what it is batched with; mlx-lm's own server
serves seeded requests one at a time instead), max_tokens, stop strings, end-of-generation.
`kv_bits` quantizes the KV cache from the first token and stays batched (mlx_kv.py).
The prefix cache is mlx-lm's LRUPromptCache: a finished request leaves the KV of its prompt
and output, keyed by tokens; a new request starts from the longest cached prefix
(PrefillDone.cached_tokens). Its budget: prefix_cache_tokens x kv_bytes_per_token bytes.

Think budget (sampling.think_budget; when to close and what to write: backends/rllm_study/backends/output.py), in
batched mode: the request leaves the generator with its KV cache (minus the end-of-generation
token's entry when that triggered the close) and re-enters with the forced `</think>` + answer
cue as its prompt, the same sampler (PRNG key) and the rest of its budget; its prompt pass is
not a second PrefillDone.

Draft mode (speculative="draft:MODEL"): mlx-lm's speculative decoding runs one sequence, so requests
are served one at a time (`capabilities().continuous_batching` is False), the prefix cache
is off and think budgets are not applied (`capabilities().think_budget` is False). Accepted draft tokens are TokenEvents with draft=True; draft_proposed counts the
tokens the draft model proposed (speculative_tokens per verification, fewer near max_tokens).

Not available here, and reported by `capabilities()` and `info().unsupported_options`:
GBNF grammars, n-gram drafting, and the llama.cpp options (KV types type_k/type_v, and the
placement/thread knobs n_gpu_layers, n_threads, flash_attn, kv_unified: MLX runs the whole
model on its default device with its own threading), which are not fields of MlxOptions.

Weights are float16 on Metal and float32 on the CPU (mlx's CPU float16 matmuls are slower:
see `mlx_convert.default_dtype`). A GGUF or registry name is converted once by `mlx_convert`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import mlx.core as mx
import psutil
from mlx.utils import tree_flatten
from mlx_lm import load as mlx_load
from mlx_lm.generate import BatchGenerator, speculative_generate_step
from mlx_lm.models.cache import KVCache, LRUPromptCache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import apply_top_k, apply_top_p, greedy_sampler

from rllm_study.backends.base import (
    FINISH_ABORT,
    FINISH_ERROR,
    FINISH_LENGTH,
    Capabilities,
    EngineInfo,
    EngineStats,
    Event,
    PrefillDone,
    Request,
    RequestAdmitted,
    SamplingParams,
    StatsExtra,
    unsupported_options,
)
from rllm_study.backends.mlx import OPENBLAS
from rllm_study.backends.mlx.convert import convert_to_mlx, default_dtype
from rllm_study.backends.mlx.kv import KV_GROUP_SIZE, make_quantized_cache
from rllm_study.backends.options import MlxOptions
from rllm_study.backends.output import CLOSE_THINK, RequestOutput, check_sampling
from rllm_study.backends.phases import THINK_CLOSE, THINK_OPEN, PhaseTracker
from rllm_study.backends.sampling import TEMPERATURE_FIRST
from rllm_study.errors import UserError

PREFIX_KEY = "model"  # one model per engine: the prefix cache needs no other key


def model_folder(model: str, dtype: str) -> Path:
    """An MLX/Hugging Face folder as is; anything else (registry name, GGUF path) is resolved
    by the model registry and converted once (mlx_convert)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not an MLX/Hugging Face model folder (no config.json)")
        return path
    from rllm_study.models import resolve_model

    return convert_to_mlx(resolve_model(model), dtype)


def load_model(model: str, dtype: str):
    """(model, tokenizer, folder) for a model reference."""
    folder = model_folder(model, dtype)
    try:
        mlx_model, tokenizer = mlx_load(str(folder))
    except (ValueError, FileNotFoundError) as err:
        raise UserError(f"{folder}: mlx-lm cannot load this model ({err})") from err
    return mlx_model, tokenizer, folder


def make_sampler(s: SamplingParams):
    """None at temperature 0 (the batch's shared greedy argmax); else the distribution of
    `rllm_study.backends.sampling` (top-k, then temperature and top-p in s.order), drawn with this
    request's own PRNG key (seeded by s.seed, split once per draw). mlx-lm's own make_sampler
    applies top-p before temperature (order "top_p_first") and top-k after top-p."""
    if s.temperature == 0:
        return None
    key = mx.random.key(s.seed)
    inv_temp = 1.0 / s.temperature

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, draw = mx.random.split(key)
        if 0 < s.top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, s.top_k)
        if s.order == TEMPERATURE_FIRST:
            logprobs = logprobs * inv_temp
        if s.top_p < 1.0:
            logprobs = apply_top_p(logprobs, s.top_p)
        return mx.random.categorical(logprobs if s.order == TEMPERATURE_FIRST else logprobs * inv_temp, key=draw)

    return sample


class RequestState:
    """A request inside the engine."""

    __slots__ = (
        "request",
        "prompt",
        "out",
        "detok",
        "uid",
        "kv_tokens",
        "budget",
        "gen",
        "caches",
        "new_round",
        "sampler",
        "kv_base",
    )

    def __init__(self, request: Request, prompt: list[int], out: RequestOutput, detok, budget: int):
        self.request = request
        self.prompt = prompt
        self.out = out
        self.detok = detok  # mlx-lm streaming detokenizer: text pieces, UTF-8 safe
        self.uid = -1  # BatchGenerator uid once admitted (batched mode)
        self.kv_tokens = 0  # tokens of this request held in the KV cache
        self.budget = budget  # output tokens allowed: max_tokens within seq_capacity
        self.gen = None  # draft mode: the speculative token generator
        self.caches = []  # draft mode: its target + draft KV caches
        self.new_round = True  # draft mode: the next token opens a verification round
        self.sampler = make_sampler(request.sampling)  # None: the batch's greedy argmax
        self.kv_base = 0  # batched mode: tokens already cached when it (re-)entered the generator


@dataclass(frozen=True, kw_only=True)
class MlxInfo(EngineInfo):
    """info() of the MLX engine: package versions, device, the context as built, KV bytes per token."""

    mlx: str
    mlx_lm: str
    device: str
    openblas_preloaded: bool
    draft_model: str | None
    context: dict
    kv_bytes_per_token: float
    sampling: str


@dataclass(frozen=True)
class MlxStats(StatsExtra):
    """stats().extra of the MLX engine: KV bytes allocated; the prefix cache's bytes and entries when on."""

    kv_bytes: int
    prefix_cache_bytes: int | None = None
    prefix_cache_entries: int | None = None


class MlxEngine:
    """Continuous batching (or one-at-a-time speculative decoding) on mlx-lm; see the module docstring."""

    def __init__(self, model: str, options: MlxOptions = MlxOptions()):
        speculative = options.speculative_method
        self.options = replace(options, n_ctx=options.n_ctx or options.max_seqs * options.ctx_per_seq)
        self.seq_capacity = self.options.n_ctx // options.max_seqs  # tokens one sequence may hold
        self.model, self.tokenizer, self.folder = load_model(model, default_dtype())
        params = tree_flatten(self.model.parameters())
        self.n_params = sum(v.size for _, v in params)
        self.dtype = next(v.dtype for _, v in params if mx.issubdtype(v.dtype, mx.floating))  # activations, KV
        self.eos_ids = set(self.tokenizer.eos_token_ids)
        self.think_ids = self._single_token(THINK_OPEN), self._single_token(THINK_CLOSE)
        self.n_layers = len(self.model.layers)
        if options.kv_bits and any(type(c) is not KVCache for c in make_prompt_cache(self.model)):
            raise UserError(
                f"kv_bits: this model ({self.folder.name}) uses sliding-window or recurrent caches; "
                f"MLX KV quantization here supports full-attention caches only"
            )
        self.draft_model = None
        if speculative and speculative.method == "draft":
            self.draft_model, draft_tok, self.draft_folder = load_model(speculative.draft_model, default_dtype())
            if draft_tok.get_vocab() != self.tokenizer.get_vocab():
                raise UserError(
                    f"speculative={options.speculative!r}: the draft model's vocabulary differs from the target's"
                )
        self.unsupported = unsupported_options(self.options, self.capabilities()) + self._draft_notes()
        self.waiting: deque[RequestState] = deque()
        self.running: dict[int, RequestState] = {}  # uid -> sequence (batched); key 0 in draft mode
        self._events: list[Event] = []
        self._proc = psutil.Process()
        self.prefix = None
        if self.options.prefix_cache and self.draft_model is None:
            budget = int(self.options.prefix_cache_tokens * self.kv_bytes_per_token())
            self.prefix = LRUPromptCache(max_size=1 << 20, max_bytes=budget)
        self.batch = self._new_batch() if self.draft_model is None else None

    # -- protocol -----------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        check_sampling(request)
        if request.grammar:
            raise UserError(
                f"request {request.id}: the mlx backend cannot apply GBNF grammars; "
                f"drop the grammar or use the llama_cpp backend"
            )
        if self.draft_model is not None and request.sampling.think_budget is not None:
            request = replace(
                request, sampling=replace(request.sampling, think_budget=None)
            )  # see the module docstring
        prompt = self.tokenizer.encode(request.prompt)
        out = RequestOutput(request, len(prompt), PhaseTracker(request.starts_in_think, *self.think_ids))
        room = self.seq_capacity - len(prompt)
        seq = RequestState(request, prompt, out, self.tokenizer.detokenizer, min(request.sampling.max_tokens, room))
        if not prompt or room < 1:
            self._finish(
                seq,
                FINISH_ERROR,
                time.perf_counter_ns(),
                f"prompt has {len(prompt)} tokens; a sequence holds 1 to {self.seq_capacity - 1} (raise ctx_per_seq)",
            )
            return
        self.waiting.append(seq)

    def abort(self, request_id: str) -> None:
        for seq in list(self.waiting) + list(self.running.values()):
            if seq.request.id == request_id:
                if seq in self.waiting:
                    self.waiting.remove(seq)
                else:
                    self._release(seq)
                self._finish(seq, FINISH_ABORT, time.perf_counter_ns())
                return

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._events)

    def step(self) -> list[Event]:
        if self.draft_model is None:
            self._step_batched()
        else:
            self._step_draft()
        events, self._events = self._events, []
        return events

    def stats(self) -> EngineStats:
        if self.batch is not None:
            kv_bytes = self.batch.prompt_cache_nbytes
        else:
            kv_bytes = sum(c.nbytes for s in self.running.values() for c in s.caches if not c.empty())
        extra = MlxStats(kv_bytes=kv_bytes)
        if self.prefix is not None:
            extra = MlxStats(
                kv_bytes=kv_bytes, prefix_cache_bytes=self.prefix.nbytes, prefix_cache_entries=len(self.prefix)
            )
        return EngineStats(
            kv_used=sum(s.kv_tokens for s in self.running.values()),
            kv_capacity=self.options.n_ctx,
            running=len(self.running),
            waiting=len(self.waiting),
            rss_bytes=self._proc.memory_info().rss,
            device_bytes=mx.get_active_memory(),
            device_peak_bytes=mx.get_peak_memory(),
            extra=extra,
        )

    def capabilities(self) -> Capabilities:
        drafting = self.draft_model is not None
        return Capabilities(
            backend="mlx",
            continuous_batching=not drafting,
            kv_cache_types=(),
            prefix_cache=not drafting,
            speculative=("draft",),
            grammar=False,
            think_budget=not drafting,
        )

    def info(self) -> MlxInfo:
        o = self.options
        args = self.model.args
        return MlxInfo(
            backend="mlx",
            build=version("mlx-lm"),
            mlx=version("mlx"),
            mlx_lm=version("mlx-lm"),
            device=str(mx.default_device()),
            openblas_preloaded=OPENBLAS,
            model={
                "path": str(self.folder),
                "model_type": getattr(args, "model_type", None),
                "dtype": str(self.dtype).removeprefix("mlx.core."),
                "n_params": self.n_params,
                "n_layer": self.n_layers,
                "think_tokens": list(self.think_ids),
            },
            draft_model=str(self.draft_folder) if self.draft_model is not None else None,
            context={
                "max_seqs": 1 if self.draft_model is not None else o.max_seqs,
                "n_ctx": o.n_ctx,
                "seq_capacity": self.seq_capacity,
                "prefill_step": o.n_batch,
                "kv_bits": o.kv_bits,
                "kv_group_size": KV_GROUP_SIZE if o.kv_bits else None,
                "prefix_cache": self.prefix is not None,
                "prefix_cache_tokens": o.prefix_cache_tokens,
                "spec": o.speculative,
                "spec_tokens": o.speculative_tokens if self.draft_model is not None else None,
            },
            kv_bytes_per_token=self.kv_bytes_per_token(),
            sampling="per request: temperature, top_p, top_k, order, seed (own PRNG key), max_tokens, stop strings",
            unsupported_options=tuple(self.unsupported),
        )

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.tokenizer.chat_template:
            raise UserError(f"{self.folder}: the model has no chat template; send raw prompts instead (--raw)")
        prompt = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        bos = self.tokenizer.bos_token
        # The tokenizer adds BOS itself; a template that also writes it would double it.
        if bos and prompt.startswith(bos) and self.tokenizer.encode("")[:1] == [self.tokenizer.bos_token_id]:
            prompt = prompt[len(bos) :]
        return prompt

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def close(self) -> None:
        for seq in list(self.running.values()):
            self._release(seq)
        self.running, self.waiting = {}, deque()
        if self.batch is not None:
            self.batch.close()
            self.batch = None
        self.prefix = None

    # -- facts ----------------------------------------------------------------------------
    def kv_bytes_per_token(self) -> float:
        """KV bytes per token = 2 (K and V) x n_layer x n_kv_heads x head_dim x bytes per element,
        where an element takes the activation dtype's size, or with kv_bits: bits/8 + 2 x dtype
        size / group size (a scale and a bias per group)."""
        a = self.model.args
        n_kv = getattr(a, "num_key_value_heads", None) or a.num_attention_heads
        head_dim = getattr(a, "head_dim", None) or a.hidden_size // a.num_attention_heads
        size = self.dtype.size
        per_elem = size if not self.options.kv_bits else self.options.kv_bits / 8 + 2 * size / KV_GROUP_SIZE
        return 2 * self.n_layers * n_kv * head_dim * per_elem

    def _single_token(self, text: str) -> int | None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def _draft_notes(self) -> list[str]:
        if self.draft_model is None or self.options.max_seqs == 1:
            return []
        return [
            f"mlx: max_seqs={self.options.max_seqs} is not used with a draft model "
            f"(mlx-lm's speculative decoding serves one request at a time)"
        ]

    # -- batched mode ---------------------------------------------------------------------
    def _new_batch(self) -> BatchGenerator:
        return BatchGenerator(
            self.model,
            stop_tokens=[] if self.options.ignore_eos else [[t] for t in sorted(self.eos_ids)],
            completion_batch_size=self.options.max_seqs,
            prefill_batch_size=self.options.max_seqs,
            prefill_step_size=self.options.n_batch,
        )

    def _step_batched(self) -> None:
        while self.waiting and len(self.running) < self.options.max_seqs:
            self._admit_batched(self.waiting.popleft())
        if not self.running:
            return
        try:
            prompt_responses, responses = self.batch.next()
        except (RuntimeError, ValueError, MemoryError) as err:  # e.g. out of memory: fail the batch, go on
            now = time.perf_counter_ns()
            for seq in self.running.values():
                self._finish(seq, FINISH_ERROR, now, f"mlx: {err}")
            self.running = {}
            self.batch.close()
            self.batch = self._new_batch()
            return
        now = time.perf_counter_ns()
        for r in prompt_responses:
            seq = self.running.get(r.uid)
            if seq is None:
                continue
            seq.kv_tokens = seq.kv_base + r.progress[0]
            if r.end_of_prompt and not seq.out.forced:
                self._events.append(PrefillDone(seq.request.id, now, len(seq.prompt), seq.out.cached_tokens))
        for r in responses:
            seq = self.running.get(r.uid)
            if seq is None:
                continue
            seq.kv_tokens = len(seq.prompt) + len(seq.out.tokens) + len(seq.out.forced) + 1
            reason = self._accept(seq, r.token, now)
            if reason == CLOSE_THINK:
                self._close_thinking(seq, r, now)
                continue
            if reason is None and r.finish_reason is not None:  # the generator's budget (seq_capacity) ran out
                reason = FINISH_LENGTH
            if reason is None:
                continue
            if r.finish_reason is None:  # the generator would go on (stop string): take it out
                caches = self.batch.remove([r.uid], return_prompt_caches=self.prefix is not None)
                cache, tokens = caches.get(r.uid, (None, None))
            else:
                cache, tokens = r.prompt_cache, r.all_tokens
            if self.prefix is not None and cache is not None:
                self.prefix.insert_cache(PREFIX_KEY, list(tokens), cache)
            del self.running[r.uid]
            self._finish(seq, reason, now)

    def _close_thinking(self, seq: RequestState, r, t_ns: int) -> None:
        """Re-enter a request with the forced close as its prompt (module docstring); it ends
        with `length` when no room is left for the close and an answer."""
        if r.finish_reason == "length":  # the sequence's room (seq_capacity) is spent
            del self.running[r.uid]
            return self._finish(seq, FINISH_LENGTH, t_ns)
        if r.finish_reason is None:
            cache, tokens = self.batch.remove([r.uid], return_prompt_caches=True)[r.uid]
        else:
            cache, tokens = r.prompt_cache, r.all_tokens
        del self.running[r.uid]
        tokens = list(tokens)
        if (
            seq.out.tokens and seq.out.tokens[-1] in self.eos_ids and not self.options.ignore_eos
        ):  # the generator fed it: drop its KV
            trim_prompt_cache(cache, 1)
            tokens = tokens[:-1]
        seq.detok.finalize()
        tail = seq.detok.last_segment
        seq.detok.reset()
        seq.out.close_thinking(
            lambda text: self.tokenizer.encode(text, add_special_tokens=False), self.think_ids[1], tail
        )
        left = min(seq.budget - len(seq.out.tokens), self.seq_capacity - len(tokens) - len(seq.out.forced))
        if left < 1:
            return self._finish(seq, FINISH_LENGTH, t_ns)
        seq.kv_base = len(tokens)
        (seq.uid,) = self.batch.insert(
            [seq.out.forced], [left], caches=[cache], all_tokens=[tokens], samplers=[seq.sampler]
        )
        self.running[seq.uid] = seq

    def _admit_batched(self, seq: RequestState) -> None:
        cache, rest = None, seq.prompt
        if self.prefix is not None:
            cache, rest = self.prefix.fetch_nearest_cache(PREFIX_KEY, seq.prompt)
            if cache is not None and not rest:  # the whole prompt is cached: recompute its last token
                trim_prompt_cache(cache, 1)
                rest = seq.prompt[-1:]
        if cache is None and self.options.kv_bits:
            cache = make_quantized_cache(self.n_layers, self.options.kv_bits)
        cached = len(seq.prompt) - len(rest)
        seq.out.cached_tokens = cached
        seq.kv_tokens = seq.kv_base = cached
        (seq.uid,) = self.batch.insert(
            [rest], [seq.budget], caches=[cache], all_tokens=[seq.prompt[:cached]], samplers=[seq.sampler]
        )
        self.running[seq.uid] = seq
        self._events.append(RequestAdmitted(seq.request.id, time.perf_counter_ns()))

    # -- draft mode -----------------------------------------------------------------------
    def _step_draft(self) -> None:
        if not self.running:
            if self.waiting:
                self._start_draft(self.waiting.popleft())
            return
        seq = self.running[0]
        try:
            token, _, from_draft = next(seq.gen)
        except StopIteration:
            self._release(seq)
            return self._finish(seq, FINISH_LENGTH, time.perf_counter_ns())
        except (RuntimeError, ValueError, MemoryError) as err:
            self._release(seq)
            return self._finish(seq, FINISH_ERROR, time.perf_counter_ns(), f"mlx: {err}")
        now = time.perf_counter_ns()
        if seq.new_round:  # speculative_generate_step drafts min(speculative_tokens, tokens left) per round
            seq.out.draft_proposed += min(self.options.speculative_tokens, seq.budget - len(seq.out.tokens))
        seq.new_round = not from_draft
        seq.kv_tokens = len(seq.prompt) + len(seq.out.tokens) + 1
        reason = self._accept(seq, token, now, draft=from_draft)
        if reason is None and len(seq.out.tokens) >= seq.budget:
            reason = FINISH_LENGTH
        if reason is not None:
            self._release(seq)
            self._finish(seq, reason, now)

    def _start_draft(self, seq: RequestState) -> None:
        """Admit one request: prefill the target and the draft model (one step), then decode."""
        self.running[0] = seq
        self._events.append(RequestAdmitted(seq.request.id, time.perf_counter_ns()))
        caches = []
        for model in (self.model, self.draft_model):
            cache = (
                make_quantized_cache(len(model.layers), self.options.kv_bits)
                if self.options.kv_bits
                else make_prompt_cache(model)
            )
            head = seq.prompt[:-1]
            for i in range(0, len(head), self.options.n_batch):
                model(mx.array(head[i : i + self.options.n_batch])[None], cache=cache)
                mx.eval([c.state for c in cache])
            caches += cache
        seq.caches = caches
        seq.kv_tokens = len(seq.prompt) - 1
        self._events.append(PrefillDone(seq.request.id, time.perf_counter_ns(), len(seq.prompt), 0))
        seq.gen = speculative_generate_step(
            mx.array(seq.prompt[-1:]),
            self.model,
            self.draft_model,
            num_draft_tokens=self.options.speculative_tokens,
            max_tokens=seq.budget,
            sampler=seq.sampler or greedy_sampler,
            prompt_cache=caches,
            prefill_step_size=self.options.n_batch,
        )

    # -- both -----------------------------------------------------------------------------
    def _accept(self, seq: RequestState, token: int, t_ns: int, draft: bool = False) -> str | None:
        end_token = token in self.eos_ids
        eog = end_token and not self.options.ignore_eos  # ignore_eos: an end token is one more (textless) token
        piece = ""
        if not end_token:
            seq.detok.add_token(token)
            piece = seq.detok.last_segment
        event, reason = seq.out.add(token, piece, t_ns, eog, draft)
        self._events.append(event)
        return reason

    def _release(self, seq: RequestState) -> None:
        """Take a running request out of the generator (batched) or close its token stream (draft)."""
        if self.draft_model is not None:
            if seq.gen is not None:
                seq.gen.close()
                seq.gen = None
            seq.caches = []
            self.running.pop(0, None)
        elif seq.uid in self.running:
            self.batch.remove([seq.uid])
            del self.running[seq.uid]

    def _finish(self, seq: RequestState, reason: str, t_ns: int, error: str | None = None) -> None:
        seq.detok.finalize()
        self._events.append(seq.out.finished(reason, t_ns, tail=seq.detok.last_segment, error=error))
