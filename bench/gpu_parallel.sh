#!/usr/bin/env bash
# Several GPU jobs at once, one per GPU (run tool, kind nvidia-h200-x2, carry [".whl"] and ".whl-gptq" for qwen):
#   bash bench/gpu_parallel.sh 'SUITE=throughput bash bench/gpu_llama2.sh --variants nf4-r16-packed' \
#                              'bash bench/gpu_chatglm2.sh'
# Job i runs with CUDA_VISIBLE_DEVICES=i, its own TMPDIR=/tmp/job<i> (checkpoints are not shared between jobs) and
# OUT=$OUT/job<i>, where its stdout.log lands.  Each job compares with a baseline run on its own GPU, so its ratios
# hold as in a run alone; the jobs share the host's CPUs (32 cores on the x2 machine) and disk.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
OUT="${OUT:-out/bench/parallel}"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
pids=()
i=0
for job in "$@"; do
  dir="$OUT/job$i"
  mkdir -p "$dir" "/tmp/job$i"
  ( CUDA_VISIBLE_DEVICES=$i TMPDIR=/tmp/job$i OUT="$dir" bash -c "$job" >"$dir/stdout.log" 2>&1
    echo "job$i exit $? after ${SECONDS}s: $job" ) &
  pids+=($!)
  i=$((i + 1))
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
rm -f "$OUT"/job*/BENCHMARKS.md  # regenerated here from the JSON files; the device may return 8 files at most
exit $rc
