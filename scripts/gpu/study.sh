#!/usr/bin/env bash
# The GPU measurements of issue 9, one step at a time, on any machine with an NVIDIA GPU where
# `rllm-study` runs on a CUDA build of llama-cpp-python (see scripts/gpu/README.md).
# Every step offloads all layers (n_gpu_layers = -1) and otherwise keeps the shipped spec, so the
# results compare cell for cell with the CPU runs of the same presets (same model, seeds, data).
#
# Usage: bash scripts/gpu/study.sh STEP RESULTS_DIR
#   bench          rllm-study bench engine at 1, 8, 32 and 64 sequences, greedy and with the
#                  presets' sampling (temperature 0.6, top-p 0.95, per-request seeds), against
#                  llama-bench and llama-batched-bench from $TOOLS (built from the same llama.cpp sources)
#   server         rllm-study bench server: the realworld workload (64 GSM8K requests, Gamma arrivals at
#                  4 requests/s, CV 2, 256 tokens) in process and through llama-server -np 32 from $TOOLS
#                  (same sampling, and its defaults), goodput, E2EL and tok/s side by side
#   pilot          --preset pilot --quick            (same spec as the CPU run)
#   realworld      --preset realworld --quick        (same spec as the CPU run)
#   pilot-c32      pilot quick with synchronous batches of 32 (32 items per data set, 30 of AIME)
#   realworld-c32  realworld quick with 32 engine slots, 64 GSM8K requests at 4 requests/s
#   techniques     --quick of every other shipped preset (quantization, kv-cache, ...)
# Environment: RLLM (default `python3 -m rllm_study`), TOOLS (folder with llama-bench and
# llama-batched-bench; bench only), THREADS (CPU threads for bench, default 16).
# Runs resume: a step cut short (e.g. by `timeout`) continues where it stopped when run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

step="${1:?usage: study.sh STEP RESULTS_DIR}"
results="${2:?usage: study.sh STEP RESULTS_DIR}"
read -r -a rllm <<< "${RLLM:-python3 -m rllm_study}"
model=qwen2.5-coder-0.5b
gpu=(--n-gpu-layers -1)
mkdir -p "$results"

case "$step" in
  bench)
    mkdir -p "$results/bench"
    "${rllm[@]}" bench engine -m "$model" -t "${THREADS:-16}" --seqs 1,8,32,64 --sampled "${gpu[@]}" \
      --reference-dir "${TOOLS:?TOOLS must name the folder with llama-bench and llama-batched-bench}" \
      --out "$results/bench/engine.json.tmp"
    mv "$results/bench/engine.json.tmp" "$results/bench/engine.json" ;;
  server)
    mkdir -p "$results/bench"
    "${rllm[@]}" bench server --server-bin "${TOOLS:?TOOLS must name the folder with llama-server}/llama-server" -m "$model" \
      -t "${THREADS:-16}" -c 32 -n 64 --max-tokens 256 --rate 4.0 --cv 2.0 "${gpu[@]}" --out "$results/bench/server" --json \
      > "$results/bench/server.json.tmp"
    mv "$results/bench/server.json.tmp" "$results/bench/server.json" ;;
  pilot | realworld)
    "${rllm[@]}" run --preset "$step" --quick "${gpu[@]}" --out "$results/$step" ;;
  pilot-c32)
    "${rllm[@]}" run --preset pilot --quick "${gpu[@]}" --set workload.batch_size=32 \
      --set 'datasets={gsm8k=32, math500=32, aime24=30, gpqa-diamond=32}' --out "$results/$step" ;;
  realworld-c32)
    "${rllm[@]}" run --preset realworld --quick "${gpu[@]}" --set engine.concurrency=32 \
      --set 'datasets={gsm8k=64}' --set workload.rate=4.0 --out "$results/$step" ;;
  techniques)
    failed=0
    for toml in study/presets/*.toml; do
      name="$(basename "$toml" .toml)"
      case "$name" in pilot | realworld) continue ;; esac
      "${rllm[@]}" run --preset "$name" --quick "${gpu[@]}" --out "$results/$name" || { echo "preset $name failed" >&2; failed=1; }
    done
    exit "$failed" ;;
  *)
    echo "study.sh: unknown step $step (bench, server, pilot, realworld, pilot-c32, realworld-c32, techniques)" >&2
    exit 2 ;;
esac
