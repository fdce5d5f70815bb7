#!/usr/bin/env bash
# Llama-2 fine-tuning: bash recipes/llama2/train.sh [qlora|lora|full] [overlay.json ...] [--any_flag value ...]
# e.g. bash recipes/llama2/train.sh qlora recipes/lean.json: r=16, 4k-token micro-batches, offloaded activations,
# 8-bit AdamW: a 7B Q-LoRA measured at 4.78 GiB peak (BENCHMARKS.md, lean).
# Recipes: qlora.json (NF4, r=64, alpha=16, dropout 0.1, the seed's settings), lora.json, full.json.
# Edit the variables below (or set them in the environment); extra flags override the recipe JSON.
METHOD="${1:-qlora}"; shift || true
FAMILY=llama2
MODEL="${MODEL:-}"                           # checkpoint folder, e.g. /models/Llama-2-7b-hf; empty: tiny CPU default
DATA="${DATA:-}"                             # empty: the recipe's data_path (data/llama2_guanaco.jsonl)
EVAL_DATA="${EVAL_DATA:-}"                   # empty: the recipe's eval_data_path
OUTPUT_DIR="${OUTPUT_DIR:-out/llama2-$METHOD}"
DS_CONFIG="${DS_CONFIG:-}"                   # e.g. ds_configs/zero2.json (multi-GPU); empty: no DeepSpeed
GPUS_PER_NODE="${GPUS_PER_NODE:-}"           # empty: every visible GPU (1 process on a CPU)
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-localhost}"
MASTER_PORT="${MASTER_PORT:-}"                 # empty: a free port (one node); several nodes: 6001
source "$(dirname "$0")/../launch.sh"
