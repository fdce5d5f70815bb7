#!/usr/bin/env bash
# Qwen2/2.5 (and Qwen-1, converted to qwen2 first): bash recipes/qwen/train.sh [qlora|qlora-gptq|lora|full] [overlay.json
# ...] [--flag value ...]; variables (MODEL, DATA, GPUs, nodes, DeepSpeed) at the top of recipes/launch.sh.
# qlora-gptq trains LoRA on a GPTQ-Int4 checkpoint as it is (MODEL=/models/Qwen2.5-7B-Instruct-GPTQ-Int4).
FAMILY=qwen DEFAULT_METHOD=qlora exec bash "$(dirname "$0")/../launch.sh" "$@"
