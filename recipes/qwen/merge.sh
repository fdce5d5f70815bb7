#!/usr/bin/env bash
# Merge a Qwen adapter and generate a sample: bash recipes/qwen/merge.sh [ADAPTER] [OUT]. A GPTQ adapter merges into the
# ORIGINAL model, never into Int4 weights: BASE=/models/Qwen2.5-7B-Instruct bash recipes/qwen/merge.sh out/qwen-qlora-gptq
FAMILY=qwen DEFAULT_METHOD=qlora PROMPT="${PROMPT:-用一句话介绍一下长城。}" exec bash "$(dirname "$0")/../merge.sh" "$@"
