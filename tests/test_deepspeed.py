"""DeepSpeed ZeRO-2 on CPU under torchrun: the seed's command line as written, and 2 processes = 1 process with
twice the gradient accumulation.  (The first run on a machine compiles a small DeepSpeed op, about a minute.)"""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import DATA, ROOT, assert_same_adapter


def torchrun(nproc, *args, port):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
           "--node_rank", "0", "--master_addr", "localhost", "--master_port", str(port), "finetune.py", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def test_seed_qwen_command_line_runs_as_written(tiny_qwen, tmp_path):
    out = tmp_path / "out"
    torchrun(1, "--model_name_or_path", tiny_qwen, "--data_path", str(DATA / "qwen_conversations.json"),
             "--bf16", "False", "--output_dir", str(out), "--num_train_epochs", "1",
             "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1",
             "--gradient_accumulation_steps", "2", "--evaluation_strategy", "no", "--save_strategy", "steps",
             "--save_steps", "1000", "--save_total_limit", "10", "--learning_rate", "1e-5", "--weight_decay", "0.1",
             "--adam_beta2", "0.95", "--warmup_ratio", "0.01", "--lr_scheduler_type", "cosine", "--logging_steps",
             "1", "--report_to", "none", "--model_max_length", "256", "--gradient_checkpointing", "True",
             "--lazy_preprocess", "True", "--deepspeed", "ds_configs/zero2.json", "--use_lora", "--q_lora",
             port=29511)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert json.loads((out / "run_summary.json").read_text())["deepspeed"] is True
    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


def test_two_processes_equal_one_process_with_double_accumulation(tiny_llama2, tmp_path):
    common = ["--model_name_or_path", tiny_llama2, "--data_path", str(DATA / "llama2_guanaco.jsonl"),
              "--use_lora", "--lora_r", "8", "--lora_dropout", "0", "--bf16", "False", "--use_cpu", "True",
              "--optim", "adamw_torch", "--learning_rate", "1e-2", "--lr_scheduler_type", "constant",
              "--max_steps", "4", "--per_device_train_batch_size", "1", "--train_sampling_strategy", "sequential",
              "--model_max_length", "128", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
              "--seed", "0", "--deepspeed", "ds_configs/zero2.json"]
    torchrun(1, *common, "--gradient_accumulation_steps", "2", "--output_dir", str(tmp_path / "one"), port=29512)
    torchrun(2, *common, "--gradient_accumulation_steps", "1", "--output_dir", str(tmp_path / "two"), port=29513)
    for name, world in (("one", 1), ("two", 2)):  # DeepSpeed really ran (plain DDP would also match)
        summary = json.loads((tmp_path / name / "run_summary.json").read_text())
        assert summary["deepspeed"] is True and summary["world_size"] == world
    assert_same_adapter(tmp_path / "one", tmp_path / "two")


def test_dpo_runs_under_zero2(tiny_qwen, tmp_path):
    """Preference training (tunekit/preference.py: TRL's DPOTrainer) under DeepSpeed ZeRO-2 as SFT runs: policy =
    reference at the first step (loss ln 2), and it learns."""
    out = tmp_path / "dpo"
    torchrun(1, "--model_name_or_path", tiny_qwen, "--task", "dpo", "--data_path", str(DATA / "preference_train.jsonl"),
             "--use_lora", "--lora_r", "8", "--lora_dropout", "0", "--bf16", "False", "--use_cpu", "True", "--optim",
             "adamw_torch", "--learning_rate", "5e-3", "--max_steps", "3", "--per_device_train_batch_size", "4",
             "--model_max_length", "128", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
             "--deepspeed", "ds_configs/zero2.json", "--output_dir", str(out), port=29514)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["deepspeed"] is True and abs(summary["first_loss"] - 0.6931) < 1e-3
    assert summary["final_metrics"]["rewards/margins"] > 0
