#!/usr/bin/env bash
# Issue 4, bar 5 on the device machine (run tool, carry [".whl"]):  bash bench/gpu_chatglm2.sh [--steps 30 --warmup 10]
# Installs the carried wheels into /tmp/site, then bench/chatglm2_6b.py: random ChatGLM2-6B-shaped checkpoint in the
# original layout -> recipes/chatglm2/train.sh (converts) LoRA r=32 bs4 len1024 and NF4 Q-LoRA bs1 len1024 ->
# merge.sh (merge, sample, reverse conversion).  Leaves chatglm2_6b.json and chatglm2_6b.log in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
OUT="${OUT:-out/bench/chatglm2}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
df -h /tmp . | tail -n 2
PYTHONUNBUFFERED=1 python3 bench/chatglm2_6b.py --out "$OUT" "$@"
