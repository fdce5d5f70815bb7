"""Preference training (issue 24): DPO, KTO and reward models as task rows, trained by TRL's trainers on the tiny
models (CPU).  DPO starts where policy = reference (loss ln 2, margins 0), learns the toy preference of
data/preference_*.jsonl (held-out accuracy > 0.9), changes only the adapter, and its reference is the base with the
adapter disabled, computed by the same weights; from an SFT adapter (--init_adapter) the reference is that adapter.
A reward model ranks held-out pairs and reloads to identical scores; bad records are one error line each."""
import json
import math
import re
import subprocess
import sys

import pytest
import torch

import finetune
from conftest import DATA, ROOT, cpu_flags
from test_bad_input import refused

TRAIN, HELD_OUT = str(DATA / "preference_train.jsonl"), str(DATA / "preference_eval.jsonl")


def train(model, out, task="dpo", data=TRAIN, eval_data=HELD_OUT, *extra, **flags):
    """finetune.main on the tiny model, LoRA r=8 without dropout; returns the trainer."""
    settings = dict(per_device_train_batch_size=8, learning_rate=5e-3, lora_dropout=0.0, lora_r=8, lora_alpha=16)
    argv = ["--model_name_or_path", model, "--task", task, "--data_path", str(data), "--use_lora",
            *(["--eval_data_path", str(eval_data)] if eval_data else []), *extra,
            *cpu_flags(out, **{**settings, **flags})]
    return finetune.main(argv)


def first_log(trainer) -> dict:
    return next(h for h in trainer.state.log_history if "loss" in h)


@pytest.fixture(scope="module")
def dpo_run(tiny_qwen, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo") / "run"
    return train(tiny_qwen, out, max_steps=12), out


def test_dpo_starts_at_ln2_with_zero_margins_and_learns_the_held_out_preference(dpo_run):
    trainer, out = dpo_run
    first = first_log(trainer)
    assert abs(first["loss"] - math.log(2)) < 1e-4, first  # policy = reference: sigmoid(0) for every pair
    assert first["rewards/margins"] == 0 and first["rewards/chosen"] == 0 and first["rewards/rejected"] == 0, first
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["first_metrics"]["rewards/margins"] == 0 and summary["final_metrics"]["rewards/margins"] > 0
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies"} <= set(summary["final_metrics"])
    held_out = summary["eval_metrics"]  # the held-out pairs, evaluated once at the end
    assert held_out["eval_rewards/accuracies"] > 0.9 and held_out["eval_rewards/margins"] > 0, held_out
    assert json.loads((out / "chat_format.json").read_text())["kind"] == "chat_template"
    assert not (out / "ref").exists()  # one adapter saved


def test_dpo_changes_only_the_adapter_and_keeps_no_reference_copy(dpo_run, tiny_qwen):
    from safetensors.torch import load_file

    trainer, _ = dpo_run
    model = trainer.model
    assert list(model.peft_config) == ["default"]  # TRL's 'ref' copy of a fresh adapter was dropped
    base = load_file(f"{tiny_qwen}/model.safetensors")
    state = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
             for k, v in model.state_dict().items() if "lora_" not in k}
    assert set(state) == set(base)
    for k, v in base.items():
        assert torch.equal(state[k], v), k  # base weights bit-identical
    assert any(p.abs().max() > 1e-3 for n, p in model.named_parameters() if "lora_B" in n)  # the adapter trained


def test_dpo_reference_is_the_base_with_the_adapter_disabled(dpo_run, tiny_qwen):
    """The reference log-probabilities, as TRL computes them (its fused LM head, under its use_adapter with no 'ref'
    adapter: the adapter disabled), equal a separately loaded base's per token (1e-5) on the held-out pairs, and
    TRL's per-sequence sums match (float32 sums of ~30 tokens: 1e-6 relative); the trained policy's differ."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import use_adapter

    trainer, _ = dpo_run
    batch = next(iter(trainer.get_eval_dataloader()))
    mask = batch["completion_mask"][:, 1:]
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad(), use_adapter(trainer.model, None):
        ref = trainer.model(**inputs, labels=batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100),
                            fused_lm_head=True).log_probs
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen).eval()
    with torch.no_grad():
        logits = base(**inputs).logits
    want = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0] * mask
    assert mask.sum() > 100
    torch.testing.assert_close(ref * mask, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), want.sum(-1), atol=0, rtol=1e-6)
    with torch.no_grad():
        policy = trainer.model(**inputs).logits
    assert (policy - logits).abs().max() > 1e-3


def test_dpo_adapter_is_served_as_a_causal_lm(dpo_run, tmp_path, capsys):
    """generate, evaluate (the held-out pairs read as prompt + chosen) and merge take a DPO run as an SFT one; chat
    and export accept it."""
    from tunekit import evaluate, generate, merge, runfolder
    from tunekit.errors import run_cli

    _, out = dpo_run
    for command in ("chat", "export"):
        runfolder.read_for(command, out)
    assert run_cli(generate.main, [str(out), "What is the capital of Spain?", "--max_new_tokens", "4"]) == 0
    assert run_cli(evaluate.main, [str(out), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert metrics["samples"] == 16 and math.isfinite(metrics["loss"])
    assert run_cli(merge.main, ["--adapter", str(out), "--output", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "chat_format.json").is_file()


def test_dpo_from_an_sft_adapter_uses_it_as_the_reference(random_qv_adapter, tiny_llama2, tmp_path):
    """--init_adapter: SFT then DPO.  The reference is the SFT model (TRL's frozen copy of the adapter), so the first
    step is again ln 2 with zero margins, which it would not be against the bare base; only the trained adapter is
    saved, with the SFT adapter's rank and targets, and it moved."""
    from safetensors.torch import load_file

    out = tmp_path / "dpo"
    trainer = train(tiny_llama2, out, "dpo", TRAIN, None, "--init_adapter", random_qv_adapter, max_steps=2,
                    max_samples=16)
    first = first_log(trainer)
    assert abs(first["loss"] - math.log(2)) < 1e-4 and first["rewards/margins"] == 0, first
    assert list(trainer.model.peft_config) == ["default", "ref"]
    assert not [n for n, p in trainer.model.named_parameters() if ".ref." in n and p.requires_grad]  # frozen copy
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    assert not (out / "ref").exists()
    before, after = load_file(f"{random_qv_adapter}/adapter_model.safetensors"), load_file(
        out / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_dpo_with_qlora_and_full_fine_tuning_starts_at_ln2(tiny_qwen, tmp_path, method):
    """NF4 Q-LoRA (the reference: the 4-bit base, adapter disabled) and full fine-tuning (TRL loads the reference
    from the same folder: the one case with a second model)."""
    argv = ["--model_name_or_path", tiny_qwen, "--task", "dpo", "--data_path", TRAIN,
            *(["--use_lora", "--q_lora", "--lora_r", "8"] if method == "qlora" else []),
            *cpu_flags(tmp_path / "out", max_steps=2, max_samples=16, per_device_train_batch_size=8,
                       learning_rate=5e-3 if method == "qlora" else 1e-4)]
    trainer = finetune.main(argv)
    first = first_log(trainer)
    assert abs(first["loss"] - math.log(2)) < 1e-4 and first["rewards/margins"] == 0, first
    assert (trainer.ref_model is None) == (method == "qlora")


@pytest.mark.parametrize("loss_type", ["ipo"])
def test_dpo_loss_types(tiny_qwen, tmp_path, loss_type):
    trainer = train(tiny_qwen, tmp_path / "out", "dpo", TRAIN, None, "--loss_type", loss_type, max_steps=2,
                    max_samples=16)
    assert trainer.args.loss_type == [loss_type] and math.isfinite(first_log(trainer)["loss"])


def test_precomputed_reference_gives_the_same_losses(tiny_qwen, tmp_path):
    def losses(*extra):
        trainer = train(tiny_qwen, tmp_path / str(len(extra)), "dpo", TRAIN, None, *extra, max_steps=3, max_samples=24)
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    on_the_fly, precomputed = losses(), losses("--precompute_ref_log_probs", "true")
    assert len(on_the_fly) == 3 and precomputed == pytest.approx(on_the_fly, abs=1e-6)


def test_kto_trains_on_unpaired_records(tiny_qwen, tmp_path):
    records = [json.loads(line) for line in open(TRAIN, encoding="utf-8")][:12]
    unpaired = tmp_path / "kto.jsonl"
    unpaired.write_text("".join(json.dumps({"prompt": r.get("prompt", r.get("conversations")), "completion": r[key],
                                            "label": key == "chosen"}) + "\n"
                                for r in records for key in ("chosen", "rejected")))
    trainer = train(tiny_qwen, tmp_path / "out", "kto", unpaired, None, max_steps=3)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(math.isfinite(h["loss"]) for h in logs)
    assert list(trainer.model.peft_config) == ["default"]
    assert (tmp_path / "out" / "chat_format.json").is_file()


def test_reward_model_ranks_held_out_pairs_and_reloads_to_identical_scores(tiny_qwen, tmp_path):
    out = tmp_path / "reward"
    train(tiny_qwen, out, "reward", TRAIN, None, max_steps=48, learning_rate=1e-2)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "reward"}  # the head's config beside the adapter, as a classifier's
    rows = []
    for i in range(2):  # two fresh processes
        r = subprocess.run([sys.executable, "-m", "tunekit", "predict", str(out), HELD_OUT,
                            str(tmp_path / f"{i}.jsonl")], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        rows.append([json.loads(line) for line in (tmp_path / f"{i}.jsonl").read_text().splitlines()])
    assert rows[0] == rows[1]
    scores = [(r["scores"]["chosen"], r["scores"]["rejected"]) for r in rows[0]]
    assert len(scores) == 16 and sum(c > r for c, r in scores) >= 0.9 * len(scores), scores
    # merged, it is still a reward model (its finetune_args.json goes along): the same scores
    from tunekit import merge, predict
    from tunekit.errors import run_cli

    merged = tmp_path / "merged"
    assert run_cli(merge.main, ["--adapter", str(out), "--output", str(merged), "--dtype", "float32"]) == 0
    assert run_cli(predict.main, [str(merged), HELD_OUT, str(tmp_path / "merged.jsonl")]) == 0
    again = [json.loads(line)["scores"] for line in (tmp_path / "merged.jsonl").read_text().splitlines()]
    assert [v for s in again for v in (s["chosen"], s["rejected"])] == pytest.approx(
        [v for pair in scores for v in pair], abs=1e-4)


def test_dpo_overlay_turns_any_chat_recipe_into_dpo(tiny_qwen, tmp_path, monkeypatch):
    """recipes/dpo.json after a chat recipe (bash recipes/chat/train.sh lora recipes/dpo.json [--init_adapter SFT]):
    the real-model path, here parsed as launch.sh orders the files on a CPU."""
    from conftest import resolve

    monkeypatch.chdir(ROOT)  # the recipes name data/ relative to the checkout
    files = [str(ROOT / f) for f in ("recipes/chat/lora.json", "recipes/identity.json", "recipes/cpu-real.json",
                                     "recipes/dpo.json")]
    m, d, lora, t = resolve([*files, "--model_name_or_path", tiny_qwen, "--output_dir", str(tmp_path / "o")])
    assert (m.task, d.data_path, t.packing, t.loss_type) == ("dpo", "data/preference_train.jsonl", False, "sigmoid")
    from tunekit import preference

    config = preference.trainer_config("dpo", t)  # --sft_weight: TRL's DPO loss plus the chosen answer's NLL (RPO)
    assert (config.loss_type, config.loss_weights) == (["sigmoid", "sft"], [1.0, 1.0])


# ---------------------------------------------------------------- bad records: one error line, exit 2, nothing written

PAIR = {"prompt": "What is 2 + 2?", "chosen": "In short: 4.", "rejected": "Great question! It is 4."}
BAD = [
    ("dpo", {k: v for k, v in PAIR.items() if k != "rejected"}, r"record 1: 'rejected' is missing"),
    ("dpo", {**PAIR, "rejected": PAIR["chosen"]}, r"record 1: 'chosen' and 'rejected' are the same answer"),
    ("reward", {**PAIR, "prompt": [{"role": "system", "content": "Be brief."}]},
     r"record 1: the prompt has no user turn"),
    ("kto", {"prompt": "Hi", "completion": "Hello.", "label": "yes"}, r"record 1: 'label' must be true or false"),
]


@pytest.mark.parametrize("task,record,pattern", BAD, ids=["missing", "identical", "no-user", "label"])
def test_bad_preference_record(task, record, pattern, tiny_qwen, tmp_path, capsys):
    from tunekit.errors import run_cli

    good = PAIR if task != "kto" else {"prompt": "Hi", "completion": "Hello.", "label": True}
    data = tmp_path / "data" / "bad.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    argv = ["--model_name_or_path", tiny_qwen, "--task", task, "--data_path", str(data), "--use_lora",
            *cpu_flags(tmp_path / "out", max_steps=1)]
    err = refused(capsys, argv, re.escape(str(data)) + " " + pattern, tmp_path, tiny_qwen,
                  runner=lambda a: run_cli(finetune.main, a))
    assert not (tmp_path / "out").exists()
    assert "Loading weights" not in err


def test_preference_arguments_are_refused_before_loading(tiny_qwen, tmp_path, capsys):
    from tunekit.errors import run_cli

    base = ["--model_name_or_path", tiny_qwen, "--data_path", TRAIN, "--use_lora", *cpu_flags(tmp_path / "out")]
    for extra, pattern in ((["--task", "dpo", "--loss_type", "kto"], r"--loss_type kto is not one --task dpo offers"),
                           (["--task", "dpo", "--packing", "true"], r"drop --packing"),
                           (["--task", "reward", "--beta", "0.2"], r"--task reward has no reference model"),
                           (["--task", "kto", "--sft_weight", "1"], r"--sft_weight 1.0: .* --task dpo"),
                           (["--sft_weight", "1", "--beta", "0.2"], r"--beta, --sft_weight: only the preference"),
                           (["--task", "seq_cls", "--loss_type", "ipo"], r"--loss_type: only the preference"),
                           (["--task", "dpo", "--init_adapter", str(tmp_path)], r"--init_adapter: .* holds no saved")):
        assert run_cli(finetune.main, base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and re.search(pattern, err), err
