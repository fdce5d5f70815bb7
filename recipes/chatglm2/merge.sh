#!/usr/bin/env bash
# Merge a ChatGLM2 adapter into the native base, sample, and write the merged model in the ORIGINAL layout too:
# bash recipes/chatglm2/merge.sh [ADAPTER] [OUT] -> OUT (native glm) and OUT-chatglm2 (ORIGINAL= the original folder).
FAMILY=chatglm2 DEFAULT_METHOD=lora REVERSE=1 PROMPT="${PROMPT:-类型#裙*颜色#蓝色*风格#清新*裙型#A字裙}" \
  exec bash "$(dirname "$0")/../merge.sh" "$@"
