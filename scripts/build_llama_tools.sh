#!/usr/bin/env bash
# Build llama.cpp's own reference tools (llama-server, llama-bench, llama-batched-bench) from the
# llama.cpp sources vendored in the llama-cpp-python sdist of the installed version, with the
# same CMake settings the binding's wheel build uses, so reference runs measure the same code:
#   Release, shared libraries, LLAMA_CURL=OFF, GGML_NATIVE=ON (-march=native), plus $CMAKE_ARGS
#   exactly as `pip install llama-cpp-python` honours it (e.g. CMAKE_ARGS="-DGGML_CUDA=on").
# Extra settings the binding never needs: no web UI (it would be downloaded), no OpenSSL.
# Idempotent: does nothing when the three binaries exist. CPU heavy (5-10 min on 2 cores).
#
# Usage: bash scripts/build_llama_tools.sh [DEST]
#   DEST defaults to ~/.cache/rllm-study/llama-tools/<version>; binaries land in DEST/bin.
#   PYTHON (default .venv/bin/python, else python3) names the interpreter whose llama-cpp-python
#   version is built; JOBS (default: all cores) bounds make's parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
version="$("$python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')" || {
  echo "build_llama_tools.sh: llama-cpp-python is not installed for $python" >&2; exit 2; }

dest="${1:-${HOME}/.cache/rllm-study/llama-tools/${version}}"
tools=(llama-server llama-bench llama-batched-bench)

built=1
for t in "${tools[@]}"; do [ -x "$dest/bin/$t" ] || built=0; done
if [ "$built" = 1 ]; then
  echo "llama.cpp tools for llama-cpp-python $version already built in $dest/bin"
  exit 0
fi

mkdir -p "$dest"
src="$dest/src"
if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$python" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==${version}" -d "$tmp"
  rm -rf "$src" && mkdir -p "$src"
  tar -xzf "$tmp"/llama_cpp_python-"${version}".tar.gz -C "$src" --strip-components=1
fi

# shellcheck source=scripts/llama_build_flags.sh
source scripts/llama_build_flags.sh  # the same CFLAGS/CXXFLAGS as the binding's build in setup.sh

# The build tree is DEST itself: llama.cpp puts executables and shared libraries in
# <build>/bin, and the executables find the libraries there through their build RPATH.
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags, split as pip's build splits it
cmake -S "$src/vendor/llama.cpp" -B "$dest" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON \
  -DLLAMA_CURL=OFF \
  -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_COMMON=ON \
  -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF \
  ${CMAKE_ARGS:-}
cmake --build "$dest" --config Release -j "${JOBS:-$(nproc)}" --target "${tools[@]}"

for t in "${tools[@]}"; do "$dest/bin/$t" --version >/dev/null 2>&1 || { echo "$t does not run" >&2; exit 1; }; done
echo "built ${tools[*]} for llama-cpp-python $version in $dest/bin"
