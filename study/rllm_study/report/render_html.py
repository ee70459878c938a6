"""A Document as one self-contained HTML page: inline CSS, figures as base64 data URIs, no
scripts and no network requests."""

from __future__ import annotations

import base64
import html
import re

from rllm_study.report.document import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    Bullets,
    Claim,
    Document,
    Figure,
    Paragraph,
    Section,
    Table,
)

STATUS_CLASS = {REPRODUCED: "ok", NOT_REPRODUCED: "no", INCONCLUSIVE: "open", NOT_TESTED: "na"}

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 8px 0 12px; }
h2 { font-size: 21px; margin: 40px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 17px; margin: 28px 0 8px; }
h4 { font-size: 15px; margin: 20px 0 6px; }
p { margin: 8px 0; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
       padding: 1px 4px; border-radius: 4px; }
nav { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; margin: 16px 0; }
nav ol { margin: 4px 0; padding-left: 22px; columns: 2; }
.table { overflow-x: auto; margin: 10px 0 14px; }
table { border-collapse: collapse; font-size: 13px; min-width: 40%; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
tr:nth-child(even) td { background: #fbfcfd; }
td:first-child { white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.caption { color: var(--muted); font-size: 13px; margin-top: 4px; }
figure { margin: 16px 0 22px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; white-space: nowrap; }
.badge.ok { background: #dafbe1; color: #116329; } .badge.no { background: #ffebe9; color: #a40e26; }
.badge.na { background: #eaeef2; color: #59636e; } .badge.open { background: #fff8c5; color: #7d4e00; }
.claim { border: 1px solid var(--line); border-left: 5px solid #8c959f; border-radius: 6px; padding: 10px 16px; margin: 14px 0; }
.claim.ok { border-left-color: #1a7f37; } .claim.no { border-left-color: #cf222e; } .claim.open { border-left-color: #bf8700; }
.claim h3 { margin: 2px 0 6px; display: flex; gap: 10px; align-items: center; }
.claim dl { display: grid; grid-template-columns: 70px 1fr; gap: 3px 12px; margin: 6px 0; font-size: 14px; }
.claim dt { color: var(--muted); }
.claim dd { margin: 0; }
ul { margin: 6px 0; padding-left: 22px; }
"""


def inline(text: str) -> str:
    """Escape text; `code` spans become <code>, *words* become <em>."""
    parts = re.split(r"(`[^`]*`)", str(text))
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*([^*\s][^*]*?)\*", r"<em>\1</em>", html.escape(part)))
    return "".join(out)


def _is_number(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d.,]+(%| pt|x)?( \([^)]*\))?|-", text.strip()))


def _td(text: str) -> str:
    text = str(text)
    if text in STATUS_CLASS:
        return f'<td><span class="badge {STATUS_CLASS[text]}">{html.escape(text)}</span></td>'
    return f'<td class="num">{inline(text)}</td>' if _is_number(text) else f"<td>{inline(text)}</td>"


def _table(t: Table) -> str:
    head = "".join(f"<th>{inline(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in t.rows)
    caption = f'<div class="caption">{inline(t.caption)}</div>' if t.caption else ""
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{caption}</div>'


def _claim(c: Claim) -> str:
    cls = STATUS_CLASS[c.status]
    numbers = _table(Table(["number", "value"], [list(n) for n in c.numbers])) if c.numbers else ""
    return (
        f'<div class="claim {cls}" id="claim-{c.key}"><h3>{inline(c.title)} <span class="badge {cls}">{html.escape(c.status)}</span></h3>'
        f"<dl><dt>Paper</dt><dd>{inline(c.paper)}</dd><dt>Rule</dt><dd>{inline(c.rule)}</dd>"
        f"<dt>Result</dt><dd>{inline(c.reason)}</dd></dl>{numbers}</div>"
    )


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (
        f'<figure id="fig-{html.escape(f.name)}"><img alt="{html.escape(f.caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{inline(f.caption)}</figcaption></figure>"
    )


def _block(b) -> str:
    if isinstance(b, Paragraph):
        return f"<p>{inline(b.text)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        return _figure(b)
    if isinstance(b, Claim):
        return _claim(b)
    raise TypeError(f"unknown block {type(b).__name__}")


def _section(s: Section, level: int) -> str:
    inner = "".join(_block(b) for b in s.blocks) + "".join(_section(sub, level + 1) for sub in s.subsections)
    return f'<section id="{s.anchor}"><h{level}>{inline(s.title)}</h{level}>{inner}</section>'


def render_html(doc: Document) -> str:
    toc = "".join(f'<li><a href="#{s.anchor}">{inline(s.title)}</a></li>' for s in doc.sections)
    body = "".join(_block(b) for b in doc.intro) + f"<nav><strong>Contents</strong><ol>{toc}</ol></nav>"
    body += "".join(_section(s, 2) for s in doc.sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head>"
        f"<body><main><h1>{inline(doc.title)}</h1>{body}</main></body></html>\n"
    )
