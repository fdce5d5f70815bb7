#!/usr/bin/env bash
# The one recipe launcher: bash recipes/<recipe>/train.sh [METHOD] [overlay.json ...] [--any_flag value ...]
# (each train.sh sets FAMILY, its default METHOD and, when the folder is not named after the family, RECIPE).  Edit the variables below, or set them in the
# environment; flags after the method override the recipe JSON.  With MODEL empty it builds the family's embedded
# tiny model (cached in .cache/tiny/) and adds recipes/cpu-tiny.json, so the same command runs on a CPU in a minute;
# a train.sh may name another embedded default (DEFAULT_MODEL, an argument of `python -m tunekit.tiny`: chat's is
# smollm2, the real SmolLM2-135M-Instruct), its settings (DEFAULT_OVERLAY) and its CPU settings (CPU_OVERLAY).
METHOD="${1:-$DEFAULT_METHOD}"; shift || true
MODEL="${MODEL:-}"                  # checkpoint folder (an original ChatGLM2/Qwen-1 folder is converted first); empty: tiny
DATA="${DATA:-}"                    # empty: the recipe's data_path
EVAL_DATA="${EVAL_DATA:-}"          # empty: the recipe's eval_data_path
RECIPE="${RECIPE:-$FAMILY}"
OUTPUT_DIR="${OUTPUT_DIR:-out/$RECIPE-$METHOD}"
DS_CONFIG="${DS_CONFIG:-}"          # e.g. ds_configs/zero2.json (multi-GPU); empty: no DeepSpeed
GPUS_PER_NODE="${GPUS_PER_NODE:-}"  # empty: every visible GPU (1 process on a CPU)
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-localhost}"
MASTER_PORT="${MASTER_PORT:-}"      # empty: a free port (one node); several nodes: 6001
LAUNCHER="${LAUNCHER:-torchrun}"    # torchrun (run it on every node with its NODE_RANK; one process: plain python) | deepspeed
HOSTFILE="${HOSTFILE:-}"            # deepspeed only: "host slots=N" lines; started once, on the first host (ssh/pdsh)

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"  # make install makes .venv
[[ "$LAUNCHER" =~ ^(torchrun|deepspeed)$ ]] || { echo "error: LAUNCHER=$LAUNCHER: use torchrun or deepspeed" >&2; exit 2; }
recipe="recipes/$RECIPE/$METHOD.json"
[ -f "$recipe" ] || { echo "error: no recipe $recipe (methods: $(cd "recipes/$RECIPE" && ls *.json | sed 's/.json//' | tr '\n' ' '))" >&2; exit 2; }
args=("$recipe")
if [ -z "$MODEL" ]; then
  tiny=("${DEFAULT_MODEL:-$FAMILY}"); [[ "$METHOD" == *gptq* ]] && tiny+=(--gptq)  # a GPTQ-Int4 copy of the tiny model
  MODEL="$("$PYTHON" -m tunekit.tiny "${tiny[@]}" | tail -n 1)"
  if [ -n "${DEFAULT_OVERLAY:-}" ]; then  # a real default model: its own settings, and the CPU's only without a GPU
    args+=("$DEFAULT_OVERLAY")
    # a method's own settings for it, e.g. recipes/identity-full.json: full fine-tuning at LoRA's rate forgets facts
    [ -f "${DEFAULT_OVERLAY%.json}-$METHOD.json" ] && args+=("${DEFAULT_OVERLAY%.json}-$METHOD.json")
    "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' || args+=("$CPU_OVERLAY")
  else
    args+=("${CPU_OVERLAY:-recipes/cpu-tiny.json}")  # CPU settings: 8 samples learned by heart (classifiers: their own)
  fi
  GPUS_PER_NODE=1
elif [ -f "$MODEL/config.json" ]; then  # an original layout that needs remote code is converted first (cached)
  MODEL="$("$PYTHON" -m tunekit.convert "$MODEL" | tail -n 1)"
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    args+=(recipes/cpu.json)  # no GPU: settings that fit a CPU's memory (fp32, one sample of at most 1024 tokens a step)
    echo "note: no CUDA GPU: recipes/cpu.json's CPU settings are added (overlays and flags after the method override them)"
  fi
fi
# Overlay JSON files given right after the method (e.g. recipes/lean.json) override the recipe and the CPU settings;
# flags override them all.
while [ $# -gt 0 ] && [[ "$1" == *.json ]]; do
  [ -f "$1" ] || { echo "error: no argument file $1" >&2; exit 2; }
  args+=("$1"); shift
done
args+=(--model_name_or_path "$MODEL" --output_dir "$OUTPUT_DIR")
[ -n "$DATA" ] && args+=(--data_path "$DATA")
[ -n "$EVAL_DATA" ] && args+=(--eval_data_path "$EVAL_DATA")
[ -n "$DS_CONFIG" ] && args+=(--deepspeed "$DS_CONFIG")
pin=()  # environment the command is run with, shown by DRY_RUN
if [ -z "$GPUS_PER_NODE" ]; then
  GPUS_PER_NODE="$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
elif [ "$GPUS_PER_NODE" = 1 ] && [[ "${CUDA_VISIBLE_DEVICES-,}" == *,* ]]; then
  # one process asked for where several GPUs may be visible: the one torchrun's local rank 0 would take (the first),
  # so that without torchrun the Trainer does not wrap the model in DataParallel over all of them
  cuda="${CUDA_VISIBLE_DEVICES:-0}"; pin=("CUDA_VISIBLE_DEVICES=${cuda%%,*}")
fi
if [ "$LAUNCHER" = torchrun ] && [ "$NNODES" = 1 ] && [ "$GPUS_PER_NODE" = 1 ] && [ -z "$DS_CONFIG" ]; then
  LAUNCHER=python  # one process on one node needs no launcher (DeepSpeed does: it wants a distributed launch)
elif [ -z "$MASTER_PORT" ]; then  # two runs on one machine must not fight over one rendezvous port
  if [ "$NNODES" = 1 ]; then
    MASTER_PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
  else
    MASTER_PORT=6001
  fi
fi
case "$LAUNCHER" in
  python) cmd=("$PYTHON") ;;
  torchrun)  # several processes per node: one OpenMP thread each unless set, as torchrun would (without its banner)
    [ "$GPUS_PER_NODE" = 1 ] || export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    cmd=("$PYTHON" -m tunekit.torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE"
         --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT") ;;
  deepspeed)  # with a hostfile it reaches every host itself; without, each node runs it with its NODE_RANK (--no_ssh)
    cmd=("$PYTHON" -m deepspeed.launcher.runner --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
    if [ -n "$HOSTFILE" ]; then
      [ -f "$HOSTFILE" ] || { echo "error: HOSTFILE $HOSTFILE not found" >&2; exit 2; }
      cmd+=(--hostfile "$HOSTFILE")
    else
      cmd+=(--num_nodes "$NNODES" --num_gpus "$GPUS_PER_NODE")
      [ "$NNODES" = 1 ] || cmd+=(--no_ssh --node_rank "$NODE_RANK")
    fi ;;
esac
cmd+=(finetune.py "${args[@]}" "$@")
[ "$LAUNCHER" = python ] || pin=()  # under a launcher each process takes its own GPU
if [ -n "${DRY_RUN:-}" ]; then printf '%q ' ${pin[@]+"${pin[@]}"} "${cmd[@]}"; echo; exit 0; fi
[ ${#pin[@]} = 0 ] || export "${pin[0]}"
"${cmd[@]}"
