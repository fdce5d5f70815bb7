"""The tiny-checkpoint zoo: one tiny random checkpoint per chat model users bring (issue 22), each carrying that model's
REAL tokenizer configuration, so the template handling is tested against what the real checkpoints ship.

Each model is a data file, tunekit/tiny/zoo/<name>.json, holding what was copied from the model's published files:

    source, mirror      where the chat template was copied from (the model's own tokenizer_config.json /
                        chat_template.jinja, and the public copy it was read from), "verbatim" and "notes"
    chat_template       the template text, byte for byte as published (null for a base model without one)
    special_tokens      bos/eos/pad/unk as the real tokenizer_config.json sets them (null where it has none)
    added_tokens        the real vocabulary's special/added tokens that the template, the config or padding use,
                        in the real id order, with the real `special` flag (and `rstrip` where it is set)
    add_bos_token       whether encoding a text adds BOS, as with the real tokenizer
    tokenizer_config    the real tokenizer_config.json's other keys that change behaviour (tokenizer_class, ...)
    config_tokens       config.json's bos/eos/pad, as token strings
    generation_eos      the tokens of the real generation_config.json's eos_token_id, in its order
    model_type, config  a tiny random model of the real architecture (hidden 64, 2 layers, 4 heads): the
                        architecture's own features (Gemma-2 soft-capping, Phi-3's fused qkv_proj/gate_up_proj,
                        Qwen3's q/k norms) come from transformers' classes
    chat_markers        strings a rendering of a conversation must contain; system_role: whether the template
                        accepts a system turn (Gemma-2 raises on one)

The vocabulary itself is small (a BPE trained offline on the texts of data/, as tunekit/tiny's tokenizers are), byte
level for the GPT-2/tiktoken families and sentencepiece-style (byte fallback, "▁") for Llama-2, Mistral, Phi-3 and
Gemma; the added tokens follow it.  Token ids therefore differ from the real ones; every id is written by token.

    from tunekit.tiny import zoo
    zoo.names()                      # ['gemma2-it', ..., 'smollm2-instruct']
    folder = zoo.build("qwen3")      # cached under .cache/tiny/zoo/, keyed by the JSON's content
    python -m tunekit.tiny zoo qwen3 # the same, printing the folder

Nothing here touches the network.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from ..atomic import atomic_folder
from ..convert import corpus
from . import DATA_DIR, ROOT, VOCAB_SIZE

ZOO_DIR = Path(__file__).with_name("zoo")
ZOO_VERSION = 1  # part of the cache key: raise it when the way zoo checkpoints are built changes
STAMP = ".zoo-key"  # the cache key a built folder was made from
SEED = 0


def names() -> list[str]:
    return sorted(p.stem for p in ZOO_DIR.glob("*.json"))


def spec_path(name: str) -> Path:
    path = ZOO_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no zoo entry {name!r}; the zoo has: {', '.join(names())}")
    return path


def spec(name: str) -> dict:
    return json.loads(spec_path(name).read_text(encoding="utf-8"))


def cache_key(name: str) -> str:
    """The entry's JSON bytes, the builder's version and the texts the vocabulary is trained on."""
    digest = hashlib.sha256(f"zoo {ZOO_VERSION} {VOCAB_SIZE} ".encode())
    digest.update(spec_path(name).read_bytes())
    for path in sorted(DATA_DIR.glob("*.json*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def default_dir(name: str) -> Path:
    return ROOT / ".cache" / "tiny" / "zoo" / f"{name}-{cache_key(name)}"


def build(name: str, out_dir: str | Path | None = None) -> Path:
    """Builds (or finds already built) the zoo checkpoint `name` in `out_dir` (default: default_dir(name)) and returns
    the folder.  A folder built from another version of the entry is rebuilt; the folder is written whole or not at
    all."""
    out = Path(out_dir) if out_dir is not None else default_dir(name)
    key = cache_key(name)
    stamp = out / STAMP
    if stamp.is_file() and stamp.read_text() == key and (out / "config.json").is_file():
        return out
    s = spec(name)
    with atomic_folder(out) as tmp:
        tok_ids = _write_tokenizer(s, tmp)
        _write_model(s, tok_ids, tmp)
        (tmp / STAMP).write_text(key)
    return out


# ---------------------------------------------------------------------------------------------------------- tokenizer

@functools.lru_cache(maxsize=None)
def _texts() -> tuple[str, ...]:
    return tuple(corpus(DATA_DIR))


def _added(s: dict) -> list[dict]:
    """The entry's added tokens, each {"content", "special", "rstrip", "lstrip", "leading"}; every named special token
    (bos/eos/pad/unk) must be one of them."""
    defaults = {"special": True, "rstrip": False, "lstrip": False, "leading": False}
    tokens = [dict(defaults, **t) for t in s["added_tokens"]]
    have = {t["content"] for t in tokens}
    for value in s["special_tokens"].values():
        if value is not None and value not in have:
            raise ValueError(f"{s['model']}: special token {value!r} is not in added_tokens")
    return tokens


@functools.lru_cache(maxsize=None)
def _trained(kind: str, leading: tuple[str, ...]):
    """The trained base vocabulary (a tokenizers.Tokenizer as JSON), cached per process: byte-level BPE (GPT-2,
    tiktoken, Qwen), sentencepiece-style BPE with byte fallback and a "▁" prefix (Llama-2, Mistral, Phi-3), or the
    same without the prefix (Gemma).  `leading` tokens take the first ids, as <unk>/<s>/</s> do in sentencepiece."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "bytelevel":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=list(leading), show_progress=False)
    elif kind in ("spm", "gemma"):
        unk = "<unk>"
        specials = list(leading) + [f"<0x{i:02X}>" for i in range(256)]
        tk = Tokenizer(models.BPE(unk_token=unk, byte_fallback=True, fuse_unk=True))
        steps = [normalizers.Prepend("▁")] if kind == "spm" else []
        tk.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
        # pieces never span words, as sentencepiece's split_by_whitespace makes them
        tk.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
        tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                       + ([decoders.Strip(" ", 1, 0)] if kind == "spm" else []))
        trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    tk.train_from_iterator(_texts(), trainer)
    return tk.to_str()


def _tokenizer(s: dict):
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors

    kind = s["tokenizer"]["kind"]
    added = _added(s)
    leading = tuple(t["content"] for t in added if t["leading"])
    tk = Tokenizer.from_str(_trained(kind, leading))
    if kind == "spm":  # the pipeline LlamaTokenizer (legacy=False) builds: no normalizer, Metaspace prepending once
        tk.normalizer = None
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    elif kind == "gemma":  # GemmaTokenizer's: spaces become "▁", no prefix
        tk.normalizer = normalizers.Replace(" ", "▁")
        tk.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tk.add_tokens([AddedToken(t["content"], special=t["special"], rstrip=t["rstrip"], lstrip=t["lstrip"],
                              normalized=False) for t in added])
    bos = s["special_tokens"]["bos_token"]
    if s["add_bos_token"]:  # tokenizer.json's post-processor adds BOS, as in the real files (transformers 5 ignores
        # tokenizer_config.json's add_bos_token when there is a tokenizer.json)
        tk.post_processor = processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                                          special_tokens=[(bos, tk.token_to_id(bos))])
    return tk, added


def _write_tokenizer(s: dict, out: Path) -> dict[str, int]:
    """tokenizer.json, and tokenizer_config.json written as the real one is (the template inside it, the real keys);
    returns the vocabulary's ids by token."""
    tk, added = _tokenizer(s)
    tk.save(str(out / "tokenizer.json"))
    ids = tk.get_vocab(with_added_tokens=True)
    config = dict(s.get("tokenizer_config", {}))
    config["added_tokens_decoder"] = {
        str(ids[t["content"]]): {"content": t["content"], "lstrip": t["lstrip"], "normalized": False,
                                 "rstrip": t["rstrip"], "single_word": False, "special": t["special"]}
        for t in added}
    for key, value in s["special_tokens"].items():
        if value is not None or key in s.get("null_special_tokens_written", ()):
            config[key] = value
    if s["chat_template"] is not None:
        config["chat_template"] = s["chat_template"]
    config = dict(sorted(config.items()))  # the key order transformers writes
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    return ids


# -------------------------------------------------------------------------------------------------------------- model

def _ids(ids: dict[str, int], tokens):
    if tokens is None:
        return None
    if isinstance(tokens, list):
        return [ids[t] for t in tokens]
    return ids[tokens]


def _write_model(s: dict, ids: dict[str, int], out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    ct = s["config_tokens"]
    config = AutoConfig.for_model(s["model_type"], vocab_size=max(ids.values()) + 1, bos_token_id=_ids(ids, ct["bos"]),
                                  eos_token_id=_ids(ids, ct["eos"]), pad_token_id=_ids(ids, ct["pad"]),
                                  **s["config"])
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gt = s["generation_tokens"]
    eos = _ids(ids, s["generation_eos"])
    gen = dict(bos_token_id=_ids(ids, gt["bos"]), eos_token_id=eos[0] if len(eos) == 1 else eos,
               pad_token_id=_ids(ids, gt["pad"]), **s.get("generation_config", {}))
    model.generation_config = GenerationConfig(**{k: v for k, v in gen.items() if v is not None})
    model.save_pretrained(out)
