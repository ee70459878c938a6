"""A cell's prompts: the one place that turns a cell into the items and prompts of its requests.

Both the runner (`runner.build_jobs`, which renders each prompt's messages through the model's chat
template) and `rllm-study regrade` (which grades recorded output against the same items and
prompts, from the `cell` a manifest recorded) call `cell_prompts`, so what is graded again is what
was sent:
  items     the first `samples` items of the cell's data set: a shipped one (`load_dataset`) or the
            user's file (`custom_dataset.load_items`, from the definition the cell carries);
            with `workload.shared_prefix = K`, the K items after them are the few-shot examples of
            a preamble every request's system message ends with (`few_shot_prefix`)
  prompts   `build_prompt(item, prompt_mode, seed, templates, grammar)`: the seed decides the
            multiple-choice shuffle, so the letters
Native mode's `starts_in_think` depends on the model's chat template and is set by the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rllm_study.workloads.custom_dataset import load_items
from rllm_study.workloads.datasets import Item, load_dataset
from rllm_study.workloads.prompts import Prompt, build_prompt


@dataclass(frozen=True)
class CellPrompt:
    """One request of a cell before the chat template: its item, prompt and the messages to send
    (the prompt's, with the shared few-shot preamble where the workload has one)."""

    item: Item
    prompt: Prompt
    messages: tuple[dict, ...]


def few_shot_prefix(items: list[Item]) -> str:
    """A shared few-shot preamble (worked examples with their answers) for prefix-cache workloads."""
    shots = [f"Example problem: {it.problem}\nExample answer: \\boxed{{{it.answer}}}" for it in items]
    return "Here are solved examples.\n\n" + "\n\n".join(shots) + "\n\nNow the problem to solve.\n\n"


@lru_cache(maxsize=32)
def _shipped(dataset: str, limit: int) -> tuple[Item, ...]:
    return tuple(load_dataset(dataset, limit=limit))


def _items(cell: dict, limit: int) -> list[Item]:
    custom = cell.get("custom_dataset")
    return load_items(cell["dataset"], custom, limit) if custom else list(_shipped(cell["dataset"], limit))


def cell_prompts(cell) -> list[CellPrompt]:
    """The cell's requests in order (see the module docstring); `cell` is a `CellSpec` or the
    `cell` dict a manifest recorded (`CellSpec.as_dict()`)."""
    cell = cell if isinstance(cell, dict) else cell.as_dict()
    shots = int((cell.get("workload") or {}).get("shared_prefix", 0) or 0)
    items = _items(cell, cell["samples"] + shots)
    preamble = few_shot_prefix(items[cell["samples"] :]) if shots else ""
    templates = Path(cell["templates"]) if cell.get("templates") else None
    out = []
    for item in items[: cell["samples"]]:
        prompt = build_prompt(
            item,
            cell["prompt_mode"],
            seed=cell.get("seed", 0),
            templates=templates,
            grammar=bool(cell.get("grammar", False)),
        )
        messages = [dict(m) for m in prompt.messages]
        if preamble and messages[0]["role"] == "system":
            messages[0]["content"] += "\n\n" + preamble
        elif preamble:
            messages.insert(0, {"role": "system", "content": preamble})
        out.append(CellPrompt(item, prompt, tuple(messages)))
    return out
