#!/usr/bin/env bash
# bash recipes/chat/merge.sh ADAPTER_DIR OUT_DIR: the adapter merged into its base (recipes/merge.sh).
FAMILY=qwen RECIPE=chat DEFAULT_METHOD=lora exec bash "$(dirname "$0")/../merge.sh" "$@"
