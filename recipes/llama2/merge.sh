#!/usr/bin/env bash
# Merge a Llama-2 LoRA/Q-LoRA adapter into the unquantized base, then generate a sample from the merged model.
#   bash recipes/llama2/merge.sh [ADAPTER_DIR] [OUTPUT_DIR]      (BASE=/models/Llama-2-7b-hf to override the base)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"  # make install makes .venv
ADAPTER="${1:-${ADAPTER:-out/llama2-qlora}}"
OUTPUT="${2:-${OUTPUT:-$ADAPTER-merged}}"
BASE="${BASE:-}"                 # empty: the base recorded in the adapter
DTYPE="${DTYPE:-bfloat16}"
PROMPT="${PROMPT:-Give me three tips for better sleep.}"
args=(--adapter "$ADAPTER" --output "$OUTPUT" --dtype "$DTYPE" --overwrite)
[ -n "$BASE" ] && args+=(--base "$BASE")
"$PYTHON" -m tunekit.merge "${args[@]}"
[ -n "${NO_SAMPLE:-}" ] || "$PYTHON" -m tunekit.generate "$OUTPUT" "$PROMPT"
