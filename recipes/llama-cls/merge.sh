#!/usr/bin/env bash
# Merge a decoder classifier's LoRA and head ("score") into the unquantized base, then predict the held-out file:
# bash recipes/llama-cls/merge.sh [ADAPTER] [OUT] (default out/llama-cls-qlora -> ADAPTER-merged).
FAMILY=llama2 RECIPE=llama-cls DEFAULT_METHOD=qlora PREDICT_FILE="${PREDICT_FILE:-data/sentiment_eval.jsonl}" \
  exec bash "$(dirname "$0")/../merge.sh" "$@"
