#!/usr/bin/env bash
# Merge a ChatGLM2 LoRA/Q-LoRA adapter into the unquantized native base, generate a sample, then write the merged
# model in the ORIGINAL ChatGLM2 layout too (for the original ChatGLM2 tooling):
#   bash recipes/chatglm2/merge.sh [ADAPTER_DIR] [OUTPUT_DIR]     -> OUTPUT_DIR (native glm), OUTPUT_DIR-chatglm2
# ORIGINAL: the original folder or its conversion (config.json, tokenizer.model, code files are copied from it);
# default: the base recorded in the adapter (the converted folder, which keeps the original's files).
ADAPTER="${1:-${ADAPTER:-out/chatglm2-lora}}"
OUTPUT="${2:-${OUTPUT:-$ADAPTER-merged}}"
BASE="${BASE:-}"                 # empty: the base recorded in the adapter
DTYPE="${DTYPE:-bfloat16}"
PROMPT="${PROMPT:-类型#裙*颜色#蓝色*风格#清新*裙型#A字裙}"
source "$(dirname "$0")/../merge.sh"
ORIGINAL="${ORIGINAL:-${BASE:-$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["base_model_name_or_path"])' "$ADAPTER/adapter_config.json")}}"
"$PYTHON" -m tunekit.convert_chatglm2 --reverse "$OUTPUT" "$OUTPUT-chatglm2" --original "$ORIGINAL"
