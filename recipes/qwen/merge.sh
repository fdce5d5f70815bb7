#!/usr/bin/env bash
# Merge a Qwen LoRA/Q-LoRA adapter into the unquantized model, then generate a sample from the merged model.
#   bash recipes/qwen/merge.sh [ADAPTER_DIR] [OUTPUT_DIR]
# A GPTQ (Int4) adapter merges into the ORIGINAL model, never into the Int4 weights:
#   BASE=/models/Qwen2.5-7B-Instruct bash recipes/qwen/merge.sh out/qwen-qlora-gptq
ADAPTER="${1:-${ADAPTER:-out/qwen-qlora}}"
OUTPUT="${2:-${OUTPUT:-$ADAPTER-merged}}"
BASE="${BASE:-}"                 # empty: the base recorded in the adapter (refused if it is quantized)
DTYPE="${DTYPE:-bfloat16}"
PROMPT="${PROMPT:-用一句话介绍一下长城。}"
source "$(dirname "$0")/../merge.sh"
