"""The source layout: every `rllm_study.*` import names a file in the tree (through the symlinks a
static reader follows), and the engine-side layers never import the CLI/runner layer."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

SOURCES = ("study", "backends", "workloads", "tests")
CLI_RUNNER = ("rllm_study.cli", "rllm_study.commands", "rllm_study.runner", "rllm_study.spec", "rllm_study.report",
              "rllm_study.results", "rllm_study.recorder", "rllm_study.metrics")


def _imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n == "rllm_study" or n.startswith("rllm_study.")}


def _resolves(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_every_internal_import_names_a_path_in_the_tree():
    """`rllm_study.backends.base` is the file rllm_study/backends/base.py (root symlink rllm_study -> study,
    study/backends -> ../backends, ...): what an editor's static analysis follows."""
    files = sorted({p.resolve() for d in SOURCES for p in (REPO / d).rglob("*.py")})
    seen, missing = 0, []
    for path in files:
        for name in _imports(path):
            if _resolves(name):
                seen += 1
            elif not _resolves(name.rpartition(".")[0]):  # `from rllm_study.x import y`: y may be an attribute of x
                missing.append(f"{path}: {name}")
    assert seen > 100 and not missing, missing


def test_engine_layers_do_not_import_the_cli_or_runner():
    """Backends, workloads, model resolution and GGUF->MLX conversion load nothing of the CLI/runner layer."""
    code = ("import sys\n"
            "import rllm_study.backends, rllm_study.backends.llama_cpp, rllm_study.backends.openai_http\n"
            "import rllm_study.backends.mlx_convert, rllm_study.models, rllm_study.errors\n"
            "import rllm_study.workloads.datasets, rllm_study.workloads.prompts, rllm_study.workloads.grading\n"
            "import rllm_study.workloads.arrivals\n"
            f"print(sorted(m for m in sys.modules if m.startswith({CLI_RUNNER!r})))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
