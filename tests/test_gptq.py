"""GPTQ-Int4: the round-to-nearest packer writes the v1 layout the loader reads, and LoRA trains on it (pitfalls #41)."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from tunekit.gptq import QUANT_BUFFERS, check_trainable_kernels, gptq_load_kwargs, require_gptq
from tunekit.tiny.gptq import LINEAR, V1_ZEROS_4BIT, dequantize, pack_rtn, quantize_rtn

needs_gptq = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(n) is None for n in ("optimum", "gptqmodel")),
    reason="GPTQ stack not installed: pip install -r requirements-gptq.txt")


@pytest.fixture(scope="session")
def tiny_qwen_gptq(tiny_qwen, tmp_path_factory):
    return str(pack_rtn(tiny_qwen, tmp_path_factory.mktemp("models") / "qwen-gptq"))


def read_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def load_gptq(path, backend="gptq_torch"):
    from transformers import AutoModelForCausalLM, GPTQConfig

    return AutoModelForCausalLM.from_pretrained(path, quantization_config=GPTQConfig(bits=4, backend=backend),
                                                device_map="cpu")


def probe_ids(vocab, batch=4, length=32, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ packing (no GPTQ stack needed)
def test_rtn_layout_round_trips():
    w = torch.randn(24, 176) * 0.02  # 176 = 5 full groups of 32 + a partial one, as the tiny Qwen2's down_proj
    qweight, qzeros, scales, g_idx = quantize_rtn(w, group_size=32)
    assert (qweight.dtype, tuple(qweight.shape)) == (torch.int32, (22, 24))
    assert (qzeros.dtype, tuple(qzeros.shape)) == (torch.int32, (6, 3))
    assert (scales.dtype, tuple(scales.shape)) == (torch.float16, (6, 24))
    assert torch.equal(g_idx, torch.arange(176, dtype=torch.int32) // 32)
    assert (qzeros == V1_ZEROS_4BIT).all()
    # input row i = 8p + j sits in bits 4j..4j+3 of qweight[p, o]
    q = torch.clamp(torch.round(w.t() / scales.float()[g_idx.long()]) + 8, 0, 15).int()
    assert ((qweight[3, 5] >> 8) & 15).item() == q[3 * 8 + 2, 5].item()
    err = (dequantize(qweight, qzeros, scales, g_idx) - w).abs()
    # round-to-nearest: half a step, plus the fp16 rounding of the scale where +absmax clamps to +7 (as gptqmodel's)
    assert (err <= scales.float()[g_idx.long()].t() * 0.505).all()
    right, wrong = dequantize(qweight, qzeros, scales, g_idx), dequantize(qweight, qzeros, scales, g_idx, v1=False)
    assert torch.allclose(wrong, right + scales.float()[g_idx.long()].t())  # read as v2: every weight a step off


def test_pack_writes_a_v1_checkpoint(tiny_qwen, tiny_qwen_gptq):
    src, out = read_tensors(tiny_qwen), read_tensors(tiny_qwen_gptq)
    packed = LINEAR[:4]  # intermediate 176 is no multiple of 32: the MLP stays unquantized (TritonV2Linear refuses it)
    targets = [n[: -len(".weight")] for n in src if n.endswith(".weight") and n.split(".")[-2] in packed]
    assert len(targets) == 4 * 2
    for prefix in targets:
        assert f"{prefix}.weight" not in out
        parts = [out[f"{prefix}.{k}"] for k in QUANT_BUFFERS]
        assert [p.dtype for p in parts] == [torch.int32, torch.int32, torch.float16, torch.int32]
        err = (dequantize(*parts) - src[f"{prefix}.weight"]).abs().max()
        assert err <= parts[2].float().max() * 0.505, prefix
    rest = set(src) - {f"{p}.weight" for p in targets}
    assert any(n.endswith("q_proj.bias") for n in rest)  # Qwen2's q/k/v biases are kept
    for name in rest:
        assert torch.equal(out[name], src[name]), name
    cfg = json.loads((Path(tiny_qwen_gptq) / "config.json").read_text())["quantization_config"]
    assert {k: cfg[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format")} == {
        "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": True,
        "checkpoint_format": "gptq"}
    assert cfg["format"] == "gptq"  # optimum reads `format`, transformers `checkpoint_format`: they must agree
    assert cfg["modules_in_block_to_quantize"] == [list(packed)]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (Path(tiny_qwen_gptq) / name).is_file(), name
    assert not [p for p in Path(tiny_qwen_gptq).parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_require_gptq_says_how_to_install(monkeypatch):
    import importlib.util

    from tunekit.arguments import ArgumentError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gptqmodel" else real(n, *a))
    with pytest.raises(ArgumentError, match=r"pip install -r requirements-gptq\.txt"):
        require_gptq()
    with pytest.raises(ArgumentError, match="gptqmodel"):
        gptq_load_kwargs({"quant_method": "gptq", "bits": 4}, on_gpu=False)


# ------------------------------------------------------------------------------------------------ loading, training
@needs_gptq
def test_load_kwargs():
    cpu = gptq_load_kwargs({"quant_method": "gptq", "bits": 4}, on_gpu=False)
    gpu = gptq_load_kwargs({"quant_method": "gptq", "bits": 4}, on_gpu=True)
    assert cpu["device_map"] == "cpu" and cpu["quantization_config"].backend == "gptq_torch"
    assert gpu["device_map"] == {"": 0} and gpu["quantization_config"].backend == "auto_trainable"


@needs_gptq
@pytest.mark.parametrize("label", ["gptq", "gptq_v2"])
def test_packed_logits_match_the_float_model(label, tiny_qwen, tiny_qwen_gptq, tmp_path):
    from transformers import AutoModelForCausalLM

    path = Path(tiny_qwen_gptq)
    if label != "gptq":  # v1 tensors labelled v2: loads without error, every weight one step off
        path = Path(shutil.copytree(path, tmp_path / "mislabelled"))
        cfg = json.loads((path / "config.json").read_text())
        cfg["quantization_config"].update(checkpoint_format=label, format=label)
        (path / "config.json").write_text(json.dumps(cfg))
    ref = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32)
    model = load_gptq(str(path))
    assert check_trainable_kernels(model) == {"TorchLinear"}
    ids = probe_ids(ref.config.vocab_size)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(ref(ids).logits.flatten(), model(ids).logits.flatten(), dim=0)
    print(f"logits cosine, {label} label: {cos:.4f}")
    if label == "gptq":
        # measured 0.914 (RTN, group 32; q/k/v/o packed) on the tiny model's initializer_range 0.2, whose large
        # random weights amplify 4-bit rounding (0.9967 at 0.02)
        assert cos >= 0.85, cos
    else:
        assert cos < 0.6, cos  # measured 0.34: one step off everywhere, so the check above can fail


def train_three_steps(path, backend, generate_first):
    """LoRA on every projection, 3 AdamW steps on one batch: (losses, first-step grad of layer 0's q_proj lora_B,
    quantized tensors before, after, lora_B before, after, kernel names)."""
    from peft import LoraConfig, get_peft_model

    model = load_gptq(path, backend)
    kernels = {type(m).__name__ for m in model.modules() if hasattr(m, "qweight")}
    ids = probe_ids(model.config.vocab_size)
    if generate_first:  # a sample generation before training (eval, no grad): pitfalls #41
        model.eval()
        model.generate(ids[:1, :8], max_new_tokens=2, do_sample=False)
    quant = {n: t.clone() for n, t in model.named_buffers() if n.rsplit(".", 1)[-1] in QUANT_BUFFERS}
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(LINEAR),
                                             task_type="CAUSAL_LM"))
    if backend == "gptq_torch":
        assert check_trainable_kernels(model) == {"TorchLinear"}  # also through PEFT's wrappers
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    first_b = next(n for n in lora_b if ".layers.0.self_attn.q_proj." in n)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses, grad0 = [], None
    for step in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if step == 0:
            grad0 = dict(model.named_parameters())[first_b].grad.clone()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    after = {n: t for n, t in model.named_buffers() if n.rsplit(".", 1)[-1] in QUANT_BUFFERS}
    after = {n.replace("base_model.model.", "", 1).replace(".base_layer", ""): t for n, t in after.items()}
    lora_after = {n: p.detach() for n, p in model.named_parameters() if "lora_B" in n}
    return losses, grad0, quant, after, lora_b, lora_after, kernels


@needs_gptq
def test_lora_trains_on_gptq_even_after_generate(tiny_qwen_gptq):
    runs = {first: train_three_steps(tiny_qwen_gptq, "gptq_torch", first) for first in (False, True)}
    for first, (losses, grad0, quant, after, lora_b, lora_after, kernels) in runs.items():
        assert kernels == {"TorchLinear"}
        assert losses[2] < losses[1] < losses[0], losses
        assert len(quant) == 4 * 4 * 2 and quant.keys() == after.keys()
        assert all(torch.equal(quant[n], after[n]) for n in quant), "a quantized tensor changed"
        assert len(lora_b) == 7 * 2 and all(not torch.equal(lora_b[n], lora_after[n]) for n in lora_b)
        assert grad0.abs().sum() > 0, f"generate_first={first}: no gradient reaches layer 0 (pitfalls #41)"
    # the eval-first forward changes nothing: the same first-step gradient as a model that skipped it
    assert torch.allclose(runs[False][1], runs[True][1], rtol=1e-4, atol=1e-7)


@needs_gptq
def test_auto_trainable_on_cpu_is_refused_and_why(tiny_qwen_gptq):
    """The trap that check_trainable_kernels guards: on CPU, backend="auto_trainable" picks TorchAtenLinear, which after
    an eval-first forward runs no_grad forever: loss still falls (LoRA of the last layers) but layer 0 gets nothing."""
    path = tiny_qwen_gptq
    model = load_gptq(path, "auto_trainable")
    with pytest.raises(RuntimeError, match="TorchAtenLinear"):
        check_trainable_kernels(model)
    del model
    losses, grad0, *_, kernels = train_three_steps(path, "auto_trainable", generate_first=True)
    assert kernels == {"TorchAtenLinear"}
    assert losses[2] < losses[0]
    assert grad0.abs().sum() == 0  # measured with gptqmodel 7.6.0; if this fails, the kernel was fixed
