#!/usr/bin/env python3
"""Every reference to a name defined in a module, found by pyright's language server from the
module's real path (what an editor's find-references does), printed one `path:line` a line.

    python3 -m venv /tmp/pyright && /tmp/pyright/bin/pip install pyright
    .venv/bin/python scripts/find_references.py backends/rllm_study/backends/base.py Request \
        --langserver /tmp/pyright/bin/pyright-langserver

The name is looked up at its definition (`class NAME`, `def NAME` or `NAME =` at the start of a
line). Pyright reads `[tool.pyright] extraPaths` from pyproject.toml, so the three source roots
resolve as one package and every caller is found under one path.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Lsp:
    """A minimal JSON-RPC client over the server's stdio."""

    def __init__(self, command: list[str]):
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.next_id = 0

    def send(self, method: str, params: dict, notify: bool = False) -> int | None:
        msg = {"jsonrpc": "2.0", "method": method, "params": params}
        if not notify:
            self.next_id += 1
            msg["id"] = self.next_id
        body = json.dumps(msg).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()
        return msg.get("id")

    def receive(self) -> dict:
        length = 0
        while line := self.proc.stdout.readline().strip():
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return json.loads(self.proc.stdout.read(length))

    def request(self, method: str, params: dict):
        wanted = self.send(method, params)
        while True:
            msg = self.receive()
            if msg.get("id") == wanted and "method" not in msg:
                return msg.get("result")
            if "method" in msg and "id" in msg:  # a request from the server (configuration, progress): answer it
                result = (
                    [{}] * len(msg["params"].get("items", [])) if msg["method"] == "workspace/configuration" else None
                )
                body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
                self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
                self.proc.stdin.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("module", type=Path, help="the module's file, e.g. backends/rllm_study/backends/base.py")
    ap.add_argument("name", help="a class, function or variable defined in it")
    ap.add_argument("--wait", type=float, default=10.0, help="seconds to let the server index the workspace")
    ap.add_argument("--langserver", default="pyright-langserver", help="the pyright-langserver executable")
    args = ap.parse_args()
    path = args.module.resolve()
    lines = path.read_text(encoding="utf-8").splitlines()
    pattern = re.compile(rf"^(class |def |async def )?{re.escape(args.name)}\b")
    where = next(((i, ln.index(args.name)) for i, ln in enumerate(lines) if pattern.match(ln)), None)
    if where is None:
        print(f"{args.module}: no definition of {args.name} at the start of a line", file=sys.stderr)
        return 2
    lsp = Lsp([args.langserver, "--stdio"])
    lsp.request(
        "initialize",
        {
            "processId": None,
            "rootUri": ROOT.as_uri(),
            "capabilities": {},
            "workspaceFolders": [{"uri": ROOT.as_uri(), "name": ROOT.name}],
        },
    )
    lsp.send("initialized", {}, notify=True)
    lsp.send(
        "textDocument/didOpen",
        {
            "textDocument": {
                "uri": path.as_uri(),
                "languageId": "python",
                "version": 1,
                "text": path.read_text(encoding="utf-8"),
            }
        },
        notify=True,
    )
    time.sleep(args.wait)  # let the server index the workspace first
    refs = (
        lsp.request(
            "textDocument/references",
            {
                "textDocument": {"uri": path.as_uri()},
                "position": {"line": where[0], "character": where[1]},
                "context": {"includeDeclaration": True},
            },
        )
        or []
    )
    lsp.proc.kill()
    found = sorted({(r["uri"].removeprefix(ROOT.as_uri() + "/"), r["range"]["start"]["line"] + 1) for r in refs})
    for uri, line in found:
        print(f"{uri}:{line}")
    files = {uri for uri, _ in found}
    print(f"{len(found)} references in {len(files)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
