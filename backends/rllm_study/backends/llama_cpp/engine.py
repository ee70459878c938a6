"""llama.cpp backend: continuous batching over one context, in process.

Built on llama-cpp-python's low-level API, the way llama.cpp's server schedules its slots.
The engine is a driver over three parts, each its own module: the model and context setup
(`model.py`), a request's state with its phase (`request.py`: QUEUED, PREFILLING, DECODING,
FEEDING, PREEMPTED, FINISHED, changed only by its transitions) and one step's batch
(`batch.py`). One `step()` is one `llama_decode` call:
  1. admit queued requests into free sequence slots while the KV cache has room (with prefix
     caching on, a new request first gets the longest cached prefix of its prompt copied into
     its sequence: see `prefix.py`);
  2. build one batch (`Batch.fill`): every DECODING request adds its last sampled token (logits
     on) and, with speculative decoding on, its draft tokens (logits on each: see `drafters`);
     then the room left (n_batch) goes to the chunks of requests feeding several tokens
     (chunked prefill; logits on the last pending token only);
  3. decode, then take a token for every sequence that produced an output (drawn on the host
     from its logits, or read from the decode graph's own draw: see "Where tokens are drawn"
     below). With a draft, the target's
     sampler picks a token at each fed position in order while it equals the draft token fed
     there: the accepted drafts and then one token of the target's own are emitted, and the KV
     cells of the rejected drafts are removed. Each emitted token is one draw of the target's
     sampler given exactly the tokens before it, so the output follows the target's distribution
     at any temperature (with temperature 0 it is the same text token for token, exactly so in
     batch-invariant mode, see below); a sampler chain's state (grammar, RNG) advances once per
     emitted token, as without drafting.

Overlap (`overlap_decode`, on by default when layers run on a GPU). On a GPU llama_decode
returns once the step's graph is launched, and the device computes while the host waits for the
logits. With overlap on, a step completes the decode the previous step started (wait, draw),
starts the next decode, and only then books the drawn tokens (events, detokenising, stop
strings, think budget, finishes), so that host work, and whatever the caller does between two
steps, runs while the device decodes. For that the next batch is built before the tokens are
booked: a drawn token is fed next unless it is an end of generation or the request's last
(max_tokens, slot full), which are known at the draw. What only booking finds changes course
one step late, at no cost in tokens: a request that meets a stop string (or is aborted) ends
at once, its row in the running decode is ignored and its slot freed when that decode
completes; a request whose think budget closes its thinking feeds the forced close after the
token already in flight, and its row in flight is not drawn from (no random draw is taken, so
a seed gives the same tokens either way; tested). Off on a CPU, where llama_decode computes the
whole step before it returns and booking late would only delay the caller; never with
speculative decoding or a unified KV cache, whose drafts and recomputes need booked tokens.

KV accounting is in cells (one per token held by one sequence). With the default split cache
(kv_unified off) each sequence owns n_ctx / max_seqs cells: a request waits for a free slot,
and one that fills its slot ends with reason `length`. With a unified cache all sequences share
n_ctx cells: a request is admitted while its prompt fits in the free cells, and when decoding
runs out of cells the most recently admitted request is preempted (its KV dropped, requeued,
and recomputed from prompt + output so far), as vLLM does. Either way nothing fails for
lack of room; requests wait.

Where tokens are drawn (`sample_on`). "host": every request's logits are copied off the device
and the token is drawn in numpy (`rllm_study.backends.sampling`; a grammar request through its
llama.cpp chain). "device": a request without a grammar gets a llama.cpp sampler chain of the
same distribution (`make_sampler`: temperature and top-p in the request's order, exact: a full
sort of the row, no implicit top-k) registered for its sequence id (`llama_set_sampler`); the
draw is part of the decode graph, on the device holding the output layer, and no logits leave
it (`llama_get_sampled_token_ith`). The chain follows its request when the sequence id changes
(compaction, preemption). On a GPU this removes the host's per-step work of O(vocabulary x
sequences), but the chain's top-p sorts the whole row per sequence, and on an H200 that cost
more than the host path (README engine notes), so "host" is the default. Speculative decoding
samples several positions of one sequence per step and stays on the host. Same seed, same
distribution, different tokens: numpy's PCG64 and llama.cpp's mt19937 are different streams.

Batch invariance. On the CPU, llama.cpp computes a token's logits with kernels chosen by the
shape of the batch, and they round differently: attention without flash attention (one token
of a sequence in the batch vs several: its last token plus drafts), repacked quantized weights
(llama.cpp's default), and tiled matrix multiplication (from 8 tokens in a micro-batch). So
greedy output can change at near-ties with the number of concurrent sequences or drafts.
With flash attention on, weight repacking off (model parameter use_extra_bufts) and tiled
matrix multiplication off (environment GGML_CPU_TILED_MM=0, read once per process at llama.cpp's
first matrix multiplication, so it must be set before then) the logits are bit-identical in
every batch shape, and greedy speculative output equals greedy output without drafts (tested).
`LlamaCppOptions(batch_invariant=True)` (spec key `engine.batch_invariant`) sets all three (the
variable takes effect only if llama.cpp has not multiplied matrices yet in this process). It
costs speed, so it is off by default. The measured differences and costs are in the README's
engine notes.
"""

from __future__ import annotations

import ctypes
import heapq
import os
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import NamedTuple

import llama_cpp as lc
import numpy as np
import psutil

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
    StatsExtra,
)
from rllm_study.backends.llama_cpp.batch import Batch, Entry
from rllm_study.backends.llama_cpp.model import (
    KV_TYPES,
    LlamaModel,
    check_kv_type,
    kv_budget_cells,
    last_log,
    make_sampler,
    new_context,
)
from rllm_study.backends.llama_cpp.prefix import MIN_REUSE_TOKENS, PrefixCache
from rllm_study.backends.llama_cpp.request import WAITING_PHASES, Draw, Phase, RequestState
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.backends.output import CLOSE_THINK, check_sampling
from rllm_study.backends.phases import PhaseTracker
from rllm_study.backends.sampling import draw_rows
from rllm_study.backends.speculative import REGISTRY as SPECULATIVE_METHODS
from rllm_study.errors import UserError

__all__ = ["LlamaCppEngine", "LlamaModel", "RequestState", "StepTimes", "kv_budget_cells", "make_sampler"]


@dataclass(frozen=True, kw_only=True)
class LlamaCppInfo(EngineInfo):
    """info() of the llama.cpp engine: the binding's version, llama.cpp's system info, the context
    as built (`context`), KV bytes per token, and the prefix-cache and drafter settings (None when off)."""

    llama_cpp_python: str
    system_info: str
    gpu_offload_supported: bool
    context: dict
    sample_on: str
    kv_bytes_per_token: float
    prefix_cache: dict | None = None
    speculative: dict | None = None


@dataclass(frozen=True)
class PrefixStats:
    """Prefix-cache counters (see LlamaCppEngine.stats)."""

    prefix_lookups: int
    prefix_hits: int
    prefix_tokens_reused: int
    prefix_entries: int
    prefix_cached_tokens: int
    prefix_cache_bytes: int
    prefix_restore_s: float
    prefix_save_s: float
    prefill_s_per_token: float | None


@dataclass(frozen=True)
class DraftStats:
    """Speculative-decoding counters over all requests so far; draft_s: time spent proposing."""

    draft_proposed: int
    draft_accepted: int
    draft_s: float


@dataclass
class StepTimes:
    """Where the engine's decode steps went (calls of step() that drew the tokens of a decode
    whose batch held no prompt token; seconds summed over them). decode: the llama_decode call
    (the whole computation on a CPU; building and launching the graph on a GPU); wait:
    llama_synchronize (waiting for the device to finish and its logits to arrive; with overlap
    on, what is left of the device's time after the host's booking and the caller's work between
    steps); draw: taking every sequence's token (`_draw_step`); other: the rest of step()
    (admission, batch building, events, detokenising, stop rules, drafting; with overlap on, done
    while the device decodes). sequences: outputs drawn, summed over the steps."""

    steps: int = 0
    sequences: int = 0
    decode_s: float = 0.0
    wait_s: float = 0.0
    draw_s: float = 0.0
    other_s: float = 0.0


class Launched(NamedTuple):
    """A started decode (`LlamaCppEngine._launch`): its batch's entries, when it started (perf_counter
    s), its token count, whether it held prompt tokens only / every request fed one token, and the
    ids (id()) of the requests in it."""

    plan: list[Entry]
    t0: float
    n_tokens: int
    prefill_only: bool
    decoding_only: bool
    seqs: frozenset[int]


@dataclass(frozen=True)
class LlamaCppStats(StatsExtra):
    """stats().extra of the llama.cpp engine: preemptions, seq_moves (see _compact_ids), and the
    prefix-cache and drafting counters when those are on."""

    preemptions: int
    seq_moves: int
    prefix: PrefixStats | None = None
    draft: DraftStats | None = None


class LlamaCppEngine:
    """Continuous batching over one llama.cpp context (see the module docstring).

    options.batch_invariant gives every token the same logits whatever else is in its batch (see
    "Batch invariance" in the module docstring): no weight repacking, no tiled matrix
    multiplication, flash attention on."""

    def __init__(self, model: str, options: LlamaCppOptions = LlamaCppOptions()):
        from rllm_study.models import resolve_model

        speculative = options.speculative_method
        spec_method = speculative.method if speculative else None
        batch_invariant = options.batch_invariant
        if batch_invariant:
            if options.flash_attn is False:
                raise UserError("batch_invariant needs flash attention; drop flash_attn=false")
            os.environ["GGML_CPU_TILED_MM"] = "0"
        self.ref = resolve_model(model)
        type_k = check_kv_type(options.type_k, "type_k")
        type_v = check_kv_type(options.type_v, "type_v")
        flash = options.flash_attn
        # Flash attention by default where a quantized V cache needs it, and with speculative
        # decoding or batch invariance, which want it (see "Batch invariance" in the module docstring).
        if flash is None:
            flash = True if options.type_v not in ("f16", "f32", "bf16") or spec_method or batch_invariant else None
        if flash is False and options.type_v not in ("f16", "f32", "bf16"):
            raise UserError(
                f"type_v={options.type_v}: a quantized V cache needs flash attention; drop flash_attn=false"
            )
        n_threads = options.n_threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1
        n_ctx = options.n_ctx or options.max_seqs * options.ctx_per_seq
        self.options = replace(options, n_ctx=n_ctx, n_threads=n_threads, flash_attn=flash)
        self.model = LlamaModel(self.ref.path, options.n_gpu_layers, not batch_invariant)
        self.ctx = self.drafter = None
        try:  # a UserError below frees what was built before it
            if options.kv_budget_mib:
                self.options = replace(
                    self.options,
                    n_ctx=kv_budget_cells(
                        options.kv_budget_mib, self.model.kv_bytes_per_token(options.type_k, options.type_v)
                    ),
                )
            self.ctx = new_context(self.model, self.options, type_k, type_v)
            if speculative is not None:  # the method's drafter (rllm_study.backends.speculative)
                self.drafter = (
                    speculative.registered()
                    .drafter_class()
                    .open(
                        speculative,
                        self.model,
                        model,
                        self.options,
                        lambda m: new_context(m, self.options, type_k, type_v),
                    )
                )
            self._check_sample_on(spec_method)
        except UserError:
            if self.drafter is not None:
                self.drafter.close()
            if self.ctx:
                lc.llama_free(self.ctx)
            self.model.close()
            raise
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_ctx = lc.llama_n_ctx(self.ctx)
        self.seq_capacity = lc.llama_n_ctx_seq(self.ctx)  # cells one sequence may hold
        self.n_batch = lc.llama_n_batch(self.ctx)
        self.batch = Batch(self.n_batch)
        self.prefix = PrefixCache(self.ctx, options.prefix_cache_tokens) if options.prefix_cache else None
        self._free_ids = list(range(options.max_seqs))  # a heap: a new request takes the lowest free id
        self.waiting: deque[RequestState] = deque()
        self.running: list[RequestState] = []  # in admission order (last = youngest)
        self._events: list[Event] = []
        self._proc = psutil.Process()
        self.preemptions = 0
        self.seq_moves = 0  # sequences moved to a lower id (see _compact_ids)
        self.prefill_only_s = 0.0  # decode + device wait of steps whose batch held prompt tokens only
        self.prefill_only_tokens = 0
        self.draft_s = 0.0  # time spent proposing drafts
        self.draft_proposed = self.draft_accepted = 0
        self.step_times = StepTimes()  # see StepTimes; a benchmark may replace it to measure a window
        self.overlap = self._overlap_decode(spec_method)  # see "Overlap" in the module docstring
        self._inflight: Launched | None = None  # the decode started and not yet completed (overlap)
        self._held: list[RequestState] = []  # finished while their tokens were in that decode
        self._parts: list = [0.0, 0.0, 0.0, None]  # see step()

    # -- protocol -----------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        check_sampling(request)
        prompt = self.model.tokenize(request.prompt)
        phases = PhaseTracker(request.starts_in_think, self.model.think_open_id, self.model.think_close_id)
        seq = RequestState(request, prompt, phases)
        if len(prompt) + 1 > self.seq_capacity:
            self._finish(
                seq,
                FINISH_ERROR,
                time.perf_counter_ns(),
                f"prompt has {len(prompt)} tokens; a sequence holds at most {self.seq_capacity - 1} (raise ctx_per_seq)",
            )
            return
        self.waiting.append(seq)

    def abort(self, request_id: str) -> None:
        for seq in list(self.waiting) + self.running:
            if seq.request.id == request_id:
                if seq.phase in WAITING_PHASES:
                    self.waiting.remove(seq)
                self._finish(seq, FINISH_ABORT, time.perf_counter_ns())
                return

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._events or self._inflight is not None)

    def step(self) -> list[Event]:
        """One llama_decode (see the module docstring). With overlap_decode on ("Overlap" in the
        module docstring) the step first completes the decode the previous step started, then
        starts the next one and books the drawn tokens while the device runs it."""
        t0 = time.perf_counter()
        self._parts = [0.0, 0.0, 0.0, None]  # decode, wait, draw of this call; the completed plan's StepTimes kind
        if self.overlap:
            drawn = self._complete() if self._inflight is not None else []
            self._admit()
            if self.running:
                self._compact_ids()
                self._launch()
            self._book(drawn)
        else:
            self._admit()
            if self.running:
                self._compact_ids()
                if self._launch():
                    self._book(self._complete())
        decode_s, wait_s, draw_s, outputs = self._parts
        if outputs is not None:  # a decode step's tokens were drawn in this call (see StepTimes)
            times = self.step_times
            times.steps += 1
            times.sequences += outputs
            times.decode_s += decode_s
            times.wait_s += wait_s
            times.draw_s += draw_s
            times.other_s += time.perf_counter() - t0 - decode_s - wait_s - draw_s
        events, self._events = self._events, []
        return events

    def prefill_s_per_token(self) -> float | None:
        """Measured prefill cost: seconds of decode and device wait / prompt tokens over steps that decoded prompt
        tokens only (no decoding sequence in the batch); None before such a step."""
        return self.prefill_only_s / self.prefill_only_tokens if self.prefill_only_tokens else None

    def stats(self) -> EngineStats:
        """extra: preemptions, seq_moves (see _compact_ids); with prefix caching prefix_lookups,
        prefix_hits, prefix_tokens_reused, prefix_entries, prefix_cached_tokens, prefix_cache_bytes
        (host copies), prefix_restore_s, prefix_save_s (measured copy time) and prefill_s_per_token (see
        prefill_s_per_token; the prefill time saved is the metric prefix_saved_prefill_s); with speculative
        decoding draft_proposed, draft_accepted (all requests so far) and draft_s (time proposing)."""
        prefix = draft = None
        if self.prefix is not None:
            p, per_token = self.prefix, self.prefill_s_per_token()
            prefix = PrefixStats(
                prefix_lookups=p.lookups,
                prefix_hits=p.hits,
                prefix_tokens_reused=p.tokens_reused,
                prefix_entries=len(p.entries),
                prefix_cached_tokens=p.cached_tokens,
                prefix_cache_bytes=p.cached_bytes,
                prefix_restore_s=round(p.restore_s, 6),
                prefix_save_s=round(p.save_s, 6),
                prefill_s_per_token=per_token,
            )
        if self.drafter is not None:
            draft = DraftStats(
                draft_proposed=self.draft_proposed, draft_accepted=self.draft_accepted, draft_s=round(self.draft_s, 6)
            )
        extra = LlamaCppStats(preemptions=self.preemptions, seq_moves=self.seq_moves, prefix=prefix, draft=draft)
        return EngineStats(
            kv_used=sum(s.n_past for s in self.running),
            kv_capacity=self.n_ctx,
            running=len(self.running),
            waiting=len(self.waiting),
            rss_bytes=self._proc.memory_info().rss,
            extra=extra,
        )

    def capabilities(self) -> Capabilities:
        return Capabilities(
            backend="llama_cpp",
            kv_cache_types=tuple(KV_TYPES),
            prefix_cache=True,
            speculative=tuple(SPECULATIVE_METHODS),
            grammar=True,
            batch_invariant=True,
            think_budget=True,
        )

    def info(self) -> LlamaCppInfo:
        o = self.options
        return LlamaCppInfo(
            backend="llama_cpp",
            build=lc.__version__,
            llama_cpp_python=lc.__version__,
            system_info=lc.llama_print_system_info().decode(),
            gpu_offload_supported=bool(lc.llama_supports_gpu_offload()),
            model=self.model.facts(),
            context={
                "n_ctx": self.n_ctx,
                "seq_capacity": self.seq_capacity,
                "n_batch": self.n_batch,
                "max_seqs": o.max_seqs,
                "n_threads": o.n_threads,
                "n_gpu_layers": o.n_gpu_layers,
                "type_k": o.type_k,
                "type_v": o.type_v,
                "flash_attn": o.flash_attn,
                "kv_unified": o.kv_unified,
                "batch_invariant": o.batch_invariant,
            },
            sample_on=o.sample_on,
            kv_bytes_per_token=self.model.kv_bytes_per_token(o.type_k, o.type_v),
            prefix_cache={"max_tokens": o.prefix_cache_tokens, "min_reuse_tokens": MIN_REUSE_TOKENS}
            if self.prefix
            else None,
            speculative={**self.drafter.info(), "spec_tokens": o.speculative_tokens} if self.drafter else None,
        )

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.model.apply_chat_template(messages, add_generation_prompt)

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenize(text))

    def close(self) -> None:
        if self._inflight is not None:  # a decode still running writes into the context: wait for it
            lc.llama_synchronize(self.ctx)
            self._inflight = None
        for seq in self._held:
            self._release(seq)
        self._held = []
        for seq in self.running:
            self._bind_sampler(seq, None)
        for seq in self.running + list(self.waiting):
            if seq.sampler:
                lc.llama_sampler_free(seq.sampler)
        self.running, self.waiting = [], deque()
        if self.drafter is not None:
            self.drafter.close()
            self.drafter = None
        if self.ctx:
            self.batch.close()
            lc.llama_free(self.ctx)
            self.ctx = None
        self.model.close()

    def _check_sample_on(self, spec_method: str | None) -> None:
        """sample_on "device" checked against the context (see "Where tokens are drawn" in the module
        docstring): it needs no speculative decoding, a context that takes a sampler chain, and,
        with the output layer on the CPU, one thread."""
        if self.options.sample_on == "host":
            return
        if spec_method:
            raise UserError(
                "sample_on 'device': speculative decoding samples several positions of a sequence per step "
                "on the host; use sample_on 'host' with speculative decoding"
            )
        n_layer = lc.llama_model_n_layer(self.model.ptr)
        ngl = self.options.n_gpu_layers
        output_on_gpu = lc.llama_supports_gpu_offload() and (ngl < 0 or ngl > n_layer)
        if not output_on_gpu and self.options.n_threads > 1:
            # llama.cpp 0.3.36's CPU graph with a sampler chain in it hangs in its thread barrier
            # with more than one thread (seen as soon as a freed sequence id takes a new chain).
            raise UserError(
                f"sample_on 'device' with the output layer on the CPU works with threads = 1 only "
                f"(threads = {self.options.n_threads}); use sample_on 'host' on a CPU"
            )
        probe = make_sampler(self.model, Request(id="probe", prompt=""))
        took = lc.llama_set_sampler(self.ctx, 0, probe)
        lc.llama_set_sampler(self.ctx, 0, None)
        lc.llama_sampler_free(probe)
        if not took:
            raise UserError(
                f"sample_on 'device': this llama.cpp context cannot run a sampler chain in its graph ({last_log()}); "
                "use sample_on 'host'"
            )

    def _overlap_decode(self, spec_method: str | None) -> bool:
        """overlap_decode resolved (see "Overlap" in the module docstring): by default on when layers
        run on a GPU; never with speculative decoding (drafts are proposed from booked tokens) or a
        unified KV cache (a preempted request recomputes from its booked tokens)."""
        o = self.options
        if o.overlap_decode is False:
            return False
        blocked = "speculative decoding" if spec_method else "kv_unified" if o.kv_unified else None
        if o.overlap_decode is None:
            return blocked is None and o.n_gpu_layers != 0 and bool(lc.llama_supports_gpu_offload())
        if blocked:
            raise UserError(f"overlap_decode does not work with {blocked}; drop overlap_decode=true")
        return True

    def _bind_sampler(self, seq: RequestState, seq_id: int | None) -> None:
        """Register a device-drawing sequence's chain for `seq_id` (None: unregister it from its
        current id). llama.cpp initialises a chain for the graph once, so a chain that was
        registered before is replaced by its clone (same samplers, same random state)."""
        if seq.draw is not Draw.DEVICE:
            return
        if seq_id is None:
            lc.llama_set_sampler(self.ctx, seq.seq_id, None)
            return
        if seq.bound:
            clone = lc.llama_sampler_clone(seq.sampler)
            lc.llama_sampler_free(seq.sampler)
            seq.sampler = clone
        lc.llama_set_sampler(self.ctx, seq_id, seq.sampler)
        seq.bound = True

    # -- scheduling -----------------------------------------------------------------------
    def _cells_needed(self) -> int:
        return sum(s.n_past + len(s.pending) for s in self.running)

    def _admit(self) -> None:
        while self.waiting and self._free_ids:
            seq = self.waiting[0]
            if self.options.kv_unified and self._cells_needed() + len(seq.pending) + 1 > self.n_ctx and self.running:
                break  # not enough free cells: wait until running requests free some
            self.waiting.popleft()
            seq_id = heapq.heappop(self._free_ids)
            first = seq.phase is Phase.QUEUED  # not a preempted request coming back
            if first:
                try:
                    if seq.request.grammar or self.options.sample_on == "device":
                        seq.sampler = make_sampler(self.model, seq.request)
                        seq.draw = Draw.CHAIN if seq.request.grammar else Draw.DEVICE
                except UserError as err:
                    heapq.heappush(self._free_ids, seq_id)
                    self._finish(seq, FINISH_ERROR, time.perf_counter_ns(), str(err))
                    continue
            seq.admit(seq_id)
            if first:
                self._events.append(RequestAdmitted(seq.request.id, time.perf_counter_ns()))
                if self.prefix is not None:
                    seq.restored(self.prefix.restore(seq.prompt, seq.seq_id))
            self._bind_sampler(seq, seq.seq_id)
            self.running.append(seq)

    def _compact_ids(self) -> None:
        """Split cache only: while a free id is lower than the highest id in use, move that
        sequence down into it, so the ids in use stay 0..n-1 and a decode step is one micro-batch
        (see batch.py). Holes appear when requests end with none waiting to take their ids,
        e.g. the stragglers of a batch (scripts/gpu/README.md has what this cost on a GPU before
        the compaction). A move is llama_memory_seq_cp
        across KV streams, which copies the whole stream (cells per sequence x KV bytes per cell)
        on the device at the next decode, then drops the source. It runs after admission, so no
        vacated id is reused before that decode has made the copy."""
        if self.options.kv_unified:
            return
        while self._free_ids and self.running:
            top = max(self.running, key=lambda s: s.seq_id)
            low = self._free_ids[0]
            if low > top.seq_id:
                return
            heapq.heapreplace(self._free_ids, top.seq_id)
            lc.llama_memory_seq_cp(self.mem, top.seq_id, low, -1, -1)
            lc.llama_memory_seq_rm(self.mem, top.seq_id, -1, -1)
            if self.drafter is not None:
                self.drafter.move(top, low)
            self._bind_sampler(top, None)
            self._bind_sampler(top, low)
            top.seq_id = low
            self.seq_moves += 1

    def _preempt_youngest(self) -> None:
        """Unified cache only: drop the youngest request's KV and requeue it for recompute."""
        seq = self.running.pop()
        lc.llama_memory_seq_rm(self.mem, seq.seq_id, -1, -1)
        self._bind_sampler(seq, None)
        if self.drafter is not None:
            self.drafter.release(seq)
        heapq.heappush(self._free_ids, seq.seq_id)
        seq.preempt()
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def _propose_drafts(self, decoding: list[RequestState]) -> dict[int, list[int]]:
        """Drafts for decoding sequences: up to speculative_tokens each, no more than the request's
        remaining budget - 1 or its slot's room, and all of them within the batch (n_batch) and,
        for a unified cache, the free cells; seq_id -> draft tokens."""
        room = self.n_batch - len(decoding)
        if self.options.kv_unified:
            room = min(room, self.n_ctx - self._cells_needed())
        work = []
        for seq in sorted(decoding, key=lambda s: s.seq_id):  # id order, as in Batch.fill
            k = min(
                self.options.speculative_tokens,
                seq.request.sampling.max_tokens - len(seq.out.tokens) - 1,
                self.seq_capacity - 2 - seq.n_past,
            )
            if k > 0:
                work.append((seq, k))
        if sum(k for _, k in work) > room:
            share = room // max(len(work), 1)
            work = [(seq, min(k, share)) for seq, k in work if min(k, share) > 0]
        if not work:
            return {}
        t0 = time.perf_counter()
        drafts = self.drafter.propose(work)
        self.draft_s += time.perf_counter() - t0
        return drafts

    def _launch(self) -> bool:
        """Fill the batch and start its llama_decode, kept in self._inflight until `_complete`
        (on a GPU llama_decode returns before the device has finished). False when nothing started."""
        if self.options.kv_unified:
            while len(self.running) > 1 and self._cells_needed() > self.n_ctx:
                self._preempt_youngest()
        drafts = {}
        if self.drafter is not None:
            drafts = self._propose_drafts([s for s in self.running if s.phase is Phase.DECODING])
        plan = self.batch.fill(self.running, drafts)
        if not plan:  # overlap: every request holding a slot waits for its last token's booking
            return False
        t0 = time.perf_counter()
        rc = lc.llama_decode(self.ctx, self.batch.raw)
        self._parts[0] = time.perf_counter() - t0
        if rc == 1 and self.options.kv_unified and len(self.running) > 1:
            for seq, _, _, _ in plan:  # nothing was kept; free the partial state and retry next step
                lc.llama_memory_seq_rm(self.mem, seq.seq_id, seq.n_past, -1)
            self._preempt_youngest()
            return False
        if rc != 0:
            now = time.perf_counter_ns()
            for seq, _, _, _ in plan:
                self._finish(seq, FINISH_ERROR, now, f"llama_decode returned {rc} ({last_log()})")
            return False
        self._inflight = Launched(
            plan,
            t0,
            self.batch.n_tokens,
            prefill_only=not any(s.phase is Phase.DECODING for s in self.running),
            decoding_only=all(fed == 1 for _, fed, _, _ in plan),
            seqs=frozenset(id(seq) for seq, _, _, _ in plan),
        )
        return True

    def _complete(self) -> list[tuple[RequestState, int, int, int, list[int]]]:
        """Wait for the started decode, release the slots of requests that finished while it ran,
        and draw a token for every sequence that produced an output: (sequence, token, time,
        batch output index, draft tokens fed after it) each. With overlap on, a token that is sure
        to be fed next (`_feeds_next`) becomes the sequence's pending token at once, so the next
        batch can start before it is booked."""
        launched, self._inflight = self._inflight, None
        t1 = time.perf_counter()
        lc.llama_synchronize(self.ctx)
        t_decoded = time.perf_counter_ns()  # after the wait: on a GPU llama_decode returns before the KV is written
        t2 = time.perf_counter()
        held, self._held = self._held, []
        for seq in held:
            self._release(seq)
        if launched.prefill_only:
            self.prefill_only_s += t2 - launched.t0
            self.prefill_only_tokens += launched.n_tokens
        outputs = []
        for seq, fed, out, draft in launched.plan:
            if seq.phase is Phase.FINISHED:  # ended (stop string, abort) while this decode ran
                continue
            prefilling = seq.phase is Phase.PREFILLING
            seq.fed(fed)
            if out < 0 or seq.pending:  # pending: its thinking was closed while this decode ran
                continue
            if prefilling:  # its first token: the prompt is in the KV cache
                self._events.append(PrefillDone(seq.request.id, t_decoded, len(seq.prompt), seq.out.cached_tokens))
                if self.prefix is not None:
                    self.prefix.save(seq.prompt, seq.seq_id)  # its KV holds exactly the prompt now
            outputs.append((seq, out, draft))
        tokens = self._draw_step([(seq, out) for seq, out, _ in outputs])
        t_ns = time.perf_counter_ns()
        t3 = time.perf_counter()
        drawn = [(seq, tokens[out], t_ns, out, draft) for seq, out, draft in outputs]
        if self.overlap:
            for seq, token, _, _, _ in drawn:
                if self._feeds_next(seq, token):
                    seq.drew([token])
        self._parts[1:] = [t2 - t1, t3 - t2, len(outputs) if launched.decoding_only else None]
        return drawn

    def _feeds_next(self, seq: RequestState, token: int) -> bool:
        """Overlap: whether a drawn token will be fed next whatever its booking finds, short of a
        stop string or a think budget's close (which `_book` handles): it is no end of generation,
        leaves room under max_tokens, and its sequence's slot has a cell for it."""
        if self.model.is_eog(token) and not self.options.ignore_eos:
            return False
        return len(seq.out.tokens) + 1 < seq.request.sampling.max_tokens and seq.n_past + 1 < self.seq_capacity

    def _book(self, drawn: list[tuple[RequestState, int, int, int, list[int]]]) -> None:
        """Record drawn tokens: events, text, stop rules, think budget, finishes (`_emit`)."""
        for seq, token, t_ns, out, draft in drawn:
            if seq.phase is not Phase.FINISHED:  # not ended by a failed decode since it was drawn
                self._emit(seq, token, t_ns, out, draft)

    def _draw_step(self, outputs: list[tuple[RequestState, int]]) -> dict[int, int]:
        """The next token of each (sequence, batch output index): the decode graph's draw for a
        sequence drawing on the device; a grammar request's through its sampler chain; every other
        row by one `sampling.draw_rows` call over all of them, straight from the logits (greedy =
        the first argmax, as llama.cpp's greedy sampler; one draw from each request's own
        generator). Batch index -> token."""
        tokens, host = {}, []
        for seq, index in outputs:
            if seq.draw is Draw.DEVICE:
                token = lc.llama_get_sampled_token_ith(self.ctx, index)
                if token == lc.LLAMA_TOKEN_NULL:
                    raise RuntimeError(
                        f"llama.cpp drew no token for sequence {seq.seq_id} at output {index} ({last_log()})"
                    )
                tokens[index] = token
            elif seq.draw is Draw.CHAIN:
                tokens[index] = lc.llama_sampler_sample(seq.sampler, self.ctx, index)
            else:
                host.append((seq, index))
        if host:
            block, rows = self._logits_rows([index for _, index in host])
            draws = []
            for seq, _ in host:
                s = seq.request.sampling
                draws.append((s.temperature, s.top_p, s.top_k, s.order, seq.rng))
            tokens.update(zip((index for _, index in host), draw_rows(block, rows, draws)))
        return tokens

    def _logits_rows(self, indices: list[int]) -> tuple[np.ndarray, list[int]]:
        """The step's logits as one (outputs x n_vocab) float32 array over llama.cpp's buffer (no
        copy), and the row of each batch index (`Batch.rows`: one llama_get_logits call, which
        waits for the device once, instead of one llama_get_logits_ith per row)."""
        n_vocab = self.model.n_vocab
        base = ctypes.cast(lc.llama_get_logits(self.ctx), ctypes.POINTER(ctypes.c_float))
        block = np.ctypeslib.as_array(base, shape=(len(self.batch.rows), n_vocab))
        return block, [self.batch.rows[i] for i in indices]

    def _emit(self, seq: RequestState, token: int, t_ns: int, out: int, draft: list[int]) -> None:
        """Emit `token` (sampled at batch index `out`) and, while each emitted token equals the
        draft token fed at its position, the target's pick at the next position; then remove the
        KV cells of the rejected drafts."""
        seq.out.draft_proposed += len(draft)
        self.draft_proposed += len(draft)
        i = 0
        while True:
            hit = i < len(draft) and token == draft[i]
            if hit:
                self.draft_accepted += 1  # the request's own count is kept by RequestOutput.add
            if not self._accept(seq, token, t_ns, hit):
                return
            if not hit or seq.phase is Phase.FEEDING:  # a miss, or the thinking was closed (see _accept)
                break
            seq.n_past += 1  # the accepted draft token's KV stays
            i += 1
            token = self._draw_step([(seq, out + i)])[out + i]
            t_ns = time.perf_counter_ns()
        if i < len(draft):
            lc.llama_memory_seq_rm(self.mem, seq.seq_id, seq.n_past, -1)

    def _accept(self, seq: RequestState, token: int, t_ns: int, draft: bool = False) -> bool:
        """Record a sampled token; end the request if it stops here. True while it goes on.

        When RequestOutput says to close the thinking (think budget, see backends/rllm_study/backends/output.py),
        the forced `</think>` + answer cue become the sequence's pending tokens: the next step
        feeds them with the sampled token (if it is not end-of-generation) like a prompt chunk,
        and samples the first answer token from the last of them. A grammar no longer applies
        after the close (its sampler is replaced by the same chain without it): a grammar's
        state cannot take tokens it did not choose."""
        end_token = self.model.is_eog(token)
        eog = end_token and not self.options.ignore_eos  # ignore_eos: an end token is one more (textless) token
        piece = "" if end_token else seq.utf8.decode(self.model.piece(token))
        event, reason = seq.out.add(token, piece, t_ns, eog, draft)
        self._events.append(event)
        pending = [token]
        if reason == CLOSE_THINK:
            tail = seq.utf8.decode(b"", final=True)
            pending = seq.out.close_thinking(
                lambda text: self.model.tokenize(text, add_special=False), self.model.think_close_id, tail
            )
            reason = None
            if seq.request.grammar:
                lc.llama_sampler_free(seq.sampler)
                seq.sampler = make_sampler(self.model, replace(seq.request, grammar=None))
        if reason is None and seq.n_past + len(pending) >= self.seq_capacity:
            reason = FINISH_LENGTH  # the sequence's KV slot is full
        if reason is not None:
            self._finish(seq, reason, t_ns)
            return False
        seq.drew(pending)
        return True

    def _finish(self, seq: RequestState, reason: str, t_ns: int, error: str | None = None) -> None:
        """End a request now; a slot whose tokens are in the decode still running is released once
        it completes (`_complete`), since that decode still writes its KV and may run its sampler."""
        slot = seq.holds_slot
        if slot:
            self.running.remove(seq)
        if slot and self._inflight is not None and id(seq) in self._inflight.seqs:
            self._held.append(seq)
        else:
            self._release(seq, slot)
        seq.finish()
        self._events.append(seq.out.finished(reason, t_ns, tail=seq.utf8.decode(b"", final=True), error=error))

    def _release(self, seq: RequestState, slot: bool = True) -> None:
        """Free what a finished request held: its KV cells and sequence id (slot), its drafter
        state and its sampler chain."""
        if slot:
            lc.llama_memory_seq_rm(self.mem, seq.seq_id, -1, -1)
            self._bind_sampler(seq, None)
            heapq.heappush(self._free_ids, seq.seq_id)
        if self.drafter is not None:
            self.drafter.release(seq)
        if seq.sampler:
            lc.llama_sampler_free(seq.sampler)
            seq.sampler = None
