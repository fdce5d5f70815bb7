"""Qwen-1 original layout -> native qwen2: a clean-room Qwen-1 reference forward (written here from the architecture
spec) against the converted Qwen2ForCausalLM (float, 1e-5) and against a converted GPTQ-Int4 checkpoint (the original's
dequantized weights, 1e-4); tiktoken ids; refusals; the recipe launcher converting a Qwen-1 folder first."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from test_chatglm2_tokenizer import mixed_lines
from tunekit.convert.chatglm2 import load_weights
from tunekit.convert.qwen import (ConversionError, QwenTiktoken, check_against_tiktoken, convert, export_fast,
                                  to_qwen2)
from tunekit.tiny.qwen1 import build


def reference_logits(sd: dict, cfg: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """Qwen-1 in fp32 from the spec: RMSNorm pre-norm blocks; c_attn = [Q|K|V] with bias; full rotary in halves
    (rotate_half), base rotary_emb_base; causal softmax(QK^T/sqrt(d)); c_proj without bias; MLP c_proj(w1(x) *
    silu(w2(x))); untied lm_head.  (Dynamic NTK / log-n scaling only act beyond seq_length: not exercised.)"""
    sd = {k: v.float() for k, v in sd.items()}
    heads, hidden, eps = cfg["num_attention_heads"], cfg["hidden_size"], cfg["layer_norm_epsilon"]
    d = hidden // heads
    h = sd["transformer.wte.weight"][input_ids]
    b, s, _ = h.shape
    freqs = torch.arange(s, dtype=torch.float32)[:, None] / cfg["rotary_emb_base"] ** (torch.arange(0, d, 2).float() / d)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos()[None, :, None], emb.sin()[None, :, None]

    def rope(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    causal = torch.ones(s, s, dtype=torch.bool).triu(1)
    for n in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{n}."
        x = rms(h, sd[p + "ln_1.weight"])
        q, k, v = (x @ sd[p + "attn.c_attn.weight"].T + sd[p + "attn.c_attn.bias"]).split(hidden, dim=-1)
        q, k, v = (t.view(b, s, heads, d) for t in (q, k, v))
        q, k = rope(q), rope(k)
        attn = (torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)).masked_fill(causal, float("-inf")).softmax(-1)
        h = h + torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, s, hidden) @ sd[p + "attn.c_proj.weight"].T
        x = rms(h, sd[p + "ln_2.weight"])
        inner = (x @ sd[p + "mlp.w1.weight"].T) * torch.nn.functional.silu(x @ sd[p + "mlp.w2.weight"].T)
        h = h + inner @ sd[p + "mlp.c_proj.weight"].T
    return rms(h, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T


def dequantize(sd: dict, bits: int = 4) -> dict:
    """GPTQ v1 tensors -> float weights: W[o, i] = scales[g_idx[i], o] * (q[i, o] - (zero[g, o] + 1)), where q packs
    32/bits input rows per int32 of qweight (low bits first) and zero packs 32/bits outputs per int32 of qzeros."""
    out, per, mask = {}, 32 // bits, (1 << bits) - 1
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    for key in [k for k in sd if k.endswith(".qweight")]:
        m = key[: -len(".qweight")]
        qw, qz, sc, g = sd[m + ".qweight"], sd[m + ".qzeros"], sd[m + ".scales"], sd[m + ".g_idx"].long()
        q = ((qw.unsqueeze(1) >> shifts.view(1, per, 1)) & mask).reshape(-1, qw.shape[1])
        z = ((qz.unsqueeze(-1) >> shifts.view(1, 1, per)) & mask).reshape(qz.shape[0], -1) + 1
        out[m + ".weight"] = ((q - z[g]).float() * sc[g].float()).t()
    out.update({k: v for k, v in sd.items() if k.rsplit(".", 1)[-1] not in ("qweight", "qzeros", "scales", "g_idx")})
    return out


@pytest.fixture(scope="module")
def qwen1(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen1")
    src = build(root / "original")
    return src, convert(src, root / "native")


@pytest.fixture(scope="module")
def qwen1_gptq(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen1gptq")
    src = build(root / "original", gptq=True)
    return src, convert(src, root / "native")


def ids_for(cfg, seed=1):
    return torch.randint(0, cfg["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(seed))


def test_converted_qwen2_matches_qwen1_reference(qwen1):
    from transformers import Qwen2ForCausalLM

    src, out = qwen1
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["model_type"] == "qwen" and not list(src.glob("*.py"))
    ids = ids_for(cfg)
    want = reference_logits(load_weights(src), cfg, ids)
    model = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert want.abs().max() > 1 and (got - want).abs().max().item() < 1e-5
    ncfg = json.loads((out / "config.json").read_text())
    assert ncfg["intermediate_size"] == cfg["intermediate_size"] // 2 and ncfg["max_position_embeddings"] == 2048


@pytest.mark.parametrize("mutation", ["qk_swapped", "gate_up_swapped"])
def test_qwen_parity_check_catches_conversion_bugs(qwen1, mutation):
    from transformers import AutoConfig, Qwen2ForCausalLM

    src, out = qwen1
    cfg = json.loads((src / "config.json").read_text())
    native = to_qwen2(load_weights(src), cfg)
    group, a, b = ("self_attn", "q_proj", "k_proj") if mutation == "qk_swapped" else ("mlp", "gate_proj", "up_proj")
    for n in range(cfg["num_hidden_layers"]):
        for part in ("weight", "bias"):
            ka, kb = f"model.layers.{n}.{group}.{a}.{part}", f"model.layers.{n}.{group}.{b}.{part}"
            if ka in native:
                native[ka], native[kb] = native[kb], native[ka]
    model = Qwen2ForCausalLM(AutoConfig.from_pretrained(out)).float().eval()
    model.load_state_dict(native)
    ids = ids_for(cfg)
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - reference_logits(load_weights(src), cfg, ids)).abs().max().item()
    assert diff > 1e-2


def test_gptq_int4_converts_and_matches_dequantized_original(qwen1_gptq):
    from transformers import AutoConfig, Qwen2ForCausalLM

    src, out = qwen1_gptq
    cfg = json.loads((src / "config.json").read_text())
    orig = load_weights(src)
    assert orig["transformer.h.0.attn.c_attn.qweight"].shape == (cfg["hidden_size"] // 8, 3 * cfg["hidden_size"])
    native = load_weights(out)
    h = cfg["hidden_size"]
    assert native["model.layers.0.self_attn.q_proj.qweight"].shape == (h // 8, h)
    assert native["model.layers.0.self_attn.k_proj.qzeros"].shape == (h // 32, h // 8)
    ids = ids_for(cfg, seed=2)
    want = reference_logits(dequantize(orig), cfg, ids)
    # the converted tensors, dequantized by the same formula, in a float Qwen2ForCausalLM
    config = AutoConfig.from_pretrained(out)
    config.quantization_config = None
    model = Qwen2ForCausalLM(config).float().eval()
    model.load_state_dict(dequantize(native))
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert (got - want).abs().max().item() < 1e-4
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq" and qc["bits"] == 4


def test_gptq_checkpoint_loads_through_the_gptq_kernel(qwen1_gptq):
    """The converted Int4 folder loads through transformers' GPTQ path (what the Q-LoRA GPTQ branch trains on) and its
    kernel reproduces the dequantized original's logits to the kernel's fp16 arithmetic (measured: 5.7e-3 on logits
    of ~4; the exact 1e-4 check of the conversion itself is the test above)."""
    pytest.importorskip("gptqmodel")
    pytest.importorskip("optimum")
    from transformers import AutoModelForCausalLM, GPTQConfig

    src, out = qwen1_gptq
    cfg = json.loads((src / "config.json").read_text())
    ids = ids_for(cfg, seed=2)
    want = reference_logits(dequantize(load_weights(src)), cfg, ids)
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float32,
                                                 quantization_config=GPTQConfig(bits=4, backend="gptq_torch")).eval()
    assert hasattr(model.model.layers[0].self_attn.q_proj, "qweight")
    with torch.no_grad():
        got = model(input_ids=ids).logits.float()
    assert (got - want).abs().max().item() < 3e-3 * want.abs().max().item()


def test_tokenizer_ids_equal_tiktoken_and_mismatch_is_refused(qwen1, tmp_path):
    from transformers import AutoTokenizer

    src, out = qwen1
    tok, ref = AutoTokenizer.from_pretrained(out), QwenTiktoken(src / "qwen.tiktoken")
    lines = mixed_lines() + ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n你好<|im_end|>",
                             "caf\u0065\u0301 (NFC)", "\r\n\r\n  \t tabs\tand\u3000全角空格"]
    assert len(lines) >= 300
    for line in lines:
        assert tok(line, add_special_tokens=False)["input_ids"] == ref.encode(line), line
        assert tok.decode(ref.encode(line)) == __import__("unicodedata").normalize("NFC", line), line
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == \
        [len(ref.ranks), len(ref.ranks) + 1, len(ref.ranks) + 2]
    # a vocabulary altered (two ranks swapped) gives other ids than the user's qwen.tiktoken: refused
    rows = (src / "qwen.tiktoken").read_text().splitlines()
    t300, t301 = rows[300].split()[0], rows[301].split()[0]
    rows[300], rows[301] = f"{t301} 300", f"{t300} 301"
    (tmp_path / "qwen.tiktoken").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConversionError, match="differs from tiktoken"):
        check_against_tiktoken(export_fast(tmp_path / "qwen.tiktoken"), src / "qwen.tiktoken", lines)


@pytest.mark.parametrize("change,message", [({"rotary_pct": 0.5}, "partial rotary"), ({"no_bias": False}, "biases"),
                                            ({"model_type": "qwen2"}, "already 'qwen2'")])
def test_refusals_say_why(qwen1, tmp_path, change, message):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(qwen1[0], src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(change)
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "out")


def test_qwen_recipe_converts_a_qwen1_folder_first(qwen1, tmp_path):
    """`make qwen-qlora MODEL=<Qwen-1 folder>`: the launcher converts (cached) and trains the converted folder."""
    env = dict(os.environ, DRY_RUN="1", MODEL=str(qwen1[0]), PYTHON=sys.executable, GPUS_PER_NODE="1")
    r = subprocess.run(["bash", "recipes/qwen/train.sh", "qlora"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    model = r.stdout.split("--model_name_or_path ")[1].split(" --output_dir")[0]
    assert "-qwen2-" in model and json.loads((ROOT / model / "config.json").read_text())["model_type"] == "qwen2"


def test_qwen1_int4_trains_lora_through_the_gptq_branch(qwen1_gptq, tmp_path):
    """A converted Qwen-1 Int4 folder is a GPTQ qwen2 checkpoint: --q_lora trains LoRA on it as it is."""
    pytest.importorskip("gptqmodel")
    pytest.importorskip("optimum")
    from safetensors.torch import load_file

    from conftest import DATA, cpu_flags
    from finetune import main

    src, out = qwen1_gptq
    trainer = main(["--model_name_or_path", str(out), "--data_path", str(DATA / "qwen_conversations.json"),
                    "--use_lora", "--q_lora", "--max_samples", "8", *cpu_flags(tmp_path / "o", max_steps=2)])
    assert trainer.state.global_step == 2 and (Path(trainer.args.output_dir) / "run_summary.json").is_file()
    adapter = load_file(tmp_path / "o" / "adapter_model.safetensors")
    assert any("q_proj.lora_B" in k for k in adapter) and all("qweight" not in k for k in adapter)


def test_forth_and_back_is_bit_exact(qwen1, tmp_path):
    from tunekit.convert.qwen import reverse

    src, out = qwen1
    back = reverse(out, tmp_path / "back", original=out)
    a, b = load_weights(src), load_weights(back)
    assert sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert json.loads((back / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    assert '"rotary_emb_base": 10000,' in (back / "config.json").read_text()
    assert (back / "qwen.tiktoken").read_bytes() == (src / "qwen.tiktoken").read_bytes()
