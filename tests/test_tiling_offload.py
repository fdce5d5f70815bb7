"""Issue 14's CPU groundwork: the tiled MLP (tunekit/tiling.py) gives the same loss and gradients as the plain model
(fp32, 1e-6), on padded and packed batches, with and without gradient checkpointing, with LoRA on every linear layer
(random A and B, so no gradient is zero by construction); the MLP intermediate never exists for more than chunk_tokens
tokens, forward or backward.  --offload_activations_async (TRL's OffloadActivations, CUDA only): the trainer enters it
once per step, a CPU run is refused, and on a GPU the numbers are those without it.  GPU speed and memory are not
measured here."""
import math
import types

import pytest
import torch
from conftest import cpu_flags

from tunekit.tiling import _run_chunked, apply_tiled_mlp, mlp_modules

ATOL = 1e-6
SHAPE = dict(vocab_size=96, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def tiny(family="llama", dropout=0.0, checkpointing=False):
    """A tiny random model of the family with LoRA on every linear layer (init_lora_weights=False: B is not zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, **SHAPE, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=dropout,
                                             init_lora_weights=False, task_type="CAUSAL_LM"))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model.train()


def batch(kind):
    """padded: (2, 29) with 6 pad tokens in row 1; packed: (1, 61), three samples, position ids restarting."""
    g = torch.Generator().manual_seed(1)
    if kind == "padded":
        ids = torch.randint(3, 96, (2, 29), generator=g)
        mask = torch.ones_like(ids)
        mask[1, -6:] = 0
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    lengths = (20, 25, 16)
    ids = torch.randint(3, 96, (1, sum(lengths)), generator=g)
    labels = ids.clone()
    for start in (0, 20, 45):  # a sample's first token is no target of the previous sample
        labels[0, start] = -100
    return {"input_ids": ids, "labels": labels,
            "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)}


def loss_and_grads(model, inputs, context=None):
    model.zero_grad()
    seed = torch.get_rng_state()
    if context is None:
        loss = model(**inputs).loss
    else:
        with context:
            loss = model(**inputs).loss
    loss.backward()
    torch.set_rng_state(seed)  # the next run draws the same dropout masks
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert torch.allclose(loss_a, loss_b, atol=ATOL, rtol=0), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and any(".mlp." in n and "lora_" in n for n in grads_a)
    for name, g in grads_a.items():
        assert g.abs().max() > 0, name  # not vacuous
        assert torch.allclose(g, grads_b[name], atol=ATOL, rtol=0), (name, (g - grads_b[name]).abs().max())


@pytest.mark.parametrize("family", ["llama", "qwen2", "glm"])
@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("chunk", [7, 16])  # neither divides 58 or 61 tokens
def test_tiled_mlp_same_loss_and_gradients(family, kind, chunk):
    inputs = batch(kind)
    plain = loss_and_grads(tiny(family), inputs)
    model = tiny(family)
    assert apply_tiled_mlp(model, chunk) == SHAPE["num_hidden_layers"]
    assert_same(plain, loss_and_grads(model, inputs))
    frozen = [n for n, p in model.named_parameters() if "mlp" in n and not p.requires_grad]
    assert frozen and all(dict(model.named_parameters())[n].grad is None for n in frozen)  # base weights: none


def test_the_mlp_intermediate_never_exists_whole():
    """Forward hooks on the activation see at most chunk_tokens tokens, in the forward and in the backward's
    recomputation; and no tensor saved for backward has the intermediate's width (the plain model saves several)."""
    inputs, chunk, seen = batch("packed"), 16, {"forward": [], "backward": []}
    phase = ["forward"]

    def widths_saved(model):
        widths = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: widths.append(t.shape[-1] if t.dim() else 0) or t,
                                                      lambda t: t):
            loss = model(**inputs).loss
        return loss, widths

    plain_loss, plain_widths = widths_saved(tiny())
    assert SHAPE["intermediate_size"] in plain_widths  # the check can fail
    model = tiny()
    apply_tiled_mlp(model, chunk)
    for mlp in mlp_modules(model):
        mlp.act_fn.register_forward_hook(lambda m, args, out: seen[phase[0]].append(args[0].shape[:-1].numel()))
    loss, widths = widths_saved(model)
    assert SHAPE["intermediate_size"] not in widths
    phase[0] = "backward"
    loss.backward()
    assert seen["forward"] and seen["backward"] and max(seen["forward"] + seen["backward"]) <= chunk
    assert sum(seen["backward"]) == SHAPE["num_hidden_layers"] * 61  # the backward recomputed every token once


def test_lora_dropout_masks_are_replayed_in_the_backward():
    """With dropout the backward's recomputation must draw the forward's masks: the reference is the same chunked
    forward with an ordinary graph (same random draws in the same order)."""
    inputs, chunk = batch("packed"), 7
    reference = tiny(dropout=0.3)
    apply_tiled_mlp(reference, chunk)
    for mlp in mlp_modules(reference):
        mlp.forward = types.MethodType(lambda self, x: _run_chunked(self._untiled_forward, x, chunk), mlp)
    model = tiny(dropout=0.3)
    apply_tiled_mlp(model, chunk)
    torch.manual_seed(5)
    expected = loss_and_grads(reference, inputs)
    torch.manual_seed(5)
    assert_same(expected, loss_and_grads(model, inputs))


def test_tiled_mlp_through_bitsandbytes_nf4_with_lora():
    bnb = pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    from torch import nn

    class TinyMLP(nn.Module):
        def __init__(self):
            super().__init__()
            kw = dict(bias=False, compute_dtype=torch.float32, quant_type="nf4")
            self.gate_proj, self.up_proj = bnb.nn.Linear4bit(32, 88, **kw), bnb.nn.Linear4bit(32, 88, **kw)
            self.down_proj, self.act_fn = bnb.nn.Linear4bit(88, 32, **kw), nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = TinyMLP()

        def forward(self, x):
            return (self.mlp(x) ** 2).mean()

    torch.manual_seed(0)
    net = Net().to("cpu")  # Params4bit quantizes on the move
    try:
        net(torch.randn(1, 3, 32))
    except Exception as e:  # a bitsandbytes build without a CPU 4-bit path
        pytest.skip(f"bitsandbytes 4-bit does not run on this CPU: {e}")
    net = get_peft_model(net, LoraConfig(r=4, target_modules=["gate_proj", "up_proj", "down_proj"],
                                         init_lora_weights=False))
    assert type(net.base_model.model.mlp.gate_proj.base_layer).__name__ == "Linear4bit"
    x = torch.randn(1, 50, 32)

    def run():
        net.zero_grad()
        xx = x.clone().requires_grad_(True)
        loss = net(xx)
        loss.backward()
        return loss.detach(), {"x": xx.grad, **{n: p.grad.clone() for n, p in net.named_parameters()
                                                 if p.grad is not None}}

    plain = run()
    apply_tiled_mlp(net, 7)
    tiled = run()
    assert torch.allclose(plain[0], tiled[0], atol=ATOL, rtol=0) and plain[1].keys() == tiled[1].keys()
    assert len(plain[1]) == 1 + 6  # x, and A and B of three layers; the 4-bit weights get none
    for name, g in plain[1].items():
        assert g.abs().max() > 0 and torch.allclose(g, tiled[1][name], atol=ATOL, rtol=0), name


class CountingOffload(torch.autograd.graph.save_on_cpu):
    """Stands in for TRL's context on the CPU (its own needs CUDA): saved tensors to host copies, entries counted."""

    def __init__(self):
        super().__init__(pin_memory=False)
        self.entered = self.packed = 0
        pack = self.pack_hook

        def counting(t):
            self.packed += 1
            return pack(t)
        self.pack_hook = counting

    def __enter__(self):
        self.entered += 1
        return super().__enter__()


def test_finetune_with_tiled_mlp_and_async_offload(tiny_llama2, guanaco_small, tmp_path, monkeypatch):
    """finetune.main end to end on the CPU: --tiled_mlp_tokens 16 (and --offload_activations_async) patch the model
    and train to a finite loss equal to the plain run's; the offload context is built once and entered each step."""
    import finetune
    import tunekit.training

    contexts = []

    def build(model):
        contexts.append(CountingOffload())
        return contexts[-1]

    monkeypatch.setattr(tunekit.training, "async_offload_context", build)
    monkeypatch.setattr("tunekit.preflight._cuda_count", lambda: 1)  # past the pre-flight's "needs a CUDA GPU"
    losses = {}
    for extra in ({}, {"tiled_mlp_tokens": 16, "offload_activations_async": True}):
        trainer = finetune.main([
            "--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--use_lora", "--lora_r", "8",
            "--lora_dropout", "0", *cpu_flags(tmp_path / f"out-{len(extra)}", max_steps=3, packing=True,
                                              gradient_checkpointing=True, **extra)])
        losses[bool(extra)] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        tiled = [m for m in mlp_modules(trainer.model) if "_untiled_forward" in vars(m)]
        assert len(tiled) == (2 if extra else 0)  # the tiny Llama-2's two decoder layers
    assert len(losses[True]) == 3 and all(math.isfinite(v) for v in losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert len(contexts) == 1 and contexts[0].entered == 3 and contexts[0].packed > 0  # one forward per step


def test_async_offload_on_a_cpu_is_one_error_line(tiny_llama2, guanaco_small, tmp_path, capsys, monkeypatch):
    import finetune
    from tunekit.errors import run_cli

    monkeypatch.setattr("tunekit.preflight._cuda_count", lambda: 0)
    code = run_cli(finetune.main, ["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--use_lora",
                                   *cpu_flags(tmp_path / "out", offload_activations_async=True)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--offload_activations_async" in err[0] and "CUDA" in err[0]
    assert not (tmp_path / "out").exists()


def test_negative_tiled_mlp_tokens_is_one_error_line(tiny_llama2, guanaco_small, tmp_path, capsys):
    import finetune
    from tunekit.errors import run_cli

    code = run_cli(finetune.main, ["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small,
                                   *cpu_flags(tmp_path / "out", tiled_mlp_tokens=-1)])
    assert code == 2 and "--tiled_mlp_tokens -1 must be >= 0" in capsys.readouterr().err


def test_tiled_mlp_with_zero3_is_refused_before_loading(tiny_llama2, guanaco_small, tmp_path):
    from conftest import ROOT, resolve

    from tunekit.errors import ArgumentError

    with pytest.raises(ArgumentError, match="--tiled_mlp_tokens is not supported with ZeRO-3"):
        resolve(["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--use_lora",
                 "--deepspeed", str(ROOT / "ds_configs" / "zero3.json"),
                 *cpu_flags(tmp_path / "out", tiled_mlp_tokens=16)])


def tracked_forward(model, inputs, context):
    """loss_and_grads under the context, also returning what it holds between the forward and the backward."""
    held = []
    forward = model.forward

    def spy(*args, **kw):
        out = forward(*args, **kw)
        held.extend(v[0] for v in context.tracker.values() if v[1])  # (host copy, offloaded?, ...) per saved tensor
        return out

    model.forward = spy
    try:
        return loss_and_grads(model, inputs, context), held
    finally:
        del model.forward


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream and pinned buffers need CUDA")
@pytest.mark.parametrize("fused", [False, True])
def test_offload_on_cuda_side_stream_same_numbers(fused):
    """On a GPU, --offload_activations_async's context (TRL's, as the trainer builds it) with the tiled MLP (and fused
    LoRA): pinned host copies of the layer inputs, and the numbers without offload (tensors big enough that a missing
    stream synchronisation would show as wrong gradients)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunekit.fused_lora import fuse_lora_layers
    from tunekit.training import async_offload_context

    torch.backends.cuda.matmul.allow_tf32 = False
    shape = dict(SHAPE, hidden_size=256, intermediate_size=688, num_hidden_layers=4, vocab_size=512)
    config = AutoConfig.for_model("llama", **shape, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    ids = torch.randint(3, 512, (1, 4096), generator=torch.Generator().manual_seed(1)).cuda()
    inputs = {"input_ids": ids, "labels": ids}
    runs = []
    for offload in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).cuda()
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        apply_tiled_mlp(model, 1000)
        if fused:
            fuse_lora_layers(model)
        if offload:
            context = async_offload_context(model)
            for _ in range(2):  # reused every step, as the trainer does
                result, held = tracked_forward(model.train(), inputs, context)
            runs.append(result)
        else:
            runs.append(loss_and_grads(model.train(), inputs))
    assert_same(*runs)
    inputs_held = [t for t in held if tuple(t.shape) == (1, 4096, shape["hidden_size"])]
    assert len(inputs_held) >= shape["num_hidden_layers"] and all(t.device.type == "cpu" and t.is_pinned()
                                                                  for t in inputs_held)


def test_tiling_survives_the_trainers_liger_patch(tiny_llama2, guanaco_small, tmp_path, monkeypatch):
    """--use_liger_kernel: the Trainer rebinds every MLP instance's forward to LigerSwiGLUMLP's after the model is
    built, which silently dropped the tiling on the GPU (a 500k-token step then held the whole (tokens x
    intermediate) activations, 40 GiB more).  A stand-in for that patch (Liger's kernels need CUDA) must leave the MLPs
    tiled around the forward it installed, and training must never see more than the chunk at once."""
    import transformers.trainer

    import finetune
    from tunekit.tiling import _tiled_forward

    patched, seen = [], []

    def like_liger(model, config):  # liger_kernel's _apply_liger_kernel_to_instance binds a new forward per MLP
        for mlp in mlp_modules(model):
            mlp.forward = types.MethodType(lambda self, x: self.down_proj(
                torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x)), mlp)
            patched.append(mlp.forward)
            mlp.gate_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1].numel()))

    monkeypatch.setattr(transformers.trainer, "apply_liger_kernel", like_liger)
    monkeypatch.setattr("tunekit.preflight._cuda_count", lambda: 1)  # past the pre-flight's "Liger needs CUDA"
    trainer = finetune.main([
        "--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--use_lora", "--lora_r", "8",
        "--lora_dropout", "0", *cpu_flags(tmp_path / "out", max_steps=2, packing=True, gradient_checkpointing=True,
                                          tiled_mlp_tokens=16, use_liger_kernel=True)])
    mlps = mlp_modules(trainer.model)
    assert len(patched) == len(mlps) == 2
    for mlp, liger_forward in zip(mlps, patched):
        assert mlp.forward.__func__ is _tiled_forward and mlp._untiled_forward is liger_forward
    assert seen and max(seen) <= 16 and sum(seen) > 2 * 16  # packed rows of >16 tokens, cut into chunks
