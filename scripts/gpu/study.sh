#!/usr/bin/env bash
# The GPU measurements of issue 9, one step at a time, on any machine with an NVIDIA GPU where
# `rllm-study` runs on a CUDA build of llama-cpp-python (see scripts/gpu/README.md).
# Every step offloads all layers (n_gpu_layers = -1) and otherwise keeps the shipped spec, so the
# results compare cell for cell with the CPU runs of the same presets (same model, seeds, data).
#
# Usage: bash scripts/gpu/study.sh STEP RESULTS_DIR
#   bench          rllm-study bench engine at 1, 8, 32 and 64 sequences, greedy and with the
#                  presets' sampling (temperature 0.6, top-p 0.95, per-request seeds), each with
#                  tokens drawn on the host and on the device (--sample-on host,device), against
#                  llama-bench and llama-batched-bench from $TOOLS (built from the same llama.cpp sources);
#                  $OVERLAP (default "default") is --overlap: e.g. on,off measures both
#                  (written to RESULTS/bench/engine.json, or engine-$TAG.json with TAG set)
#   probe          scripts/gpu/draw_probe.py at $PROBE_SEQS (default 64) sequences: where the host draw's
#                  time goes (the logits buffer after a decode vs a copy, split over 1-16 threads)
#   server         rllm-study bench server: the realworld workload (64 GSM8K requests, Gamma arrivals at
#                  4 requests/s, CV 2, 256 tokens) in process and through llama-server -np 32 from $TOOLS
#                  (same sampling, and its defaults), goodput, E2EL and tok/s side by side
#   pilot          --preset pilot --quick            (same spec as the CPU run)
#   realworld      --preset realworld --quick        (same spec as the CPU run)
#   pilot-c32      pilot quick with synchronous batches of 32 (32 items per data set, 30 of AIME)
#   realworld-c32  realworld quick with 32 engine slots, 64 GSM8K requests at 4 requests/s
#   techniques     --quick of every other shipped preset (quantization, kv-cache, ...)
#   pilot-cpu      the pilot exactly as the 2-core CPU ran it (reports/cpu-2core/pilot: the standard
#                  size's model and data sets cut to what the CPU finished in its window)
#   pilot-standard the pilot at --size standard (qwen2.5-coder-1.5b, 3 repeats), budgets in
#                  $BUDGETS (default [512,1024]) and synchronous batches of $BATCH (default 32)
#   realworld-standard  --preset realworld --size standard (150 GSM8K requests per CV, CVs 1, 2
#                  and 4) on $MODEL at $RATE requests/s (default 3.0: the preset's 0.2 is a CPU's
#                  load; a GPU serves that with an idle engine); with $GSM8K set, that many
#                  requests per CV instead, into RESULTS/realworld-gsm8k$GSM8K-r$RATE; $REPEATS
#                  repeats where set (a later call with more adds the missing ones)
#   profile        py-spy (carried in the setup load) samples `bench engine` at $PROFILE_SEQS (default
#                  64) sequences, greedy and sampled, every thread, idle time included; the raw
#                  stacks go to RESULTS/profile/ (summarise them with scripts/profile_summary.py)
#   like           `run --like` each results folder in $LIKE (paths under reports/ of folders in
#                  reports/cpu-2core/, whose manifests prepare.sh carries in tree.tar.gz), every
#                  layer on the GPU, into RESULTS/<folder's name> (so names must differ): the CPU
#                  runs' own specs, for `report --compare`
#   speculative-standard  --preset speculative --size standard (1.5B target, 0.5B draft) with
#                  synchronous batches of $BATCH (default 8) only
#   techniques-standard  --size standard of each preset in $PRESETS (default "think-budget
#                  kv-cache") on $MODEL, budgets $BUDGETS and repeats $REPEATS where set
#                  (a later call with more repeats adds the missing cells), as a closed loop of
#                  $CONCURRENCY (default 64) requests in flight instead of synchronous batches
# Environment: RLLM (default `python3 -m rllm_study`), TOOLS (folder with llama-bench and
# llama-batched-bench; bench only), THREADS (CPU threads for bench, default 16), MODEL (bench,
# server and the quick steps; default qwen2.5-coder-0.5b), SAMPLE_ON (bench: where tokens are drawn,
# default host,device), OVERLAP and TAG (bench), LIKE, RATE, GSM8K, PRESETS, CONCURRENCY, BATCH, BUDGETS and
# REPEATS (the standard steps).
# Runs resume: a step cut short (e.g. by `timeout`) continues where it stopped when run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

step="${1:?usage: study.sh STEP RESULTS_DIR}"
results="${2:?usage: study.sh STEP RESULTS_DIR}"
read -r -a rllm <<< "${RLLM:-python3 -m rllm_study}"
model="${MODEL:-qwen2.5-coder-0.5b}"
gpu=(--n-gpu-layers -1)
mkdir -p "$results"

case "$step" in
  bench)
    mkdir -p "$results/bench"
    "${rllm[@]}" bench engine -m "$model" -t "${THREADS:-16}" --seqs 1,8,32,64 --sampled --sample-on "${SAMPLE_ON:-host,device}" \
      --overlap "${OVERLAP:-default}" "${gpu[@]}" \
      --reference-dir "${TOOLS:?TOOLS must name the folder with llama-bench and llama-batched-bench}" \
      --out "$results/bench/engine.json.tmp"
    mv "$results/bench/engine.json.tmp" "$results/bench/engine${TAG:+-$TAG}.json" ;;
  profile)
    mkdir -p "$results/profile"
    seqs="${PROFILE_SEQS:-64}"
    "${PYSPY:-py-spy}" record --idle --threads -r 250 -f raw -o "$results/profile/bench-$seqs.txt" -- \
      "${rllm[@]}" bench engine -m "$model" -t "${THREADS:-16}" --seqs "$seqs" --reps 2 --sampled "${gpu[@]}" \
      --out "$results/profile/bench-$seqs.json" ;;
  probe)
    mkdir -p "$results/bench"
    python3 scripts/gpu/draw_probe.py "$model" "${PROBE_SEQS:-64}" "$results/bench/draw-probe-$(basename "$model")${TAG:+-$TAG}.json" ;;
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
    for toml in study/rllm_study/presets/*.toml; do
      name="$(basename "$toml" .toml)"
      case "$name" in pilot | realworld) continue ;; esac
      "${rllm[@]}" run --preset "$name" --quick "${gpu[@]}" --out "$results/$name" || { echo "preset $name failed" >&2; failed=1; }
    done
    exit "$failed" ;;
  pilot-cpu)
    "${rllm[@]}" run --preset pilot --size standard "${gpu[@]}" --set 'max_tokens=[512]' --set repeats=1 \
      --set 'datasets={gsm8k=50, math500=20, aime24=10, gpqa-diamond=20}' --set 'workload={arrival="batch", batch_size=8}' \
      --out "$results/pilot" ;;
  pilot-standard)
    "${rllm[@]}" run --preset pilot --size standard "${gpu[@]}" --set "max_tokens=${BUDGETS:-[512,1024]}" \
      --set "workload={arrival=\"batch\", batch_size=${BATCH:-32}}" --out "$results/pilot-standard" ;;
  realworld-standard)
    rate="${RATE:-3.0}" name=realworld-standard requests=()
    [ -n "${GSM8K:-}" ] && name="realworld-gsm8k$GSM8K-r$rate" requests=(--set "datasets={gsm8k=$GSM8K}")
    "${rllm[@]}" run --preset realworld --size standard "${gpu[@]}" --set "models=[\"$model\"]" \
      --set "workload.rate=$rate" "${requests[@]}" ${REPEATS:+--set "repeats=$REPEATS"} --out "$results/$name" ;;
  like)
    failed=0
    for dir in ${LIKE:?LIKE must name results folders under reports/, e.g. cpu-2core/speculative-gsm8k16}; do
      "${rllm[@]}" run --like "reports/$dir" "${gpu[@]}" --out "$results/$(basename "$dir")" || { echo "like $dir failed" >&2; failed=1; }
    done
    exit "$failed" ;;
  speculative-standard)
    "${rllm[@]}" run --preset speculative --size standard "${gpu[@]}" --set "workload.batch_size=${BATCH:-8}" \
      ${REPEATS:+--set "repeats=$REPEATS"} --out "$results/speculative-standard" ;;
  techniques-standard)
    size=(); [ -n "${BUDGETS:-}" ] && size=(--set "max_tokens=$BUDGETS")
    [ -n "${REPEATS:-}" ] && size+=(--set "repeats=$REPEATS")
    for name in ${PRESETS:-think-budget kv-cache}; do
      "${rllm[@]}" run --preset "$name" --size standard "${gpu[@]}" --set "models=[\"$model\"]" "${size[@]}" \
        --set "workload={arrival=\"closed\", concurrency=${CONCURRENCY:-64}}" --set "engine.concurrency=${CONCURRENCY:-64}" \
        --out "$results/$name-standard"
    done ;;
  *)
    echo "study.sh: unknown step $step (bench, probe, server, pilot, realworld, pilot-c32, realworld-c32, techniques, pilot-cpu, pilot-standard, realworld-standard, like, speculative-standard, techniques-standard, profile)" >&2
    exit 2 ;;
esac
