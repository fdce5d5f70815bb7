#!/usr/bin/env bash
# Merge a Llama-2 LoRA/Q-LoRA adapter into the unquantized base, then generate a sample from the merged model.
#   bash recipes/llama2/merge.sh [ADAPTER_DIR] [OUTPUT_DIR]      (BASE=/models/Llama-2-7b-hf to override the base)
ADAPTER="${1:-${ADAPTER:-out/llama2-qlora}}"
OUTPUT="${2:-${OUTPUT:-$ADAPTER-merged}}"
BASE="${BASE:-}"                 # empty: the base recorded in the adapter
DTYPE="${DTYPE:-bfloat16}"
PROMPT="${PROMPT:-Give me three tips for better sleep.}"
source "$(dirname "$0")/../merge.sh"
