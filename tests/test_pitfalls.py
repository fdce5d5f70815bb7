"""Items of ../shared/reference/pitfalls.md not covered elsewhere (the full map is in the issue-6 notes); each test
names its pitfall number."""
import json
import math
import re
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, cpu_flags, resolve
from tunekit.tasks import TASKS
from finetune import main


def run(model, data, out, *extra, **flags):
    flags.setdefault("max_steps", 3)
    flags.setdefault("model_max_length", 64)
    return main(["--model_name_or_path", model, "--data_path", data, *cpu_flags(out, **flags), *extra])


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# ---------------------------------------------------------------- #5 adapter saved empty / no-op

def test_5_adapter_validator_catches_empty_zero_and_partial_adapters(random_qv_adapter, tmp_path):
    from tunekit.checkpoints import EmptyAdapterError, validate_adapter

    good = load_file(f"{random_qv_adapter}/adapter_model.safetensors")
    keys = set(good)
    validate_adapter(random_qv_adapter, keys, trained=True)  # the real save path passes

    def saved(tensors):
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        return folder

    zero_b = {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in good.items()}
    with pytest.raises(EmptyAdapterError, match="every lora_B is zero after training steps"):
        validate_adapter(saved(zero_b), keys, trained=True)
    validate_adapter(saved(zero_b), keys, trained=False)  # before the first step B is zero by design
    with pytest.raises(EmptyAdapterError, match="empty tensors"):
        validate_adapter(saved({k: torch.empty(0) for k in good}), keys, trained=True)
    with pytest.raises(EmptyAdapterError, match=r"\d+ adapter tensors missing"):
        validate_adapter(saved({}), keys, trained=True)  # the 40-byte ZeRO-3 adapter


# ---------------------------------------------------------------- #9, #33, #37, #40 gradient checkpointing

@pytest.mark.parametrize("family,reentrant", [("llama2", True), ("qwen", False)])
def test_9_gradient_checkpointing_trains_every_lora_weight(family, reentrant, tiny_llama2, tiny_qwen, guanaco_small,
                                                          tmp_path):
    """With checkpointing on (reentrant too) and a head trained fully outside the checkpointed blocks (the silent
    variant), every lora_B leaves zero and the head moves; the model runs without a KV cache (#40)."""
    model = tiny_llama2 if family == "llama2" else tiny_qwen
    kwargs = json.dumps({"use_reentrant": reentrant})
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = run(model, guanaco_small, tmp_path, "--use_lora", "--modules_to_save", "lm_head",
                      gradient_checkpointing=True, gradient_checkpointing_kwargs=kwargs, lora_dropout=0.0)
    assert not [w for w in record if "Gradients will be None" in str(w.message)]
    assert trainer.model.base_model.model.is_gradient_checkpointing
    assert trainer.model.config.use_cache is False
    lora_b = {n: p for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().max() > 0 for p in lora_b.values()), [n for n, p in lora_b.items() if not p.any()]
    base_head = trainer.model.base_model.model.lm_head.original_module.weight
    trained_head = trainer.model.base_model.model.lm_head.modules_to_save["default"].weight
    assert not torch.equal(base_head, trained_head)
    assert all(math.isfinite(x) for x in losses(trainer))


def test_10_11_checkpointing_rule_table():
    from tunekit.preflight import checkpointing_kwargs

    assert checkpointing_kwargs(0, True, {"use_reentrant": False}) == {"use_reentrant": False}  # DDP (#10)
    assert checkpointing_kwargs(2, True, {"use_reentrant": False}) == {"use_reentrant": False}
    assert checkpointing_kwargs(3, True, '{"use_reentrant": false}') == {"use_reentrant": True}  # ZeRO-3 + PEFT (#11)
    assert checkpointing_kwargs(3, False, {"use_reentrant": False}) == {"use_reentrant": False}  # full fine-tuning


def test_10_default_is_non_reentrant(tiny_llama2, guanaco_small, tmp_path):

    *_, t = resolve(["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small,
                        "--output_dir", str(tmp_path / "o")])
    assert t.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert t.logging_nan_inf_filter is False and t.label_names == ["labels"]  # #14, #26


# ---------------------------------------------------------------- #12, #14 non-finite loss

def test_12_14_nan_loss_stops_the_run(tiny_llama2, guanaco_small, tmp_path, monkeypatch):
    """A forward that turns NaN at step 2 stops the run with a message; the Trainer default would have logged the
    running average instead (logging_nan_inf_filter)."""
    import finetune
    from tunekit import training
    from tunekit.training import NonFiniteLossError

    build = training.build_trainer
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 2 else output

    def spy(model, *a, **k):
        model.get_output_embeddings().register_forward_hook(poison)
        return build(model, *a, **k)

    monkeypatch.setattr("tunekit.training.build_trainer", spy)
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 2: stopping"):
        run(tiny_llama2, guanaco_small, tmp_path, "--use_lora")
    assert not (tmp_path / "run_summary.json").exists()


# ---------------------------------------------------------------- #13, #15, #18 precision, quantization, placement

def test_13_adapters_are_fp32_on_an_fp16_base(tiny_llama2):
    from tunekit.arguments import LoraArguments, ModelArguments
    from tunekit.families import FAMILIES
    from tunekit.model import build_model, load_tokenizer

    family = FAMILIES["llama2"]
    model_args = ModelArguments(model_name_or_path=tiny_llama2, family="llama2")
    train_args = types.SimpleNamespace(bf16=False, fp16=True, gradient_checkpointing=False, lora_upcast_inputs=False,
                                       gradient_checkpointing_kwargs={"use_reentrant": False}, tiled_mlp_tokens=0, seed=0)
    model, _ = build_model(model_args, LoraArguments(use_lora=True, lora_r=4), train_args,
                           load_tokenizer(model_args, family)[0], family, TASKS["causal_lm"])
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values() if p.requires_grad)
    assert all(p.dtype == torch.float16 for p in params.values() if not p.requires_grad)
    assert sum(p.requires_grad for p in params.values()) > 0


def test_15_compute_dtype_follows_training_dtype():
    from tunekit.arguments import LoraArguments
    from tunekit.model import bnb_config

    assert bnb_config(LoraArguments(), torch.bfloat16).bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_config(LoraArguments(), torch.float16).bnb_4bit_compute_dtype == torch.float16
    for path in ROOT.glob("recipes/*/qlora*.json"):
        recipe = json.loads(path.read_text())
        assert recipe.get("bnb_4bit_compute_dtype", "auto") in ("auto", "bfloat16" if recipe.get("bf16") else "float16")


def test_18_quantized_model_goes_whole_to_its_own_gpu(tiny_llama2, monkeypatch):
    """Under DDP each rank loads the whole 4-bit model on its own GPU ({'': LOCAL_RANK}), never device_map='auto'."""
    from transformers import AutoModelForCausalLM

    from tunekit.arguments import LoraArguments, ModelArguments
    from tunekit.model import load_model

    seen = {}

    class Loaded(Exception):
        pass

    def spy(path, **kwargs):
        seen.update(kwargs)
        raise Loaded

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    train_args = types.SimpleNamespace(bf16=True, fp16=False)
    with pytest.raises(Loaded):
        load_model(ModelArguments(model_name_or_path=tiny_llama2), LoraArguments(use_lora=True, q_lora=True),
                   train_args, tokenizer=None, task=TASKS["causal_lm"])
    assert seen["device_map"] == {"": 1} and seen["quantization_config"].load_in_4bit


# ---------------------------------------------------------------- #21, #22, #23 labels, templates, padding

def test_21_every_recipe_sets_its_max_length():
    for path in ROOT.glob("recipes/*/*.json"):
        assert isinstance(json.loads(path.read_text()).get("model_max_length"), int), path


@pytest.mark.parametrize("family", ["llama2", "qwen"])
def test_22_training_prompt_is_the_inference_prompt_and_bos_is_single(family, tiny_llama2, tiny_qwen):
    from tunekit.arguments import ModelArguments
    from tunekit.data import IGNORE_INDEX, tokenize_sample
    from tunekit.families import FAMILIES
    from tunekit.model import load_tokenizer

    fam = FAMILIES[family]
    tok, _ = load_tokenizer(ModelArguments(model_name_or_path=tiny_llama2 if family == "llama2" else tiny_qwen), fam)
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Red."}]
    [ex], _ = tokenize_sample({"messages": messages}, tok, fam, max_length=512)
    for turn in (1, 3):  # what generation would be fed before each answer
        prompt = tok(tok.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        assert ex["input_ids"][:len(prompt)] == prompt
        assert ex["labels"][len(prompt)] != IGNORE_INDEX  # the answer starts right after it
    first = tok(tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"]
    assert all(x == IGNORE_INDEX for x in ex["labels"][:len(first)])
    assert ex["input_ids"] == tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    if tok.bos_token_id is not None:
        assert ex["input_ids"][:2] != [tok.bos_token_id] * 2  # no double BOS


def test_23_batched_generation_pads_left_and_matches_unbatched(tiny_llama2):
    from conftest import load_for_chat
    from tunekit.generate import answer

    model, tok, fmt = load_for_chat(tiny_llama2)
    convs = [[{"role": "user", "content": p}] for p in ("Hi", "Give me three tips for better sleep, please, in detail.")]
    batched = answer(model, tok, fmt, convs, max_new_tokens=4)
    assert batched == [answer(model, tok, fmt, [c], max_new_tokens=4)[0] for c in convs]


# ---------------------------------------------------------------- #25 gradient accumulation

def test_25_gradient_accumulation_equals_the_full_batch(tiny_llama2, guanaco_small, tmp_path):
    """bs=8 vs bs=4 × GA=2 on samples of different lengths: the same losses per step and the same adapter."""
    a = run(tiny_llama2, guanaco_small, tmp_path / "a", "--use_lora", lora_dropout=0.0,
            per_device_train_batch_size=8, gradient_accumulation_steps=1)
    b = run(tiny_llama2, guanaco_small, tmp_path / "b", "--use_lora", lora_dropout=0.0,
            per_device_train_batch_size=4, gradient_accumulation_steps=2)
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 3
    # a loss (~9) is a mean over <= 8 x 64 tokens, summed in another order: fp32 rounding ~ sqrt(512) x 2^-24 x 9 =
    # 1.2e-5 (observed <= 2e-6); a GA loss averaged per micro-batch moves it by 1.5e-2, summed by 9
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4, (la, lb)
    pa, pb = load_file(str(tmp_path / "a/adapter_model.safetensors")), load_file(str(tmp_path / "b/adapter_model.safetensors"))
    # The bound of the ZeRO-3 test (test_multinode.py), from the numerics: each gradient, a sum over N = 8 x 64 tokens,
    # is added in another order (two micro-batches): fp32 rounding, <= N x 2^-24 relative, which Adam's steps pass on:
    # <= N x 2^-24 x steps of the update's norm (lora_B's: B starts at zero); and one weight whose gradient cancels to
    # the rounding level may have its Adam steps (about lr each, the gradient divided by its own RMS) turn: 2 x lr x
    # steps. Observed, in norm: 2e-5 to 5e-5 with the AVX-512, AVX2 and generic kernels, against 0.03; a GA loss not
    # rescaled (micro-batch means summed) or averaged per micro-batch: 0.74.
    lr, steps = a.args.learning_rate, a.state.global_step
    update = torch.cat([v.flatten() for k, v in pa.items() if "lora_B" in k]).norm().item()
    distance = torch.cat([(pa[k] - pb[k]).flatten() for k in pa]).norm().item()
    assert distance <= 2 * lr * steps + 512 * 2**-24 * steps * update, distance


# ---------------------------------------------------------------- #32 Llama-2 pretraining_tp, #36 no Trainer internals

def test_32_merged_llama_has_pretraining_tp_1(tiny_llama2, random_qv_adapter, tmp_path):
    import shutil

    from tunekit.merge import merge

    base = tmp_path / "base-tp2"
    shutil.copytree(tiny_llama2, base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["pretraining_tp"] = 2
    (base / "config.json").write_text(json.dumps(cfg))
    merge(random_qv_adapter, str(tmp_path / "merged"), base=str(base), dtype="float32")
    assert json.loads((tmp_path / "merged/config.json").read_text())["pretraining_tp"] == 1


def test_36_code_never_mutates_trainer_internals():
    for path in [*ROOT.glob("tunekit/*.py"), ROOT / "finetune.py"]:
        assert not re.search(r"distributed_state\.distributed_type\s*=", path.read_text()), path


# ---------------------------------------------------------------- #1 an adapter that loads as nothing

def test_1_adapter_with_missing_weights_is_an_error_not_a_warning(tiny_llama2, random_qv_adapter, tmp_path):
    """PEFT only warns 'Found missing adapter keys' and goes on with zero/untrained adapters; the loader refuses."""
    import shutil

    from transformers import AutoModelForCausalLM

    from tunekit.arguments import ArgumentError
    from tunekit.runfolder import load_adapter

    probe = torch.tensor([[1, 40, 41, 300, 301]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_llama2)(input_ids=probe).logits
        good = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama2), random_qv_adapter).eval()
        assert (good(input_ids=probe).logits - base_logits).abs().max() > 1e-3  # the loaded adapter acts

    partial = tmp_path / "partial"
    shutil.copytree(random_qv_adapter, partial)
    weights = load_file(str(partial / "adapter_model.safetensors"))
    save_file({k: v for k, v in weights.items() if ".layers.1." not in k}, str(partial / "adapter_model.safetensors"))
    with pytest.raises(ArgumentError, match="partial: some adapter weights were not loaded.*missing adapter keys"):
        load_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama2), str(partial))


# ---------------------------------------------------------------- #39, #42 GPTQ branch selection and targets

def test_39_quantization_method_follows_the_checkpoint(tiny_llama2, tmp_path):
    """--q_lora on an unquantized checkpoint is bitsandbytes NF4, never a GPTQ calibration run; an already
    quantized checkpoint without --q_lora is refused."""
    import shutil

    from tunekit.arguments import ArgumentError, LoraArguments, ModelArguments
    from tunekit.model import quantization_kwargs

    kw = quantization_kwargs(ModelArguments(model_name_or_path=tiny_llama2), LoraArguments(use_lora=True, q_lora=True),
                             torch.bfloat16)
    assert type(kw["quantization_config"]).__name__ == "BitsAndBytesConfig"
    q = tmp_path / "gptq"
    shutil.copytree(tiny_llama2, q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArgumentError, match=r"already quantized \(gptq\): train it with --use_lora --q_lora"):
        quantization_kwargs(ModelArguments(model_name_or_path=str(q)), LoraArguments(use_lora=True), torch.float16)


def test_42_all_linear_on_a_gptq_model_adapts_every_projection(tiny_qwen, tmp_path):
    """PEFT's own 'all-linear' finds no GPTQ kernel layers; the project resolves it to names that cover them."""
    pytest.importorskip("gptqmodel")
    from peft.tuners.lora import LoraLayer

    from tunekit.arguments import LoraArguments, ModelArguments
    from tunekit.families import FAMILIES
    from tunekit.tiny.gptq import pack_rtn
    from tunekit.model import build_model, load_tokenizer

    gptq = str(pack_rtn(tiny_qwen, tmp_path / "qwen-gptq"))
    family = FAMILIES["qwen"]
    model_args = ModelArguments(model_name_or_path=gptq, family="qwen")
    train_args = types.SimpleNamespace(bf16=False, fp16=True, gradient_checkpointing=False, lora_upcast_inputs=False,
                                       gradient_checkpointing_kwargs={"use_reentrant": False}, tiled_mlp_tokens=0, seed=0)
    lora_args = LoraArguments(use_lora=True, q_lora=True, lora_r=4, lora_target_modules=["all-linear"])
    model, report = build_model(model_args, lora_args, train_args, load_tokenizer(model_args, family)[0], family,
                                TASKS["causal_lm"])
    assert set(model.peft_config["default"].target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                  "up_proj", "down_proj"}
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == report["adapted_layers"] == 7 * model.config.num_hidden_layers
    # the GPTQ kernel layers are among the adapted ones (the tiny MLP, 176 wide, is left unpacked by pack_rtn)
    kinds = {n.split(".")[-1]: type(m.get_base_layer()).__name__ for n, m in model.named_modules()
             if isinstance(m, LoraLayer)}
    assert {kinds[k] for k in ("q_proj", "k_proj", "v_proj", "o_proj")} == {"TorchLinear"}, kinds
