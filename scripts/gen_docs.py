#!/usr/bin/env python3
"""Write the generated reference pages (docs/specs.md, docs/metrics.md) from the code's declarations.

    .venv/bin/python scripts/gen_docs.py          # write the pages that changed
    .venv/bin/python scripts/gen_docs.py --check  # exit 1, naming them, when a page is not current

What each page is made from: `rllm_study.reference`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rllm_study.reference import stale_pages, write_pages

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = stale_pages(ROOT)
        for page in stale:
            print(f"{page} is not current: run `.venv/bin/python scripts/gen_docs.py`", file=sys.stderr)
        return 1 if stale else 0
    if argv:
        print("usage: gen_docs.py [--check]", file=sys.stderr)
        return 2
    for page in write_pages(ROOT):
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
