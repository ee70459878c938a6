"""Runs cells: turns a workload into timed requests, drives an engine, records everything.

One thread drives the engine: each loop submits the requests that are due, calls
`engine.step()` once, records finished requests (graded, fsync'd), and samples engine stats
into the timeline every `sample_period_s`. Arrivals: each loop asks the cell's arrival process
(`rllm_study.workloads.arrivals`) which requests are due, given the clock, how many were sent
and how many are in flight, and submits them in order with the arrival time it names: for open
loop (poisson, gamma, constant, trace, ramp) the *scheduled* time, whether or not the engine
keeps up (submitted at the first loop turn after it); for closed loop and synchronous batches
the moment they became due.
A resumed cell (a new session) skips requests already in requests.jsonl and schedules the
rest afresh from the same seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rllm_study.backends import engine_class
from rllm_study.backends.base import Request, SamplingParams, engine_unsupported
from rllm_study.environment import environment
from rllm_study.errors import UserError
from rllm_study.recorder import Recorder
from rllm_study.results import CellWriter
from rllm_study.spec import CellSpec
from rllm_study.workloads.arrivals import timing_of_workload
from rllm_study.workloads.datasets import Item, load_dataset
from rllm_study.workloads.grading import grade
from rllm_study.workloads.prompts import Prompt, build_prompt, ends_in_think

IDLE_SLEEP_S = 0.005


@dataclass
class Job:
    """A request of a cell before it is sent: its item, prompt and the exact text to send."""

    id: str
    item: Item
    prompt: Prompt
    text: str


def few_shot_prefix(items: list[Item]) -> str:
    """A shared few-shot preamble (worked examples with their answers) for prefix-cache workloads."""
    shots = [f"Example problem: {it.problem}\nExample answer: \\boxed{{{it.answer}}}" for it in items]
    return "Here are solved examples.\n\n" + "\n\n".join(shots) + "\n\nNow the problem to solve.\n\n"


def build_jobs(cell: CellSpec, engine) -> list[Job]:
    """The cell's requests in order: prompts through the model's chat template + assistant prefix."""
    shots = int(cell.workload.get("shared_prefix", 0) or 0)
    items = load_dataset(cell.dataset, limit=cell.samples + shots)
    preamble = few_shot_prefix(items[cell.samples:]) if shots else ""
    jobs = []
    for item in items[: cell.samples]:
        prompt = build_prompt(item, cell.prompt_mode, seed=cell.seed, templates=cell.templates, grammar=cell.grammar)
        messages = [dict(m) for m in prompt.messages]
        if preamble and messages[0]["role"] == "system":
            messages[0]["content"] += "\n\n" + preamble
        elif preamble:
            messages.insert(0, {"role": "system", "content": preamble})
        text = engine.apply_chat_template(messages) + prompt.assistant_prefix
        if cell.prompt_mode == "native" and ends_in_think(text):  # an R1-style template opens <think> itself
            prompt = replace(prompt, starts_in_think=True)
        jobs.append(Job(item.id, item, prompt, text))
    return jobs


def manifest(cell: CellSpec, spec: dict, engine) -> dict:
    from rllm_study.models import model_facts, resolve_model

    info = engine.info()
    model = info.model  # a server's or an MLX folder's own account
    if engine.capabilities().local_model:
        try:  # a registry model (embedded, path, hub, derived): its verified facts
            model = model_facts(resolve_model(cell.model, fetch=False))
        except UserError:
            pass
    return {
        "cell": cell.as_dict(),
        "spec": spec,
        "model": model,
        "engine": info.as_dict(),
        "capabilities": engine.capabilities().__dict__,
        "unsupported_options": engine_unsupported(engine, cell.engine),
        **environment(),
    }


class CellRun:
    """One session of one cell (see the module docstring)."""

    def __init__(self, cell: CellSpec, engine, jobs: list[Job], writer: CellWriter, on_progress=None):
        self.cell, self.engine, self.writer = cell, engine, writer
        self.todo = [j for j in jobs if j.id not in writer.finished_ids]
        self.jobs = {j.id: j for j in self.todo}
        self.on_progress = on_progress  # called with (requests finished this session, output tokens/s)
        self.recorder = Recorder(time.perf_counter_ns())
        self.in_flight: set[str] = set()
        self.batch_of: dict[str, int] = {}
        self.output_tokens = 0
        self.finished = 0

    def _arrivals(self):
        return timing_of_workload(self.cell.workload, len(self.todo), self.cell.seed)

    def _submit(self, job: Job, arrival_ns: int, batch: int | None) -> None:
        c = self.cell
        sampling = SamplingParams(c.max_tokens, c.temperature, c.top_p, (c.seed * 1_000_003 + hash_id(job.id)) & 0x7FFFFFFF)
        self.recorder.arrived(job.id, arrival_ns)
        if batch is not None:
            self.batch_of[job.id] = batch
        self.in_flight.add(job.id)
        self.engine.submit(Request(job.id, job.text, sampling, job.prompt.starts_in_think, job.prompt.grammar))

    def run(self) -> None:
        arrivals = self._arrivals()
        queue = list(self.todo)
        t0 = self.recorder.t0_ns
        next_sample = t0
        while queue or self.in_flight:
            now = time.perf_counter_ns()
            for due in arrivals.due((now - t0) / 1e9, len(self.todo) - len(queue), len(self.in_flight))[: len(queue)]:
                self._submit(queue.pop(0), t0 + int(due.at_s * 1e9), due.batch)
            if now >= next_sample:
                self._sample(now)
                next_sample = now + int(self.cell.sample_period_s * 1e9)
            if self.engine.has_work():
                self._record(self.engine.step())
            else:
                wake = next_sample
                at_s = arrivals.next_due_s(len(self.todo) - len(queue))
                if at_s is not None:
                    wake = min(wake, t0 + int(at_s * 1e9))
                time.sleep(max(0.0, min(IDLE_SLEEP_S, (wake - time.perf_counter_ns()) / 1e9)))
        self._sample(time.perf_counter_ns())

    def _sample(self, now_ns: int) -> None:
        st = self.engine.stats()
        self.writer.write_timeline({
            "t_s": self.recorder.seconds(now_ns), "kv_used": st.kv_used, "kv_capacity": st.kv_capacity,
            "kv_unit": st.kv_unit, "running": st.running, "waiting": st.waiting, "rss_bytes": st.rss_bytes,
            "device_bytes": st.device_bytes, **({"extra": st.extra.as_dict()} if st.extra else {}),
        })

    def _record(self, events) -> None:
        for record, tokens in self.recorder.feed(events):
            job = self.jobs[record["id"]]
            g = grade(job.item, job.prompt, record["output_text"])
            record.update({
                "dataset": job.item.dataset, "item_id": job.item.id, "domain": job.item.domain,
                "difficulty": job.item.difficulty, "prompt_mode": self.cell.prompt_mode,
                "batch": self.batch_of.get(job.id), "reference_answer": job.prompt.correct_letter or job.item.answer,
                **g.record_fields(),
            })
            self.writer.write_request(record, tokens)
            self.in_flight.discard(record["id"])
            self.output_tokens += record["output_tokens"]
            self.finished += 1
            if self.on_progress is not None:
                elapsed = max((time.perf_counter_ns() - self.recorder.t0_ns) / 1e9, 1e-9)
                self.on_progress(self.finished, self.output_tokens / elapsed)


def hash_id(text: str) -> int:
    """A stable small hash of a request id (Python's hash() is salted per process)."""
    h = 0
    for ch in text.encode():
        h = (h * 131 + ch) & 0xFFFFFFFF
    return h


class EnginePool:
    """Keeps one engine open across cells that share backend, model and options."""

    def __init__(self):
        self.key = None
        self.engine = None

    def get(self, cell: CellSpec):
        key = (cell.backend, cell.model, cell.engine)
        if key != self.key:
            self.close()
            self.engine = engine_class(cell.backend)(cell.model, cell.engine)
            self.key = key
        return self.engine

    def close(self):
        if self.engine is not None:
            self.engine.close()
        self.engine, self.key = None, None


def run_study(cells: list[CellSpec], spec: dict, out_dir: Path, console) -> list[Path]:
    """Run every cell into OUT/<cell name>/, resuming finished requests; returns the cell folders."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: --out must be a folder")
    pool = EnginePool()
    dirs = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress:
            for i, cell in enumerate(cells, 1):
                cell_dir = out_dir / cell.name
                dirs.append(cell_dir)
                writer = CellWriter(cell_dir)
                try:
                    engine = pool.get(cell)
                    for problem in engine_unsupported(engine, cell.engine):
                        console.print(f"[yellow]warning:[/] {cell.name}: {problem}; ignored")
                    jobs = build_jobs(cell, engine)
                    label = f"[{i}/{len(cells)}] {cell.name}"
                    if len(writer.finished_ids) >= len(jobs):
                        console.print(f"{label}: done already, skipped")
                        continue
                    writer.write_manifest(manifest(cell, spec, engine))
                    run = CellRun(cell, engine, jobs, writer)
                    already = len(jobs) - len(run.todo)
                    if console.is_terminal:
                        task = progress.add_task(label, total=len(jobs), completed=already, rate="")
                        run.on_progress = lambda done, rate, task=task: progress.update(
                            task, completed=already + done, rate=f"{rate:,.1f} out tok/s")
                    else:
                        run.on_progress = _line_progress(console, label, already, len(jobs))
                    run.run()
                finally:
                    writer.close()
    finally:
        pool.close()
    return dirs


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
