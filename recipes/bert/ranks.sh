#!/usr/bin/env bash
# The seed's rank sweep: LoRA r = 4, 8, 16 on query/value and full fine-tuning, on the same data and seed, then one
# table of the held-out metrics and trainable parameters (python -m tunekit.report): bash recipes/bert/ranks.sh [cls|ner]
METHOD="${1:-ner}"; OUT="${OUT:-out/bert-ranks-$METHOD}"; RANKS="${RANKS:-4 8 16}"
set -euo pipefail
cd "$(dirname "$0")/../.."
for r in $RANKS; do
  OUTPUT_DIR="$OUT/r$r" bash recipes/bert/train.sh "$METHOD" --lora_r "$r" --lora_alpha "$r" --overwrite_output_dir
done
OUTPUT_DIR="$OUT/full" bash recipes/bert/train.sh "$METHOD" --use_lora false \
  --learning_rate 5e-5 --overwrite_output_dir
"${PYTHON:-.venv/bin/python}" -m tunekit.report $(for r in $RANKS; do echo "$OUT/r$r"; done) "$OUT/full" --markdown "$OUT/RANKS.md"
