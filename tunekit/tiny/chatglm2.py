"""The embedded ChatGLM2 default: a tiny random checkpoint in the ORIGINAL THUDM layout (config.json with
`model_type: chatglm`, `transformer.encoder.layers.N.self_attention.query_key_value.*` weights, tokenizer.model), as
the original code would load it, plus a tiny SentencePiece model trained offline from data/ with ChatGLM2's
tokenizer settings.  No remote code is written or run: only config, weights and tokenizer files.

    python -m tunekit.tiny.chatglm2 [--original_only] [--bin]    # builds (cached), converts, prints the native folder
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch

from ..atomic import atomic_folder

SHAPE = dict(hidden_size=64, num_attention_heads=4, multi_query_group_num=2, kv_channels=16, ffn_hidden_size=128,
             num_layers=2, seq_length=2048)


# ChatGLM2-6B's shape (the vocabulary rows past the tiny tokenizer's are simply never used).
CHATGLM2_6B = dict(hidden_size=4096, num_attention_heads=32, multi_query_group_num=2, kv_channels=128,
                   ffn_hidden_size=13696, num_layers=28, seq_length=32768, padded_vocab_size=65024)


# ChatGLM2's tokenizer.model settings: BPE, byte fallback (bytes at ids 3..258, so "\n" is <0x0A> = 13), a dummy
# prefix, no normalization and no whitespace folding, digits split, ids 0/1/2 = <unk>/<s>/</s>, no pad piece.
SP_SETTINGS = dict(model_type="bpe", byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
                   remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=0.9995, max_sentencepiece_length=16)


def train_tiny(out_file, vocab_size: int = 3000, texts=None) -> Path:
    """Train a small SentencePiece model with ChatGLM2's settings on the texts in data/ (deterministic, offline)."""
    import io

    from ..convert import corpus
    from . import DATA_DIR
    from ..convert.chatglm2_tokenizer import _sentencepiece

    spm = _sentencepiece()

    lines = [line for text in (texts if texts is not None else corpus(DATA_DIR)) for line in text.split("\n") if line.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size,
                                   hard_vocab_limit=False, num_threads=1, input_sentence_size=0,
                                   shuffle_input_sentence=False, minloglevel=2, **SP_SETTINGS)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return out


def original_config(sp_vocab: int, **shape) -> dict:
    s = {**SHAPE, **shape}
    # room for the ChatGLM3 specials too, like 64789 -> 65024
    padded = s.get("padded_vocab_size") or math.ceil((sp_vocab + 9) / 64) * 64
    return {
        "_name_or_path": "tiny-random-chatglm2", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0, "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True, "eos_token_id": 2, "ffn_hidden_size": s["ffn_hidden_size"],
        "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": s["hidden_size"],
        "kv_channels": s["kv_channels"], "layernorm_epsilon": 1e-05, "multi_query_attention": True,
        "multi_query_group_num": s["multi_query_group_num"], "num_attention_heads": s["num_attention_heads"],
        "num_layers": s["num_layers"], "original_rope": True, "pad_token_id": 0, "padded_vocab_size": padded,
        "post_layer_norm": True, "pre_seq_len": None, "prefix_projection": False, "quantization_bit": 0,
        "rmsnorm": True, "seq_length": s["seq_length"], "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.30.2", "use_cache": True, "vocab_size": padded}


def random_weights(cfg: dict, seed: int = 0, dtype=torch.float32, device: str = "cpu") -> dict:
    """Seeded random tensors under the original names (norm weights near 1, biases small, inv_freq as ChatGLM2);
    drawn on `device` (a GPU for a 6B shape), returned on the CPU."""
    g = torch.Generator(device=device).manual_seed(seed)
    h, f, v = cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["padded_vocab_size"]
    q = cfg["num_attention_heads"] * cfg["kv_channels"]
    kv = cfg["multi_query_group_num"] * cfg["kv_channels"]

    def rnd(*size, std=0.02, mean=0.0):
        return (torch.randn(*size, generator=g, device=device) * std + mean).to(dtype).cpu()

    wide, ffn = (64 / h) ** 0.5, (128 / f) ** 0.5  # 1 for the tiny shape; keeps a 6B shape's activations sane
    rot = cfg["kv_channels"] // 2
    sd = {"transformer.embedding.word_embeddings.weight": rnd(v, h, std=1.0),
          "transformer.rotary_pos_emb.inv_freq":
              1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)).to(dtype)}
    for n in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{n}."
        sd[p + "input_layernorm.weight"] = rnd(h, std=0.1, mean=1.0)
        sd[p + "self_attention.query_key_value.weight"] = rnd(q + 2 * kv, h, std=0.2 * wide)
        sd[p + "self_attention.query_key_value.bias"] = rnd(q + 2 * kv, std=0.2)
        sd[p + "self_attention.dense.weight"] = rnd(h, q, std=0.1 * wide)
        sd[p + "post_attention_layernorm.weight"] = rnd(h, std=0.1, mean=1.0)
        sd[p + "mlp.dense_h_to_4h.weight"] = rnd(2 * f, h, std=0.2 * wide)
        sd[p + "mlp.dense_4h_to_h.weight"] = rnd(h, f, std=0.1 * ffn)
    sd["transformer.encoder.final_layernorm.weight"] = rnd(h, std=0.1, mean=1.0)
    sd["transformer.output_layer.weight"] = rnd(v, h, std=0.2 * wide)
    return sd


def build_original(out, seed: int = 0, fmt: str = "safetensors", tokenizer_model=None, dtype=torch.float32,
                   device: str = "cpu", **shape) -> Path:
    """Write a tiny original-layout ChatGLM2 folder (weights as safetensors, or pickled .bin shards like THUDM's)."""
    from safetensors.torch import save_file

    from ..convert.chatglm2_tokenizer import SPTokenizer

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    with atomic_folder(out) as tmp:
        if tokenizer_model:
            shutil.copy2(tokenizer_model, tmp / "tokenizer.model")
        else:
            train_tiny(tmp / "tokenizer.model")
        cfg = original_config(SPTokenizer(tmp / "tokenizer.model").n_words, **shape)
        state = random_weights(cfg, seed, dtype, device)
        cfg["torch_dtype"] = str(dtype).replace("torch.", "")
        if fmt == "safetensors":
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:  # two pickled shards + index, the layout THUDM/chatglm2-6b ships
            names = list(state)
            half = len(names) // 2
            weight_map = {}
            for i, part in enumerate((names[:half], names[half:]), 1):
                fname = f"pytorch_model-0000{i}-of-00002.bin"
                torch.save({k: state[k] for k in part}, tmp / fname)
                weight_map.update({k: fname for k in part})
            (tmp / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "name_or_path": "tiny-random-chatglm2", "remove_space": False, "do_lower_case": False,
            "tokenizer_class": "ChatGLMTokenizer", "padding_side": "left",
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}, indent=2) + "\n")
    return out


def default_original() -> Path:
    from . import default_dir

    d = default_dir("chatglm2")
    return d.with_name(d.name + "-original")


def build_default() -> Path:
    """The original-layout tiny checkpoint (cached) converted to native glm (cached): what the recipes train."""
    from ..convert.chatglm2 import convert
    from . import default_dir

    return convert(build_original(default_original()), default_dir("chatglm2"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original_only", action="store_true", help="print the original-layout folder, do not convert")
    p.add_argument("--out", help="with --original_only: where to write it")
    p.add_argument("--bin", action="store_true", help="with --original_only: pickled .bin shards, not safetensors")
    a = p.parse_args(argv)
    if a.original_only:
        print(build_original(a.out or default_original(), fmt="bin" if a.bin else "safetensors"))
    else:
        print(build_default())


if __name__ == "__main__":
    main()
