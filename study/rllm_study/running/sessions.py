"""Multi-turn sessions: the turns of each conversation, sent one after another as answers come.

A cell whose workload is `arrival = "sessions"` (`rllm_study.workloads.arrivals.sessions`) makes
each item one conversation of K turns: turn 1 is the item's prompt; turn k > 1 asks FOLLOW_UPS[k-2]
(cycled) about the same problem, and its messages are the earlier turns' questions and answers:
each earlier answer as the assistant's message, its thinking removed (the text after the last
`</think>`, `answer_text`), or kept whole (the assistant prefix + the full output) with
`keep_thinking`. Every turn is graded against the item's reference answer (each follow-up asks for
the final answer again). Ids are `<item id>/t<k>`; records carry `session_id` and `turn`.

Timing: sessions start as the session timing says (closed loop: C sessions unfinished at once,
a new one starting when one ends; open loop: Poisson starts). A session's turn 1 arrives at its
start; turn k > 1 at the previous turn's finish + think_time_s (its scheduled time: a late send
shows as dispatch lag). Building a later turn's prompt (the chat template over the history) is
done in the loop before submitting it, not between decode steps of running requests.
Resume: finished turns are kept; an unfinished conversation continues from its first unfinished
turn with the recorded answers as its history, starting afresh.
"""

from __future__ import annotations

import math
from dataclasses import replace

from rllm_study.backends.phases import answer_text
from rllm_study.running.results import REQUESTS, read_jsonl
from rllm_study.running.runner import CellRun, Job, render
from rllm_study.running.spec import CellSpec
from rllm_study.workloads.arrivals import SessionTiming, check_workload
from rllm_study.workloads.prompts import has_think_token

FOLLOW_UPS = (
    "Check your solution once more. Then state the final answer again within \\boxed{}.",
    "Explain in one or two sentences why that answer is right, then give it again within \\boxed{}.",
    "Is there a quicker way to reach the same result? Describe it briefly and restate the final answer within \\boxed{}.",
)
FOLLOW_UP_ROOM = 96  # tokens a turn's prompt grows by besides the earlier answer (follow-up, template markers)


def is_multi_turn(cell: CellSpec) -> bool:
    return cell.workload.get("arrival") == "sessions"


def session_jobs(cell: CellSpec, first_turns: list[Job]) -> list[Job]:
    """For a multi-turn cell, each first-turn job's K turns in order (turn k > 1 holds the first
    turn's text until it is built, and reserves room for the earlier answers); else the jobs as given."""
    if not is_multi_turn(cell):
        return first_turns
    turns = check_workload(cell.workload)["turns"]
    return [
        replace(job, id=f"{job.id}/t{k}", session=job.id, turn=k, reserve=(k - 1) * (cell.max_tokens + FOLLOW_UP_ROOM))
        for job in first_turns
        for k in range(1, turns + 1)
    ]


class SessionRun(CellRun):
    """One session of a multi-turn cell (see the module docstring)."""

    def __init__(self, cell: CellSpec, engine, jobs: list[Job], writer, grader, on_progress=None, energy=None):
        super().__init__(cell, engine, jobs, writer, grader, on_progress, energy)
        self.think_token = cell.prompt_mode == "native" and has_think_token(engine)
        params = check_workload(cell.workload)
        self.think_time_s, self.keep_thinking = params["think_time_s"], params["keep_thinking"]
        done = {r["id"]: r for r in read_jsonl(writer.dir / REQUESTS)} if (writer.dir / REQUESTS).exists() else {}
        self.turns: dict[str, list[Job]] = {}
        for job in jobs:
            self.turns.setdefault(job.session, []).append(job)
        # per conversation: its earlier answers (output texts, in turn order) and its next turn's index
        self.answers = {s: [done[j.id]["output_text"] for j in js if j.id in done] for s, js in self.turns.items()}
        self.pending = [s for s, js in self.turns.items() if len(self.answers[s]) < len(js)]
        self.ready_ns: dict[str, int | None] = {}  # started, unfinished conversations: next turn due (None: in flight)
        self.started = 0  # sessions started

    def _unfinished(self) -> bool:
        return bool(self.pending or self.ready_ns)

    def _send_due(self, timing: SessionTiming, t0: int, now: int) -> None:
        """Start the sessions that are due, then send every started session's turn that is due."""
        for due in timing.due((now - t0) / 1e9, self.started, len(self.ready_ns))[: len(self.pending)]:
            self.ready_ns[self.pending.pop(0)] = t0 + int(due.at_s * 1e9)
            self.started += 1
        for session, ready in list(self.ready_ns.items()):
            if ready is not None and ready <= now:
                self._submit(self._next_turn(session), ready, None)
                self.ready_ns[session] = None

    def _next_due_ns(self, timing: SessionTiming, t0: int) -> float:
        at_s = timing.next_due_s(self.started) if self.pending else None
        starts = math.inf if at_s is None else t0 + int(at_s * 1e9)
        return min([starts, *(r for r in self.ready_ns.values() if r is not None)])

    def _arrivals(self) -> SessionTiming:
        from rllm_study.workloads.arrivals import timing_of_workload

        return timing_of_workload(self.cell.workload, max(len(self.pending), 1), self.cell.seed)

    def _next_turn(self, session: str) -> Job:
        """The session's next turn with its text built from the earlier turns (module docstring)."""
        answers = self.answers[session]
        job = self.turns[session][len(answers)]
        if job.turn == 1:
            return job
        messages = [dict(m) for m in job.prompt.messages]
        for k, output in enumerate(answers):
            shown = (
                job.prompt.assistant_prefix + output
                if self.keep_thinking
                else answer_text(output, job.prompt.starts_in_think).strip()
            )
            messages += [
                {"role": "assistant", "content": shown},
                {"role": "user", "content": FOLLOW_UPS[k % len(FOLLOW_UPS)]},
            ]
        text, prompt = render(self.cell, self.engine, job.prompt, messages, self.think_token)
        job = replace(job, text=text, prompt=prompt)
        self.jobs[job.id] = job
        return job

    def _finished(self, job: Job, record: dict) -> None:
        """The session's history grows by this answer; its next turn is due think_time_s after the finish."""
        self.answers[job.session].append(record["output_text"])
        if len(self.answers[job.session]) >= len(self.turns[job.session]):
            del self.ready_ns[job.session]
            return
        self.ready_ns[job.session] = self.recorder.t0_ns + int((record["finish_s"] + self.think_time_s) * 1e9)
