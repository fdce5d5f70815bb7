#!/usr/bin/env bash
# Merge a BERT classifier's LoRA and head into the encoder, then predict the held-out file with the merged model:
# bash recipes/bert/merge.sh [ADAPTER] [OUT] (default out/bert-cls; PREDICT_FILE=data/ner_eval.jsonl for bert-ner).
FAMILY=bert DEFAULT_METHOD=cls PREDICT_FILE="${PREDICT_FILE:-data/sentiment_eval.jsonl}" \
  exec bash "$(dirname "$0")/../merge.sh" "$@"
