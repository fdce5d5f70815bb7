#!/usr/bin/env bash
# After training on a CUDA GPU (run tool, carry [".whl"]): the tiny Qwen2 and Llama-2 trained with their recipes' GPU
# defaults (NF4 Q-LoRA, bf16, packing + varlen attention, Liger) on 8 records with --eval_generation, then chat (stdin),
# generate over a file and evaluate, on the GPU.  Logs and metrics land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/after-training-gpu}"
mkdir -p /tmp/site "$OUT"
[ -f /tmp/site/.tunekit-installed ] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl && touch /tmp/site/.tunekit-installed; }
# The scoring libraries (English: rouge-score, sacrebleu and theirs) in .whl-score; jieba (Chinese) does not fit too.
if ls .whl-score/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-score/*.whl
fi
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1
for fam in ${FAMILIES:-llama2 qwen}; do
  model="$(python3 -m tunekit.tiny "$fam" --out "/tmp/tiny-$fam" | tail -n 1)"
  run="/tmp/run-$fam" gen=(--eval_generation --eval_max_new_tokens 96) egen=(--generate)
  if [ "$fam" = qwen ] && ! python3 -c "import jieba" 2>/dev/null; then gen=() egen=(); fi  # Chinese: needs jieba
  rm -rf "$run"
  python3 finetune.py "recipes/$fam/qlora.json" --model_name_or_path "$model" --output_dir "$run" --max_samples 8 \
    --eval_on_train --num_train_epochs 60 --learning_rate 0.02 --lora_dropout 0 --token_budget 4096 \
    --per_device_train_batch_size 8 --eval_strategy steps --eval_steps 20 --eval_on_start --logging_steps 10 \
    --save_strategy no "${gen[@]}" >"$OUT/$fam-train.log" 2>&1
  cp "$run/run_summary.json" "$OUT/$fam-run_summary.json"
  printf 'Hello\n/reset\nWhat is 2+2?\n/exit\n' |
    python3 -m tunekit.chat "$run" --temperature 0 --max_new_tokens 32 >"$OUT/$fam-chat.log" 2>&1
  python3 -m tunekit.generate "$run" --sample_from "$run" >"$OUT/$fam-sample.log" 2>&1
  python3 -m tunekit.evaluate "$run" "${egen[@]}" --out "$OUT/$fam-evaluate" >"$OUT/$fam-evaluate.log" 2>&1 ||
    { mkdir -p "$OUT/$fam-evaluate"; echo "evaluate failed" >>"$OUT/$fam-evaluate.log"; }
  python3 - "$OUT/$fam-run_summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(sys.argv[1], "first eval", s["first_eval_loss"], "final eval", s["final_eval_loss"], "peak GiB", s["peak_gib"],
      "evaluation", {k: (s.get("evaluation") or {}).get(k) for k in ("loss", "rouge-l", "bleu-4")})
EOF
  tail -n 4 "$OUT/$fam-sample.log"
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, bitsandbytes; print(torch.__version__, transformers.__version__, peft.__version__, bitsandbytes.__version__)"
