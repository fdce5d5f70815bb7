#!/usr/bin/env bash
# Llama-2: bash recipes/llama2/train.sh [qlora|lora|full] [overlay.json ...] [--flag value ...]; variables (MODEL, DATA,
# GPUs, nodes, DeepSpeed) at the top of recipes/launch.sh. qlora.json: NF4, r=64, alpha=16 (the seed's), no dropout;
# `qlora recipes/lean.json`: r=16, 4k-token micro-batches, offload, 8-bit AdamW (4.78 GiB for a 7B, BENCHMARKS.md).
FAMILY=llama2 DEFAULT_METHOD=qlora exec bash "$(dirname "$0")/../launch.sh" "$@"
