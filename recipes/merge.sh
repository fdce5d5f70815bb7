#!/usr/bin/env bash
# The one merge step: bash recipes/<recipe>/merge.sh [ADAPTER_DIR] [OUTPUT_DIR] (each merge.sh sets FAMILY, optionally PROMPT (or,
# for a classifier, PREDICT_FILE) and, for a family with an original layout to write back, REVERSE).  Merges ADAPTER into its unquantized base, writes
# OUTPUT, generates a sample with the model's own chat template, and with REVERSE also writes OUTPUT-$FAMILY in the
# original layout.
ADAPTER="${1:-${ADAPTER:-out/${RECIPE:-$FAMILY}-$DEFAULT_METHOD}}"
OUTPUT="${2:-${OUTPUT:-$ADAPTER-merged}}"
BASE="${BASE:-}"                 # empty: the base recorded in the adapter (a GPTQ adapter needs the unquantized one)
DTYPE="${DTYPE:-bfloat16}"
ORIGINAL="${ORIGINAL:-}"         # with REVERSE: the original folder or its conversion; empty: the adapter's base

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"  # make install makes .venv
args=(--adapter "$ADAPTER" --output "$OUTPUT" --dtype "$DTYPE" --overwrite)
[ -n "$BASE" ] && args+=(--base "$BASE")
"$PYTHON" -m tunekit.merge "${args[@]}"
if [ -n "${PREDICT_FILE:-}" ]; then  # a classifier: predictions on the held-out file instead of a generated sample
  "$PYTHON" -m tunekit.predict "$OUTPUT" "$PREDICT_FILE" "$OUTPUT/predictions.jsonl"
elif [ -z "${NO_SAMPLE:-}" ]; then  # the trained model (a Q-LoRA adapter on its NF4 base) on its first training
  sample=(--sample_from "$ADAPTER"); [ -n "${PROMPT:-}" ] && sample+=("$PROMPT")  # record, and on PROMPT
  "$PYTHON" -m tunekit.generate "$ADAPTER" "${sample[@]}"
fi
if [ -n "${REVERSE:-}" ]; then
  ORIGINAL="${ORIGINAL:-${BASE:-$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["base_model_name_or_path"])' "$ADAPTER/adapter_config.json")}}"
  "$PYTHON" -m tunekit.convert --reverse "$OUTPUT" "$OUTPUT-$FAMILY" --original "$ORIGINAL"
fi
