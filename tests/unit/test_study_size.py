"""Study size: a 10,000-cell spec expands, validates and dry-runs in seconds, because the work
that is the same for many cells is done once (engines opened once per engine configuration, data
sets read once, requests built once per data set and prompt, prompts tokenised once, options
built once). Guarded by what is done per cell (counts) and by a generous CPU cost per cell,
measured as the difference between two sizes so the fixed cost (loading the model) drops out."""

from __future__ import annotations

import time
import tomllib

import pytest
from rich.console import Console

from rllm_study.running import runner
from rllm_study.running.spec import expand

BUDGETS = 50


def _spec(budgets: int, repeats: int) -> dict:
    """4 data sets x `budgets` token budgets x 5 batch sizes x `repeats` repeats (SmolLM2, reasoning)."""
    return tomllib.loads(f"""
name = "big"
models = ["smollm2-135m"]
prompt_modes = ["reasoning"]
max_tokens = {list(range(16, 16 + budgets))}
repeats = {repeats}
[datasets]
gsm8k = 2
math500 = 2
aime24 = 2
gpqa-diamond = 2
[workload]
arrival = "batch"
batch_size = [1, 2, 4, 8, 16]
""")


def test_a_10000_cell_spec_expands_at_a_small_cost_per_cell():
    expand(_spec(2, 1), "warm.toml")
    start = time.process_time()
    cells = expand(_spec(BUDGETS, 10), "big.toml")
    per_cell = (time.process_time() - start) / len(cells)
    assert len(cells) == 10_000 and len({c.name for c in cells}) == 10_000
    assert per_cell < 1e-4, (
        f"{per_cell * 1e3:.3f} ms a cell to expand (measured 0.02 ms; each cell built its options: 0.2 ms)"
    )
    # cells with the same options share one options object (built and checked once)
    assert len({id(c.engine) for c in cells}) == len({c.engine for c in cells})


@pytest.fixture
def counted(monkeypatch):
    """Counts of the shared work: engines opened, job lists built."""
    counts = {"engines": 0, "jobs": 0}
    real_class, real_build = runner.engine_class, runner.build_jobs

    def engine_class(name):
        cls = real_class(name)

        def opened(*args, **kwargs):
            counts["engines"] += 1
            return cls(*args, **kwargs)

        return opened

    def build_jobs(cell, engine):
        counts["jobs"] += 1
        return real_build(cell, engine)

    monkeypatch.setattr(runner, "engine_class", engine_class)
    monkeypatch.setattr(runner, "build_jobs", build_jobs)
    return counts


def _dry_run(cells, tmp_path) -> float:
    start = time.process_time()
    planned = runner.dry_run(cells, tmp_path / "out", Console(stderr=True, quiet=True))
    took = time.process_time() - start
    assert [c.name for c, _ in planned] == [c.name for c in cells]
    return took


def test_dry_run_does_shared_work_once_and_costs_little_per_cell(tmp_path, counted):
    small, large = expand(_spec(10, 1), "small.toml"), expand(_spec(10, 10), "large.toml")
    engines = len({runner.EnginePool.key_of(c) for c in large})
    t_small = _dry_run(small, tmp_path)
    assert counted == {"engines": engines, "jobs": 4}  # each engine configuration once; each data set's requests once
    counted.update(engines=0, jobs=0)
    t_large = _dry_run(large, tmp_path)
    assert len(large) == 2000 and counted == {"engines": engines, "jobs": 4 * 10}  # a repeat has its own seed
    per_cell = (t_large - t_small) / (len(large) - len(small))
    assert per_cell < 2e-3, f"{per_cell * 1e3:.2f} ms a cell to dry-run (measured about 0.2 ms; before sharing: 15 ms)"
