"""The report as plain data: sections of blocks, rendered by `render_md` and `render_html`.

Text may hold `code` spans in backticks; every other character is literal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED = "reproduced", "not reproduced", "inconclusive", "not tested"
STATUSES = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED)


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG figure: written to figures/<name>.png next to report.md, embedded in report.html."""

    name: str
    png: bytes
    caption: str


@dataclass
class Claim:
    """One of the paper's findings checked against the runs: status is REPRODUCED or NOT_REPRODUCED
    (95% intervals settle the rule), INCONCLUSIVE (an interval spans a threshold, or the sample is too
    small for one) or NOT_TESTED (the cells it needs are absent, or cannot decide it); `numbers` are
    (what, value) pairs that decide it; `reason` says why in one line."""

    key: str
    title: str
    paper: str
    rule: str
    status: str
    reason: str
    numbers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass
class Document:
    title: str
    intro: list = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        def walk(section: Section):
            for b in section.blocks:
                if isinstance(b, Figure):
                    yield b
            for s in section.subsections:
                yield from walk(s)

        return [f for s in self.sections for f in walk(s)]
