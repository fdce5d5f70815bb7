"""Padding-free packing and token-budget batching: same numbers as padding, every sample once per epoch."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import DATA, cpu_flags

from tunekit.data import build_dataset, collator
from tunekit.families import FAMILIES
from tunekit.packing import TokenBudgetBatchSampler


def padded(tok, samples):
    return collator(tok, SimpleNamespace(packing=False), False)(samples)


def packed(samples, varlen=False):
    return collator(None, SimpleNamespace(packing=True), varlen)(samples)


def tiny_model_and_samples(path, family_name, data_file, n=6, attn="sdpa"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ds = build_dataset(str(DATA / data_file), tok, FAMILIES[family_name], max_length=256, max_samples=n)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    model.config.use_cache = False
    model.train()  # the tiny configs have no dropout, so train mode is deterministic
    return model, tok, [ds[i] for i in range(len(ds))]


def loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    out = model(**batch, **kwargs)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family,data_file,attn", [("llama2", "llama2_guanaco.jsonl", "sdpa"),
                                                   ("llama2", "llama2_guanaco.jsonl", "eager"),
                                                   ("qwen", "qwen_conversations.json", "sdpa")])
def test_packed_loss_and_gradients_equal_padded(family, data_file, attn, tiny_llama2, tiny_qwen):
    path = tiny_llama2 if family == "llama2" else tiny_qwen
    model, tok, samples = tiny_model_and_samples(path, family, data_file, attn=attn)
    assert len({len(s["input_ids"]) for s in samples}) > 1  # different lengths, so padding really happens
    batch_pad, batch_packed = padded(tok, samples), packed(samples)
    assert batch_packed["input_ids"].shape == (1, sum(len(s["input_ids"]) for s in samples))
    assert "attention_mask" not in batch_packed
    loss_pad, grads_pad = loss_and_grads(model, batch_pad)
    loss_packed, grads_packed = loss_and_grads(model, batch_packed)
    assert torch.allclose(loss_packed, loss_pad, atol=1e-5, rtol=0), (loss_packed, loss_pad)
    assert grads_pad.keys() == grads_packed.keys() and len(grads_pad) > 10
    for name, g in grads_pad.items():
        assert torch.allclose(grads_packed[name], g, atol=1e-5, rtol=1e-4), name


def test_packed_comparison_fails_when_the_cache_is_left_on(tiny_llama2):
    """With a KV cache passed, transformers does not detect the packed samples and each one attends to
    the samples before it; the equality above must then break (so that test can fail)."""
    from transformers import DynamicCache

    model, tok, samples = tiny_model_and_samples(tiny_llama2, "llama2", "llama2_guanaco.jsonl")
    loss_pad, _ = loss_and_grads(model, padded(tok, samples))
    loss_cached, _ = loss_and_grads(model, packed(samples), use_cache=True,
                                    past_key_values=DynamicCache(config=model.config))
    assert abs(loss_cached - loss_pad) > 1e-3, (loss_cached, loss_pad)


@pytest.mark.parametrize("varlen", [False, True])
def test_first_label_of_each_packed_sample_is_never_a_target(varlen):
    batch = packed([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}], varlen)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "labels", "position_ids"))
    assert set(batch) == {"input_ids", "labels", "position_ids"} | (
        {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"} if varlen else set())


@pytest.mark.parametrize("packed", [True, False])
def test_token_budget_visits_every_sample_once_per_epoch(packed):
    lengths = [int(x) for x in torch.randint(5, 200, (301,), generator=torch.Generator().manual_seed(1))]
    sampler = TokenBudgetBatchSampler(lengths, budget=512, packed=packed, seed=3)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        seen = sorted(i for b in batches for i in b)
        assert seen == list(range(len(lengths)))  # each sample exactly once
        for b in batches:
            cost = sum(lengths[i] for i in b) if packed else max(lengths[i] for i in b) * len(b)
            assert cost <= 512
        epochs.append(batches)
    assert epochs[0] != epochs[1]  # the batch order is reshuffled each epoch
    assert sorted(map(sorted, epochs[0])) == sorted(map(sorted, epochs[1]))  # over a fixed partition


def test_token_budget_shards_ranks_evenly():
    lengths = list(range(10, 300, 7))
    ranks = [list(TokenBudgetBatchSampler(lengths, 600, True, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    assert sorted({i for r in ranks for b in r for i in b}) == list(range(len(lengths)))


def test_packed_token_budget_run_trains_every_token(tiny_llama2, guanaco_small, tmp_path):
    """finetune.py with --packing --token_budget: one epoch feeds every tokenized token once, and the loss falls."""
    import finetune

    trainer = finetune.main([
        "--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--use_lora", "--lora_r", "8",
        *cpu_flags(tmp_path / "out", packing=True, token_budget=256, num_train_epochs=3, learning_rate=1e-2)])
    summary = json.loads((Path(trainer.args.output_dir) / "run_summary.json").read_text())
    assert summary["real_tokens"] == 3 * summary["tokens"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]


def test_token_budget_smaller_than_max_length_is_refused(tiny_llama2, guanaco_small, tmp_path):
    import finetune
    from tunekit.arguments import ArgumentError

    with pytest.raises(ArgumentError, match="--token_budget"):
        finetune.main(["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small,
                       *cpu_flags(tmp_path / "out", token_budget=64)])


def test_offloaded_activations_train_identically(tiny_llama2, guanaco_small, tmp_path, monkeypatch):
    """--offload_activations moves what the forward saves for backward to CPU; the numbers must not change."""
    import finetune

    entered = []
    real = torch.autograd.graph.save_on_cpu

    def spy(*args, **kwargs):
        entered.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", spy)
    runs = {}
    for offload in (False, True):
        trainer = finetune.main([
            "--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--use_lora", "--lora_r", "8",
            "--lora_dropout", "0", *cpu_flags(tmp_path / f"out-{offload}", max_steps=3, gradient_checkpointing=True,
                                              packing=True, offload_activations=offload)])
        runs[offload] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(entered) == 3  # one forward per step went through the offloading context, and only with the flag
    assert runs[True] == runs[False]


def test_liger_is_refused_on_cpu(tiny_llama2, guanaco_small, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU Liger runs: see test_liger_loss_matches_plain_on_gpu")
    import finetune
    from tunekit.arguments import ArgumentError

    with pytest.raises(ArgumentError, match="--use_liger_kernel needs a CUDA GPU"):
        finetune.main(["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small,
                       *cpu_flags(tmp_path / "out", use_liger_kernel=True)])


@pytest.fixture
def restore_llama_classes():
    """The Trainer's Liger patch rewrites transformers' Llama module and classes for the rest of the process; undo it
    afterwards, so later tests run the plain model (on CPU tensors Liger's Triton kernels fail)."""
    from transformers.models.llama import modeling_llama as module

    saved = dict(vars(module))
    classes = {obj: dict(vars(obj)) for obj in saved.values()
               if isinstance(obj, type) and obj.__module__ == module.__name__}
    yield
    for name in [n for n in vars(module) if n not in saved]:
        delattr(module, name)
    for name, value in saved.items():
        if vars(module).get(name) is not value:
            setattr(module, name, value)
    for cls, attrs in classes.items():
        for name in [n for n in vars(cls) if n not in attrs]:
            delattr(cls, name)
        for name, value in attrs.items():
            if vars(cls).get(name) is not value:
                setattr(cls, name, value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: Liger's kernels are Triton")
def test_liger_loss_matches_plain_on_gpu(tiny_llama2, guanaco_small, tmp_path, restore_llama_classes):
    """bf16: the first-step loss with Liger's fused kernels equals the plain path's to bf16 precision, padded and packed.
    Both plain runs come first: the Trainer's Liger patch also replaces transformers' Llama classes for the rest of
    the process."""
    import finetune

    first = {}
    for liger in (False, True):
        for packing in (False, True):
            flags = cpu_flags(tmp_path / f"out-{liger}-{packing}", max_steps=1, packing=packing,
                              use_liger_kernel=liger, bf16=True, use_cpu=False)
            trainer = finetune.main(["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small,
                                     "--use_lora", "--lora_dropout", "0", *flags])
            first[liger, packing] = [h["loss"] for h in trainer.state.log_history if "loss" in h][0]
            patched = sorted({m._get_name() for m in trainer.model.modules() if m._get_name().startswith("Liger")})
            assert bool(patched) == liger, patched  # Liger really replaced the norms (the comparison is not void)
    print("first-step losses (liger, packing) -> loss:", first)
    for packing in (False, True):
        # the same math, rounded to bf16 at other points (Liger's fused norms and cross-entropy keep fp32 inside):
        # one bf16 unit (2^-8) of the loss apart at most; observed on an H200: 1.7e-3 of 9.01 (2^-8 of it: 0.035)
        assert abs(first[True, packing] - first[False, packing]) <= 2**-8 * first[False, packing], first


def test_selective_checkpointing_recomputes_only_its_fraction_with_the_same_losses(tiny_llama2, guanaco_small, tmp_path):
    """--gradient_checkpointing_fraction: that share of the layers recomputes, the rest do not; the numbers are the
    same as with every layer checkpointed (recomputation changes memory and time, never values)."""
    import finetune
    from transformers.modeling_layers import GradientCheckpointingLayer

    losses, flags = {}, {}
    for fraction in (1.0, 0.5):
        trainer = finetune.main(["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--use_lora",
                                 "--lora_dropout", "0", *cpu_flags(tmp_path / f"out-{fraction}", max_steps=3,
                                                                   gradient_checkpointing=True,
                                                                   gradient_checkpointing_fraction=fraction)])
        losses[fraction] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        flags[fraction] = [m.gradient_checkpointing for m in trainer.model.modules()
                           if isinstance(m, GradientCheckpointingLayer)]
    assert flags[1.0] == [True] * len(flags[1.0]) and len(flags[1.0]) >= 2
    assert sum(flags[0.5]) == round(len(flags[0.5]) / 2), flags[0.5]
    assert losses[0.5] == pytest.approx(losses[1.0], abs=1e-6), losses


def test_skipping_the_lora_input_upcast_changes_no_number_and_saves_memory(tiny_llama2):
    """Under bf16 autocast PEFT's cast of each adapted input to the fp32 LoRA weights' dtype is undone by the matmul:
    skipping it (the default) gives bit-identical loss and gradients and saves fewer bytes for backward."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.model import skip_lora_input_upcast

    def run(upcast):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama2, dtype=torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        assert model.base_model.model.model.layers[0].mlp.down_proj.lora_A["default"].weight.dtype == torch.float32
        saved = {}

        def pack(t):  # distinct storages: every saved tensor stays alive until the backward
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        if not upcast:
            assert skip_lora_input_upcast(model) == 7 * model.base_model.model.config.num_hidden_layers
        ids = torch.randint(3, 500, (2, 64))
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        # at least one bf16 copy of a hidden-size input per decoder layer (CPU autocast keeps fewer than one per
        # adapted layer; the GPU benchmark measures the real saving)
        config = model.base_model.model.config
        copies = config.num_hidden_layers * ids.numel() * config.hidden_size * 2
        return loss.detach(), grads, sum(saved.values()), copies

    loss_up, grads_up, bytes_up, copies = run(True)
    loss_skip, grads_skip, bytes_skip, _ = run(False)
    assert torch.equal(loss_up, loss_skip)
    assert grads_up.keys() == grads_skip.keys() and len(grads_up) > 0
    assert all(torch.equal(grads_up[n], grads_skip[n]) for n in grads_up)
    assert bytes_up - bytes_skip >= copies > 0, (bytes_up, bytes_skip, copies)


def test_lora_inputs_are_still_cast_outside_autocast(tiny_llama2):
    """Skipping the upcast is decided per call: a bf16 model with fp32 adapters run without autocast (generation, a
    DataParallel replica) still gets PEFT's cast, and the same output as without the hook."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.model import skip_lora_input_upcast

    ids = torch.randint(3, 500, (1, 16))
    outputs = []
    for hooked in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama2, dtype=torch.bfloat16),
                               LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        if hooked:
            skip_lora_input_upcast(model)
        with torch.no_grad():
            outputs.append(model(input_ids=ids).logits)
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("upcast", [False, True])
def test_lora_upcast_inputs_switch_reaches_every_training_step(upcast, tiny_llama2, guanaco_small, tmp_path,
                                                                monkeypatch):
    """--lora_upcast_inputs reaches every adapted layer in training, forward and recomputed forward alike."""
    import finetune
    from peft.tuners.lora.layer import Linear

    seen = []
    original = Linear._cast_input_dtype

    def spy(self, x, dtype):
        seen.append((self.cast_input_dtype_enabled, torch.is_grad_enabled()))
        return original(self, x, dtype)

    monkeypatch.setattr(Linear, "_cast_input_dtype", spy)
    finetune.main(["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--use_lora",
                   "--lora_upcast_inputs", str(upcast),
                   *cpu_flags(tmp_path / "out", max_steps=2, bf16=True, gradient_checkpointing=True)])
    assert seen and {enabled for enabled, _ in seen} == {upcast}
