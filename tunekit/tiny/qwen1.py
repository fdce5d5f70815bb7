"""A tiny random Qwen-1 checkpoint in the ORIGINAL QwenLM layout (config.json `model_type: qwen`, `transformer.h.N.
attn.c_attn.*`, `mlp.w1/w2/c_proj`, `qwen.tiktoken`), float or GPTQ-Int4 (v1 layout, round-to-nearest, fused c_attn
packed as one tensor as Qwen-1 *-Int4 ships it).  Config, weights and tokenizer files only: no code.

    python -m tunekit.tiny.qwen1 OUT [--gptq]
"""
from __future__ import annotations

import argparse
import base64
import json
import math
from pathlib import Path

import torch

from ..atomic import atomic_folder
from ..gptq import QUANT_BUFFERS
from .gptq import quantize_rtn

SHAPE = dict(hidden_size=64, num_attention_heads=4, intermediate_size=256, num_hidden_layers=2, seq_length=2048)
QUANTIZED = ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")


def train_tiktoken(out_file, vocab_size: int = 2000, texts=None) -> Path:
    """A small byte-level BPE trained with Qwen's split regex on data/, written as a qwen.tiktoken rank file."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from ..convert import corpus
    from . import DATA_DIR
    from ..convert.qwen import PAT_STR, _bytes_to_unicode

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(list(texts if texts is not None else corpus(DATA_DIR)), trainer)
    u2b = {u: b for b, u in _bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for merge in json.loads(tk.to_str())["model"]["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        token = bytes(u2b[c] for c in left + right)
        ranks.setdefault(token, len(ranks))
    out = Path(out_file)
    out.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return out


def original_config(n_ranks: int, **shape) -> dict:
    s = {**SHAPE, **shape}
    return {
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "attn_dropout_prob": 0.0, "bf16": False, "emb_dropout_prob": 0.0, "fp16": False, "fp32": False,
        "hidden_size": s["hidden_size"], "intermediate_size": s["intermediate_size"], "initializer_range": 0.02,
        "kv_channels": s["hidden_size"] // s["num_attention_heads"], "layer_norm_epsilon": 1e-06,
        "max_position_embeddings": s["seq_length"], "no_bias": True, "num_attention_heads": s["num_attention_heads"],
        "num_hidden_layers": s["num_hidden_layers"], "onnx_safe": None, "rotary_emb_base": 10000, "rotary_pct": 1.0,
        "scale_attn_weights": True, "seq_length": s["seq_length"], "tie_word_embeddings": False,
        "tokenizer_class": "QWenTokenizer", "transformers_version": "4.32.0", "use_cache": True,
        "use_dynamic_ntk": True, "use_flash_attn": "auto", "use_logn_attn": True,
        "vocab_size": math.ceil((n_ranks + 208) / 64) * 64}


def random_weights(cfg: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, v, f = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"] // 2

    def rnd(*size, std=0.2, mean=0.0):
        return torch.randn(*size, generator=g) * std + mean

    sd = {"transformer.wte.weight": rnd(v, h, std=1.0)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{n}."
        sd[p + "ln_1.weight"] = rnd(h, std=0.1, mean=1.0)
        sd[p + "attn.c_attn.weight"] = rnd(3 * h, h)
        sd[p + "attn.c_attn.bias"] = rnd(3 * h)
        sd[p + "attn.c_proj.weight"] = rnd(h, h, std=0.1)
        sd[p + "ln_2.weight"] = rnd(h, std=0.1, mean=1.0)
        sd[p + "mlp.w1.weight"] = rnd(f, h)
        sd[p + "mlp.w2.weight"] = rnd(f, h)
        sd[p + "mlp.c_proj.weight"] = rnd(h, f, std=0.1)
    sd["transformer.ln_f.weight"] = rnd(h, std=0.1, mean=1.0)
    sd["lm_head.weight"] = rnd(v, h)
    return sd


def build(out, gptq: bool = False, seed: int = 0, group_size: int = 32, **shape) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    with atomic_folder(out) as tmp:
        ranks = train_tiktoken(tmp / "qwen.tiktoken")
        cfg = original_config(len(ranks.read_text().splitlines()), **shape)
        state = random_weights(cfg, seed)
        if gptq:
            for n in range(cfg["num_hidden_layers"]):
                for m in QUANTIZED:
                    key = f"transformer.h.{n}.{m}"
                    parts = quantize_rtn(state.pop(f"{key}.weight"), group_size)
                    state.update({f"{key}.{p}": t for p, t in zip(QUANT_BUFFERS, parts)})
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}  # Int4 repos are fp16
            cfg["quantization_config"] = {"bits": 4, "group_size": group_size, "damp_percent": 0.01,
                                          "desc_act": False, "static_groups": False, "sym": True,
                                          "true_sequential": True, "model_name_or_path": None,
                                          "model_file_base_name": "model", "quant_method": "gptq"}
            cfg["fp16"] = True
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "model_max_length": 8192, "tokenizer_class": "QWenTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]}}, indent=2) + "\n")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--gptq", action="store_true")
    a = p.parse_args(argv)
    print(build(a.out, gptq=a.gptq))


if __name__ == "__main__":
    main()
