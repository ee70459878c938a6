"""Runs cells: turns a workload into timed requests, drives an engine, records everything.

One thread drives the engine: each loop submits the requests that are due, calls
`engine.step()` once, and hands finished requests and a cheap engine-stats snapshot (every
`sample_period_s`, with energy and GPU memory where `energy` has a counter for them) to a writer
thread (`RecordWriter`), which has them graded in a child process (`GradingProcess`: grading
holds the GIL, the engine thread needs it) and records them (fsync'd), off the engine loop:
between two decode steps there is only engine work and bookkeeping.
A request the engine finished but the writer has not yet fsync'd when the process dies is not
finished (see study/rllm_study/running/results.py) and is rerun on resume; a clean stop (end, Ctrl-C, an error)
first writes every finished request. Arrivals: each loop asks the cell's arrival process
(`rllm_study.workloads.arrivals`) which requests are due, given the clock, how many were sent
and how many are in flight, and submits them in order with the arrival time it names: for open
loop (poisson, gamma, constant, trace, ramp) the *scheduled* time, whether or not the engine
keeps up (submitted at the first loop turn after it); for closed loop and synchronous batches
the moment they became due. Each request also records when it was actually handed to the engine
(`sent_s`, one timestamp taken at submit); `sent_s - arrival_s` is its dispatch lag, and a cell
whose p99 lag exceeds `DISPATCH_LAG_BOUND_S` ends with a warning (the report shows the lag too).
A resumed cell (a new session) skips requests already in requests.jsonl and schedules the
rest afresh from the same seed.

Before the first cell, `preflight` checks the whole study (see there); `run --dry-run` prints
the same verdict.

The machine's speed: just before a session's first request and just after its last, an engine
that loads its own model runs one fixed calibration decode (`calibrate`: CALIBRATION_TOKENS greedy
tokens of one fixed prompt, one sequence) and the cell records its decode rate in
calibration.jsonl: never between two decode steps of the measured requests. Reports compare the
seconds of two cells only where these agree (see rllm_study.report.claims).
Cells run in the order `spec.expand` gives (the compared conditions interleaved); the manifest
records each cell's place in it (`run_order`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import queue
import threading
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rllm_study.analysis.metrics import DISPATCH_LAG_BOUND_S, distribution
from rllm_study.backends import engine_class
from rllm_study.backends.base import Request, SamplingParams, TokenEvent, engine_unsupported
from rllm_study.backends.chat_template import message_list
from rllm_study.environment import environment
from rllm_study.errors import UserError
from rllm_study.running.energy import CellEnergy, open_meters
from rllm_study.running.prompts import cell_prompts
from rllm_study.running.recorder import Recorder
from rllm_study.running.results import (
    MANIFEST,
    REQUESTS,
    CellWriter,
    FolderLock,
    ResultsWriteError,
    check_writable,
    make_folder,
    path_error,
    read_jsonl,
)
from rllm_study.running.spec import CellSpec, default_ctx_per_seq
from rllm_study.workloads.arrivals import check_workload, timing_of_workload
from rllm_study.workloads.custom_dataset import NO_ANSWER
from rllm_study.workloads.datasets import Item
from rllm_study.workloads.grading import UNGRADED, GradingProcess
from rllm_study.workloads.prompts import Prompt, has_think_token, open_thinking
from rllm_study.workloads.traces import TRACE_DATASET, PromptSynthesizer, load_trace

IDLE_SLEEP_S = 0.005
CALIBRATION_TOKENS = 16  # tokens of the calibration decode around each session (see `calibrate`)
CALIBRATION_WARM_UP_TOKENS = 4  # tokens of the unrecorded decode before an engine's first calibration
CALIBRATION_MAX_S = 2.0  # ... cut short after this many seconds of decoding on a very busy machine
CALIBRATION_PROMPT = "Count on, one number after another: 1, 2, 3, 4, 5, 6, 7, 8,"
WRITER_QUEUE = 256  # finished requests + timeline samples waiting for the writer thread


@dataclass
class Job:
    """A request of a cell before it is sent: its item, prompt and the exact text to send;
    `max_tokens` caps its output below the cell's budget (a trace's recorded length); an
    ungraded job (no reference answer) records null grades."""

    id: str
    item: Item
    prompt: Prompt
    text: str
    max_tokens: int | None = None
    graded: bool = True
    session: str | None = None  # multi-turn: the conversation it belongs to (`rllm_study.running.sessions`)
    turn: int | None = None  # multi-turn: its turn, from 1
    reserve: int = 0  # tokens its prompt may grow by before it is sent (earlier turns' answers), for `_fit`


def trace_jobs(cell: CellSpec, engine) -> list[Job]:
    """The first `samples` requests of the replayed trace's window (`rllm_study.workloads.traces`):
    raw prompts of their recorded lengths, outputs capped at their recorded lengths, ungraded."""
    params = check_workload(cell.workload)
    rows = load_trace(params["trace"], params["time_scale"], params["window_start_s"], params["window_s"], cell.samples)
    synth = PromptSynthesizer(engine.count_tokens, cell.seed, params["block_tokens"])
    prompt = Prompt([], "", False, None, None, None)
    jobs = []
    for i, row in enumerate(rows):
        text = synth.prompt(row, i)
        item = Item(f"{TRACE_DATASET}/{i:05d}", TRACE_DATASET, TRACE_DATASET, "-", text, "")
        jobs.append(Job(item.id, item, prompt, text, max_tokens=row.output_tokens, graded=False))
    return jobs


def build_jobs(cell: CellSpec, engine) -> list[Job]:
    """The cell's requests in order: prompts through the model's chat template + assistant prefix
    (`cell_prompts`, then `render`). A replayed trace's requests come from `trace_jobs`; a multi-turn cell's from
    `rllm_study.running.sessions.session_jobs` (each item's K turns)."""
    from rllm_study.running.sessions import session_jobs

    if cell.dataset == TRACE_DATASET and not cell.custom_dataset:
        return trace_jobs(cell, engine)
    think_token = cell.prompt_mode == "native" and has_think_token(engine)
    jobs = []
    for p in cell_prompts(cell):
        text, prompt = render(cell, engine, p.prompt, list(p.messages), think_token)
        jobs.append(Job(p.item.id, p.item, prompt, text))
    return session_jobs(cell, jobs)


def render(cell: CellSpec, engine, prompt: Prompt, messages: list[dict], think_token: bool) -> tuple[str, Prompt]:
    """The exact text to send for `messages` (the model's chat template, then the prompt's assistant
    prefix) and the prompt with whether its output starts in the think phase: in native mode the
    thinking is opened as `open_thinking` says. A chat-mode server (its prompt is a message list)
    cannot take an assistant prefix: a user error, not a corrupted prompt."""
    text = engine.apply_chat_template(messages)
    if prompt.assistant_prefix and message_list(text) is not None:
        raise UserError(
            f"cell {cell.name}: prompt_mode {cell.prompt_mode!r} starts the answer with "
            f"{prompt.assistant_prefix!r}, which a chat-mode server cannot take (it applies its own template): "
            'use prompt_mode = "native", or the server\'s /v1/completions URL where it exposes its template'
        )
    text += prompt.assistant_prefix
    if cell.prompt_mode == "native":
        text, thinking = open_thinking(text, think_token)
        prompt = replace(prompt, starts_in_think=thinking)
    return text, prompt


def manifest(cell: CellSpec, spec: dict, engine) -> dict:
    from rllm_study.models import model_facts, resolve_model

    info = engine.info()
    model = info.model  # a server's or an MLX folder's own account
    if engine.capabilities().local_model:
        with contextlib.suppress(UserError):  # a registry model (embedded, path, hub, derived): its verified facts
            model = model_facts(resolve_model(cell.model, fetch=False))
    return {
        "cell": cell.as_dict(),
        "spec": spec,
        "model": model,
        "engine": info.as_dict(),
        "capabilities": engine.capabilities().__dict__,
        "unsupported_options": engine_unsupported(engine, cell.engine),
        **environment(),
    }


def cell_arrivals(cell: CellSpec, n: int):
    """The cell's arrival process for n requests (`timing_of_workload`, which validates as `schedule` does)."""
    return timing_of_workload(cell.workload, n, cell.seed)


class RecordWriter:
    """The writer thread of a cell session: has finished requests graded by `grader` and writes
    them (fsync'd) and the timeline samples, in the order handed over, off the engine loop.

    The queue is bounded (WRITER_QUEUE items): when the disk is slower than the engine, the
    engine loop waits instead of holding an unbounded backlog in memory. The first write error
    stops the writer (later items are dropped, so nothing half-recorded follows) and is raised
    in the engine loop by `check()` or `put()`; `close()` writes what is queued and joins."""

    def __init__(self, cell: CellSpec, writer: CellWriter, grader: GradingProcess, on_written=None):
        self.cell, self.writer, self.grader, self.on_written = cell, writer, grader, on_written
        self.error: BaseException | None = None
        self.written = 0  # requests recorded this session
        self._queue: queue.Queue = queue.Queue(maxsize=WRITER_QUEUE)
        self._thread = threading.Thread(target=self._loop, name=f"writer {cell.name}", daemon=True)
        self._thread.start()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item) -> None:
        while True:
            self.check()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                if isinstance(item, dict):
                    self.writer.write_timeline(item)
                    continue
                job, record, tokens, extra = item
                record.update(extra)
                record.update(
                    self.grader.grade(job.item, job.prompt, record["output_text"]).record_fields()
                    if job.graded and job.item.answer
                    else UNGRADED
                )
                self.writer.write_request(record, tokens)
                self.written += 1
                if self.on_written is not None:
                    self.on_written(self.written, record)
            except BaseException as err:  # handed to the engine loop
                self.error = err

    def close(self) -> None:
        """Write everything queued, stop the thread; raise a write error if one happened."""
        self._queue.put(None)
        self._thread.join()
        self.check()


class CellRun:
    """One session of one cell (see the module docstring)."""

    def __init__(
        self,
        cell: CellSpec,
        engine,
        jobs: list[Job],
        writer: CellWriter,
        grader: GradingProcess,
        on_progress=None,
        energy: CellEnergy | None = None,
    ):
        self.cell, self.engine, self.writer, self.grader = cell, engine, writer, grader
        self.energy = energy or CellEnergy([])
        self.todo = [j for j in jobs if j.id not in writer.finished_ids]
        self.jobs = {j.id: j for j in self.todo}
        self.on_progress = on_progress  # called with (requests finished this session, output tokens/s)
        self.recorder: Recorder | None = None  # made in run(), after the energy base is read
        self.in_flight: set[str] = set()
        self.batch_of: dict[str, int] = {}
        self.output_tokens = 0
        self.lags_ns: list[int] = []  # per request sent this session: send time - arrival time
        self.records: RecordWriter | None = None
        self.unsent: list[Job] = []  # jobs not yet sent, in order (set in _loop)

    def _arrivals(self):
        return cell_arrivals(self.cell, len(self.todo))

    def _submit(self, job: Job, arrival_ns: int, batch: int | None) -> None:
        c = self.cell
        budget = min(c.max_tokens, job.max_tokens or c.max_tokens)
        sampling = SamplingParams(
            budget,
            c.temperature,
            c.top_p,
            (c.seed * 1_000_003 + hash_id(job.id)) & 0x7FFFFFFF,
            top_k=c.top_k,
            order=c.sampling_order,
            think_budget=c.think_budget,
        )
        if batch is not None:
            self.batch_of[job.id] = batch
        self.in_flight.add(job.id)
        request = Request(
            job.id, job.text, sampling, job.prompt.starts_in_think, job.prompt.grammar, job.prompt.answer_cue
        )
        sent_ns = time.perf_counter_ns()
        self.recorder.arrived(job.id, arrival_ns, sent_ns)
        self.lags_ns.append(sent_ns - arrival_ns)
        self.engine.submit(request)

    def lag_warning(self) -> str | None:
        """A warning when this session's p99 dispatch lag (sent - scheduled arrival) exceeds
        DISPATCH_LAG_BOUND_S, else None."""
        lag = distribution((n / 1e9 for n in self.lags_ns), (99,))
        if not lag["count"] or lag["p99"] <= DISPATCH_LAG_BOUND_S:
            return None
        return (
            f"{self.cell.name}: requests were sent late: dispatch lag p99 {lag['p99']:.3f} s, max {lag['max']:.3f} s "
            f"(n={lag['count']}) exceeds the {DISPATCH_LAG_BOUND_S:g} s bound; an engine step was running when they came "
            "due, and their latencies count from the scheduled arrival"
        )

    def run(self) -> None:
        calibrates = self.engine.capabilities().local_model
        if calibrates:
            self.writer.write_calibration(calibrate(self.engine, "before"))
        self.records = RecordWriter(self.cell, self.writer, self.grader, self._written)
        self.energy.start()
        self.recorder = Recorder(time.perf_counter_ns())
        try:
            self._loop()
        finally:
            self.records.close()
        if calibrates:  # every measured request has finished: the engine is idle again
            self.writer.write_calibration(calibrate(self.engine, "after"))

    def _written(self, done: int, record: dict) -> None:
        """On the writer thread, after a request is recorded: progress."""
        self.output_tokens += record["output_tokens"]
        if self.on_progress is not None:
            elapsed = max((time.perf_counter_ns() - self.recorder.t0_ns) / 1e9, 1e-9)
            self.on_progress(done, self.output_tokens / elapsed)

    def _loop(self) -> None:
        """Send what is due, sample, step the engine (or sleep until the next thing is due) until
        every request has finished; `_unfinished`, `_send_due` and `_next_due_ns` say what is due."""
        timing = self._arrivals()
        self.unsent = list(self.todo)
        t0 = self.recorder.t0_ns
        next_sample = t0
        while self._unfinished():
            self.records.check()
            now = time.perf_counter_ns()
            self._send_due(timing, t0, now)
            if now >= next_sample:
                self._sample(now)
                next_sample = now + int(self.cell.sample_period_s * 1e9)
            if self.engine.has_work():
                self._record(self.engine.step())
            else:
                wake = min(next_sample, self._next_due_ns(timing, t0))
                time.sleep(max(0.0, min(IDLE_SLEEP_S, (wake - time.perf_counter_ns()) / 1e9)))
        self._sample(time.perf_counter_ns(), final=True)

    def _unfinished(self) -> bool:
        return bool(self.unsent or self.in_flight)

    def _send_due(self, timing, t0: int, now: int) -> None:
        sent = len(self.todo) - len(self.unsent)
        for due in timing.due((now - t0) / 1e9, sent, len(self.in_flight))[: len(self.unsent)]:
            self._submit(self.unsent.pop(0), t0 + int(due.at_s * 1e9), due.batch)

    def _next_due_ns(self, timing, t0: int) -> float:
        """When the next request is due (perf_counter ns), inf when none is scheduled."""
        at_s = timing.next_due_s(len(self.todo) - len(self.unsent))
        return math.inf if at_s is None else t0 + int(at_s * 1e9)

    def _sample(self, now_ns: int, final: bool = False) -> None:
        """A stats snapshot on the engine thread (engine.stats() is a few counters); the writer
        thread formats and writes it."""
        st = self.engine.stats()
        row = {
            "t_s": self.recorder.seconds(now_ns),
            "kv_used": st.kv_used,
            "kv_capacity": st.kv_capacity,
            "kv_unit": st.kv_unit,
            "running": st.running,
            "waiting": st.waiting,
            "rss_bytes": st.rss_bytes,
            "device_bytes": st.device_bytes,
            **({"extra": st.extra.as_dict()} if st.extra else {}),
        }
        row.update(self.energy.read(final))
        self.records.put(row)

    def _record(self, events) -> None:
        """Hand each finished request to the writer thread (grading and the fsync'd write happen there)."""
        for record, tokens in self.recorder.feed(events):
            job = self.jobs[record["id"]]
            extra = {
                "dataset": job.item.dataset,
                "item_id": job.item.id,
                "domain": job.item.domain,
                "difficulty": job.item.difficulty,
                "prompt_mode": self.cell.prompt_mode,
                "batch": self.batch_of.get(job.id),
                "reference_answer": job.prompt.correct_letter or job.item.answer,
                **({"session_id": job.session, "turn": job.turn} if job.turn is not None else {}),
            }
            self.in_flight.discard(record["id"])
            self.records.put((job, record, tokens, extra))
            self._finished(job, record)

    def _finished(self, job: Job, record: dict) -> None:
        """Called on the engine thread for each finished request (after it is handed to the writer)."""


_WARMED: weakref.WeakSet = weakref.WeakSet()  # engines whose first calibration decode was run (see calibrate)


def calibrate(engine, when: str) -> dict:
    """The machine's decode speed now, on this engine: one sequence, CALIBRATION_PROMPT, greedy,
    CALIBRATION_TOKENS tokens, stepped until it finishes (the engine must be idle: nothing else
    shares its steps); a busy machine stops it after CALIBRATION_MAX_S of decoding once it has 3
    tokens (it is aborted), so calibrating never costs much. tok_s = (tokens - 1) / (last token time
    - first token time): decode only, the prompt's prefill left out. {"when", "tokens", "seconds",
    "tok_s"}; tok_s None with fewer than two tokens.

    An engine's first calibration is preceded by a short decode of the same prompt
    (CALIBRATION_WARM_UP_TOKENS), unrecorded: the first prefill and decodes of a fresh engine pay
    one-off costs (on a GPU, CUDA graph capture and kernel loading; on a CPU, the weights' first
    reads), which a 16-token decode cannot hide (the H100 run of 2026-12-07 read 354 and 368 tok/s
    for fresh engines against 405-484 for the same engine's later calibrations; SmolLM2 on a 2-core
    CPU took 0.45 s for its first calibration and 0.15 s for the next), and a cell's speed check
    would then see a machine that changed speed."""
    if engine not in _WARMED:
        _calibration_times(engine, f"calibration-{when}-warm-up", CALIBRATION_WARM_UP_TOKENS)
        _WARMED.add(engine)
    times = _calibration_times(engine, f"calibration-{when}")
    seconds = (times[-1] - times[0]) / 1e9 if len(times) > 1 else 0.0
    return {
        "when": when,
        "tokens": len(times),
        "seconds": round(seconds, 6),
        "tok_s": (len(times) - 1) / seconds if seconds > 0 else None,
    }


def _calibration_times(engine, rid: str, tokens: int = CALIBRATION_TOKENS) -> list[int]:
    """The token times (ns) of one calibration decode of `tokens` tokens under request id `rid` (see calibrate)."""
    engine.submit(Request(rid, CALIBRATION_PROMPT, SamplingParams(tokens, 0.0, 1.0, 0)))
    times: list[int] = []
    while engine.has_work():
        times += [ev.t_ns for ev in engine.step() if isinstance(ev, TokenEvent) and ev.request_id == rid]
        if len(times) >= 3 and times[-1] - times[0] > CALIBRATION_MAX_S * 1e9:
            engine.abort(rid)
    return times


def hash_id(text: str) -> int:
    """A stable small hash of a request id (Python's hash() is salted per process)."""
    h = 0
    for ch in text.encode():
        h = (h * 131 + ch) & 0xFFFFFFFF
    return h


def run_class(cell: CellSpec) -> type[CellRun]:
    """The driver of a cell: `SessionRun` for multi-turn sessions, whose later prompts are built
    from earlier answers as they finish; `CellRun` for every other workload."""
    from rllm_study.running.sessions import SessionRun, is_multi_turn

    return SessionRun if is_multi_turn(cell) else CellRun


class EnginePool:
    """Keeps one engine open across cells that share backend, model and options, except with
    prefix caching on: such a cell gets a fresh engine, so its cache starts empty (a kept cache
    would serve a cell's repeats from the earlier repeats' identical prompts)."""

    def __init__(self):
        self.key = None
        self.engine = None

    @staticmethod
    def key_of(cell: CellSpec) -> tuple:
        return (cell.backend, cell.model, cell.engine)

    def get(self, cell: CellSpec, fresh_cache: bool = True):
        """The cell's engine; `fresh_cache=False` keeps an open engine of the same key even with
        prefix caching on (for checks that run no request)."""
        key = self.key_of(cell)
        if key != self.key or (cell.engine.prefix_cache and fresh_cache):
            self.close()
            self.engine = engine_class(cell.backend)(cell.model, cell.engine)
            self.key = key
        return self.engine

    def close(self):
        if self.engine is not None:
            self.engine.close()
        self.engine, self.key = None, None


def check_cells(cells: list[CellSpec]) -> None:
    """The checks that need no engine, for every cell: its arrival values, by the same
    validator as `schedule` (`timing_of_workload`, through `cell_arrivals`)."""
    for cell in cells:
        try:
            cell_arrivals(cell, cell.samples)
        except UserError as err:
            raise UserError(f"{cell.name}: workload: {err}") from None


def _fit(cell: CellSpec, jobs: list[Job], engine, console, longest_of: dict | None = None) -> CellSpec:
    """The cell with a context every prompt fits, or a UserError naming the item that cannot.

    Applies where the engine sizes its sequences from ctx_per_seq (its info().context has
    seq_capacity). A sequence must hold prompt + max_tokens + 1 tokens. When
    ctx_per_seq is the derived default (`spec.default_ctx_per_seq`) and n_ctx is not set, it
    grows to that for the longest prompt, rounded up to 256; a value the user set is kept: a
    prompt that does not fit at all is an error, one that leaves less than max_tokens of room a
    warning (its output may end at the context before the budget). A later turn of a multi-turn
    session counts its `reserve` (room for the earlier turns' answers) as prompt. `longest_of` keeps
    each job list's longest prompt (by the list's id) for cells that share the list."""
    capacity = (getattr(engine.info(), "context", None) or {}).get("seq_capacity")
    if not capacity or not jobs:
        return cell
    longest_of = {} if longest_of is None else longest_of
    if id(jobs) not in longest_of:
        longest_of[id(jobs)] = max(((engine.count_tokens(j.text) + j.reserve, j) for j in jobs), key=lambda c: c[0])
    longest, job = longest_of[id(jobs)]
    needed = longest + cell.max_tokens + 1
    if needed <= capacity:
        return cell
    options = cell.engine
    if not options.n_ctx and options.ctx_per_seq == default_ctx_per_seq(cell.max_tokens):
        return replace(cell, engine=replace(options, ctx_per_seq=-(-needed // 256) * 256))
    if longest + 1 > capacity:
        raise UserError(
            f"{cell.name}: {job.item.id} has a {longest}-token prompt; a sequence holds {capacity - 1} "
            f"(set engine.ctx_per_seq >= {needed}, or leave it unset to size it from the prompts)"
        )
    console.print(
        f"[yellow]warning:[/] {cell.name}: {job.item.id}'s {longest}-token prompt leaves {capacity - 1 - longest} "
        f"tokens of the {cell.max_tokens} budget (engine.ctx_per_seq >= {needed} fits it)"
    )
    return cell


def preflight(cells: list[CellSpec], pool: EnginePool, console) -> list[tuple[CellSpec, list[Job]]]:
    """Everything checked before the first cell runs; returns each cell (its context sized,
    see `_fit`) with its requests.

    Arrival values first (`check_cells`); then each cell's engine is opened through the pool
    (the model resolves and loads; cells sharing backend, model and options share it), the
    cell builds its requests (data sets and prompt templates read, prompts rendered through the
    model's chat template) and counts their tokens against its own sequence capacity.

    Work that is the same for many cells is done once: cells are visited grouped by engine (each
    engine opened once; the first cell's group last, so its engine stays open for the run), and
    cells that differ only in what does not change their requests (token budget, engine options,
    workload) share one job list and its token count (`_jobs_key`); a repeat has its own seed."""
    check_cells(cells)
    planned: list = [None] * len(cells)
    groups: dict[tuple, list[int]] = {}
    for i, cell in enumerate(cells):
        groups.setdefault(pool.key_of(cell), []).append(i)
    shared: dict[tuple, list[Job]] = {}
    longest_of: dict = {}
    for members in sorted(groups.values(), key=lambda m: m[0] == 0):
        for i in members:
            engine = pool.get(cells[i], fresh_cache=False)
            key = _jobs_key(cells[i])
            if key not in shared:
                shared[key] = build_jobs(cells[i], engine)
            planned[i] = (_fit(cells[i], shared[key], engine, console, longest_of), shared[key])
    return planned


def _jobs_key(cell: CellSpec) -> tuple:
    """What a cell's requests (`build_jobs`) depend on: the model (its chat template and tokens),
    where it is served, the items, the prompt and its rendering; for a replayed trace or multi-turn
    sessions, the whole workload (its trace, window and turns shape the requests)."""
    shaping = cell.workload.get("arrival") in ("replay", "sessions")
    workload = (
        json.dumps(cell.workload, sort_keys=True, default=str) if shaping else cell.workload.get("shared_prefix", 0)
    )
    return (
        cell.backend,
        cell.model,
        getattr(cell.engine, "base_url", None),
        cell.dataset,
        cell.samples,
        workload,
        cell.prompt_mode,
        cell.seed,
        cell.templates,
        cell.grammar,
        json.dumps(cell.custom_dataset, sort_keys=True),
    )


def dry_run(cells: list[CellSpec], out_dir: Path, console) -> list[tuple[CellSpec, list[Job]]]:
    """The verdict `run` would reach before its first cell, with nothing written: the results
    folder writable (`check_writable`), then `preflight`."""
    check_writable(out_dir)
    pool = EnginePool()
    try:
        return preflight(cells, pool, console)
    finally:
        pool.close()


def _kept(dirs: list[Path]) -> int:
    return sum(len(read_jsonl(d / REQUESTS)) for d in dirs if (d / REQUESTS).exists())


def run_study(cells: list[CellSpec], spec: dict, out_dir: Path, console) -> list[Path]:
    """Run every cell into OUT/<cell name>/, resuming finished requests; returns the cell folders.

    Order: the no-engine checks, the results folder made and locked (one writer per folder,
    `FolderLock`), `preflight`, then the cells. A full disk stops the run with a UserError
    saying how many requests are kept; everything written stays readable."""
    out_dir = Path(out_dir)
    check_writable(out_dir)
    check_cells(cells)
    make_folder(out_dir)
    pool = EnginePool()
    meter_notes: list[str] = []  # meters present but unreadable (e.g. RAPL for root only): said at the end,
    energy = CellEnergy(open_meters(spec.get("energy_cmd"), warn=meter_notes.append))  # so an error stays one line
    grader = GradingProcess()
    dirs = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    try:
        with (
            FolderLock(out_dir) as lock,
            Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress,
        ):
            if lock.took_over:
                console.print(lock.took_over)
            planned = preflight(cells, pool, console)
            for i, (cell, jobs) in enumerate(planned, 1):
                cell_dir = out_dir / cell.name
                dirs.append(cell_dir)
                writer = CellWriter(cell_dir)
                try:
                    engine = pool.get(cell)
                    for problem in engine_unsupported(engine, cell.engine):
                        console.print(f"[yellow]warning:[/] {cell.name}: {problem}; ignored")
                    if cell.custom_dataset and cell.custom_dataset["answer"] == NO_ANSWER:
                        console.print(
                            f'{cell.name}: data set {cell.dataset} has no reference answers (answer = "none"): '
                            "grading is off, no accuracy is reported"
                        )
                    if cell.think_budget is not None and not engine.capabilities().think_budget:
                        console.print(
                            f"[yellow]warning:[/] {cell.name}: {cell.backend}: think_budget is not supported here; ignored"
                        )
                    label = f"[{i}/{len(cells)}] {cell.name}"
                    if len(writer.finished_ids) >= len(jobs):
                        console.print(f"{label}: done already, skipped")
                        continue
                    recorded = {
                        **manifest(cell, spec, engine),
                        "energy_meters": energy.names,
                        "run_order": {"position": i, "of": len(planned)},
                    }
                    if writer.finished_ids:
                        check_same_inputs(cell_dir, recorded, len(writer.finished_ids))
                    writer.write_manifest(recorded)
                    run = run_class(cell)(cell, engine, jobs, writer, grader, energy=energy)
                    already = len(jobs) - len(run.todo)
                    if console.is_terminal:
                        task = progress.add_task(label, total=len(jobs), completed=already, rate="")
                        run.on_progress = lambda done, rate, task=task, already=already: progress.update(
                            task, completed=already + done, rate=f"{rate:,.1f} out tok/s"
                        )
                    else:
                        run.on_progress = _line_progress(console, label, already, len(jobs))
                    run.run()
                    if (late := run.lag_warning()) is not None:
                        console.print(f"[yellow]warning:[/] {late}")
                finally:
                    writer.close()
    except UserError as err:
        if not dirs:
            raise
        raise UserError(
            f"{err} [the run stopped at cell {dirs[-1].name}; {_kept(dirs)} finished requests are kept in {out_dir} "
            f"and the same command resumes them]"
        ) from None
    except ResultsWriteError as failed:
        if failed.err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(
                f"{failed}: the run stopped; {_kept(dirs)} finished requests are kept in {out_dir} "
                "(summarize and report read them); free space and run the same command again to resume"
            ) from None
        raise path_error(failed.path, failed.err) from None
    finally:
        pool.close()
        energy.close()
        grader.close()
    for note in meter_notes:
        console.print(f"[yellow]warning:[/] {note}")
    return dirs


MODEL_IDENTITY = ("sha256", "size_bytes", "quant", "params")  # manifest.model facts a resumed cell must share


def check_same_inputs(cell_dir: Path, now: dict, finished: int) -> None:
    """A cell resumed in a new session runs on the inputs its finished requests ran on: the same
    custom data file (its sha256) and the same model file (`MODEL_IDENTITY` of its facts), as its
    manifest.json recorded them; else a UserError naming the file and the fix. Facts an older
    manifest lacks are not compared."""
    try:
        before = json.loads((cell_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    name = now["cell"]["name"]
    old_data, new_data = before.get("cell", {}).get("custom_dataset") or {}, now["cell"].get("custom_dataset") or {}
    if old_data.get("sha256") and new_data.get("sha256") and old_data["sha256"] != new_data["sha256"]:
        raise UserError(
            f"{new_data['path']}: the data file changed since cell {name} started ({finished} of its requests "
            f"finished on the old rows): restore the file, or run into a new --out folder"
        )
    old_model, new_model = (
        m if isinstance(m, dict) else {} for m in (before.get("model"), now.get("model"))
    )  # served: a name
    differ = [
        k
        for k in MODEL_IDENTITY
        if old_model.get(k) is not None and new_model.get(k) is not None and old_model[k] != new_model[k]
    ]
    if differ:
        raise UserError(
            f"{new_model.get('path') or now['cell']['model']}: the model file changed since cell {name} started "
            f"({differ[0]} {old_model[differ[0]]} -> {new_model[differ[0]]}; {finished} of its requests finished "
            f"on the old one): restore the file, or run into a new --out folder"
        )


def _line_progress(console, label: str, already: int, total: int, every_s: float = 10.0):
    """Progress as plain lines (for logs and pipes): requests done/total, tokens/s, ETA."""
    start = last = time.monotonic()

    def report(done: int, rate: float) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < every_s and already + done < total:
            return
        last = now
        eta = (now - start) / done * (total - already - done)
        console.print(f"{label}: {already + done}/{total} requests, {rate:,.1f} out tok/s, ETA {eta:,.0f} s")

    return report
