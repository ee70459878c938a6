"""Engine flags of `generate`, `run` and `bench`, derived from the backends' option fields.

Each option is declared once, in `rllm_study/backends/options.py` (help text, flag, rule); this
module only turns those declarations into typer parameters:
  - `engine_flags(...)` adds every engine option of every registered backend as a flag to a
    command, and hands the command the values as `engine_values` ({field: value}); a deprecated
    flag (e.g. `--spec`, for `--speculative`) still works with a one-line warning;
  - `flag(field)` is the annotation of one option's flag, for a command that takes only a few;
  - `options_from_flags(backend, values)` builds the backend's options, a bad value worded with
    the flag the user typed.
"""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Optional

import typer

from rllm_study.backends import REGISTRY, all_options, build_options, option_defaults
from rllm_study.backends.options import Meta, deprecated

Backend = Annotated[
    str,
    typer.Option(
        "--backend",
        help=f"Engine backend: {', '.join(REGISTRY)} (llama_cpp in process, openai: an OpenAI-compatible server).",
    ),
]

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _annotation(
    name: str,
    meta: Meta,
    *,
    optional: bool,
    flag: str | None = None,
    hidden: bool = False,
    note: str = "",
    help: str | None = None,
):
    spelled = flag or meta.flag
    text = meta.type
    base = _TYPES[text.split("|")[0].strip()]
    decls = [f"{spelled}/--no-{spelled[2:]}"] if base is bool else [spelled]
    if meta.short and not hidden:
        decls.append(meta.short)
    help_text = None if hidden else f"{help or meta.help} {note}".strip()
    py_type = Optional[base] if optional or "None" in text else base
    return Annotated[py_type, typer.Option(*decls, help=help_text, hidden=hidden)]


def flag(name: str, note: str = "", help: str | None = None):
    """The typer annotation of one option's flag (e.g. `threads: flag("n_threads") = None`); `note`
    adds to the option's help, `help` replaces it where the command gives the flag another default."""
    return _annotation(name, all_options()[name], optional=True, note=note, help=help)


def _deprecated_flag(meta: Meta) -> str | None:
    return "--" + meta.deprecated_key.replace("_", "-") if meta.deprecated_key else None


def engine_flags(fn=None, *, defaults: dict | None = None, overrides: bool = False):
    """Add every engine option as a flag to a typer command `fn(..., engine_values: dict)`.

    overrides=False (generate): engine_values holds every value that differs from its field's
    default (flag defaults: the fields', or `defaults`). overrides=True (run): every flag defaults
    to unset, and engine_values holds only the flags given."""
    if fn is None:
        return functools.partial(engine_flags, defaults=defaults, overrides=overrides)
    defaults = defaults or {}
    field_defaults = option_defaults()
    metas = all_options()
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "engine_values"]
    added = []
    for name, meta in metas.items():
        default = None if overrides else defaults.get(name, field_defaults[name])
        added.append(
            inspect.Parameter(
                f"opt__{name}",
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=_annotation(name, meta, optional=overrides),
            )
        )
        old = _deprecated_flag(meta)
        if old:
            added.append(
                inspect.Parameter(
                    f"old__{name}",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=_annotation(name, meta, optional=True, flag=old, hidden=True),
                )
            )

    @functools.wraps(fn)
    def command(**kwargs):
        values, spelled = {}, {}
        for name, meta in metas.items():
            value = kwargs.pop(f"opt__{name}")
            old_value = kwargs.pop(f"old__{name}", None)
            if old_value is not None:
                deprecated(f"{_deprecated_flag(meta)} is deprecated; use {meta.flag}")
                value, spelled[name] = old_value, _deprecated_flag(meta)
            if overrides and value is not None or not overrides and (value != field_defaults[name] or name in defaults):
                values[name] = value
        return fn(**kwargs, engine_values=_Values(values, spelled))

    params = sorted(own + added, key=lambda p: p.kind)  # keyword-only after the others
    command.__signature__ = sig.replace(parameters=params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


class _Values(dict):
    """{field: value} from flags, remembering which were given under a deprecated flag."""

    def __init__(self, values: dict, spelled: dict):
        super().__init__(values)
        self.spelled = spelled


def flag_name(name: str, values: dict | None = None) -> str:
    """How the user spelled an option's flag (a deprecated flag if that is what they typed)."""
    spelled = getattr(values, "spelled", {}) or {}
    return spelled.get(name) or all_options()[name].flag


def options_from_flags(backend: str, values: dict):
    """The backend's options from flag values ({field: value}); a bad value names its flag."""
    return build_options(backend, dict(values), spelled=lambda name: flag_name(name, values))
