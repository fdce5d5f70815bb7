"""Short CPU runs through finetune.main: the loss falls, the right weights move."""
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import DATA, cpu_flags
from finetune import main


def summary(trainer):
    return json.loads((Path(trainer.args.output_dir) / "run_summary.json").read_text())


def logged_losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def snapshot(model):
    out = {}
    for name, p in model.named_parameters():
        out[name] = p.detach().clone() if p.__class__.__name__ != "Params4bit" else p.data.clone()
    return out


def run(model_path, data, tmp_path, *extra, **flags):
    flags.setdefault("max_steps", 12)
    argv = ["--model_name_or_path", model_path, "--data_path", data, *cpu_flags(tmp_path / "out", **flags), *extra]
    return main(argv)


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_training_moves_the_right_weights(method, tiny_llama2, guanaco_small, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    base = {n: p.clone() for n, p in AutoModelForCausalLM.from_pretrained(tiny_llama2).state_dict().items()}
    extra = {"lora": ["--use_lora"], "qlora": ["--use_lora", "--q_lora"], "full": []}[method]
    init = {}

    import tunekit.training as training
    original = training.build_trainer

    def spy(model, *a, **k):  # the weights as they are when training starts
        init.update(snapshot(model))
        return original(model, *a, **k)

    monkeypatch.setattr("tunekit.training.build_trainer", spy)
    trainer = run(tiny_llama2, guanaco_small, tmp_path, *extra, lora_dropout=0.0)
    losses = logged_losses(trainer)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    final = snapshot(trainer.model)
    changed = {n for n in final if not torch.equal(final[n], init[n])}
    if method == "full":
        assert len(changed) >= 0.9 * len(final)
        return
    lora = {n for n in final if "lora_" in n}
    assert lora and {n for n in lora if "lora_B" in n} <= changed, "every lora_B must have moved from zero"
    assert changed <= lora, f"non-LoRA weights changed: {sorted(changed - lora)[:5]}"
    for name, p in trainer.model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.dtype == torch.float32
        else:
            assert not p.requires_grad
    if method == "lora":  # the frozen base equals the checkpoint on disk, bit for bit
        for name, p in trainer.model.named_parameters():
            if "base_layer" in name:
                key = name.replace("base_model.model.", "").replace(".base_layer", "")
                assert torch.equal(p.detach(), base[key])


def test_qlora_base_is_really_4bit(tiny_llama2, guanaco_small, tmp_path):
    trainer = run(tiny_llama2, guanaco_small, tmp_path, "--use_lora", "--q_lora", max_steps=1)
    kinds = {type(m).__name__ for m in trainer.model.modules()}
    assert "Linear4bit" in kinds
    quant = trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.quant_state
    assert quant.quant_type == "nf4"


def test_trainable_count_matches_lora_arithmetic(tiny_llama2, guanaco_small, tmp_path):
    trainer = run(tiny_llama2, guanaco_small, tmp_path, "--use_lora", "--lora_r", "4", "--lora_target_modules",
                  "q_proj", "v_proj", max_steps=1)
    cfg = trainer.model.config
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    assert summary(trainer)["trainable_params"] == layers * 4 * ((h + h) + (h + kv))
    assert summary(trainer)["adapted_layers"] == 2 * layers


def test_all_linear_resolves_to_explicit_names(tiny_llama2, guanaco_small, tmp_path):
    trainer = run(tiny_llama2, guanaco_small, tmp_path, "--use_lora", "--lora_target_modules", "all-linear",
                  max_steps=1)
    targets = set(trainer.model.peft_config["default"].target_modules)
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_dora_and_rslora_switches(tiny_llama2, guanaco_small, tmp_path):
    trainer = run(tiny_llama2, guanaco_small, tmp_path, "--use_lora", "--use_dora", "--use_rslora", max_steps=2)
    cfg = trainer.model.peft_config["default"]
    assert cfg.use_dora and cfg.use_rslora
    assert any("lora_magnitude_vector" in n for n, _ in trainer.model.named_parameters())


def test_eval_loss_is_reported_for_a_peft_model(tiny_llama2, guanaco_small, tmp_path):
    trainer = run(tiny_llama2, guanaco_small, tmp_path, "--use_lora", "--eval_data_path",
                  str(DATA / "llama2_guanaco_eval.jsonl"), eval_strategy="steps", eval_steps=2, max_steps=4)
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) >= 2 and all(math.isfinite(e) for e in evals)
    assert summary(trainer)["final_eval_loss"] == evals[-1]


def test_outputs_on_disk(tiny_llama2, guanaco_small, tmp_path):
    import json

    from transformers import AutoTokenizer

    run(tiny_llama2, guanaco_small, tmp_path, "--use_lora", max_steps=2)
    out = tmp_path / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "finetune_args.json", "run_summary.json", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) or [p.name for p in out.glob("*.bin")] == ["training_args.bin"]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = json.loads((out / "finetune_args.json").read_text())
    assert args["family"] == "llama2" and args["use_lora"] is True
    tok, orig = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_llama2)
    assert tok.chat_template == orig.chat_template and len(tok) == len(orig)
    assert tok.pad_token_id != tok.eos_token_id


def test_saved_adapter_reloads_to_identical_logits(tiny_llama2, guanaco_small, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunekit.runfolder import load_adapter

    trainer = run(tiny_llama2, guanaco_small, tmp_path, "--use_lora", max_steps=3)
    probe = torch.tensor([[1, 50, 60, 70, 80, 90, 100]])
    trained = trainer.model.eval()
    with torch.no_grad():
        want = trained(input_ids=probe).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama2)
        base_logits = base(input_ids=probe).logits
        reloaded = load_adapter(base, str(tmp_path / "out")).eval()
        got = reloaded(input_ids=probe).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert (got - base_logits).abs().max() > 1e-3  # the adapter really does something


def test_kbit_preparation_keeps_compute_dtype_and_trains_as_well(tiny_llama2, guanaco_small, tmp_path):
    """PEFT's prepare_model_for_kbit_training runs the residual stream in fp32; ours keeps bf16 and learns as well."""
    seen = {}
    results = {}
    for upcast in (False, True):
        def hook(module, args, output, key=upcast):
            seen[key] = output[0].dtype if isinstance(output, tuple) else output.dtype

        from tunekit import training
        original = training.build_trainer

        def spy(model, *a, **k):
            model.base_model.model.model.layers[0].register_forward_hook(hook)
            return original(model, *a, **k)

        training.build_trainer = spy
        try:
            trainer = run(tiny_llama2, guanaco_small, tmp_path / str(upcast), "--use_lora", "--q_lora",
                          "--kbit_upcast", str(upcast), bf16=True, lora_dropout=0.0, max_steps=12)
        finally:
            training.build_trainer = original
        results[upcast] = logged_losses(trainer)
    assert seen[False] == torch.bfloat16 and seen[True] == torch.float32
    ours, peft_way = results[False], results[True]
    assert sum(ours[-3:]) < sum(ours[:3]) - 0.15
    assert abs(sum(ours[-3:]) / 3 - sum(peft_way[-3:]) / 3) < 0.05, (ours, peft_way)
