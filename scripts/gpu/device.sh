#!/usr/bin/env bash
# Device side of the GPU run through this workplace's `device` tool (scripts/gpu/README.md has the
# exact sequence of calls). Every call carries .gpu-carry/run and enters through its enter.sh, which
# runs this file from the prepared commit's tree in $ROOT/tree. The machine starts bare, has no
# registry access, takes at most 64 MiB of carried files per call and keeps files outside the
# repository only while it stays warm, so:
#   setup      (carries .gpu-carry/setup) log the machine, install the carried wheels into
#              $ROOT/site, unpack the slimmed llama-cpp-python sdist, keep piece 00, and
#              start the CUDA build of llama.cpp in the background (it outlives the call)
#   piece N    (carries .gpu-carry/pNN) keep piece NN (a file MODEL.partKK)
#   run STEP.. (carries .gpu-carry/run) wait for the build, join and verify the models, install
#              the rllm-study wheel built from the working tree (its commit in COMMIT, recorded in
#              every manifest), run scripts/gpu/study.sh STEP for each STEP within BUDGET_S seconds
#              (default 540), and pack every result folder into $OUT/results.tar.gz
#   build      (internal) the background build started by setup
# The binding is the sdist's own pure-Python llama_cpp package with lib/ filled from the same CUDA
# build that makes llama-bench and llama-batched-bench: one llama.cpp commit for both.
set -uo pipefail
cd "$(dirname "$0")/../.."

ROOT="${GPU_ROOT:-/root/gpu}"   # state outside the repository (kept while the machine is warm)
SITE=$ROOT/site                 # carried wheels + llama_cpp with the CUDA libraries
LCPP=$ROOT/lcpp                 # llama.cpp build tree; sources in $LCPP/src, tools and libs in $LCPP/bin
PIECES=$ROOT/pieces
RESULTS=$ROOT/results
OUT="${OUT:-$ROOT/out}"
CUDA_CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"
export PATH=$SITE/bin:$PATH PYTHONPATH=$ROOT/rllm:$SITE RLLM_STUDY_CACHE=$ROOT/models HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$ROOT" "$PIECES" "$RESULTS" "$OUT"

log() { echo "[$(date +%T)] $*"; }

machine_facts() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 --version; nvcc --version | tail -2; cmake --version | head -1
  echo "cores: $(nproc)"; grep -m1 'model name' /proc/cpuinfo; echo "cpu amx flags: $(grep -o -w 'amx_[a-z0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  free -g | head -2; uname -r
  python3 -m pip list 2>/dev/null | grep -i -E '^(pyarrow|pandas|fsspec|huggingface.hub|numpy|setuptools|wheel|requests|pyyaml|xxhash|tqdm|filelock|packaging|sympy|jinja2|psutil|httpx|matplotlib|pygments) '
}

setup() {
  machine_facts
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu-carry/setup/whl/*.whl || return 1
  mkdir -p "$LCPP/src" && tar -xzf .gpu-carry/setup/llama_cpp_python-*-slim.tar.gz -C "$LCPP/src" || return 1
  cp -a "$LCPP/src/llama_cpp" .gpu-carry/setup/site/*.dist-info "$SITE/" && mkdir -p "$SITE/llama_cpp/lib"
  cp .gpu-carry/setup/*.part* "$PIECES/"
  mkdir -p "$ROOT/scripts" && cp scripts/build_llama_tools.sh scripts/llama_build_flags.sh "$ROOT/scripts/" && cp "$0" "$ROOT/"
  rm -f "$ROOT/build.done"
  setsid nohup bash "$ROOT/device.sh" build > "$ROOT/build.log" 2>&1 < /dev/null &
  log "CUDA build started in the background (pid $!)"
  install_rllm && python3 -c 'import rllm_study.cli, rllm_study.backends.sampling, datasets, math_verify, numba, typer; print("imports ok: datasets", datasets.__version__, "numba", numba.__version__)'
}

build() {
  local start=$SECONDS rc
  # build_llama_tools.sh sources llama_build_flags.sh (no AMX kernels) from its own scripts/ folder
  CMAKE_ARGS="$CUDA_CMAKE_ARGS" PYTHON=python3 JOBS="$(nproc)" bash "$ROOT/scripts/build_llama_tools.sh" "$LCPP"
  rc=$?
  [ "$rc" = 0 ] && cp -a "$LCPP"/bin/*.so* "$SITE/llama_cpp/lib/"
  echo "$rc $((SECONDS - start))" > "$ROOT/build.done"
}

piece() {
  cp .gpu-carry/p"$(printf %02d "$1")"/*.part* "$PIECES/" && ls -l "$PIECES"
  log "build: $(tail -c 300 "$ROOT/build.log" | tr '\r\n' '  ')"
}

install_rllm() {  # the rllm-study wheel built from the working tree by prepare.sh (carried: .gpu-carry/run)
  rm -rf "$ROOT/rllm"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$ROOT/rllm" .gpu-carry/run/rllm_study-*.whl
}

join_models() {  # every MODEL whose pieces MODEL.partKK arrived, checked against its pinned sha256
  local name sha file dest
  for name in $(ls "$PIECES" | sed -n 's/\.part[0-9]*$//p' | sort -u); do
    read -r sha file < <(python3 -c "import sys; from rllm_study.models import EMBEDDED; m = EMBEDDED[sys.argv[1]]; print(m.sha256, m.path.name)" "$name")
    dest="$RLLM_STUDY_CACHE/$file"
    [ -f "$dest" ] && continue
    mkdir -p "$RLLM_STUDY_CACHE"
    cat "$PIECES/$name".part* > "$dest.tmp"
    if ! echo "$sha  $dest.tmp" | sha256sum -c --quiet; then
      log "$name: joined pieces fail the pinned sha256 ($(ls "$PIECES" | grep -c "^$name\\.") pieces here)"; rm -f "$dest.tmp"; return 1
    fi
    mv "$dest.tmp" "$dest" && rm -f "$PIECES/$name".part* && log "$name joined and verified: $dest"
  done
}

pack() {
  tar -czf "$OUT/results.tar.gz" -C "$RESULTS" . && cp "$ROOT/build.log" "$OUT/build.log" 2>/dev/null
  ls -l "$OUT"
}

run() {
  local deadline=$((SECONDS + ${BUDGET_S:-540})) step left start rc secs
  until [ -f "$ROOT/build.done" ]; do
    [ "$SECONDS" -ge "$deadline" ] && { log "build still running"; tail -5 "$ROOT/build.log"; return 1; }
    sleep 5
  done
  read -r rc secs < "$ROOT/build.done"
  [ "$rc" = 0 ] || { log "build failed"; tail -40 "$ROOT/build.log"; cp "$ROOT/build.log" "$OUT/"; return 1; }
  log "build done in ${secs}s"
  install_rllm && join_models || return 1
  export RLLM_STUDY_GIT_COMMIT="$(cat .gpu-carry/run/COMMIT)"
  # Without this, model load segfaulted when numpy was imported before llama_cpp, and pyarrow's import
  # aborted (free(): invalid pointer) when imported after it: the crash was in libstdc++ stream code
  # resolved inside libggml-cuda.so (built here by /opt/gcc 13.3), which the binding loads RTLD_GLOBAL.
  # Preloading the system libstdc++ puts its definitions first in the global lookup order.
  export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
  [ -f "$RESULTS/machine.txt" ] || { machine_facts; python3 -c 'import llama_cpp; print("llama_cpp", llama_cpp.__version__, "gpu offload:", llama_cpp.llama_supports_gpu_offload())'; } > "$RESULTS/machine.txt" 2>&1
  cat "$RESULTS/machine.txt"
  for step in "$@"; do
    left=$((deadline - SECONDS))
    if [ "$left" -lt 30 ]; then log "skipped $step: ${left}s left"; continue; fi
    log "step $step (at most ${left}s)"
    start=$SECONDS
    [ -n "${STEP_MAX_S:-}" ] && [ "$STEP_MAX_S" -lt "$left" ] && left=$STEP_MAX_S  # a step that hangs leaves time for the next
    TOOLS="$LCPP/bin" timeout "$left" bash scripts/gpu/study.sh "$step" "$RESULTS" >> "$RESULTS/steps.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$step" "$rc" "$((SECONDS - start))" >> "$RESULTS/timings.tsv"
    log "step $step: rc $rc in $((SECONDS - start))s"; tail -4 "$RESULTS/steps.log"
  done
  pack
}

cmd="${1:?usage: device.sh setup | piece N | run STEP... | build}"; shift
case "$cmd" in
  setup) setup 2>&1 | tee "$OUT/setup.log" ;;
  piece) piece "$@" ;;
  run) run "$@" ;;
  build) build ;;
  *) echo "device.sh: unknown command $cmd" >&2; exit 2 ;;
esac
