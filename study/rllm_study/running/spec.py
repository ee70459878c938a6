"""Study specs (TOML) and their expansion into cells.

A spec names models, data sets (with sample counts), prompt modes, token budgets, sampling,
engine options, a workload (arrival process) and SLOs. Every list-valued field of `models`,
`prompt_modes`, `max_tokens`, `think_budget`, `[engine]` and `[workload]` is an axis; `[[variants]]` adds
named sets of settings changed together (e.g. K and V cache types); `repeats` repeats every
cell with seed + repeat. A cell = model x variant x data set x prompt mode x budget x engine
axes x workload axes x repeat, listed in run order (`expand`: the conditions a claim compares
interleaved, see RUN ORDER there). Presets are specs shipped in `rllm_study/presets/`; a spec's body
is its full size, and optional tables of overrides give other sizes (SIZES): `[quick]` a short
run for CI and a first look, `[standard]` the size of published results, each claim's rule able
to settle (the arithmetic is in each preset's comments).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from rllm_study.backends import all_options, build_options, engine_keys, field_for_key, get_backend
from rllm_study.backends.options import CommonOptions
from rllm_study.backends.sampling import DEFAULT_ORDER, ORDERS
from rllm_study.errors import UserError
from rllm_study.workloads.arrivals import check_workload, workload_arrival_keys, workload_arrival_name


@dataclass(frozen=True)
class Key:
    """One spec key as its reference (docs/specs.md, `scripts/gen_docs.py`) shows it: the TOML
    type, the default (as TOML text, or what happens when it is left out) and what it means.
    The tables below are the one list of these keys: validation takes the allowed names from them."""

    key: str
    type: str
    default: str
    meaning: str


TOP = (
    Key("name", "text", '"study"', "The study's name: cells record it, reports show it."),
    Key(
        "description",
        "text",
        "none",
        "One line on what the study asks; kept with the spec in every manifest, not used otherwise.",
    ),
    Key("notes", "text", "none", "Free text kept with the spec in every manifest; not used otherwise."),
    Key(
        "backend",
        "text",
        '"llama_cpp"',
        "Engine: llama_cpp (aliases llamacpp, llama), mlx, or openai (openai_http, http); `--backend` overrides it.",
    ),
    Key(
        "models",
        "text or list of text",
        '["qwen2.5-coder-0.5b"]',
        "Axis. Model references: an embedded name, a .gguf "
        "path, hf:OWNER/REPO/FILE.gguf, any of them with :QUANT (e.g. qwen2.5-coder-0.5b:Q8_0); for backend openai the "
        "server's model ids.",
    ),
    Key(
        "datasets",
        "table",
        "required",
        "Data set name = sample count (the first n items), e.g. { gsm8k = 50 }; "
        "or name = a table naming your own file (see [datasets.NAME] below). Every data set is a cell axis.",
    ),
    Key(
        "prompt_modes",
        "text or list of text",
        '["reasoning"]',
        "Axis. reasoning (think in `<think>...</think>`, then "
        "answer), direct (answer at once), native (the model's own chat template, for real reasoning models).",
    ),
    Key("max_tokens", "integer or list", "[1024]", "Axis. Output-token budget per request (think + answer), >= 1."),
    Key(
        "think_budget",
        "integer, text or list",
        "none (no think budget)",
        "Axis. Think tokens after which the engine "
        'closes the thinking itself: N >= 1, "mt-K" (max_tokens - K, at least half of max_tokens) or "off". '
        "Acts only in the thinking modes; direct cells take none.",
    ),
    Key("repeats", "integer", "1", "Every cell runs this many times, repeat r with seed + r."),
    Key("seed", "integer", "0", "Seed of repeat 0: sampling, arrival schedules and the multiple-choice shuffle."),
    Key("grammar", "boolean", "false", "Constrain the reasoning mode's output with its GBNF grammar (llama.cpp only)."),
    Key(
        "templates",
        "text (path)",
        "the shipped prompts.toml",
        "A prompt-template TOML file replacing "
        "workloads/rllm_study/workloads/templates/prompts.toml (its header explains the keys).",
    ),
    Key(
        "sample_period_s", "number", "0.1", "Seconds between timeline samples (KV, running/waiting, RSS, energy), > 0."
    ),
    Key(
        "energy_cmd",
        "text",
        "none",
        "A shell command that prints the machine's cumulative joules; read once a "
        "second and at each cell's two ends (`--energy-cmd`).",
    ),
    Key("sampling", "table", "see [sampling]", "Sampling settings of every request."),
    Key("engine", "table", "see [engine]", "Engine options; a list value is an axis."),
    Key("workload", "table", "see [workload]", "The arrival process and its parameters; a list value is an axis."),
    Key("slo", "table", "none", "Latency limits for goodput (see [slo])."),
    Key(
        "variants",
        "array of tables",
        "one unnamed variant",
        "Named sets of settings changed together (see [[variants]]).",
    ),
    Key("quick", "table", "none", "Overrides for `--quick` (`--size quick`): a short run for CI and a first look."),
    Key(
        "standard",
        "table",
        "none",
        "Overrides for `--size standard`: the size of published results, each claim's rule able to settle.",
    ),
)
SAMPLING = (
    Key("temperature", "number", "0.6", "Sampling temperature, >= 0 (0 = greedy)."),
    Key("top_p", "number", "0.95", "Nucleus mass, in (0, 1]."),
    Key("top_k", "integer", "0", "Keep the k most likely tokens, >= 0 (0 = off)."),
    Key(
        "order",
        "text",
        f'"{DEFAULT_ORDER}"',
        f"Which of temperature and top-p comes first: {' or '.join(ORDERS)} "
        "(temperature_first is vLLM's, Hugging Face's and so the paper's; top_p_first llama.cpp's and mlx-lm's default).",
    ),
)
SHARED_PREFIX = Key(
    "shared_prefix",
    "integer",
    "0",
    "Few-shot examples (items after the cell's samples) put into "
    "every request's system message: a prompt prefix all requests share (prefix-cache study).",
)
SLO = (
    Key("ttft_s", "number", "none", "Time-to-first-token limit, seconds (> 0)."),
    Key("ttfvt_s", "number", "none", "Time-to-first-visible(answer)-token limit, seconds (> 0)."),
    Key("tpot_s", "number", "none", "Time-per-output-token limit, seconds (> 0)."),
    Key("e2el_s", "number", "none", "End-to-end latency limit, seconds (> 0)."),
)
VARIANT = (
    Key("name", "text", '""', "The variant's part of its cells' names (distinct per variant)."),
    Key("model", "text or list of text", "the spec's models", "Models of this variant instead of `models`."),
    Key("prompt_modes", "text or list of text", "the spec's prompt_modes", "Prompt modes of this variant."),
    Key("engine", "table", "{}", "[engine] keys set for this variant, on top of the spec's [engine]."),
    Key("workload", "table", "{}", "[workload] keys set for this variant, on top of the spec's [workload]."),
)

TOP_KEYS = {k.key for k in TOP}
SIZES = ("quick", "standard", "full")  # "full" is the spec's body
SAMPLING_KEYS = {k.key for k in SAMPLING}
# [engine] keys: the fields of the registered backends' options (rllm_study.backends.engine_keys)
WORKLOAD_KEYS = {SHARED_PREFIX.key, *workload_arrival_keys()}  # the arrival processes own the rest
SLO_KEYS = {k.key for k in SLO}
VARIANT_KEYS = {k.key for k in VARIANT}
PROMPT_ROOM = 1024  # tokens kept for the prompt when ctx_per_seq is derived from the budget


@dataclass(frozen=True)
class CellSpec:
    """One fully resolved cell: everything needed to run it and to name its folder."""

    name: str
    study: str
    backend: str
    model: str
    variant: str
    dataset: str
    samples: int
    prompt_mode: str
    max_tokens: int
    repeat: int
    seed: int
    temperature: float
    top_p: float
    engine: CommonOptions
    workload: dict
    grammar: bool
    templates: str | None
    slo: dict
    sample_period_s: float
    top_k: int = 0
    sampling_order: str = (
        DEFAULT_ORDER  # temperature and top-p: which comes first (backends/rllm_study/backends/sampling.py)
    )
    think_budget: int | None = None  # think tokens before the engine closes the thinking (think_budget_tokens)
    custom_dataset: dict | None = None  # a data set from the user's file: custom_dataset.definition()

    def as_dict(self) -> dict:
        return asdict(self)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("rllm_study.presets").iterdir() if p.name.endswith(".toml"))


def _parse_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{where}: not valid TOML ({err})") from None


def load_spec(
    path: Path | None = None, preset: str | None = None, quick: bool = False, size: str = "full"
) -> tuple[dict, str]:
    """Read a spec file or a preset at a size (SIZES: its [quick] or [standard] overrides, or the
    body for "full"; quick=True is size "quick"); returns (spec, where)."""
    if size not in SIZES:
        raise UserError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    size = "quick" if quick else size
    if preset is not None:
        if preset not in preset_names():
            raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(preset_names())}")
        where = f"preset {preset}"
        spec = _parse_toml(resources.files("rllm_study.presets").joinpath(f"{preset}.toml").read_text("utf-8"), where)
    else:
        if path is None or not Path(path).is_file():
            raise UserError(f"{path}: spec file not found (give a TOML study spec, or --preset NAME)")
        where = str(path)
        spec = _parse_toml(Path(path).read_text("utf-8"), where)
    tables = {name: spec.pop(name, {}) for name in SIZES[:-1]}
    if size != "full":
        if not tables[size]:
            raise UserError(f"{where}: has no [{size}] table, so --size {size} means nothing here")
        spec = _merge(spec, tables[size])
    return spec, where


def recorded_specs(run_dir: Path) -> list[tuple[dict, set[str], str]]:
    """The specs a results folder's cells ran with (each manifest.json's "spec", engine flags and
    --set included), grouped: (spec, names of the cells that recorded it, where), largest group
    first. A folder grown by a later command (more requests, another variant) holds several. A
    custom data set's path, relative to the spec file it was run from, becomes the absolute path
    its cells recorded."""
    from rllm_study.running.results import MANIFEST, cells_in

    groups: dict[str, tuple[dict, set[str], dict[str, str]]] = {}
    for cell_dir in cells_in([run_dir]):
        path = cell_dir / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(
                f"{path}: not a readable manifest ({err}); pass a results folder written by `rllm-study run`"
            ) from None
        spec = manifest.get("spec") if isinstance(manifest, dict) else None
        cell = manifest.get("cell") if isinstance(manifest, dict) else None
        if not isinstance(spec, dict) or not isinstance(cell, dict) or not isinstance(cell.get("name"), str):
            raise UserError(
                f"{path}: fields spec and cell.name are needed; pass a results folder written by `rllm-study run`"
            )
        _, names, files = groups.setdefault(json.dumps(spec, sort_keys=True), (spec, set(), {}))
        names.add(cell["name"])
        if isinstance(cell.get("custom_dataset"), dict):
            files[cell["dataset"]] = cell["custom_dataset"]["path"]
    ranked = sorted(groups.values(), key=lambda g: -len(g[1]))
    out = []
    for i, (spec, names, files) in enumerate(ranked, 1):
        spec = copy.deepcopy(spec)
        for name, file in files.items():
            spec["datasets"][name]["path"] = file
        out.append(
            (
                spec,
                names,
                f"{run_dir} (spec {i} of {len(ranked)}, recorded by {len(names)} cell{'s' * (len(names) != 1)})",
            )
        )
    return out


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "datasets":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(spec: dict, overrides: list[str]) -> dict:
    """`--set KEY=VALUE` overrides: dotted keys, TOML values (bare words are strings)."""
    spec = copy.deepcopy(spec)
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise UserError(f"--set {item!r}: use KEY=VALUE, e.g. --set max_tokens=[64] or --set engine.threads=2")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = spec
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {p} is not a table")
        node[last] = value
    return spec


def _check_keys(table: dict, allowed: set, where: str, section: str, listed: set | None = None) -> None:
    """Refuse keys outside `allowed`, naming the keys allowed (`listed`, default all of them)."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: {section} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        shown = ", ".join(sorted(allowed if listed is None else listed))
        raise UserError(f"{where}: unknown key {section + '.' if section else ''}{unknown[0]} (allowed: {shown})")


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def _axes(table: dict) -> list[dict]:
    """The cross product of a table's list-valued fields (scalars stay fixed)."""
    keys = list(table)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(_as_list(table[k]) for k in keys))] or [{}]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def expand(spec: dict, where: str) -> list[CellSpec]:
    """Validate a spec and expand it into cells (unknown keys and bad values name the key), in run order.

    RUN ORDER interleaves the conditions claims compare, so that a machine that slows down for a while
    slows both sides alike: repeats outermost (each repeat a full pass), then the variants, then model,
    data set, budget, think budget, engine and workload axes, and the prompt modes innermost (a
    reasoning cell next to its direct twin); each repeat r rotates the order of the variants and of the
    prompt modes by r places (repeat 0 runs reasoning first, repeat 1 direct first, ...). Variants stay
    blocks within a repeat, so an engine is not reloaded for every cell."""
    from rllm_study.workloads.custom_dataset import definition
    from rllm_study.workloads.datasets import DATASETS
    from rllm_study.workloads.prompts import PROMPT_MODES, THINKING_MODES
    from rllm_study.workloads.traces import TRACE_DATASET

    _check_keys(spec, TOP_KEYS - set(SIZES), where, "")
    for section, allowed in (("sampling", SAMPLING_KEYS), ("workload", WORKLOAD_KEYS), ("slo", SLO_KEYS)):
        _check_keys(spec.get(section, {}), allowed, where, section)
    engine = _engine_fields(spec.get("engine", {}), where, "engine")
    try:
        backend = get_backend(spec.get("backend", "llama_cpp")).name
    except UserError as err:
        raise UserError(f"{where}: backend: {err}") from None
    datasets = spec.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise UserError(f"{where}: datasets must be a table of NAME = SAMPLE_COUNT, e.g. datasets = {{ gsm8k = 20 }}")
    base = Path(where).parent if Path(where).is_file() else Path.cwd()  # user files are relative to the spec's folder
    custom = {name: definition(name, t, base, where) for name, t in datasets.items() if isinstance(t, dict)}
    for name, count in datasets.items():
        if name in custom:
            continue
        if name not in DATASETS and name != TRACE_DATASET:
            raise UserError(
                f"{where}: datasets.{name}: unknown data set (choose from {', '.join(DATASETS)}, "
                'or give your own file: { path = "FILE.jsonl", n = N, answer = "number" })'
            )
        if not isinstance(count, int) or count < 1:
            raise UserError(f"{where}: datasets.{name} must be a sample count >= 1, got {count!r}")
    models = _as_list(spec.get("models", ["qwen2.5-coder-0.5b"]))
    modes = _as_list(spec.get("prompt_modes", ["reasoning"]))
    for mode in modes:
        if mode not in PROMPT_MODES:
            raise UserError(f"{where}: prompt_modes: unknown mode {mode!r} (choose from {', '.join(PROMPT_MODES)})")
    budgets = _as_list(spec.get("max_tokens", [1024]))
    if not all(isinstance(b, int) and b >= 1 for b in budgets):
        raise UserError(f"{where}: max_tokens must be whole numbers >= 1, got {budgets}")
    think_budgets = _as_list(spec.get("think_budget", [None]))
    repeats = spec.get("repeats", 1)
    if not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"{where}: repeats must be a whole number >= 1, got {repeats!r}")
    sampling = {"temperature": 0.6, "top_p": 0.95, "top_k": 0, "order": DEFAULT_ORDER, **spec.get("sampling", {})}
    if not isinstance(sampling["temperature"], (int, float)) or sampling["temperature"] < 0:
        raise UserError(f"{where}: sampling.temperature must be >= 0, got {sampling['temperature']!r}")
    if not isinstance(sampling["top_p"], (int, float)) or not 0 < sampling["top_p"] <= 1:
        raise UserError(f"{where}: sampling.top_p must be in (0, 1], got {sampling['top_p']!r}")
    if not isinstance(sampling["top_k"], int) or isinstance(sampling["top_k"], bool) or sampling["top_k"] < 0:
        raise UserError(f"{where}: sampling.top_k must be a whole number >= 0 (0 = off), got {sampling['top_k']!r}")
    if sampling["order"] not in ORDERS:
        raise UserError(f"{where}: sampling.order must be one of {', '.join(ORDERS)}, got {sampling['order']!r}")
    slo = spec.get("slo", {})
    for key, limit in slo.items():
        if not isinstance(limit, (int, float)) or limit <= 0:
            raise UserError(f"{where}: slo.{key} must be a positive number of seconds, got {limit!r}")
    period = spec.get("sample_period_s", 0.1)
    if not isinstance(period, (int, float)) or period <= 0:
        raise UserError(f"{where}: sample_period_s must be > 0, got {period!r}")
    if not isinstance(spec.get("energy_cmd", ""), str):
        raise UserError(f"{where}: energy_cmd must be a shell command (text) that prints cumulative joules")
    variants = spec.get("variants", [{"name": ""}])
    for i, v in enumerate(variants):
        _check_keys(v, VARIANT_KEYS, where, f"variants[{i}]")
        _check_keys(v.get("workload", {}), WORKLOAD_KEYS, where, f"variants[{i}].workload")
    variant_engines = [
        _engine_fields(v.get("engine", {}), where, f"variants[{i}].engine") for i, v in enumerate(variants)
    ]

    cells, order = [], []
    options_of: dict[str, CommonOptions] = {}
    study = spec.get("name", "study")
    seed0 = spec.get("seed", 0)
    for variant_index, (variant, v_engine) in enumerate(zip(variants, variant_engines)):
        v_models = _as_list(variant["model"]) if "model" in variant else models
        v_modes = _as_list(variant.get("prompt_modes", modes))
        engine_axes = _axes({**engine, **v_engine})
        workload_axes = _axes({"arrival": "batch", **spec.get("workload", {}), **variant.get("workload", {})})
        axes = (v_models, list(datasets), v_modes, budgets, think_budgets, engine_axes, workload_axes, range(repeats))
        for (model, dataset, mode, budget, tb, eng, wl, repeat), pos in zip(
            itertools.product(*axes), itertools.product(*(range(len(a)) for a in axes))
        ):
            if mode not in THINKING_MODES and tb != think_budgets[0]:
                continue  # a think budget acts only while thinking: a direct cell runs once, without one
            if mode not in THINKING_MODES:
                think_budget_tokens(tb, budget, where)  # its value is still checked
                tb = None
            try:
                check_workload(wl)
            except UserError as err:
                raise UserError(f"{where}: {err}") from None
            if (dataset == TRACE_DATASET) != (wl["arrival"] == "replay") and dataset not in custom:
                raise UserError(
                    f"{where}: datasets.{TRACE_DATASET} (the requests of a trace) and workload.arrival = "
                    f'"replay" (its times) go together: use both, with workload.trace = "FILE"'
                )
            concurrency = wl.get("batch_size") or wl.get("concurrency")
            made = json.dumps([eng, concurrency, default_ctx_per_seq(budget)], sort_keys=True, default=str)
            if made not in options_of:  # the same options for many cells: built and checked once
                options_of[made] = _engine_options(backend, eng, wl, budget, where)
            options = options_of[made]
            wl_name = workload_name(wl)
            tb_name = "" if tb in (None, "off") else f"tb{tb}"
            parts = [model, variant.get("name", ""), dataset, mode, f"mt{budget}", tb_name, wl_name, f"r{repeat}"]
            name = "__".join(_slug(str(p)) for p in parts if p)
            mi, di, pi, bi, ti, ei, wi, _ = pos
            order.append(
                (repeat, (variant_index + repeat) % len(variants), mi, di, bi, ti, ei, wi, (pi + repeat) % len(v_modes))
            )
            cells.append(
                CellSpec(
                    name=name,
                    study=study,
                    backend=backend,
                    model=model,
                    variant=variant.get("name", ""),
                    dataset=dataset,
                    samples=custom[dataset]["n"] if dataset in custom else datasets[dataset],
                    prompt_mode=mode,
                    max_tokens=budget,
                    repeat=repeat,
                    seed=seed0 + repeat,
                    temperature=float(sampling["temperature"]),
                    top_p=float(sampling["top_p"]),
                    engine=options,
                    workload=wl,
                    grammar=bool(spec.get("grammar", False)),
                    templates=spec.get("templates"),
                    slo=dict(slo),
                    sample_period_s=float(period),
                    top_k=sampling["top_k"],
                    sampling_order=sampling["order"],
                    think_budget=think_budget_tokens(tb, budget, where),
                    custom_dataset=custom.get(dataset),
                )
            )
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: two cells get the same name; give each [[variants]] a distinct name")
    return [cells[i] for i in sorted(range(len(cells)), key=order.__getitem__)]


def think_budget_tokens(value, max_tokens: int, where: str) -> int | None:
    """A `think_budget` axis value as think tokens for a cell with budget `max_tokens`:
    N (a whole number >= 1) is N; "mt-K" is max_tokens - K, K answer tokens kept free at every
    budget, but never less than half of max_tokens (rounded up); unset (None) or "off" is no think
    budget."""
    if value == "off":
        return None
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    match = re.fullmatch(r"mt-(\d+)", value) if isinstance(value, str) else None
    if match:
        return max(max_tokens - int(match.group(1)), -(-max_tokens // 2))
    raise UserError(
        f'{where}: think_budget must be whole numbers >= 1, "mt-K" (max_tokens - K answer tokens '
        f'kept free) or "off", got {value!r}'
    )


def workload_name(wl: dict) -> str:
    """A short name for a workload: its arrival process, and the shared few-shot prefix if any."""
    base = workload_arrival_name(wl)
    return f"{base}-prefix{wl['shared_prefix']}" if wl.get("shared_prefix") else base


def _engine_fields(table: dict, where: str, section: str) -> dict:
    """An [engine] table with its keys (spec keys, deprecated ones warned about) as option fields."""
    old = {m.deprecated_key for m in all_options().values() if m.deprecated_key}
    _check_keys(table, set(engine_keys()) | old, where, section, listed=set(engine_keys()))
    fields, given_as = {}, {}
    for key, value in table.items():
        name = field_for_key(key, where, section)
        if name in fields:
            raise UserError(f"{where}: {section}.{given_as[name]} and {section}.{key} are the same option; keep one")
        fields[name], given_as[name] = value, key
    return fields


def default_ctx_per_seq(budget: int) -> int:
    """ctx_per_seq when a spec does not set it: budget + PROMPT_ROOM rounded up to 256 (the
    runner grows it where a prompt needs more room, see runner._fit)."""
    return -(-(budget + PROMPT_ROOM) // 256) * 256


def _engine_options(backend: str, fields: dict, wl: dict, budget: int, where: str) -> CommonOptions:
    """The backend's options for a cell; concurrency defaults to the batch size / closed-loop
    concurrency (8 for open loop), ctx_per_seq to the budget + PROMPT_ROOM rounded up to 256."""
    fields = {
        "max_seqs": wl.get("batch_size") or wl.get("concurrency") or 8,
        "ctx_per_seq": default_ctx_per_seq(budget),
        **fields,
    }
    keys = {name: m.key for name, m in all_options().items()}
    return build_options(backend, fields, spelled=lambda name: f"{where}: engine.{keys[name]} =")
