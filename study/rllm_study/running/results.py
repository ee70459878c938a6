"""The results store: one folder per cell, plain files, written as things happen.

  manifest.json   spec, resolved cell, versions, hardware, model facts (written atomically)
  requests.jsonl  one line per finished request, appended and fsync'd as it finishes
  tokens.jsonl    one line per finished request: its per-token times, written just before
                  its requests.jsonl line (a request counts as finished only once that is there)
  timeline.jsonl  engine stats sampled at a fixed period
  calibration.jsonl  the machine's speed around each session: one line per fixed calibration decode
                  the runner ran on the cell's own engine just before its first request and just
                  after its last (never between decode steps of the measured requests):
                  {"session", "when": "before"|"after", "tokens", "seconds", "tok_s"}
  tokens.jsonl.gz, timeline.jsonl.gz  the same lines gzip-compressed, in a cell `pack_cell`
                  packed for publishing (read before the plain file, so a packed cell that is
                  resumed keeps both)

A request line holds at least: id, dataset, item_id, session, arrival_s, sent_s (when the
runner handed it to the engine; files written before it existed lack it), admitted_s,
prefill_done_s, first_token_s, first_answer_token_s, finish_s (seconds from the start of its
session, see below; null when it never happened), prompt_tokens, cached_tokens,
output_tokens, think_tokens, answer_tokens, finish_reason, extracted_answer, correct,
correct_lenient, parse_status, draft_proposed, draft_accepted, error (grading fields: see
`rllm_study.workloads.grading`; files written before correct_lenient existed lack it).
A token line: {"id", "session", "t_s": [...], "token_ids": [...], "phase": "ttta...",
"draft": "0010..." , "n_tokens": [...] (only when a network chunk held several tokens)}.
A timeline line: {"session", "t_s", "kv_used", "kv_capacity", "kv_unit", "running",
"waiting", "rss_bytes", "device_bytes"}, plus "energy_j" (joules since the session started) and
"gpu_bytes" where the machine has counters for them (`rllm_study.running.energy`).

Sessions: each start (or resume) of a cell is a new session with its own clock (t = 0 at its
start), numbered from 0; times are comparable only within a session.
A kill at any moment loses at most the line being written: a torn last line (cut mid-line, or
NUL bytes left by a power loss) is cut off on the next open and skipped when read, and
requests already in requests.jsonl are skipped on resume. A request counts as finished only
once its requests.jsonl line is fsync'd; one the engine had finished but not yet written when
the process died is rerun on resume (so no finished request is lost, none recorded twice).
A write that fails (a full disk) is rolled back to the last complete line, so what is on disk
stays readable.

One writer per results folder: `FolderLock` holds OUT/.rllm-study.lock (pid, host, start time
inside) for the whole run; a second run on the same folder is refused, a lock left by a dead
process is taken over. Errors on the results path become one line naming the path and the
cause (`path_error`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import json
import os
import socket
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rllm_study.errors import UserError

MANIFEST = "manifest.json"
REQUESTS = "requests.jsonl"
TOKENS = "tokens.jsonl"
TIMELINE = "timeline.jsonl"
CALIBRATION = "calibration.jsonl"
LOCK = ".rllm-study.lock"

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EEXIST: "it exists and is not a folder",
    errno.ENOTDIR: "a part of it is a regular file, not a folder",
    errno.ENOENT: "it cannot be created there",
}


def os_cause(err: OSError, path: Path | None = None) -> str:
    """The cause of an OSError in words (for ENOTDIR: which part of `path` is a regular file)."""
    if err.errno == errno.ENOTDIR and path is not None:
        blocker = next((p for p in [Path(path), *Path(path).parents] if p.is_file()), None)
        if blocker is not None:
            return f"{blocker} is a regular file, not a folder"
    return _CAUSES.get(err.errno, err.strerror or str(err))


def path_error(path: Path, err: OSError) -> UserError:
    """One line for an OSError on the results path: the path, the cause, the fix."""
    return UserError(f"{path}: cannot write results ({os_cause(err, path)}); choose another --out or fix the folder")


class ResultsWriteError(Exception):
    """Writing a results file failed (`path`, the OSError `err`); what was on disk before the
    failed write is intact (see CellWriter._append)."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(f"{path}: {os_cause(err)}")
        self.path, self.err = Path(path), err


def check_writable(out_dir: Path) -> None:
    """Without creating anything: OUT is a folder (or can be made) that this process may write."""
    out_dir = Path(out_dir)
    target = next((p for p in [out_dir, *out_dir.parents] if p.exists()), None)
    if target is None:
        return
    if not target.is_dir():
        raise path_error(out_dir, OSError(errno.EEXIST if target == out_dir else errno.ENOTDIR, ""))
    if not os.access(target, os.W_OK | os.X_OK):
        ro = os.statvfs(target).f_flag & os.ST_RDONLY
        raise path_error(out_dir, OSError(errno.EROFS if ro else errno.EACCES, ""))


def make_folder(path: Path) -> Path:
    """mkdir -p, with any failure as `path_error`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise path_error(path, OSError(errno.EEXIST, "")) from None
    except OSError as err:
        raise path_error(path, err) from None
    return path


class FolderLock:
    """The one-writer lock of a results folder: OUT/.rllm-study.lock, flock'ed for the run.

    The kernel drops the flock when the process exits in any way (kill -9 included); the file
    then names a process that no longer holds it, and the next run takes it over with a
    message (`took_over`). While a live process holds it, `acquire` raises a UserError:
    "OUT is being written by pid N on HOST since T; wait, or use another --out"."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        self.path = self.dir / LOCK
        self.fd: int | None = None
        self.took_over: str | None = None  # the message when a stale lock was taken over

    def acquire(self) -> FolderLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise path_error(self.dir, err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_lock(fd)
                os.close(fd)
                raise UserError(
                    f"{self.dir} is being written by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                    f"since {holder.get('started', '?')}; wait, or use another --out"
                ) from None
            try:  # the file may have been removed (and remade) by the holder between open and flock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_lock(fd)
        if old:
            self.took_over = (
                f"{self.dir}: took over the lock left by pid {old.get('pid', '?')} on {old.get('host', '?')} "
                f"(since {old.get('started', '?')}), which no longer holds it"
            )
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(mine).encode(), 0)
        except OSError as err:
            os.close(fd)
            raise path_error(self.path, err) from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):  # a read-only or vanished folder: the flock still goes with the fd
            self.path.unlink()
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_lock(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _repair_torn_tail(path: Path) -> None:
    """Cut a partial last line (from a kill mid-write) so appends start on a fresh line."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: Path) -> list[dict]:
    """All complete JSON lines of a file, after those of its packed copy PATH.gz where there is
    one ([] if neither exists). A torn last line (no newline, or not JSON) is skipped; NUL bytes
    (a power loss's filler) are dropped; a damaged line before the last is a UserError naming
    the file and line."""
    path = Path(path)
    packed = path.with_name(path.name + ".gz")
    rows = []
    if packed.exists():
        try:
            rows = _read_lines(packed, gzip.open)
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise UserError(
                f"{packed}: not a complete gzip file ({err}); restore it from where it was published"
            ) from None
    return rows + (_read_lines(path, open) if path.exists() else [])


def _read_lines(path: Path, opener) -> list[dict]:
    rows = []
    bad: int | None = None
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith("\n"):
                break
            line = line.replace("\x00", "").strip()
            if not line:
                continue
            if bad is not None:
                raise UserError(f"{path} line {bad}: not a JSON record (the file is damaged; remove that line)")
            try:
                rows.append(json.loads(line))
            except ValueError:
                bad = number
    return rows


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class CellWriter:
    """Appends a cell's results; safe to reopen after a crash (see the module docstring)."""

    def __init__(self, cell_dir: Path):
        self.dir = make_folder(cell_dir)
        try:
            for name in (REQUESTS, TOKENS, TIMELINE, CALIBRATION):
                _repair_torn_tail(self.dir / name)
            done = read_jsonl(self.dir / REQUESTS)
            self.finished_ids: set[str] = {r["id"] for r in done}
            sessions = [r.get("session", 0) for r in done] + [
                r.get("session", 0) for r in read_jsonl(self.dir / TIMELINE)[-1:]
            ]
            self.session = (max(sessions) + 1) if sessions else 0
            self._fds = {
                name: os.open(self.dir / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                for name in (REQUESTS, TOKENS, TIMELINE, CALIBRATION)
            }
        except OSError as err:
            raise path_error(self.dir, err) from None

    def write_manifest(self, manifest: dict) -> None:
        tmp = self.dir / (MANIFEST + ".tmp")
        try:
            tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
            os.replace(tmp, self.dir / MANIFEST)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise ResultsWriteError(self.dir / MANIFEST, err) from None

    def _append(self, rows: list[tuple[str, dict]], sync: bool) -> None:
        """Append one line per (file, row); on any failure every file is cut back to where it
        was, so a failed write (a full disk) leaves no partial line, and the error is raised."""
        sizes = {name: os.fstat(self._fds[name]).st_size for name, _ in rows}
        name = rows[0][0]
        try:
            for name, row in rows:
                fd = self._fds[name]
                _write_all(fd, (json.dumps({**row, "session": self.session}, separators=(",", ":")) + "\n").encode())
                if sync:
                    os.fsync(fd)
        except OSError as err:
            for done, size in sizes.items():
                os.ftruncate(self._fds[done], size)
            raise ResultsWriteError(self.dir / name, err) from None

    def write_request(self, record: dict, tokens: dict) -> None:
        """Record a finished request durably: tokens line, then the request line, each fsync'd."""
        self._append([(TOKENS, tokens), (REQUESTS, record)], sync=True)
        self.finished_ids.add(record["id"])

    def write_timeline(self, sample: dict) -> None:
        self._append([(TIMELINE, sample)], sync=False)

    def write_calibration(self, row: dict) -> None:
        self._append([(CALIBRATION, row)], sync=True)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


@dataclass
class Cell:
    """Everything recorded for one cell, read back from its folder."""

    dir: Path
    manifest: dict
    requests: list[dict]
    tokens: dict[str, dict] = field(default_factory=dict)
    timeline: list[dict] = field(default_factory=list)
    calibration: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.get("cell", {}).get("name", self.dir.name)


def read_cell(cell_dir: Path, with_tokens: bool = True) -> Cell:
    cell_dir = Path(cell_dir)
    manifest = json.loads((cell_dir / MANIFEST).read_text(encoding="utf-8"))
    tokens = {}
    if with_tokens:
        for row in read_jsonl(cell_dir / TOKENS):
            tokens[row["id"]] = row  # a later line for the same id wins
    return Cell(
        cell_dir,
        manifest,
        read_jsonl(cell_dir / REQUESTS),
        tokens,
        read_jsonl(cell_dir / TIMELINE),
        read_jsonl(cell_dir / CALIBRATION),
    )


PACKED = (TOKENS, TIMELINE)  # the files `pack_cell` compresses (requests.jsonl stays plain: regrade rewrites it)


def pack_cell(cell_dir: Path) -> tuple[int, int]:
    """Compress a finished cell's tokens.jsonl and timeline.jsonl (most of its size) into NAME.gz,
    for publishing results in a repository. The lines of an existing .gz are kept first; the .gz
    is written beside and renamed into place before the plain file goes, so a kill loses nothing
    (between the two steps it leaves lines twice: for a token line the later line of an id wins
    when read; rerun pack to finish). Returns (bytes before, bytes
    after) over the files packed; (0, 0) when there is nothing to pack."""
    before = after = 0
    for name in PACKED:
        plain = Path(cell_dir) / name
        if not plain.exists():
            continue
        packed = plain.with_name(name + ".gz")
        before += plain.stat().st_size + (packed.stat().st_size if packed.exists() else 0)
        tmp = packed.with_name(packed.name + ".tmp")
        try:
            with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=9) as f:
                for row in read_jsonl(plain):
                    f.write(json.dumps(row, separators=(",", ":")) + "\n")
            os.replace(tmp, packed)
            plain.unlink()
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise path_error(Path(cell_dir), err) from None
        after += packed.stat().st_size
    return before, after


def find_cells(paths: Iterable[Path]) -> list[Path]:
    """Cell folders (those holding a manifest.json) at or below each path, in sorted order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / MANIFEST).exists():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(m.parent for m in p.rglob(MANIFEST)))
    return found


def cells_locked(cells: list[Path]) -> Iterator[Path]:
    """`cells` (from `cells_in`) one by one, each while its run folder's `FolderLock` is held,
    one run folder at a time: for commands that rewrite finished cells (pack, regrade), so a
    folder a run is writing is refused (UserError, exit 2) before any of its cells is touched."""
    for run_dir in dict.fromkeys(c.parent for c in cells):  # a cell's run folder holds its lock
        with FolderLock(run_dir):
            yield from (c for c in cells if c.parent == run_dir)


def cells_in(paths: Iterable[Path]) -> list[Path]:
    """`find_cells` of folders a user named: UserError when one does not exist or none holds a cell."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise UserError(f"{p} does not exist; pass a run folder written by `rllm-study run`")
    found = find_cells(paths)
    if not found:
        raise UserError(
            f"no cells (folders holding manifest.json) in {', '.join(map(str, paths))}; "
            "pass a run folder written by `rllm-study run`"
        )
    return found
