#!/usr/bin/env bash
# ChatGLM2/3-6B: bash recipes/chatglm2/train.sh [lora|qlora] [--flag value ...]; variables at the top of recipes/launch.sh.
# MODEL may be the original THUDM folder: converted to native `glm` first (cached), no remote code runs. Data: ADGEN
# records {"content": ..., "summary": ...}, prompt "[Round 1]\n\n问：{content}\n\n答：" (data/README.md).
FAMILY=chatglm2 DEFAULT_METHOD=lora exec bash "$(dirname "$0")/../launch.sh" "$@"
