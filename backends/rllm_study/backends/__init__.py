"""Engine adapters behind one small protocol (`base.Engine`), found by name in `REGISTRY`.

A backend is one module holding its Engine class, plus one `register(...)` line below: its
name (and aliases), the class as an import path (imported only when asked for, so a missing
optional engine such as mlx never breaks the others), and its options dataclass
(`backends/rllm_study/backends/options.py`), from which the spec's [engine] keys and the CLI flags are derived.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from rllm_study.backends.options import (
    CommonOptions,
    LlamaCppOptions,
    Meta,
    MlxOptions,
    OpenAIOptions,
    OptionError,
    deprecated,
    option_meta,
)
from rllm_study.errors import UserError


@dataclass(frozen=True)
class Backend:
    """A registered backend: `engine` is "module:Class", built as Class(model, options)."""

    name: str
    engine: str
    options: type[CommonOptions]
    aliases: tuple[str, ...] = ()

    def engine_class(self):
        module, _, cls = self.engine.partition(":")
        return getattr(importlib.import_module(module), cls)


REGISTRY: dict[str, Backend] = {}


def register(name: str, engine: str, options: type[CommonOptions], aliases: tuple[str, ...] = ()) -> None:
    REGISTRY[name] = Backend(name, engine, options, aliases)


register(
    "llama_cpp", "rllm_study.backends.llama_cpp.engine:LlamaCppEngine", LlamaCppOptions, aliases=("llamacpp", "llama")
)
register("mlx", "rllm_study.backends.mlx.engine:MlxEngine", MlxOptions)
register(
    "openai", "rllm_study.backends.openai_http.engine:OpenAIEngine", OpenAIOptions, aliases=("openai_http", "http")
)


def get_backend(name: str) -> Backend:
    """The registered backend for a name or alias (`-` and `.` read as `_`)."""
    wanted = str(name).replace("-", "_").replace(".", "_")
    for b in REGISTRY.values():
        if wanted == b.name or wanted in b.aliases:
            return b
    raise UserError(f"unknown backend {name!r}: choose one of {', '.join(REGISTRY)}")


def engine_class(name: str):
    """The Engine class for a backend name (`llama_cpp`, `mlx`, `openai`)."""
    return get_backend(name).engine_class()


def all_options() -> dict[str, Meta]:
    """Field name -> Meta over every registered backend (common fields first)."""
    out: dict[str, Meta] = {}
    for b in REGISTRY.values():
        out.update(option_meta(b.options))
    return out


def option_defaults() -> dict:
    """Field name -> its declared default (in the options class that declares it)."""
    return {name: m.default for name, m in all_options().items()}


def engine_keys() -> list[str]:
    """Every [engine] spec key a registered backend takes (deprecated spellings not included)."""
    return [m.key for m in all_options().values()]


def field_for_key(key: str, where: str, section: str = "engine") -> str | None:
    """The field a spec key names (a deprecated key warns, one line per use); None if no backend has it."""
    for name, m in all_options().items():
        if key == m.key:
            return name
        if key == m.deprecated_key:
            deprecated(f"{where}: {section}.{key} is deprecated; use {section}.{m.key}")
            return name
    return None


def build_options(backend: str, values: dict, spelled=None):
    """The backend's options from {field: value}. Values of fields another backend declares go to
    `ignored` (reported, not used); a bad value raises a UserError worded by `spelled(field)`
    (how the user wrote it: a spec key or a flag; default the field name)."""
    b = get_backend(backend)
    own = option_meta(b.options)
    known = all_options()
    for name in values:
        if name not in known:
            raise UserError(f"unknown engine option {name!r} (known: {', '.join(known)})")
    ignored = tuple(sorted((k, v) for k, v in values.items() if k not in own))
    try:
        return b.options(**{k: v for k, v in values.items() if k in own}, ignored=ignored)
    except OptionError as err:
        if spelled is None:
            raise
        raise UserError(err.message_for(spelled(err.name))) from None


def options_for(backend: str, **values):
    """`build_options` with keyword arguments, e.g. options_for("mlx", max_seqs=2, kv_bits=8)."""
    return build_options(backend, values)
