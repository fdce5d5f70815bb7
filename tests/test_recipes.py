"""Recipes, launchers and DeepSpeed configs are consistent: what the README tells people to run stays runnable."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, resolve

DS = sorted((ROOT / "ds_configs").glob("*.json"))
SHELL = sorted(ROOT.glob("recipes/**/*.sh")) + [ROOT / ".ci/run"]


@pytest.mark.parametrize("path", DS, ids=lambda p: p.name)
def test_deepspeed_configs_leave_the_trainer_in_charge(path):
    cfg = json.loads(path.read_text())
    assert "optimizer" not in cfg and "scheduler" not in cfg  # they would override optim / lr_scheduler_type
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert cfg[key] == "auto", key
    assert cfg["fp16"]["enabled"] == "auto" and cfg["bf16"]["enabled"] == "auto"


@pytest.mark.parametrize("path", SHELL, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse(path):
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_recipe_jsons_leave_deepspeed_to_the_launcher():
    for path in ROOT.glob("recipes/*/*.json"):
        assert "deepspeed" not in json.loads(path.read_text()), path


def test_launcher_runs_torchrun_with_quoted_paths(tmp_path):
    model = tmp_path / "my models" / "llama; echo pwned"
    env = dict(os.environ, DRY_RUN="1", MODEL=str(model), DS_CONFIG="ds_configs/zero2.json", GPUS_PER_NODE="2",
               PYTHON="python3")
    out = subprocess.run(["bash", "recipes/llama2/train.sh", "qlora", "--max_steps", "5"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("python3 -m tunekit.torchrun ") and "--nproc_per_node 2" in out
    assert "finetune.py recipes/llama2/qlora.json" in out and "--deepspeed ds_configs/zero2.json" in out
    assert "pwned" not in subprocess.run(["bash", "-c", "printf '%s\\n' " + out.split("--model_name_or_path ")[1]
                                          .split(" --output_dir")[0]], capture_output=True, text=True).stdout \
        .replace(str(model), "")


def test_overlay_json_after_the_method_overrides_the_recipe(tiny_llama2, monkeypatch):
    """bash recipes/<family>/train.sh qlora recipes/lean.json: the overlay comes after the recipe JSON and before the
    flags, so it overrides the recipe and flags override it; the lean overlay parses to the measured lean setting."""

    env = dict(os.environ, DRY_RUN="1", MODEL="/x", PYTHON="python3", GPUS_PER_NODE="1")
    out = subprocess.run(["bash", "recipes/llama2/train.sh", "qlora", "recipes/lean.json", "--max_steps", "5"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    assert "finetune.py recipes/llama2/qlora.json recipes/lean.json --model_name_or_path /x" in out
    assert out.rstrip().endswith("--max_steps 5")
    missing = subprocess.run(["bash", "recipes/llama2/train.sh", "qlora", "recipes/nope.json"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no argument file recipes/nope.json" in missing.stderr
    monkeypatch.setattr("tunekit.preflight._cuda_count", lambda: 1)  # the recipe's varlen needs CUDA
    monkeypatch.setattr("tunekit.preflight.check_varlen", lambda *a, **k: None)
    model, _, lora, train = resolve([str(ROOT / "recipes/llama2/qlora.json"), str(ROOT / "recipes/lean.json"),
                                    "--model_name_or_path", tiny_llama2, "--output_dir", "/tmp/unused-lean", "--use_cpu"])
    assert (lora.lora_r, lora.lora_dropout, train.token_budget, train.offload_activations_async, train.optim) == (
        16, 0, 4096, True, "adamw_bnb_8bit")
    assert lora.q_lora and train.packing and model.attn_implementation == "varlen"


def test_the_default_chat_model_fully_fine_tuned_gets_its_own_learning_rate():
    """make sft METHOD=full on the embedded SmolLM2: recipes/identity.json's LoRA rate (1e-3) cost 2 of 7 general facts
    in a full fine-tuning (measured), so recipes/identity-full.json follows it (5e-5: 15/15 held-out, 7/7 general);
    the LoRA methods keep identity.json's rate."""
    env = dict(os.environ, DRY_RUN="1", MODEL="", PYTHON=sys.executable, GPUS_PER_NODE="1")
    runs = {m: subprocess.run(["bash", "recipes/chat/train.sh", m], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True).stdout for m in ("full", "lora")}
    assert "recipes/chat/full.json recipes/identity.json recipes/identity-full.json " in runs["full"]
    assert "identity-" not in runs["lora"] and "recipes/chat/lora.json recipes/identity.json " in runs["lora"]
    assert json.loads((ROOT / "recipes/identity-full.json").read_text()) == {"learning_rate": 5e-05}


def test_unknown_method_is_a_clear_error():
    env = dict(os.environ, DRY_RUN="1", MODEL="/x", PYTHON="python3")
    r = subprocess.run(["bash", "recipes/llama2/train.sh", "qlroa"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "no recipe recipes/llama2/qlroa.json" in r.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    assert "make test" in ci and "make test" in readme
