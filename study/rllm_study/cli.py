"""The `rllm-study` command line: one Typer app; each command group lives in `commands/`."""

from __future__ import annotations

import sys

import typer

from rllm_study.errors import UserError

app = typer.Typer(
    name="rllm-study",
    help="Reasoning-LLM serving study on edge engines (llama.cpp, MLX) and OpenAI-compatible servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_commands() -> None:
    """Add every command group to `app` (once per process)."""
    from rllm_study.commands import ALL

    if not app.registered_commands and not app.registered_groups:
        for register in ALL:
            register(app)


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    _register_commands()
    try:
        app()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished requests are saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
