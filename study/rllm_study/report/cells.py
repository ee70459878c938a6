"""Cells as a report sees them: read once, their metrics computed once, and grouped.

`load_cells` reads every cell below the given folders and runs `cell_metrics` (with the cell's
own SLOs) and `request_metrics` on it; everything in a report comes from these. Grouping:
  pilot pairs      the same model, data set, budget, workload and repeat, once reasoning and once
                   direct (the pilot study's comparison)
  technique groups cells of one study that differ only in their [[variants]] entry
  load groups      open-loop or closed-loop cells that differ only in their workload
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from rllm_study.analysis.metrics import cell_metrics, request_metrics
from rllm_study.backends import all_options, option_defaults
from rllm_study.errors import UserError
from rllm_study.running.results import Cell, cells_in, find_cells, read_cell
from rllm_study.running.spec import workload_name
from rllm_study.workloads.datasets import SPECS

TIER_ORDER = ("easy", "medium", "hard")
CUSTOM_SETS: dict[str, dict] = {}  # data set name -> its definition, from the manifests of the cells read
REASONING, DIRECT = "reasoning", "direct"
TECHNIQUE_FIELDS = {
    "weight quantization": ("model.quant",),
    "KV-cache quantization": ("engine.type_k", "engine.type_v", "engine.kv_bits"),
    "prefix caching": ("engine.prefix_cache", "engine.prefix_cache_tokens"),
    "speculative decoding": ("engine.speculative", "engine.speculative_tokens"),
}


@dataclass
class CellData:
    """One recorded cell with its metrics (`cell_metrics`) and per-request rows (`request_metrics`,
    each row also carrying the request's `difficulty`)."""

    cell: Cell
    metrics: dict
    rows: list[dict]
    root: Path | None = None  # the run folder the user named that holds it (see `run`)

    @property
    def name(self) -> str:
        return self.cell.name

    @property
    def spec(self) -> dict:
        return self.cell.manifest.get("cell", {})

    @property
    def model(self) -> dict:
        model = self.cell.manifest.get("model")
        return model if isinstance(model, dict) else {}  # a served model (OpenAI backend) records only its name

    @property
    def study(self) -> str:
        return self.spec.get("study", "study")

    @property
    def mode(self) -> str:
        return self.spec.get("prompt_mode", "")

    @property
    def dataset(self) -> str:
        return self.spec.get("dataset", "")

    @property
    def budget(self) -> int:
        return self.spec.get("max_tokens", 0)

    @property
    def think_budget(self) -> int | None:
        return self.spec.get("think_budget")

    @property
    def variant(self) -> str:
        return self.spec.get("variant", "")

    @property
    def workload(self) -> dict:
        return self.spec.get("workload", {"arrival": "batch"})

    @property
    def workload_name(self) -> str:
        return workload_name({"arrival": "batch", **self.workload})

    @property
    def base_model(self) -> str:
        """The model reference without its :QUANT suffix."""
        return str(self.spec.get("model", "")).partition(":")[0]

    @property
    def run(self) -> str:
        """The run a cell belongs to (keeps cells of different runs apart when grouping): the folder
        the user named that holds it, so shards written to OUT/shard-K and reported as OUT form one
        run; a cell folder named directly belongs to its parent folder."""
        return str(self.root or self.cell.dir.parent)

    @property
    def n_params(self) -> int | None:
        return (self.model.get("gguf") or {}).get("n_params") or (
            self.cell.manifest.get("engine", {}).get("model") or {}
        ).get("n_params")

    def field(self, dotted: str):
        """A manifest value by dotted path: 'model.quant' reads manifest.model, 'engine.x' the cell's engine
        options (an option the cell's backend does not have reads as its declared default; a renamed
        option is found under its old name in older result files)."""
        head, _, rest = dotted.partition(".")
        if head == "engine" and rest in all_options():
            engine, meta = self.spec.get("engine") or {}, all_options()[rest]
            for name in (rest, meta.deprecated_key):
                if name in engine:
                    return engine[name]
            return option_defaults()[rest]
        node = self.model if head == "model" else self.spec.get(head, {})
        for part in rest.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    @cached_property
    def label(self) -> str:
        return model_label(self.cell.manifest)


def model_label(manifest: dict) -> str:
    """An honest one-line description of the model as this cell used it, e.g. 'Qwen2.5-Coder-0.5B-Instruct
    Q4_K_M prompted to reason; not a trained reasoning model'."""
    cell, model = manifest.get("cell", {}), manifest.get("model")
    mode = cell.get("prompt_mode")
    if not isinstance(model, dict) or not model:  # a served model (OpenAI-compatible backend): only its name is known
        name = f"{model if isinstance(model, str) and model else cell.get('model', '?')} (served; reasoning training unknown)"
        return f"{name}, prompted to reason" if mode == REASONING else name
    name = str(model.get("label") or model.get("name") or cell.get("model")).split(" (")[0]
    if model.get("reasoning"):
        return f"{name} (trained reasoning model)"
    if mode == REASONING:
        return f"{name} prompted to reason; not a trained reasoning model"
    if mode == DIRECT:
        return f"{name} answering directly; not a reasoning model"
    return f"{name}; not a trained reasoning model"


def _load(cell_dir: Path) -> CellData:
    try:
        cell = read_cell(cell_dir)
    except (ValueError, json.JSONDecodeError) as err:
        raise UserError(f"{cell_dir}: unreadable results file ({err}); re-run the cell or remove the folder") from None
    slo = cell.manifest.get("cell", {}).get("slo") or None
    custom = cell.manifest.get("cell", {}).get("custom_dataset")
    if custom:
        CUSTOM_SETS[cell.manifest["cell"]["dataset"]] = custom
    rows = request_metrics(cell)
    difficulty = {r["id"]: r.get("difficulty") for r in cell.requests}
    for row in rows:
        row["difficulty"] = difficulty.get(row["id"])
    return CellData(cell, cell_metrics(cell, slo=slo), rows)


def load_cells(run_dirs: Iterable[Path]) -> list[CellData]:
    """Every cell at or below the folders, ordered by study, model, variant, data set (easy to hard),
    prompt mode (reasoning first), budget, workload and repeat; UserError when a folder is missing or holds none."""
    roots: dict[Path, Path] = {}
    cells_in(run_dirs)  # the user-facing checks: every folder exists, some cell is found
    for named in (Path(d).resolve() for d in run_dirs):
        for d in find_cells([named]):
            roots.setdefault(d.resolve(), named if d.resolve() != named else named.parent)
    loaded = []
    for d, root in roots.items():
        loaded.append(_load(d))
        loaded[-1].root = root
    return sorted(
        loaded,
        key=lambda c: (
            c.study,
            str(c.spec.get("model")),
            c.variant,
            dataset_order(c.dataset),
            c.mode != REASONING,
            c.mode,
            c.budget,
            c.workload_name,
            c.spec.get("repeat", 0),
        ),
    )


def pooled_accuracy(cells: list[CellData], by: str | None = None) -> dict:
    """The accuracy metric over the requests of several cells taken together: overall (by=None),
    or per group with by="by_domain" / "by_dataset"."""
    acc = cell_metrics(_pooled_cell(cells, with_tokens=False))["accuracy"]
    return acc["overall"] if by is None else acc[by]


def pooled_metrics(cells: list[CellData]) -> dict:
    """`cell_metrics` over the requests of several cells of one spec (repeats) taken as one cell:
    meaningful for per-request figures (accuracy with its Wilson interval over all the requests,
    token counts, each request's own latencies), not for a cell's throughput or timeline (clocks
    differ between cells), which callers must not read from it."""
    if len(cells) == 1:
        return cells[0].metrics
    return cell_metrics(_pooled_cell(cells, with_tokens=True), slo=cells[0].spec.get("slo") or None)


def _pooled_cell(cells: list[CellData], with_tokens: bool) -> Cell:
    """One Cell holding every request of `cells` (ids prefixed by their cell's name, so repeats of
    one item stay apart), with their token rows if asked; the first cell's manifest, no timeline."""
    requests, tokens = [], {}
    for c in cells:
        for r in c.cell.requests:
            requests.append({**r, "id": f"{c.name}/{r['id']}"})
            if with_tokens and r["id"] in c.cell.tokens:
                tokens[f"{c.name}/{r['id']}"] = c.cell.tokens[r["id"]]
    return Cell(Path("."), cells[0].cell.manifest if cells else {"cell": {"name": "pooled"}}, requests, tokens)


def tier(dataset: str) -> str:
    """The data set's place on the math difficulty ladder (easy, medium, hard), or its domain
    for a data set off the ladder (GPQA: science-knowledge). A user's data set (CUSTOM_SETS) is
    placed by its `difficulty` key when that names a rung, else by its `domain`."""
    if dataset in CUSTOM_SETS:
        own = CUSTOM_SETS[dataset]
        return own["difficulty"] if own["difficulty"] in TIER_ORDER else own["domain"]
    spec = SPECS.get(dataset)
    return "unknown" if spec is None else spec.tier if spec.tier in TIER_ORDER else spec.domain


def dataset_order(name: str) -> tuple:
    """Sort key: math ladder easy -> hard first, then other data sets by name."""
    t = tier(name)
    return (TIER_ORDER.index(t) if t in TIER_ORDER else len(TIER_ORDER), name)


# ---- groups ----------------------------------------------------------------------------------


def pilot_cells(cells: list[CellData]) -> list[CellData]:
    """Cells of the pilot kind: no variant, synchronous batches."""
    return [c for c in cells if not c.variant and c.workload.get("arrival", "batch") == "batch"]


def pilot_pairs(cells: list[CellData]) -> list[tuple[CellData, CellData]]:
    """(reasoning, direct) cells of `pilot_cells` of one run that share model, data set, budget,
    workload and repeat: the same model prompted to reason and to answer directly."""
    by_key: dict[tuple, dict[str, CellData]] = {}
    for c in pilot_cells(cells):
        key = (c.run, c.spec.get("model"), c.dataset, c.budget, c.workload_name, c.spec.get("repeat", 0), c.study)
        by_key.setdefault(key, {})[c.mode] = c
    return [(m[REASONING], m[DIRECT]) for m in by_key.values() if REASONING in m and DIRECT in m]


def load_groups(cells: list[CellData]) -> dict[tuple, list[CellData]]:
    """Cells under open- or closed-loop arrivals (no variant), grouped by everything but the
    workload: (study, model, data set, prompt mode, budget, repeat, run folder) -> cells in rate/CV order."""
    groups: dict[tuple, list[CellData]] = {}
    for c in cells:
        if not c.variant and c.workload.get("arrival", "batch") != "batch":
            key = (c.study, c.spec.get("model"), c.dataset, c.mode, c.budget, c.spec.get("repeat", 0), c.run)
            groups.setdefault(key, []).append(c)
    for members in groups.values():
        members.sort(
            key=lambda c: (
                c.workload.get("arrival"),
                c.workload.get("rate") or 0,
                c.workload.get("cv") or 0,
                c.workload_name,
            )
        )
    return groups


def sweep_groups(cells: list[CellData]) -> dict[tuple, list[CellData]]:
    """Load sweeps: cells that differ only in their offered load (`analysis.sweep.load_of`: a
    concurrency or a rate), two loads or more a group, in order of load: (study, model, variant,
    data set, prompt mode, budget, repeat, run folder, arrival, what is swept, the rest of the
    workload) -> cells."""
    from rllm_study.analysis.sweep import CONCURRENCY_KEYS, RATE_KEYS, load_of

    groups: dict[tuple, list[CellData]] = {}
    for c in cells:
        load = load_of(c.workload)
        if load is None:
            continue
        rest = tuple(sorted((k, str(v)) for k, v in c.workload.items() if k not in (*CONCURRENCY_KEYS, *RATE_KEYS)))
        key = (
            c.study,
            c.spec.get("model"),
            c.variant,
            c.dataset,
            c.mode,
            c.budget,
            c.spec.get("repeat", 0),
            c.run,
            c.workload.get("arrival"),
            load[0],
            rest,
        )
        groups.setdefault(key, []).append(c)
    return {
        k: sorted(v, key=lambda c: load_of(c.workload)[1])
        for k, v in groups.items()
        if len({load_of(c.workload)[1] for c in v}) > 1
    }


@dataclass
class TechniqueGroup:
    """Cells of one study that differ only in their variant; `variants` in the spec's order
    (the first is the baseline)."""

    study: str
    key: tuple  # (base model, data set, prompt mode, budget, workload name, repeat, run folder)
    variants: dict[str, CellData]

    @property
    def baseline(self) -> CellData:
        return next(iter(self.variants.values()))


def technique_groups(cells: list[CellData]) -> list[TechniqueGroup]:
    """Groups of variant cells, by study then key; each group's variants in the spec's [[variants]] order."""
    groups: dict[tuple, dict[str, CellData]] = {}
    for c in cells:
        if c.variant:
            key = (c.base_model, c.dataset, c.mode, c.budget, c.workload_name, c.spec.get("repeat", 0), c.run)
            groups.setdefault((c.study, key), {})[c.variant] = c
    out = []
    for (study, key), members in groups.items():
        order = [v.get("name") for v in next(iter(members.values())).cell.manifest.get("spec", {}).get("variants", [])]
        ranked = sorted(members, key=lambda v: (order.index(v) if v in order else len(order), v))
        out.append(TechniqueGroup(study, key, {v: members[v] for v in ranked}))
    return sorted(out, key=lambda g: (g.study, g.key[0], dataset_order(g.key[1]), g.key[2:]))


def think_budget_groups(cells: list[CellData]) -> dict[tuple, list[list[CellData]]]:
    """Cells without variants that differ only in their think budget (and repeat), at least two
    budgets a group: (study, model, data set, prompt mode, budget, workload, run folder) -> for
    each think budget in ascending order, its cells (one a repeat)."""
    groups: dict[tuple, dict[int, list[CellData]]] = {}
    for c in cells:
        if not c.variant and c.think_budget is not None:
            key = (c.study, c.spec.get("model"), c.dataset, c.mode, c.budget, c.workload_name, c.run)
            groups.setdefault(key, {}).setdefault(c.think_budget, []).append(c)
    return {k: [v[b] for b in sorted(v)] for k, v in groups.items() if len(v) > 1}


def techniques_between(a: CellData, b: CellData) -> set[str]:
    """Which techniques (TECHNIQUE_FIELDS) differ between two cells' manifests."""
    return {name for name, fields in TECHNIQUE_FIELDS.items() if any(a.field(f) != b.field(f) for f in fields)}


def varying_label(cells: list[CellData], cell: CellData) -> str:
    """A short label for `cell` naming only the cell fields that differ among `cells`."""
    shown = {
        "model": lambda c: c.spec.get("model"),
        "variant": lambda c: c.variant,
        "dataset": lambda c: c.dataset,
        "prompt_mode": lambda c: c.mode,
        "max_tokens": lambda c: f"budget {c.budget}",
        "think_budget": lambda c: "no think budget" if c.think_budget is None else f"think budget {c.think_budget}",
        "workload": lambda c: c.workload_name,
        "repeat": lambda c: f"repeat {c.spec.get('repeat', 0)}",
    }
    parts = [str(get(cell)) for get in shown.values() if len({str(get(c)) for c in cells}) > 1]
    return " · ".join(parts) or cell.name


def _old_build(engine: dict) -> str | None:
    """The engine build of a manifest written before info() had `build`: the version or kind it recorded."""
    return engine.get("llama_cpp_python") or engine.get("mlx_lm") or engine.get("server_kind")


def fingerprint(manifest: dict) -> dict[str, str]:
    """Where a cell ran, in words: CPU, cores, memory, GPUs, OS and engine build."""
    hw, engine = manifest.get("hardware") or {}, manifest.get("engine") or {}
    gpus = (
        ", ".join(f"{g.get('name')} ({g.get('memory_mib', 0) / 1024:.0f} GiB)" for g in hw.get("gpus") or []) or "none"
    )
    backend = engine.get("backend") or manifest.get("cell", {}).get("backend", "?")
    build = engine.get("build") or _old_build(engine)
    return {
        "CPU": str(hw.get("cpu", "?")),
        "cores": f"{hw.get('cores_physical', '?')} physical / {hw.get('cores_logical', '?')} logical",
        "memory": f"{(hw.get('ram_bytes') or 0) / 2**30:.1f} GiB",
        "GPUs": gpus,
        "OS": f"{manifest.get('os', '?')} ({hw.get('machine', '?')})",
        "engine": f"{backend} {build or ''}".strip(),
    }
