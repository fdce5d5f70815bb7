#!/usr/bin/env bash
# The device machine's benchmark entry (run tool, kind nvidia-h100-x1, carry [".whl", "bench/reference"]):
#   [SUITE=llama2-qlora|throughput|lean|longctx] bash bench/gpu_llama2.sh [extra bench/run.py flags, e.g. --merge]
# Installs the carried wheels (bitsandbytes, trl, ...) into /tmp/site, runs the llama2-qlora suite on the real
# Llama-2-7B shape and leaves <suite>-<shape>.json, run.log and BENCHMARKS.md in $OUT (default out/bench/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
OUT="${OUT:-out/bench/gpu}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# SUITE=throughput|lean|longctx runs issue 5's suites instead (longctx on the Llama-3.1-8B shape).
PYTHONUNBUFFERED=1 python3 bench/run.py --suite "${SUITE:-llama2-qlora}" --out "$OUT" "$@"
rc=$?
cp BENCHMARKS.md "$OUT/" 2>/dev/null || true
exit $rc
