"""ChatGLM2/ChatGLM3 checkpoint (original THUDM layout, `model_type: chatglm`) <-> transformers' native `glm`
(`GlmForCausalLM`), exact both ways, without running the checkpoint's code.

    python -m tunekit.convert SRC [OUT]                  # prints OUT (default .cache/converted/<name>-<hash>)
    python -m tunekit.convert --reverse NATIVE OUT --original SRC_OR_CONVERTED

Weights: `query_key_value` rows are [Q | K | V] = [heads*kv_channels | groups*kv_channels | groups*kv_channels] and
split into q/k/v_proj (weights and biases); `dense_h_to_4h` is already [gate | up] = `gate_up_proj`; the rest is a
rename; `rotary_pos_emb.inv_freq` is dropped (glm recomputes it; its values are kept in tunekit_conversion.json so the
reverse conversion restores them bit for bit).  Rotary: ChatGLM2 rotates the first kv_channels/2 dims of each head as
interleaved pairs (2i, 2i+1), which is glm's `partial_rotary_factor` 0.5.  The tensor dtype found is kept.

Refused, with the reason: ChatGLM-6B (v1), P-tuning v2 prefixes, THUDM int4/int8 checkpoints, RoPE-scaled -32k/-128k
variants (chatglm2-6b-32k scales positions, chatglm3-6b-32k the base, and config.json cannot tell them apart), and
any setting glm cannot represent (LayerNorm, linear biases, NeoX-style rotary, ...).

The result is cached: a folder whose tunekit_conversion.json records the same source fingerprint is reused.  Output
is written to a temporary sibling folder and renamed when complete.  With a tokenizer.model in SRC the folder gets a
fast tokenizer only if it gives sentencepiece's ids on a mixed Chinese/English check corpus (tunekit/convert/chatglm2_tokenizer.py).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..atomic import atomic_folder
from ..errors import ConversionError
from . import (RECORD, check_model_type, check_shapes, copy_side_files, default_out, is_cached, load_weights,
               read_config, rename_native, renamed, save_weights, source_fingerprint, write_native)

ORIGINAL_FILES = "chatglm_original"  # subfolder of the converted model: the source's config/tokenizer/code files
ROPE_THETA = 10000.0

# ChatGLM2 config.json settings glm can represent, with why a different value is refused.
REQUIRED = {
    "rmsnorm": (True, "LayerNorm blocks (rmsnorm false) have no glm equivalent"),
    "add_bias_linear": (False, "biases on dense/MLP layers (add_bias_linear true) have no glm equivalent"),
    "apply_residual_connection_post_layernorm": (False, "post-layernorm residuals have no glm equivalent"),
    "post_layer_norm": (True, "a model without the final norm (post_layer_norm false) has no glm equivalent"),
    "original_rope": (True, "NeoX-style rotary (original_rope false) is not glm's interleaved rotary"),
}


# ------------------------------------------------------------------------------------------------------- configs
def check_config(cfg: dict, where: str) -> None:
    """Raise ConversionError (naming the file and key, saying why and what to do) for anything glm cannot load."""
    check_model_type(cfg, where, "chatglm", "glm", "ChatGLM2/ChatGLM3")
    if "position_encoding_2d" in cfg or "inner_hidden_size" in cfg:
        raise ConversionError(f"{where}: this is ChatGLM-6B (v1: 2-D positions, GeLU, LayerNorm), a different "
                              "architecture from ChatGLM2/3 with no native transformers model; it cannot be converted")
    if cfg.get("pre_seq_len"):
        raise ConversionError(f"{where}: pre_seq_len {cfg['pre_seq_len']}: a P-tuning v2 checkpoint (prefix encoder); a "
                              "prefix has no native equivalent. Convert the base chatglm2-6b and train LoRA instead")
    if cfg.get("quantization_bit") not in (None, 0):
        raise ConversionError(f"{where}: quantization_bit {cfg['quantization_bit']}: a THUDM int4/int8 checkpoint, whose "
                              "packed weights cannot be restored exactly. Convert the unquantized chatglm2-6b and use "
                              "--q_lora (bitsandbytes NF4) for 4-bit training")
    if cfg.get("rope_ratio") not in (None, 1, 1.0):
        raise ConversionError(f"{where}: rope_ratio {cfg['rope_ratio']}: a RoPE-scaled long-context variant (-32k/-128k). "
                              "chatglm2-6b-32k divides positions by rope_ratio, chatglm3-6b-32k multiplies the rotary "
                              "base, and config.json cannot tell which; converting either guess could silently break "
                              "long contexts, so these are refused. Use chatglm2-6b or chatglm3-6b")
    for key, (want, why) in REQUIRED.items():
        if key in cfg and bool(cfg[key]) != want:
            raise ConversionError(f"{where}: {key} {cfg[key]}: {why}")
    missing = [k for k in ("hidden_size", "num_layers", "num_attention_heads", "ffn_hidden_size", "padded_vocab_size")
               if k not in cfg]
    if missing:
        raise ConversionError(f"{where}: missing key(s) {missing}; is this an original ChatGLM2/3 config.json?")


def shape(cfg: dict) -> dict:
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("kv_channels") or cfg["hidden_size"] // heads
    groups = cfg.get("multi_query_group_num", 1) if cfg.get("multi_query_attention") else heads
    if heads % groups:
        raise ConversionError(f"config.json: num_attention_heads {heads} is not a multiple of multi_query_group_num "
                              f"{groups}")
    return {"heads": heads, "groups": groups, "head_dim": head_dim, "q": heads * head_dim, "kv": groups * head_dim,
            "rotary_dim": head_dim // 2}


def glm_config(cfg: dict, dtype: torch.dtype, eos=2):
    from transformers import GlmConfig

    s = shape(cfg)
    return GlmConfig(
        vocab_size=cfg["padded_vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"], num_attention_heads=s["heads"], num_key_value_heads=s["groups"],
        head_dim=s["head_dim"], hidden_act="silu", attention_dropout=cfg.get("attention_dropout", 0.0),
        max_position_embeddings=cfg.get("seq_length", 32768), rms_norm_eps=cfg.get("layernorm_epsilon", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA, "partial_rotary_factor": 0.5},
        attention_bias=bool(cfg.get("add_qkv_bias", False)), tie_word_embeddings=False, use_cache=True,
        pad_token_id=cfg.get("pad_token_id", 0), eos_token_id=eos,
        bos_token_id=None, dtype=dtype, architectures=["GlmForCausalLM"])


def chatglm_config(native: dict, template: dict | None = None) -> dict:
    """The original config.json for a native glm config (dict), starting from the source's own when known."""
    rope = native.get("rope_parameters") or {}
    bad = {k: v for k, v in (("rope_type", rope.get("rope_type", "default")), ("rope_theta", rope.get("rope_theta")),
                             ("partial_rotary_factor", rope.get("partial_rotary_factor")),
                             ("hidden_act", native.get("hidden_act")),
                             ("tie_word_embeddings", native.get("tie_word_embeddings", False)))
           if v != {"rope_type": "default", "rope_theta": ROPE_THETA, "partial_rotary_factor": 0.5,
                    "hidden_act": "silu", "tie_word_embeddings": False}[k]}
    if native.get("model_type") != "glm" or bad:
        raise ConversionError(f"config.json: model_type {native.get('model_type')!r}, {bad}: only a glm model with "
                              "ChatGLM2's settings can be written in the original layout")
    heads, kv = native["num_attention_heads"], native["num_key_value_heads"]
    out = dict(template or {
        "architectures": ["ChatGLMModel"], "model_type": "chatglm",
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "add_bias_linear": False, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True, "fp32_residual_connection": False, "hidden_dropout": 0.0, "original_rope": True,
        "post_layer_norm": True, "pre_seq_len": None, "prefix_projection": False, "quantization_bit": 0,
        "rmsnorm": True, "tie_word_embeddings": False, "use_cache": True})
    eos = native.get("eos_token_id", 2)
    out.update({
        "padded_vocab_size": native["vocab_size"], "vocab_size": out.get("vocab_size", native["vocab_size"]),
        "hidden_size": native["hidden_size"], "ffn_hidden_size": native["intermediate_size"],
        "num_layers": native["num_hidden_layers"], "num_attention_heads": heads, "kv_channels": native["head_dim"],
        "multi_query_attention": kv != heads, "multi_query_group_num": kv,
        "layernorm_epsilon": native["rms_norm_eps"], "seq_length": native["max_position_embeddings"],
        "add_qkv_bias": native["attention_bias"], "attention_dropout": native.get("attention_dropout", 0.0),
        "pad_token_id": native.get("pad_token_id", 0), "eos_token_id": eos[0] if isinstance(eos, list) else eos,
        "torch_dtype": native.get("dtype") or native.get("torch_dtype") or "float32"})
    if template is None:
        out["vocab_size"] = native["vocab_size"]
    return out


# ------------------------------------------------------------------------------------------------------- weights
def inv_freq(rotary_dim: int, dtype=torch.float32) -> torch.Tensor:
    """ChatGLM2's rotary frequencies: 1 / 10000 ** (arange(0, d, 2) / d) over the rotated d = kv_channels / 2 dims."""
    return 1.0 / (ROPE_THETA ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)).to(dtype)


# Tensors that are only renamed, native name: original name (per layer: model.layers.N, transformer.encoder.layers.N).
ORIGINAL_LAYER = "transformer.encoder.layers.{n}."
TOP = {"model.embed_tokens.weight": "transformer.embedding.word_embeddings.weight",
       "model.norm.weight": "transformer.encoder.final_layernorm.weight",
       "lm_head.weight": "transformer.output_layer.weight"}
LAYER = {"input_layernorm.weight": "input_layernorm.weight",
         "post_attention_layernorm.weight": "post_attention_layernorm.weight",
         "self_attn.o_proj.weight": "self_attention.dense.weight",
         "mlp.gate_up_proj.weight": "mlp.dense_h_to_4h.weight",  # [gate | up], as glm chunks it
         "mlp.down_proj.weight": "mlp.dense_4h_to_h.weight"}


def to_glm(state: dict, cfg: dict, where: str = "checkpoint") -> tuple[dict, torch.Tensor | None]:
    """Original state dict -> (native state dict, the source's inv_freq or None).  Every source key must be used."""
    s = shape(cfg)
    bad = [k for k in state if "prefix_encoder" in k or k.endswith(("weight_scale", "quant_state"))
           or state[k].dtype in (torch.int8, torch.uint8, torch.int32)]
    if bad:
        raise ConversionError(f"{where}: {bad[:3]}: P-tuning prefix or int4/int8 tensors; convert the unquantized "
                              "base chatglm2-6b instead")
    out, rest = {}, dict(state)
    freq = None
    for key in [k for k in rest if k.endswith("rotary_pos_emb.inv_freq")]:
        freq = rest.pop(key)

    def take(key, new):
        if key not in rest:
            raise ConversionError(f"{where}: missing tensor {key}")
        out[new] = rest.pop(key)

    for original, native in renamed(TOP, LAYER, cfg["num_layers"], (ORIGINAL_LAYER, "model.layers.{n}.")):
        take(original, native)
    for n in range(cfg["num_layers"]):
        src, dst = f"transformer.encoder.layers.{n}.", f"model.layers.{n}."
        for kind in ("weight", "bias"):
            key = src + f"self_attention.query_key_value.{kind}"
            if key not in rest:
                if kind == "bias" and not cfg.get("add_qkv_bias"):
                    continue
                raise ConversionError(f"{where}: missing tensor {key}")
            fused = rest.pop(key)
            if fused.shape[0] != s["q"] + 2 * s["kv"]:
                raise ConversionError(f"{where}: {key} has {fused.shape[0]} rows, expected q {s['q']} + k {s['kv']} + "
                                      f"v {s['kv']} from config.json")
            q, k, v = fused.split([s["q"], s["kv"], s["kv"]], dim=0)
            for name, t in (("q", q), ("k", k), ("v", v)):
                out[dst + f"self_attn.{name}_proj.{kind}"] = t.clone()
    if rest:
        raise ConversionError(f"{where}: {len(rest)} tensor(s) the conversion does not know: {sorted(rest)[:5]}")
    return out, freq


def from_glm(state: dict, cfg: dict, freq: torch.Tensor | None = None) -> dict:
    """Native state dict -> original state dict (the inverse of to_glm; inv_freq recomputed unless given)."""
    out = rename_native(
        state, cfg["num_layers"], ("model.layers.{n}.", ORIGINAL_LAYER), TOP, LAYER,
        fused={"self_attention.query_key_value": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")},
        layout="original ChatGLM2")
    dtype = out["transformer.embedding.word_embeddings.weight"].dtype
    out["transformer.rotary_pos_emb.inv_freq"] = freq if freq is not None else inv_freq(shape(cfg)["rotary_dim"], dtype)
    return out


def is_chatglm3(src: Path) -> bool:
    """ChatGLM3 (role tokens, eos [2, 64795, 64797]) from its tokenizer files, read as text, never run."""
    for name in ("tokenization_chatglm.py", "tokenizer_config.json"):
        f = src / name
        if f.is_file() and "<|observation|>" in f.read_text(encoding="utf-8", errors="replace"):
            return True
    return False


def convert(src, out=None, fast_tokenizer: bool = True, check_texts=(), max_shard_size: str = "4GB") -> Path:
    """ChatGLM2/3 folder -> native glm folder (cached; see the module docstring).  Returns the output folder."""
    from transformers import GenerationConfig, GlmForCausalLM

    src = Path(src)
    cfg = read_config(src, "ChatGLM2/ChatGLM3")
    check_config(cfg, f"{src}/config.json")
    out = Path(out) if out else default_out(src, "glm")
    fp = source_fingerprint(src)
    if is_cached(out, fp):
        return out

    chatglm3 = is_chatglm3(src)
    state, freq = to_glm(load_weights(src), cfg, where=str(src))
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) != 1:
        raise ConversionError(f"{src}: mixed tensor dtypes {sorted(map(str, dtypes))}; expected one")
    dtype = dtypes.pop()
    eos = cfg.get("eos_token_id", 2)
    if chatglm3:  # stops on </s>, <|user|>, <|observation|> ([2, 64795, 64797] for the real 64789-piece vocabulary)
        from .chatglm2_tokenizer import SPTokenizer

        n = SPTokenizer(src / "tokenizer.model").n_words if (src / "tokenizer.model").is_file() else 64789
        eos = [eos, n + 6, n + 8]
    config = glm_config(cfg, dtype, eos)
    if freq is not None:  # the stored frequencies must be glm's (a scaled base would show here)
        expect = inv_freq(shape(cfg)["rotary_dim"])
        if freq.shape != expect.shape or not torch.allclose(freq.float(), expect, rtol=1e-2):
            raise ConversionError(f"{src}: rotary_pos_emb.inv_freq is not 1/10000^(2i/{shape(cfg)['rotary_dim']}) "
                                  "(a scaled rotary base?); glm would compute different angles")
    check_shapes(state, GlmForCausalLM, config, src)

    tokenizer = None
    if fast_tokenizer and (src / "tokenizer.model").is_file():
        from .chatglm2_tokenizer import fast_tokenizer as build_fast

        tokenizer = build_fast(src / "tokenizer.model", chatglm3=chatglm3, extra_texts=check_texts)

    with atomic_folder(out) as tmp:
        write_native(tmp, src, state, config, GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=0),
                     tokenizer, ORIGINAL_FILES, {
                         "source_fingerprint": fp, "direction": "chatglm->glm",
                         "variant": "chatglm3" if chatglm3 else "chatglm2", "dtype": str(dtype).replace("torch.", ""),
                         "inv_freq": None if freq is None else {"dtype": str(freq.dtype).replace("torch.", ""),
                                                                "values": freq.float().tolist()},
                         "fast_tokenizer": tokenizer is not None}, max_shard_size)
        if (src / "tokenizer.model").is_file():
            shutil.copy2(src / "tokenizer.model", tmp / "tokenizer.model")
    return out


def reverse(native, out, original=None, max_shard_size: str = "4GB") -> Path:
    """Native glm folder (e.g. a merged fine-tune) -> original ChatGLM2 layout.  `original`: the source folder or the
    converted base (for its config.json, tokenizer and code files, and inv_freq); without it they are rebuilt."""
    native, out = Path(native), Path(out)
    ncfg = json.loads((native / "config.json").read_text())
    if ncfg.get("quantization_config"):
        raise ConversionError(f"{native}: quantized weights cannot be written in the original layout; merge the "
                              "adapter into the unquantized model first")
    template, files, freq = None, None, None
    if original:
        original = Path(original)
        rec = original / RECORD
        files = original / ORIGINAL_FILES if (original / ORIGINAL_FILES).is_dir() else original
        if not (files / "config.json").is_file():
            raise ConversionError(f"--original {original}: no ChatGLM2 config.json (pass the original folder or the "
                                  "folder python -m tunekit.convert made from it)")
        template = json.loads((files / "config.json").read_text())
        if rec.is_file() and json.loads(rec.read_text()).get("inv_freq"):
            f = json.loads(rec.read_text())["inv_freq"]
            freq = torch.tensor(f["values"], dtype=torch.float32).to(getattr(torch, f["dtype"]))
    cfg = chatglm_config(ncfg, template)
    check_config(cfg, f"{native}/config.json (as ChatGLM2)")
    state = from_glm(load_weights(native), cfg, freq)
    with atomic_folder(out) as tmp:
        save_weights(state, tmp, max_shard_size)
        if files is not None:
            copy_side_files(files, tmp, skip=("config.json",))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return out
