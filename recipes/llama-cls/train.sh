#!/usr/bin/env bash
# A decoder (Llama) as a sequence classifier, NF4 Q-LoRA, the head ("score") trained fully and saved with the adapter:
# bash recipes/llama-cls/train.sh [qlora] [--flag value ...]; MODEL empty: the tiny Llama on CPU. Predict with
# python -m tunekit.predict out/llama-cls-qlora texts.jsonl predictions.jsonl. Variables: recipes/launch.sh.
FAMILY=llama2 RECIPE=llama-cls DEFAULT_METHOD=qlora CPU_OVERLAY=recipes/cpu-tiny-cls.json exec bash "$(dirname "$0")/../launch.sh" "$@"
