"""--attn_implementation varlen (tunekit/attention.py): the plumbing on CPU with a reference kernel standing in for
PyTorch's CUDA-only varlen flash attention, and the real kernel on a GPU."""
import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_flags
from test_packing import loss_and_grads, packed, padded, tiny_model_and_samples

from tunekit import attention


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), is_causal=False, enable_gqa=False,
                     scale=None):
    """What the kernel computes, per sample: causal attention over [tokens, heads, dim] slices."""
    assert window_size == (-1, 0) or is_causal, "called without causal masking"
    assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and int(cu_q[-1]) == q.shape[0]
    assert max_q == max(int(b - a) for a, b in zip(cu_q, cu_q[1:]))
    out = []
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
        out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=enable_gqa,
                                                  scale=scale).transpose(0, 1))
    return torch.cat(out)


@pytest.mark.parametrize("signature", [("window_size", "enable_gqa", "scale"), ("is_causal",)])  # torch 2.11+, 2.10
@pytest.mark.parametrize("family,data_file", [("llama2", "llama2_guanaco.jsonl"), ("qwen", "qwen_conversations.json")])
def test_varlen_packed_loss_and_gradients_equal_padded(monkeypatch, signature, family, data_file, tiny_llama2,
                                                        tiny_qwen):
    monkeypatch.setattr(attention, "_varlen", lambda: (reference_varlen, set(signature)))
    attention.register()
    path = tiny_llama2 if family == "llama2" else tiny_qwen
    model, tok, samples = tiny_model_and_samples(path, family, data_file, attn="sdpa")
    loss_pad, grads_pad = loss_and_grads(model, padded(tok, samples))
    model.set_attn_implementation("varlen")
    calls = []
    monkeypatch.setattr(attention, "_varlen", lambda: (lambda *a, **k: calls.append(1) or reference_varlen(*a, **k),
                                                       set(signature)))
    loss_var, grads_var = loss_and_grads(model, packed(samples, varlen=True))
    assert len(calls) == model.config.num_hidden_layers  # every layer went through the varlen function
    assert torch.allclose(loss_var, loss_pad, atol=1e-5, rtol=0), (loss_var, loss_pad)
    assert grads_pad.keys() == grads_var.keys()
    for name, g in grads_pad.items():
        assert torch.allclose(grads_var[name], g, atol=1e-5, rtol=1e-4), name


def test_varlen_without_packing_metadata_is_a_clear_error(monkeypatch, tiny_llama2):
    monkeypatch.setattr(attention, "_varlen", lambda: (reference_varlen, {"window_size"}))
    attention.register()
    model, tok, samples = tiny_model_and_samples(tiny_llama2, "llama2", "llama2_guanaco.jsonl")
    model.set_attn_implementation("varlen")
    with pytest.raises(RuntimeError, match="needs packed batches"):
        model(**packed(samples))


def test_collator_cumulative_lengths():
    batch = packed([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}],
                   varlen=True)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k"):  # the names and dtype tunekit/attention.py reads
        assert batch[key].tolist() == [0, 3, 5] and batch[key].dtype == torch.int32, key
    assert batch["max_length_q"] == batch["max_length_k"] == 3 and isinstance(batch["max_length_q"], int)
    assert "cu_seq_lens_q" not in packed([{"input_ids": [5], "labels": [5]}])


def test_varlen_is_refused_without_packing_or_cuda(tiny_llama2, guanaco_small, tmp_path):
    import finetune
    from tunekit.arguments import ArgumentError

    with pytest.raises(ArgumentError, match="varlen needs --packing true and a CUDA GPU"):
        finetune.main(["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--use_lora",
                       *cpu_flags(tmp_path / "out", attn_implementation="varlen", packing=False)])


def test_varlen_on_a_pre_ampere_gpu_is_refused_with_the_reason(monkeypatch):
    from tunekit.preflight import ArgumentError, check_varlen

    monkeypatch.setattr("tunekit.preflight._cuda_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(ArgumentError, match="Ampere or newer GPU.*Tesla T4 is sm75: use sdpa"):
        check_varlen(packing=True)
    with pytest.raises(ArgumentError, match="needs --packing true"):
        check_varlen(packing=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: PyTorch's varlen attention is flash attention")
def test_varlen_kernel_matches_padded_sdpa_on_gpu(tiny_llama2, monkeypatch):
    """bf16 on the GPU: the real kernel's packed loss equals padded SDPA's within bf16 noise, gradients too."""
    real, params = attention._varlen()
    calls = []
    monkeypatch.setattr(attention, "_varlen", lambda: (lambda *a, **k: calls.append(1) or real(*a, **k), params))
    attention.register()
    model, tok, samples = tiny_model_and_samples(tiny_llama2, "llama2", "llama2_guanaco.jsonl")
    model = model.to("cuda", torch.bfloat16)
    to_gpu = lambda batch: {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}  # noqa: E731
    loss_pad, grads_pad = loss_and_grads(model, to_gpu(padded(tok, samples)))
    model.set_attn_implementation("varlen")
    loss_var, grads_var = loss_and_grads(model, to_gpu(packed(samples, varlen=True)))
    assert len(calls) == model.config.num_hidden_layers  # the real kernel ran in every layer
    print("bf16 losses (padded sdpa, packed varlen):", float(loss_pad), float(loss_var))
    assert abs(float(loss_var) - float(loss_pad)) < 1e-2 * abs(float(loss_pad)), (loss_var, loss_pad)
    cos = [F.cosine_similarity(grads_var[n].float().flatten(), g.float().flatten(), dim=0) for n, g in grads_pad.items()
           if g.abs().sum() > 0]
    assert min(cos) > 0.99, min(cos)


def test_varlen_on_converted_chatglm2_equals_padded(monkeypatch, tmp_path):
    """The chatglm2 recipes default to varlen too: the converted glm model (2 KV groups, partial rotary) gives the same
    packed loss and gradients through the varlen path as padded SDPA (reference kernel, fp32, CPU)."""
    from test_chatglm2 import build_original, convert
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(attention, "_varlen", lambda: (reference_varlen, {"window_size", "enable_gqa", "scale"}))
    attention.register()
    native = convert(build_original(tmp_path / "original"), tmp_path / "native")
    model = AutoModelForCausalLM.from_pretrained(native, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model.train()
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    g = torch.Generator().manual_seed(0)
    samples = [{"input_ids": ids, "labels": ids} for ids in
               (torch.randint(3, 200, (n,), generator=g).tolist() for n in (9, 17, 5, 12))]
    loss_pad, grads_pad = loss_and_grads(model, padded(AutoTokenizer.from_pretrained(native), samples))
    model.set_attn_implementation("varlen")
    calls = []
    monkeypatch.setattr(attention, "_varlen", lambda: (lambda *a, **k: calls.append(1) or reference_varlen(*a, **k),
                                                       {"window_size", "enable_gqa", "scale"}))
    loss_var, grads_var = loss_and_grads(model, packed(samples, varlen=True))
    assert len(calls) == model.config.num_hidden_layers
    assert torch.allclose(loss_var, loss_pad, atol=1e-5, rtol=0), (loss_var, loss_pad)
    for name, grad in grads_pad.items():
        assert torch.allclose(grads_var[name], grad, atol=1e-5, rtol=1e-4), name
