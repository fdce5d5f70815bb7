"""Qwen-1 checkpoint (original QwenLM layout, `model_type: qwen`, remote code) -> transformers' native `qwen2`,
including Qwen-1 GPTQ-Int4 checkpoints, without running the checkpoint's code.

    python -m tunekit.convert SRC [OUT]              # prints OUT (default .cache/converted/<name>-qwen2-<hash>)
    python -m tunekit.convert --reverse NATIVE OUT --original SRC_OR_CONVERTED   # a merged model, back to Qwen-1

Weights: `c_attn` rows are [Q | K | V] (hidden each) and are split into q/k/v_proj (weights and biases); `attn.c_proj`
is o_proj; the MLP computes c_proj(w1(x) * silu(w2(x))), so w2 is gate_proj, w1 up_proj, mlp.c_proj down_proj; and
Qwen-1's `intermediate_size` is twice the MLP width.  GPTQ tensors are split the same way along the output dimension:
qweight/scales columns, qzeros columns in packed units (32/bits outputs per int32), g_idx shared, bias split.

Qwen-1 applies dynamic NTK scaling and log-n attention scaling only beyond `seq_length` tokens; qwen2 does neither, so
the conversion is exact up to `seq_length` (written as max_position_embeddings) and longer contexts are not Qwen-1's.

Tokenizer: `qwen.tiktoken` (base64 token, rank per line; specials <|endoftext|> <|im_start|> <|im_end|> <|extra_0..204|>
after the ranks) becomes a byte-level BPE `tokenizer.json` (NFC, Qwen's split regex) with the ChatML template, kept
only if its ids equal tiktoken's on a mixed Chinese/English check corpus (refused otherwise).
"""
from __future__ import annotations

import base64
import json
import unicodedata
from pathlib import Path

import torch

from ..atomic import atomic_folder
from ..errors import ArgumentError, ConversionError
from ..templates import NAMED
from . import (check_model_type, check_shapes, check_texts, copy_side_files, default_out, first_difference,
               is_cached, load_weights, read_config, rename_native, renamed, save_weights, source_fingerprint,
               write_native)
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))
GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")


# ---------------------------------------------------------------------------------------------------------- config
def check_config(cfg: dict, where: str) -> None:
    check_model_type(cfg, where, "qwen", "qwen2", "Qwen-1")
    problems = {"rotary_pct": (cfg.get("rotary_pct", 1.0) == 1.0, "partial rotary has no qwen2 equivalent"),
                "no_bias": (cfg.get("no_bias", True), "biases on c_proj/MLP layers have no qwen2 equivalent"),
                "scale_attn_weights": (cfg.get("scale_attn_weights", True), "unscaled attention is not qwen2's")}
    for key, (ok, why) in problems.items():
        if not ok:
            raise ConversionError(f"{where}: {key} {cfg.get(key)}: {why}")
    heads, kv = cfg.get("num_attention_heads"), cfg.get("kv_channels")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "vocab_size") if k not in cfg]
    if missing:
        raise ConversionError(f"{where}: missing key(s) {missing}; is this an original Qwen-1 config.json?")
    if kv and heads * kv != cfg["hidden_size"]:
        raise ConversionError(f"{where}: kv_channels {kv} x num_attention_heads {heads} != hidden_size; not a Qwen-1 shape")
    qc = cfg.get("quantization_config")
    if qc and qc.get("quant_method") != "gptq":
        raise ConversionError(f"{where}: quantization_config.quant_method {qc.get('quant_method')!r}: only GPTQ "
                              "checkpoints (Qwen-1 *-Int4/Int8) convert")


def qwen2_config(cfg: dict, dtype: torch.dtype, tokenizer_ids: dict):
    from transformers import Qwen2Config

    extra = {}
    if cfg.get("quantization_config"):
        qc = dict(cfg["quantization_config"])
        fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"  # auto-gptq wrote v1 ("gptq")
        qc.update({"quant_method": "gptq", "checkpoint_format": fmt, "format": fmt})
        extra["quantization_config"] = qc
    return Qwen2Config(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"] // 2,
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_attention_heads"], hidden_act="silu",
        max_position_embeddings=cfg.get("seq_length", cfg.get("max_position_embeddings", 8192)),
        rms_norm_eps=cfg.get("layer_norm_epsilon", 1e-6), tie_word_embeddings=False, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.get("rotary_emb_base", 10000))},
        attention_dropout=cfg.get("attn_dropout_prob", 0.0), use_cache=True,
        bos_token_id=tokenizer_ids.get("<|endoftext|>"), eos_token_id=tokenizer_ids.get("<|endoftext|>"),
        pad_token_id=tokenizer_ids.get("<|endoftext|>"), dtype=dtype, architectures=["Qwen2ForCausalLM"], **extra)


# ---------------------------------------------------------------------------------------------------------- weights
def _split_out(t: torch.Tensor, part: str, sizes: list[int], bits: int) -> list[torch.Tensor]:
    """Split a fused [Q|K|V] tensor along its output dimension: rows of float weights/biases, columns of GPTQ
    qweight/scales, packed columns of qzeros; g_idx (per input row) is shared."""
    if part == "g_idx":
        return [t.clone() for _ in sizes]
    if part in ("qweight", "scales"):
        return [c.clone() for c in t.split(sizes, dim=1)]
    if part == "qzeros":
        per_int = 32 // bits
        if any(s % per_int for s in sizes):
            raise ConversionError(f"qzeros: output sizes {sizes} are not multiples of {per_int} (packed {bits}-bit)")
        return [c.clone() for c in t.split([s // per_int for s in sizes], dim=1)]
    return [c.clone() for c in t.split(sizes, dim=0)]


# Modules that are only renamed, native name: Qwen-1 name (per layer under model.layers.N / transformer.h.N); the MLP
# computes c_proj(w1(x) * silu(w2(x))), so w2 is the gate.
TOP = {"model.embed_tokens": "transformer.wte", "model.norm": "transformer.ln_f", "lm_head": "lm_head"}
LAYER = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2", "self_attn.o_proj": "attn.c_proj",
         "mlp.gate_proj": "mlp.w2", "mlp.up_proj": "mlp.w1", "mlp.down_proj": "mlp.c_proj"}


def to_qwen2(state: dict, cfg: dict, where: str = "checkpoint") -> dict:
    """Original state dict -> native qwen2 state dict (float or GPTQ); every source tensor must be used."""
    h = cfg["hidden_size"]
    bits = (cfg.get("quantization_config") or {}).get("bits", 4)
    rest = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    out = {}

    def move(src, dst):
        if src not in rest:
            raise ConversionError(f"{where}: missing tensor {src}")
        out[dst] = rest.pop(src)

    def module(src, dst):  # a linear layer: float weight (+bias) or GPTQ parts (+bias)
        found = False
        for part in ("weight", "bias") + GPTQ_PARTS:
            if f"{src}.{part}" in rest:
                move(f"{src}.{part}", f"{dst}.{part}")
                found = True
        if not found:
            raise ConversionError(f"{where}: missing tensors of {src}")

    layers = cfg["num_hidden_layers"]
    for original, native in renamed(TOP, LAYER, layers, ("transformer.h.{n}.", "model.layers.{n}.")):
        module(original, native)
    for n in range(cfg["num_hidden_layers"]):
        s, d = f"transformer.h.{n}.", f"model.layers.{n}."
        parts = [p for p in ("weight", "bias") + GPTQ_PARTS if f"{s}attn.c_attn.{p}" in rest]
        if not parts:
            raise ConversionError(f"{where}: missing tensors of {s}attn.c_attn")
        for part in parts:
            t = rest.pop(f"{s}attn.c_attn.{part}")
            for name, piece in zip("qkv", _split_out(t, part, [h, h, h], bits)):
                out[f"{d}self_attn.{name}_proj.{part}"] = piece
    if rest:
        raise ConversionError(f"{where}: {len(rest)} tensor(s) the conversion does not know: {sorted(rest)[:5]}")
    return out


def _weights(modules: dict) -> dict:
    return {f"{a}.weight": f"{b}.weight" for a, b in modules.items()}


def from_qwen2(state: dict, cfg: dict) -> dict:
    """Native qwen2 state dict (float) -> original Qwen-1 state dict: the inverse of to_qwen2."""
    if any(k.endswith(GPTQ_PARTS) for k in state):
        raise ConversionError("GPTQ tensors: merge the adapter into the unquantized model before writing Qwen-1 layout")
    return rename_native(
        state, cfg["num_hidden_layers"], ("model.layers.{n}.", "transformer.h.{n}."), _weights(TOP), _weights(LAYER),
        fused={"attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}, layout="Qwen-1")


def qwen1_config(native: dict, template: dict) -> dict:
    heads = native["num_attention_heads"]
    rope = native.get("rope_parameters") or {}
    if native.get("model_type") != "qwen2" or native.get("num_key_value_heads", heads) != heads \
            or rope.get("rope_type", "default") != "default" or native.get("tie_word_embeddings"):
        raise ConversionError("config.json: only a qwen2 model with Qwen-1's settings (no GQA, plain rotary, untied "
                              "head) can be written in the Qwen-1 layout")
    out = {k: v for k, v in template.items() if k != "quantization_config"}
    hidden = native["hidden_size"]
    out.update({"hidden_size": hidden, "num_hidden_layers": native["num_hidden_layers"], "num_attention_heads": heads,
                "kv_channels": hidden // heads, "intermediate_size": 2 * native["intermediate_size"],
                "vocab_size": native["vocab_size"], "layer_norm_epsilon": native["rms_norm_eps"],
                "rotary_emb_base": theta if (theta := rope.get("rope_theta", 10000)) % 1 else int(theta),
                "seq_length": native["max_position_embeddings"]})
    if template.get("quantization_config"):
        out.update({"fp16": False, "bf16": native.get("dtype") == "bfloat16"})
    return out


def reverse(native, out, original, max_shard_size: str = "4GB") -> Path:
    """Native qwen2 folder (e.g. a merged fine-tune) -> Qwen-1 layout, with the original's config, qwen.tiktoken and
    code files (`original`: the Qwen-1 folder or its conversion)."""
    if original is None:
        raise ConversionError("--reverse to the Qwen-1 layout needs --original (the Qwen-1 folder or its conversion: "
                              "its config.json and qwen.tiktoken are copied)")
    native, out, original = Path(native), Path(out), Path(original)
    files = original / "qwen1_original" if (original / "qwen1_original").is_dir() else original
    if not (files / "config.json").is_file() or not (files / "qwen.tiktoken").is_file():
        raise ConversionError(f"--original {original}: no Qwen-1 config.json + qwen.tiktoken (pass the Qwen-1 folder or "
                              "the folder python -m tunekit.convert made from it)")
    ncfg = json.loads((native / "config.json").read_text())
    if ncfg.get("quantization_config"):
        raise ConversionError(f"{native}: quantized; merge the adapter into the unquantized model first")
    cfg = qwen1_config(ncfg, json.loads((files / "config.json").read_text()))
    state = from_qwen2(load_weights(native), cfg)
    with atomic_folder(out) as tmp:
        save_weights(state, tmp, max_shard_size)
        copy_side_files(files, tmp, skip=("config.json",))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


# -------------------------------------------------------------------------------------------------------- tokenizer
def read_tiktoken(path) -> dict[bytes, int]:
    ranks = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError:
            raise ConversionError(f"{path} line {lineno}: expected '<base64 token> <rank>'") from None
    return ranks


class QwenTiktoken:
    """Qwen-1 tokenization on tiktoken itself: NFC, then tiktoken with every special token allowed in text."""

    def __init__(self, path):
        try:
            import tiktoken
        except ImportError:
            raise ArgumentError("Qwen-1 tokenizers need tiktoken: pip install -r requirements.txt") from None
        self.ranks = read_tiktoken(path)
        self.special = {t: len(self.ranks) + i for i, t in enumerate(SPECIALS)}
        self.enc = tiktoken.Encoding("qwen", pat_str=PAT_STR, mergeable_ranks=self.ranks,
                                     special_tokens=self.special)

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=())


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe_split(ranks: dict, token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's merge loop on one token, using only merges ranked below max_rank: the last merge that makes it."""
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best[1]):
                best = (i, r)
        if best is None:
            return parts
        i = best[0]
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]


def export_fast(tiktoken_file):
    """A Qwen2-style PreTrainedTokenizerFast from qwen.tiktoken (unchecked: use `fast_tokenizer`, which checks it)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ranks = read_tiktoken(tiktoken_file)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ConversionError(f"{tiktoken_file}: ranks are not 0..{len(ranks) - 1} without gaps")
    b2u = _bytes_to_unicode()
    text = {tok: "".join(b2u[b] for b in tok) for tok in ranks}
    vocab = {text[tok]: r for tok, r in ranks.items()}
    merges = []
    for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        parts = _bpe_split(ranks, tok, r)
        if len(parts) != 2:
            raise ConversionError(f"{tiktoken_file}: token rank {r} cannot be built by one merge of lower ranks")
        merges.append((text[parts[0]], text[parts[1]]))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    if tk.token_to_id(SPECIALS[0]) != len(ranks):
        raise ConversionError(f"{tiktoken_file}: special tokens did not land right after the {len(ranks)} ranks")
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=NAMED["qwen"].jinja, padding_side="right",
                                   model_input_names=["input_ids", "attention_mask"])


def check_against_tiktoken(fast, tiktoken_file, texts) -> int:
    """Raise ConversionError unless `fast` gives Qwen-1's tiktoken ids on every text; returns how many were compared."""
    ref = QwenTiktoken(tiktoken_file)
    n = 0
    for lineno, text in enumerate(texts, 1):
        want, got = ref.encode(text), fast(text, add_special_tokens=False)["input_ids"]
        if got != want:
            at = first_difference(got, want)
            raise ConversionError(f"{tiktoken_file}: the converted tokenizer differs from tiktoken on text {lineno} "
                                  f"{text[:60]!r} at token {at}: tiktoken {want[at:at + 6]}, converted {got[at:at + 6]}; "
                                  "refusing the converted tokenizer")
        n += 1
    return n


def fast_tokenizer(tiktoken_file, extra_texts=()):
    fast = export_fast(tiktoken_file)
    check_against_tiktoken(fast, tiktoken_file, check_texts(extra_texts) + ["<|im_start|>user\n你好<|im_end|>\n"])
    return fast


# ---------------------------------------------------------------------------------------------------------- convert
def convert(src, out=None, check_texts=(), max_shard_size: str = "4GB") -> Path:
    """Qwen-1 folder (float or GPTQ) -> native qwen2 folder (cached, written atomically).  Returns the folder."""
    from transformers import GenerationConfig, Qwen2ForCausalLM

    src = Path(src)
    cfg = read_config(src, "Qwen-1")
    check_config(cfg, f"{src}/config.json")
    if not (src / "qwen.tiktoken").is_file():
        raise ConversionError(f"{src}: no qwen.tiktoken (the Qwen-1 tokenizer); copy it from the original model folder")
    out = Path(out) if out else default_out(src, "qwen2")
    fp = source_fingerprint(src)
    if is_cached(out, fp):
        return out

    tokenizer = fast_tokenizer(src / "qwen.tiktoken", check_texts)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS[:3]}
    state = to_qwen2(load_weights(src), cfg, where=str(src))
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    dtype = torch.float16 if torch.float16 in float_dtypes else float_dtypes.pop()
    config = qwen2_config(cfg, dtype, ids)
    if not cfg.get("quantization_config"):
        check_shapes(state, Qwen2ForCausalLM, config, src)
    generation = GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                  eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]])
    with atomic_folder(out) as tmp:
        write_native(tmp, src, state, config, generation, tokenizer, "qwen1_original", {
            "source_fingerprint": fp, "direction": "qwen->qwen2", "gptq": bool(cfg.get("quantization_config")),
            "max_exact_length": config.max_position_embeddings}, max_shard_size)
    return out
