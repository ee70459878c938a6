"""A Document as GitHub-flavoured Markdown; figures are referenced as figures/<name>.png."""

from __future__ import annotations

from rllm_study.report.document import Bullets, Claim, Document, Figure, Paragraph, Section, Table

FIGURES = "figures"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(map(_cell, t.headers)) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in t.rows]
    return lines + (["", f"*{t.caption}*"] if t.caption else [])


def _claim(c: Claim, level: int) -> list[str]:
    lines = [
        f"{'#' * level} {c.title}: **{c.status}**",
        "",
        f"- *Paper:* {c.paper}",
        f"- *Rule:* {c.rule}",
        f"- *Result:* {c.reason}",
    ]
    if c.numbers:
        lines += ["", *_table(Table(["number", "value"], [list(n) for n in c.numbers]))]
    return lines


def _block(b, level: int) -> list[str]:
    if isinstance(b, Paragraph):
        return [b.text]
    if isinstance(b, Bullets):
        return [f"- {item}" for item in b.items]
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        return [f"![{b.caption}]({FIGURES}/{b.name}.png)", "", f"*{b.caption}*"]
    if isinstance(b, Claim):
        return _claim(b, level + 1)
    raise TypeError(f"unknown block {type(b).__name__}")


def _section(s: Section, level: int) -> list[str]:
    lines = [f"{'#' * level} {s.title}", ""]
    for b in s.blocks:
        lines += [*_block(b, level), ""]
    for sub in s.subsections:
        lines += _section(sub, level + 1)
    return lines


def render_md(doc: Document) -> str:
    lines = [f"# {doc.title}", ""]
    for b in doc.intro:
        lines += [*_block(b, 1), ""]
    lines += ["Contents: " + " · ".join(f"[{s.title}](#{s.anchor})" for s in doc.sections), ""]
    for s in doc.sections:
        lines += _section(s, 2)
    return "\n".join(lines).rstrip() + "\n"
