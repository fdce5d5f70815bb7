"""The README's first command, end to end on the embedded default: train.sh (tiny model, Q-LoRA, CPU) learns its
8 records (eval loss at most half its first value), merge.sh merges and the sample reproduces a trained answer, then
plain transformers loads the merged model and generates."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


@pytest.mark.parametrize("family,port", [("qwen", 29531), ("llama2", 29532)])
def test_qlora_recipe_end_to_end(family, port, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    env = dict(os.environ, PYTHON=sys.executable, MODEL="", OUTPUT_DIR=str(tmp_path / "adapter"),
               MASTER_PORT=str(port), OMP_NUM_THREADS="2")
    r = subprocess.run(["bash", f"recipes/{family}/train.sh", "qlora"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "real tokens/s" in r.stdout
    adapter = tmp_path / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "loss_curve.png"):
        assert (adapter / name).is_file(), name
    summary = json.loads((adapter / "run_summary.json").read_text())
    assert summary["final_eval_loss"] <= summary["first_eval_loss"] / 2, summary
    r = subprocess.run(["bash", f"recipes/{family}/merge.sh", str(adapter), str(tmp_path / "merged")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert ">>> " in r.stdout  # the sample generation ran
    trained = r.stdout.split("--- trained answer")[1].split("\n", 1)[1].split("\n--- model:\n")
    assert trained[0] == trained[1].split("\n--- ")[0], r.stdout  # the model says what it was trained to say
    assert "the model gives the trained answer" in r.stdout
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert model.dtype == torch.bfloat16
