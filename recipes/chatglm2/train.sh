#!/usr/bin/env bash
# ChatGLM2-6B / ChatGLM3-6B fine-tuning: bash recipes/chatglm2/train.sh [lora|qlora] [--any_flag value ...]
# MODEL may be the original THUDM folder (model_type chatglm): it is converted to native transformers `glm` first
# (tunekit/convert_chatglm2.py, cached in .cache/converted/), and that folder is trained. No remote code runs.
# Data: ADGEN records {"content": ..., "summary": ...}, prompt "[Round 1]\n\n问：{content}\n\n答：" (data/README.md).
# Edit the variables below (or set them in the environment); extra flags override the recipe JSON.
METHOD="${1:-lora}"; shift || true
FAMILY=chatglm2
MODEL="${MODEL:-}"                           # e.g. /models/chatglm2-6b (original layout); empty: tiny CPU default
DATA="${DATA:-}"                             # empty: the recipe's data_path (data/chatglm2_adgen.jsonl)
EVAL_DATA="${EVAL_DATA:-}"                   # empty: the recipe's eval_data_path
OUTPUT_DIR="${OUTPUT_DIR:-out/chatglm2-$METHOD}"
DS_CONFIG="${DS_CONFIG:-}"                   # e.g. ds_configs/zero2.json (multi-GPU); empty: no DeepSpeed
GPUS_PER_NODE="${GPUS_PER_NODE:-}"           # empty: every visible GPU (1 process on a CPU)
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-localhost}"
MASTER_PORT="${MASTER_PORT:-}"                 # empty: a free port (one node); several nodes: 6001
source "$(dirname "$0")/../launch.sh"
