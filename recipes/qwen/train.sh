#!/usr/bin/env bash
# Qwen2/Qwen2.5 fine-tuning: bash recipes/qwen/train.sh [qlora|qlora-gptq|lora|full] [--any_flag value ...]
# Recipes: qlora.json (bitsandbytes NF4 on a bf16 checkpoint), qlora-gptq.json (LoRA on a GPTQ-Int4 checkpoint such as
# Qwen2.5-7B-Instruct-GPTQ-Int4, as the seed did; needs `pip install -r requirements-gptq.txt`), lora.json, full.json.
# The seed's multi-GPU run: GPUS_PER_NODE=8 DS_CONFIG=ds_configs/zero2.json MODEL=... bash recipes/qwen/train.sh qlora-gptq
# Edit the variables below (or set them in the environment); extra flags override the recipe JSON.
METHOD="${1:-qlora}"; shift || true
FAMILY=qwen
MODEL="${MODEL:-}"                           # checkpoint folder, e.g. /models/Qwen2.5-7B-Instruct; empty: tiny CPU default
DATA="${DATA:-}"                             # empty: the recipe's data_path (data/qwen_conversations.json)
EVAL_DATA="${EVAL_DATA:-}"                   # empty: the recipe's eval_data_path
OUTPUT_DIR="${OUTPUT_DIR:-out/qwen-$METHOD}"
DS_CONFIG="${DS_CONFIG:-}"                   # e.g. ds_configs/zero2.json (multi-GPU); empty: no DeepSpeed
GPUS_PER_NODE="${GPUS_PER_NODE:-}"           # empty: every visible GPU (1 process on a CPU)
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-localhost}"
MASTER_PORT="${MASTER_PORT:-}"                 # empty: a free port (one node); several nodes: 6001
source "$(dirname "$0")/../launch.sh"
