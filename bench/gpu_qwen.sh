#!/usr/bin/env bash
# The device machine's entry for the qwen suite (run tool, kind nvidia-h100-x1, carry [".whl", ".whl-gptq"]):
#   bash bench/gpu_qwen.sh [extra bench/run.py flags, e.g. --save h100-qwen --all-baselines --keep-checkpoints]
# Installs the carried wheels (.whl: bitsandbytes, trl, deepspeed, ...; .whl-gptq: optimum, gptqmodel, ...) into
# /tmp/site, runs the qwen suite on the Qwen2.5-7B shape (bench/qwen_suite.py) and leaves qwen-qwen2.5-7b.json,
# run.log and BENCHMARKS.md in $OUT (default out/bench/gpu-qwen). The runner gets a deadline so that the whole script
# ends within BUDGET seconds (default 560, under the device tool's 600 s per command): steps that no longer fit are
# recorded as skipped, and the JSON is always written.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET="${BUDGET:-560}"
source bench/gpu_env.sh
OUT="${OUT:-out/bench/gpu-qwen}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
df -h /tmp | tail -n 1 || true
deadline=$((BUDGET - SECONDS - 5))
echo "installed in ${SECONDS}s; runner deadline ${deadline}s"
PYTHONUNBUFFERED=1 python3 bench/run.py --suite qwen --shape qwen2.5-7b --out "$OUT" --deadline "$deadline" "$@"
rc=$?
cp BENCHMARKS.md "$OUT/" 2>/dev/null || true
echo "gpu_qwen.sh: ${SECONDS}s in all"
exit $rc
