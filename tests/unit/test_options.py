"""Backends and their options: the registry, spec keys and CLI flags derived from the option
fields, one check per rule (a bad value is one line and exit 2), deprecated spellings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rllm_study.backends import REGISTRY, all_options, engine_class, engine_keys, get_backend, options_for
from rllm_study.backends.options import MLX_KV_BITS, LlamaCppOptions, MlxOptions, OpenAIOptions, parse_speculative
from rllm_study.cli import main
from rllm_study.errors import UserError
from rllm_study.running.spec import expand
from scripted_engine import scripted_backend


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`rllm-study ARGS` through the console entry point, in process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["rllm-study", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


# -- registry ----------------------------------------------------------------------------------


def test_registry_finds_backends_by_name_and_alias():
    assert list(REGISTRY) == ["llama_cpp", "mlx", "openai"]
    assert get_backend("llama").name == get_backend("llama-cpp").name == "llama_cpp"
    assert get_backend("openai_http").options is OpenAIOptions
    assert engine_class("llama_cpp").__name__ == "LlamaCppEngine"
    with pytest.raises(UserError, match="unknown backend 'vllm': choose one of llama_cpp, mlx, openai"):
        get_backend("vllm")


def test_options_and_registry_import_no_engine():
    """Building any backend's options imports neither llama_cpp nor mlx (a missing mlx breaks nothing)."""
    code = (
        "import sys; from rllm_study.backends import options_for; from rllm_study.running import spec; "
        "options_for('mlx', kv_bits=4); options_for('openai', base_url='http://x'); "
        "print(sorted(m for m in ('llama_cpp', 'mlx', 'mlx_lm', 'rllm_study.backends.mlx.engine') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_options_are_frozen_and_hashable():
    a, b = LlamaCppOptions(max_seqs=2, n_threads=1), LlamaCppOptions(max_seqs=2, n_threads=1)
    assert a == b and hash(a) == hash(b) and len({a, b, LlamaCppOptions(max_seqs=3)}) == 2


def test_an_option_of_another_backend_is_kept_and_reported():
    opts = options_for("mlx", max_seqs=2, type_k="q8_0", n_threads=2)
    assert isinstance(opts, MlxOptions) and opts.max_seqs == 2
    assert opts.ignored == (("n_threads", 2), ("type_k", "q8_0"))
    from rllm_study.backends.base import Capabilities, unsupported_options

    notes = unsupported_options(opts, Capabilities(backend="mlx", speculative=("draft",)))
    assert notes == [
        "mlx: n_threads=2 is not an option of this backend",
        "mlx: type_k='q8_0' is not an option of this backend",
    ]


# -- derived spec keys -----------------------------------------------------------------------------


def test_every_option_field_is_a_spec_key_that_reaches_the_cell():
    """Each declared option, set under [engine] to a non-default value, arrives in the cell's options."""
    values = {
        "concurrency": 3,
        "ctx_per_seq": 512,
        "n_ctx": 4096,
        "n_batch": 64,
        "prefix_cache": True,
        "prefix_cache_tokens": 99,
        "speculative": "ngram",
        "speculative_tokens": 2,
        "batch_invariant": True,
        "threads": 1,
        "n_gpu_layers": -1,
        "type_k": "q8_0",
        "type_v": "q8_0",
        "flash_attn": True,
        "kv_unified": True,
        "kv_budget_mib": 8.0,
        "kv_bits": 4,
        "base_url": "http://h:1",
        "api_key_env": "K",
        "timeout_s": 5.0,
        "server_default_samplers": True,
        "sample_on": "device",
        "overlap_decode": False,
        "server_backend_sampling": True,
        "ignore_eos": True,
        "extra_body": '{"top_k": 3}',
        "telemetry_period_s": 0.0,
    }
    assert sorted(values) == sorted(engine_keys())  # a new option must be added here with a value
    keys = {m.key: name for name, m in all_options().items()}
    for backend in REGISTRY:
        [cell] = expand({"backend": backend, "datasets": {"gsm8k": 1}, "engine": values}, "spec.toml")
        for key, value in values.items():
            name = keys[key]
            got = getattr(cell.engine, name, None)
            assert got == value or (name, value) in cell.engine.ignored, (backend, key)


def test_unknown_engine_key_names_every_allowed_key(monkeypatch, capsys, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text("datasets = { gsm8k = 1 }\n[engine]\nthreads_typo = 2\n")
    code, _, err = cli(monkeypatch, capsys, "run", spec, "--dry-run", "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1, err
    assert "unknown key engine.threads_typo (allowed: " + ", ".join(sorted(engine_keys())) + ")" in err


# -- one check per rule, one line and exit 2 through the CLI ---------------------------------------

RULES = [  # (spec key, bad value, what the line must say)
    ("concurrency", "0", "engine.concurrency = 0: must be >= 1"),
    ("ctx_per_seq", "8", "engine.ctx_per_seq = 8: must be >= 16"),
    ("n_ctx", "-1", "engine.n_ctx = -1: must be >= 0"),
    ("n_batch", "0", "engine.n_batch = 0: must be >= 1"),
    ("prefix_cache_tokens", "0", "engine.prefix_cache_tokens = 0: must be >= 1"),
    ("speculative", '"medusa"', "engine.speculative = 'medusa': must be 'ngram' or 'draft:MODEL'"),
    ("speculative_tokens", "0", "engine.speculative_tokens = 0: must be >= 1"),
    ("threads", "0", "engine.threads = 0: must be >= 1"),
    ("threads", '"two"', "engine.threads = 'two': must be a whole number"),
    ("flash_attn", '"yes"', "engine.flash_attn = 'yes': must be true or false"),
    ("timeout_s", "0", "engine.timeout_s = 0: must be > 0"),
]


@pytest.mark.parametrize("key,value,needle", RULES)
def test_bad_engine_value_in_a_spec_is_one_line_exit_2(monkeypatch, capsys, tmp_path, key, value, needle):
    backend = "openai" if key == "timeout_s" else "llama_cpp"
    code, _, err = cli(
        monkeypatch,
        capsys,
        "run",
        "--preset",
        "pilot",
        "--quick",
        "--dry-run",
        "--backend",
        backend,
        "--set",
        f"engine.{key}={value}",
        "--out",
        tmp_path,
    )
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: preset pilot: ") and needle in err, err


def test_mlx_kv_bits_allowed_values_are_declared_once(monkeypatch, capsys, tmp_path):
    for bits in MLX_KV_BITS:
        assert MlxOptions(kv_bits=bits).kv_bits == bits
    code, _, err = cli(
        monkeypatch,
        capsys,
        "run",
        "--preset",
        "kv-cache",
        "--quick",
        "--dry-run",
        "--backend",
        "mlx",
        "--set",
        "engine.kv_bits=7",
        "--out",
        tmp_path,
    )
    assert code == 2 and err.strip() == "error: preset kv-cache: engine.kv_bits = 7: must be one of 2, 3, 4, 5, 6, 8", (
        err
    )
    assert "2, 3, 4, 5, 6, 8" in all_options()["kv_bits"].help


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--concurrency", "0"], "error: --concurrency 0: must be >= 1"),
        (["-c", "0"], "error: --concurrency 0: must be >= 1"),
        (["--ctx-per-seq", "8"], "error: --ctx-per-seq 8: must be >= 16"),
        (["--speculative-tokens", "0"], "error: --speculative-tokens 0: must be >= 1"),
        (["--threads", "0"], "error: --threads 0: must be >= 1"),
        (["--backend", "mlx", "--kv-bits", "7"], "error: --kv-bits 7: must be one of 2, 3, 4, 5, 6, 8"),
        (["--backend", "vllm"], "error: unknown backend 'vllm'"),
    ],
)
def test_bad_engine_flag_is_one_line_exit_2_before_any_engine(monkeypatch, capsys, args, needle):
    code, _, err = cli(monkeypatch, capsys, "generate", "-p", "hi", "-n", "1", *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith(needle), err


def test_every_option_is_a_flag_of_generate_and_run(monkeypatch, capsys):
    for command in ("generate", "run"):
        code, out, _ = cli(monkeypatch, capsys, command, "--help")
        assert code == 0
        for _name, meta in all_options().items():
            assert meta.flag in out, (command, meta.flag)


# -- speculative decoding: one parser, renamed option, deprecated spellings -------------------------


def test_speculative_forms():
    assert parse_speculative(None) is None
    assert parse_speculative("ngram").method == "ngram"
    assert parse_speculative("draft:qwen2.5-coder-0.5b:Q8_0").draft_model == "qwen2.5-coder-0.5b:Q8_0"


def test_speculative_methods_come_from_the_registry(monkeypatch):
    """A method is one registration: the option's parser, error text and drafter follow from it."""
    from rllm_study.backends import speculative

    assert list(speculative.REGISTRY) == ["ngram", "draft"]
    assert speculative.forms() == "'ngram' or 'draft:MODEL' (e.g. draft:qwen2.5-coder-0.5b)"
    for bad in ("ngram:x", "draft", "draft:", "eagle:m"):
        with pytest.raises(UserError, match="use 'ngram' or 'draft:MODEL'"):
            parse_speculative(bad)
    monkeypatch.setitem(speculative.REGISTRY, "eagle", speculative.Method("eagle", "m:C", "test", takes_model=True))
    assert parse_speculative("eagle:m") == speculative.Speculative("eagle", "m")
    assert "'eagle:MODEL'" in speculative.forms() and LlamaCppOptions(speculative="eagle:m").speculative == "eagle:m"
    assert speculative.REGISTRY["ngram"].drafter_class().method == "ngram"
    assert speculative.REGISTRY["draft"].drafter_class().method == "draft"


def test_deprecated_spec_keys_warn_and_still_work(capsys):
    [cell] = expand({"datasets": {"gsm8k": 1}, "engine": {"spec": "ngram", "spec_tokens": 3}}, "old.toml")
    assert (cell.engine.speculative, cell.engine.speculative_tokens) == ("ngram", 3)
    assert capsys.readouterr().err.splitlines() == [
        "warning: old.toml: engine.spec is deprecated; use engine.speculative",
        "warning: old.toml: engine.spec_tokens is deprecated; use engine.speculative_tokens",
    ]
    [cell] = expand({"datasets": {"gsm8k": 1}, "variants": [{"name": "v", "engine": {"spec": "draft:m"}}]}, "old.toml")
    assert cell.engine.speculative == "draft:m"
    assert (
        capsys.readouterr().err
        == "warning: old.toml: variants[0].engine.spec is deprecated; use variants[0].engine.speculative\n"
    )


def test_deprecated_spec_flags_warn_and_still_work(monkeypatch, capsys, tmp_path):
    with scripted_backend():  # the dry run opens the scripted engine, not the preset's models (flags are the point)
        code, out, err = cli(
            monkeypatch,
            capsys,
            "run",
            "--preset",
            "speculative",
            "--quick",
            "--dry-run",
            "--backend",
            "scripted",
            "--spec",
            "ngram",
            "--spec-tokens",
            "2",
            "--out",
            tmp_path,
        )
    assert code == 0 and len(out.splitlines()) == 3
    assert err.splitlines()[:2] == [
        "warning: --spec is deprecated; use --speculative",
        "warning: --spec-tokens is deprecated; use --speculative-tokens",
    ]
    code, _, err = cli(monkeypatch, capsys, "generate", "-p", "hi", "--spec", "medusa")
    assert code == 2 and err.splitlines() == [
        "warning: --spec is deprecated; use --speculative",
        "error: --spec 'medusa': must be 'ngram' or 'draft:MODEL' (e.g. draft:qwen2.5-coder-0.5b)",
    ]


def test_run_flags_override_the_spec_for_every_cell(monkeypatch, capsys, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text("datasets = { gsm8k = 1 }\n[engine]\nspec_tokens = 2\nthreads = 2\n")
    with scripted_backend():  # the dry run opens the scripted engine, not a model (flags are the point)
        code, out, _ = cli(
            monkeypatch,
            capsys,
            "run",
            spec,
            "--dry-run",
            "--out",
            tmp_path / "out",
            "--backend",
            "scripted",
            "--speculative",
            "ngram",
            "--speculative-tokens",
            "5",
            "--no-flash-attn",
        )
    assert code == 0
    from rllm_study.running.spec import load_spec

    seen = []
    monkeypatch.setattr("rllm_study.commands.run.expand", lambda data, where: seen.append(expand(data, where)) or [])
    cli(
        monkeypatch,
        capsys,
        "run",
        spec,
        "--dry-run",
        "--out",
        tmp_path / "out",
        "--speculative",
        "ngram",
        "--speculative-tokens",
        "5",
        "--no-flash-attn",
    )
    [[cell]] = seen
    assert (cell.engine.speculative, cell.engine.speculative_tokens, cell.engine.flash_attn) == ("ngram", 5, False)
    assert cell.engine.n_threads == 2 and load_spec(spec)[0]["engine"] == {"spec_tokens": 2, "threads": 2}


def test_an_old_and_a_new_key_for_one_option_are_refused():
    with pytest.raises(UserError, match="engine.spec and engine.speculative are the same option; keep one"):
        expand({"datasets": {"gsm8k": 1}, "engine": {"spec": "ngram", "speculative": "ngram"}}, "s.toml")
