#!/usr/bin/env bash
# Merge a Llama-2 adapter into the unquantized base and generate a sample: bash recipes/llama2/merge.sh [ADAPTER] [OUT]
# (default out/llama2-qlora -> ADAPTER-merged; BASE=/models/Llama-2-7b-hf if the base moved). See recipes/merge.sh.
FAMILY=llama2 DEFAULT_METHOD=qlora PROMPT="${PROMPT:-Give me three tips for better sleep.}" \
  exec bash "$(dirname "$0")/../merge.sh" "$@"
