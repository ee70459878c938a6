"""The source layout: three source roots (`study/`, `backends/`, `workloads/`) of one PEP 420
namespace package `rllm_study`, so every module has exactly one path; no symlinks; every package
is listed for the wheel; the engine-side layers never import the CLI/runner layer."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

from conftest import REPO

ROOTS = ("study", "backends", "workloads")
CLI_RUNNER = (
    "rllm_study.cli",
    "rllm_study.commands",
    "rllm_study.running",
    "rllm_study.report",
    "rllm_study.analysis",
    "rllm_study.bench",
)


def _imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("rllm_study.")}


def _paths(name: str) -> list:
    """The files (or package folders) a module name can be, across the three roots."""
    found = []
    for root in ROOTS:
        base = REPO.joinpath(root, *name.split("."))
        found += [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]
    return found


def test_no_symlinks_in_the_tree():
    tracked = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    links = [line.split("\t")[1] for line in tracked.splitlines() if line.startswith("120000")]
    assert not links, links


def test_rllm_study_is_a_namespace_package():
    """An `rllm_study/__init__.py` in any root would hide the other two roots' modules."""
    assert not [r for r in ROOTS if (REPO / r / "rllm_study" / "__init__.py").exists()]


def test_every_internal_import_names_exactly_one_file():
    """`rllm_study.backends.base` is backends/rllm_study/backends/base.py and nothing else."""
    files = sorted(p for r in (*ROOTS, "tests", "scripts") for p in (REPO / r).rglob("*.py"))
    seen, wrong = 0, []
    for path in files:
        for name in _imports(path):
            hits = _paths(name)
            if len(hits) == 1:
                seen += 1
            elif (
                hits or len(_paths(name.rpartition(".")[0])) != 1
            ):  # `from rllm_study.x import y`: y may be an attribute
                wrong.append(f"{path.relative_to(REPO)}: {name} -> {hits}")
    assert seen > 100 and not wrong, wrong


def test_pyproject_lists_every_package():
    """The wheel holds exactly the packages in the tree (a new package folder must be added)."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["packages"])
    present = {"rllm_study"} | {
        ".".join(init.parent.relative_to(REPO / root).parts)
        for root in ROOTS
        for init in (REPO / root / "rllm_study").rglob("__init__.py")
    }
    assert listed == present


def test_engine_layers_do_not_import_the_cli_or_runner():
    """Backends, workloads, model resolution and GGUF->MLX conversion load nothing of the CLI/runner layer."""
    code = (
        "import sys\n"
        "import rllm_study.backends, rllm_study.backends.llama_cpp, rllm_study.backends.openai_http\n"
        "import rllm_study.backends.mlx.convert, rllm_study.models, rllm_study.errors\n"
        "import rllm_study.workloads.datasets, rllm_study.workloads.prompts, rllm_study.workloads.grading\n"
        "import rllm_study.workloads.arrivals\n"
        f"print(sorted(m for m in sys.modules if m.startswith({CLI_RUNNER!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_public_engine_paths_for_scripting():
    """The paths the README names for scripting keep working; mlx is imported only when asked for."""
    code = (
        "import sys\n"
        "from rllm_study.backends.llama_cpp import LlamaCppEngine\n"
        "from rllm_study.backends.openai_http import OpenAIEngine\n"
        "import rllm_study.backends.mlx\n"
        "print('mlx' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr


TIERS = ("unit", "engine", "e2e")
MODEL_FIXTURES = {"smollm2_path", "qwen05_path", "tiny_r1_path"}


def test_tests_sit_in_their_tiers_and_the_unit_tier_loads_no_model():
    """Every test file is in tests/unit, tests/engine or tests/e2e (docs/architecture.md, Tests),
    with a module name unique across them (the tiers share one import path); no unit test asks
    for a model fixture or builds a real engine class."""
    tests = REPO / "tests"
    files = sorted(tests.rglob("test_*.py"))
    assert {p.parent.relative_to(tests).as_posix() for p in files} == set(TIERS), [str(p) for p in files]
    names = [p.name for p in files]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    heavy = []
    for path in (tests / "unit").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.FunctionDef):
                heavy += [f"{path.name}::{node.name}({a.arg})" for a in node.args.args if a.arg in MODEL_FIXTURES]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("LlamaCppEngine", "MlxEngine"):
                heavy.append(f"{path.name}:{node.lineno}: {node.func.id}(...)")
    assert not heavy, heavy
