"""`rllm-study models list|fetch|info|convert`: the embedded models, the cache, what a GGUF file holds, and conversion to MLX.

Sizes are printed in MiB = bytes / 2^20."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from rllm_study.errors import UserError
from rllm_study.models import EMBEDDED, cache_dir, derived_records, gguf_facts, model_facts, resolve_model

REF_HELP = (
    "An embedded name, a .gguf path, hf:OWNER/REPO/FILE.gguf, or any of these with :QUANT (e.g. smollm2-135m:Q8_0)."
)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _rows() -> list[dict]:
    """Embedded models, then derived ones in the cache. cached = the file is there with the
    expected size (its sha256 is checked when it is used and by `models fetch`)."""
    rows = []
    for m in EMBEDDED.values():
        rows.append(
            {
                "name": m.name,
                "title": m.title,
                "params": m.params,
                "quant": m.quant,
                "size_bytes": m.size_bytes,
                "source": f"embedded:{m.package}",
                "cached": _size_matches(m.path, m.size_bytes),
                "path": str(m.path),
                "sha256": m.sha256,
            }
        )
    for r in derived_records():
        rows.append(
            {
                "name": r["name"],
                "title": r["note"],
                "params": r["params"],
                "quant": r["quant"],
                "size_bytes": r["size_bytes"],
                "source": f"derived:{r['derived_from']}",
                "cached": _size_matches(Path(r["path"]), r["size_bytes"]),
                "path": r["path"],
                "sha256": r["sha256"],
            }
        )
    return rows


def _size_matches(path: Path, size_bytes: int) -> bool:
    return path.is_file() and path.stat().st_size == size_bytes


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Models: the embedded ones, fetching and caching them, GGUF facts.", no_args_is_help=True)
    app.add_typer(group, name="models")

    @group.command("list")
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        """Embedded and derived models: name, parameters, quantization, size, source, cached."""
        rows = _rows()
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        print(f"{'name':<26} {'params':>6} {'quant':<7} {'size':>12}  {'cached':<6} source")
        for r in rows:
            print(
                f"{r['name']:<26} {r['params']:>6} {r['quant']:<7} {_mib(r['size_bytes']):>12}  "
                f"{'yes' if r['cached'] else 'no':<6} {r['source']}"
            )
        print(f"cache: {cache_dir()} (set RLLM_STUDY_CACHE to move it)")
        print(f"--model takes: {REF_HELP}")

    @group.command("fetch")
    def fetch_cmd(refs: List[str] = typer.Argument(..., help=REF_HELP)) -> None:
        """Download, join, quantize as needed, and verify each model; print where it is."""
        for ref in refs:
            m = resolve_model(ref, fetch=True)
            check = f"sha256 {m.sha256[:12]}... verified" if m.sha256 else "GGUF complete"
            print(f"{m.name}: {m.path} ({_mib(m.size_bytes)}, {check})")

    @group.command("info")
    def info_cmd(
        ref: str = typer.Argument(..., help=REF_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """What a model is: its reference, and the facts in its GGUF header (fetches it if needed)."""
        m = resolve_model(ref, fetch=True)
        if as_json:
            print(json.dumps(model_facts(m), indent=2))
            return
        f = gguf_facts(m.path)
        print(f"{m.name}: {m.label}")
        print(f"  file          {m.path} ({_mib(m.size_bytes)}), source {m.source}")
        if m.derived_from:
            print(f"  derived from  {m.derived_from}")
        print(f"  architecture  {f['architecture']}, {f['n_params']:,} parameters ({f['params']})")
        print(
            f"  quantization  {f['quant']}, {f['bits_per_weight']:.2f} bits per weight (8 x tensor bytes / parameters)"
        )
        print(
            "  tensor types  "
            + ", ".join(f"{k} {v / f['n_params']:.0%}" for k, v in f["tensor_types"].items())
            + " of parameters"
        )
        print(
            f"  context       {f['context_length']} tokens, vocabulary {f['vocab_size']}, chat template {'yes' if f['chat_template'] else 'no'}"
        )
        print(
            f"  reasoning     {'yes' if f['reasoning'] else 'no'}"
            + (f" (<think>/</think> = {f['think_token_ids']})" if f["think_token_ids"] else "")
        )

    @group.command("convert")
    def convert_cmd(
        ref: str = typer.Argument(..., help=REF_HELP),
        to: str = typer.Option(
            ...,
            "--to",
            help="Target format: mlx (a Hugging Face-layout folder mlx-lm loads), or "
            "tokenizer (only its Hugging Face tokenizer, no weights: for AIPerf, GuideLLM).",
        ),
        dtype: str = typer.Option(
            None, "--dtype", help="float16 or float32 (default: float16 on Apple Silicon, float32 elsewhere)."
        ),
        out: Path = typer.Option(
            None, "--out", help="tokenizer: the folder to write (default: <cache>/tokenizers/<model>)."
        ),
    ) -> None:
        """Convert a model (fetched if needed) for another engine, offline; cached, so repeats are free."""
        if to not in ("mlx", "tokenizer"):
            raise UserError(f"--to {to!r}: the targets are mlx and tokenizer")
        m = resolve_model(ref, fetch=True)
        if to == "tokenizer":
            from rllm_study.backends.mlx.convert import export_tokenizer

            print(f"{m.name}: {export_tokenizer(Path(m.path), out or cache_dir() / 'tokenizers' / m.name)}")
            return
        from rllm_study.backends.mlx.convert import convert_to_mlx

        print(f"{m.name}: {convert_to_mlx(m, dtype)}")
