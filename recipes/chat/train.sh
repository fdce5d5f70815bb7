#!/usr/bin/env bash
# Any chat model, trained in its own chat template (Llama-3.x, Qwen2.5/3, Mistral, Gemma, Phi, SmolLM2, ...):
# bash recipes/chat/train.sh [lora|qlora|full] [overlay.json ...] [--flag value ...]; MODEL=/models/Qwen3-8B.
# A base model (no chat template in its tokenizer) needs --template NAME (tunekit/chat_templates/).  MODEL empty: the
# real SmolLM2-135M-Instruct (python -m tunekit.tiny smollm2) learns a new identity (recipes/identity.json, data/;
# without a GPU also recipes/cpu-real.json).
FAMILY=qwen RECIPE=chat DEFAULT_METHOD=lora DEFAULT_MODEL=smollm2 DEFAULT_OVERLAY=recipes/identity.json \
  CPU_OVERLAY=recipes/cpu-real.json exec bash "$(dirname "$0")/../launch.sh" "$@"
