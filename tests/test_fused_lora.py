"""--fused_lora (tunekit/fused_lora.py): every plain LoRA layer as one autograd function gives the same loss and
gradients as PEFT's own forward (fp32, 1e-6), on llama, qwen2 (q/k/v biases) and glm, padded and packed, with and
without gradient checkpointing, combined with the tiled MLP and the async offload; on an NF4 base (bitsandbytes on
the CPU) too.  Layers it cannot fuse (dropout, DoRA, a disabled adapter, a merged one) run PEFT's forward."""
import pytest
import torch
from test_tiling_offload import ATOL, assert_same, batch, loss_and_grads, tiny

from tunekit.fused_lora import fuse_lora_layers
from tunekit.tiling import apply_tiled_mlp

LAYERS = 7 * 2  # q, k, v, o, gate, up, down (glm: qkv fused, gate_up fused: fewer) x 2 layers


def fused_count(model):
    return sum(hasattr(m, "_unfused_forward") for m in model.modules())


@pytest.mark.parametrize("family", ["llama", "qwen2", "glm"])
@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_fused_equals_peft(family, kind, checkpointing):
    plain = loss_and_grads(tiny(family, checkpointing=checkpointing), batch(kind))
    model = tiny(family, checkpointing=checkpointing)
    n = fuse_lora_layers(model)
    assert n == fused_count(model) >= (LAYERS if family != "glm" else 8)
    assert_same(plain, loss_and_grads(model, batch(kind)))


def test_fused_with_tiling_and_offload():
    plain = loss_and_grads(tiny("llama", checkpointing=True), batch("packed"))
    model = tiny("llama", checkpointing=True)
    fuse_lora_layers(model)
    apply_tiled_mlp(model, 7)
    # saved tensors through hooks (as --offload_activations does; the async one is CUDA only: test_tiling_offload)
    moved = []
    offload = torch.autograd.graph.saved_tensors_hooks(lambda t: moved.append(t) or t.clone(), lambda t: t)
    assert_same(plain, loss_and_grads(model, batch("packed"), offload))
    assert moved


def test_fused_reads_the_adapter_weights_it_trains():
    """An optimizer step through the fused path changes A and B, not the frozen base weights."""
    model = tiny("llama")
    fuse_lora_layers(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**batch("padded")).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == ("lora_" in n), n


def test_unfusable_layers_run_peft():
    assert fuse_lora_layers(tiny("llama", dropout=0.1)) == 0
    model = tiny("llama")
    fuse_lora_layers(model)
    inputs = batch("padded")
    with torch.no_grad():
        with model.disable_adapter():  # generation against the bare base: PEFT's forward, no adapter
            bare = model(**inputs).logits
        with_adapter = model(**inputs).logits
    reference = tiny("llama")
    with torch.no_grad():
        with reference.disable_adapter():
            assert torch.allclose(bare, reference(**inputs).logits, atol=ATOL)
        assert torch.allclose(with_adapter, reference(**inputs).logits, atol=ATOL)
    model.merge_adapter()  # merged: the base already holds the adapter
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, with_adapter, atol=1e-5)


def test_fused_on_nf4_base():
    """bitsandbytes NF4 on the CPU, fp32 compute: fused == PEFT's Linear4bit path."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig
    from test_tiling_offload import SHAPE

    def build():
        config = AutoConfig.for_model("llama", **{**SHAPE, "hidden_size": 64, "intermediate_size": 128},
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32)
            model = AutoModelForCausalLM.from_pretrained(d, quantization_config=q, dtype=torch.float32,
                                                         device_map={"": "cpu"})
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0,
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
        return model.train()

    plain = loss_and_grads(build(), batch("padded"))
    model = build()
    assert fuse_lora_layers(model) == LAYERS
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert_same(plain, loss_and_grads(model, batch("padded")))
