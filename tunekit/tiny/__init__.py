"""Fixtures: the embedded default and the tests' checkpoints, never imported by the core (tunekit/*.py).

A tiny random model of a family's real architecture, with a small tokenizer trained offline on the texts in data/
that carries the family's real special tokens and chat template.  Built once, cached.  chatglm2.py and qwen1.py
build tiny checkpoints in the ORIGINAL layouts (converted by tunekit/convert/); gptq.py packs GPTQ-Int4 copies.

    python -m tunekit.tiny llama2 [--out DIR]       # prints the folder (tunekit/tiny/__main__.py)
    python -m tunekit.tiny qwen --gptq             # and a GPTQ-Int4 copy of it (prints that folder)
"""
from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_folder
from ..convert import corpus

# The embedded default is built from the checkout's own data/ and cached in its .cache/ (a fixture of the checkout).
ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "data"
from ..families import FAMILIES, Family
from ..templates import NAMED

VOCAB_SIZE = 2000
FIXTURE_VERSION = 3  # part of the cache key: raise it when the way fixtures are built changes
# The embedded default's shape per family (besides the vocabulary); chatglm2's is in chatglm2.py (original layout).
# initializer_range 0.2, not 0.02: with 64-wide hidden states a 0.02 lm_head caps every logit near 1, so no adapter
# could make the tiny model confident; at 0.2 the CPU default visibly learns (recipes/cpu-tiny.json).
SHAPES = {
    "llama2": dict(model_type="llama", hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5,
                   tie_word_embeddings=False, initializer_range=0.2),
    "qwen": dict(model_type="qwen2", hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 tie_word_embeddings=False, initializer_range=0.2),
}


# The real tokenizers' special tokens (Llama-2's, Qwen2-Instruct's) and pad; a base Qwen2 ends text with its pad.
TOKENS = {
    "llama2": dict(special={"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}, pad="<unk>", extra=()),
    "qwen": dict(special={"eos_token": "<|im_end|>"}, pad="<|endoftext|>",
                 extra=("<|endoftext|>", "<|im_start|>", "<|im_end|>")),
}


def train_tokenizer(family: Family, texts, base: bool = False):
    """base=True: a base-model tokenizer, without the chat template or the template's special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    pad = TOKENS[family.name]["pad"]

    if family.name == "llama2":  # sentencepiece-style BPE with byte fallback, ids 0/1/2 = <unk>/<s>/</s> as in Llama-2
        specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
        tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        # pieces start at a word's "▁" and never span words, as sentencepiece's split_by_whitespace makes them (else
        # "### Assistant: How" would merge ":▁" and a prompt ending in ":" would tokenize unlike training)
        tk.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
        tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                        decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False)
        tk.train_from_iterator(texts, trainer)
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", tk.token_to_id("<s>"))])
    else:  # byte-level BPE as GPT-2/Qwen2, with the family's special tokens after the vocabulary
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tk.train_from_iterator(texts, trainer)
        tk.add_special_tokens([pad] if base else list(TOKENS[family.name]["extra"]))
    specials = {"eos_token": pad} if base else TOKENS[family.name]["special"]
    return PreTrainedTokenizerFast(tokenizer_object=tk, chat_template=None if base else NAMED[family.template].jinja,
                                   pad_token=pad, **specials)


def build(family_name: str, out: Path, seed: int = 0, base: bool = False) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    out = Path(out)
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    family = FAMILIES[family_name]
    tok = train_tokenizer(family, list(corpus(DATA_DIR)), base=base)
    shape = dict(SHAPES[family_name])
    config = AutoConfig.for_model(shape.pop("model_type"), vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


def default_dir(family_name: str) -> Path:
    """Cached per family, per shape and per content of data/, so editing the samples rebuilds the tokenizer."""
    import hashlib

    digest = hashlib.sha256(f"{FIXTURE_VERSION} {SHAPES.get(family_name)}".encode())
    for path in sorted(DATA_DIR.glob("*.json*")):
        digest.update(path.name.encode() + path.read_bytes())
    return ROOT / ".cache" / "tiny" / f"{family_name}-{digest.hexdigest()[:8]}"
