"""A GGUF checkpoint (llama.cpp, Ollama, LM Studio) -> a plain transformers folder: safetensors (float32), config.json,
generation_config.json, a fast tokenizer with the GGUF's own special-token ids and its chat template.

    tunekit convert FILE.gguf [OUT]              # prints OUT (default .cache/converted/<name>-<hash>)

transformers loads a GGUF itself (`from_pretrained(dir, gguf_file=...)`, dequantized), but three things go wrong on
the way to a folder, each fixed here:
  1. save_pretrained refuses the model ("quantized with GGUF, not serializable") although every layer is a plain
     dequantized Linear: the quantizer and the config's quantization_config are cleared before saving.
  2. Its tokenizer sets BOS = EOS = the BOS token and no pad: bos/eos/unk/pad are set from the metadata's ids
     (tokenizer.ggml.*_token_id; pad only when the metadata names one).  It also ignores tokenizer.ggml.add_bos_token:
     the BOS/EOS llama.cpp adds around a text are added here too (SmolLM2: none; a Llama-2 GGUF: the BOS).
  3. For a GPT-2-style byte-level BPE vocabulary (tokenizer.ggml.model "gpt2") under the llama architecture it writes
     a SentencePiece-shaped tokenizer.json (byte_fallback, Replace/ByteFallback decoder): the ids come out right, but
     llama.cpp's convert_hf_to_gguf.py then writes an SPM vocabulary that llama.cpp refuses.  A "gpt2" vocabulary is
     built here from the GGUF's tokens and merges as the byte-level BPE it is, with the pre-tokenizer llama.cpp uses
     for the file's tokenizer.ggml.pre (so the converter recognises it again, e.g. `smollm`).

Refused, one line naming why: a file that is not a GGUF, an architecture or tokenizer model transformers' GGUF loader
does not handle, a byte-level pre-tokenizer not in PRE_TOKENIZERS, metadata of the architecture that the loader would
silently ignore (rope scaling, ...) and tensors it would silently drop (e.g. rope_freqs).  Weights dequantized from a
quantized GGUF (Q4_1, Q8_0, ...) are NOT the original model's weights: the import says so on stderr.
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from ..atomic import atomic_folder
from ..errors import ConversionError

RECORD = "tunekit_conversion.json"
VERSION = 1  # in the record: an import by an older version of this code is done again
MAGIC = b"GGUF"
# tokenizer.ggml.token_type values (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}

# llama.cpp's pre-tokenizer for each tokenizer.ggml.pre of a "gpt2" (byte-level BPE) vocabulary, as the regexes of
# its llama-vocab.cpp, in the form transformers' tokenizers runs them: (regex or None for ByteLevel's own GPT-2 one,
# split digits one by one first, ignore_merges, whether a BOS is added when the file has no add_bos_token).  Only
# `smollm` is checked against a real file (tests/test_gguf_import.py); the others follow llama.cpp's table.
GPT2_REGEX = None
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    **{name: (GPT2_REGEX, False, False, False) for name in ("gpt-2", "mpt", "olmo")},
    **{name: (GPT2_REGEX, True, False, False) for name in ("smollm", "starcoder", "refact", "command-r", "codeshell")},
    **{name: (LLAMA3_REGEX, False, True, True) for name in ("llama-bpe", "llama3", "llama-v3")},
    **{name: (QWEN2_REGEX, False, False, False) for name in ("qwen2", "stablelm2")},
}
# Metadata of the architecture that transformers' loader does not read but that cannot change the model when it
# agrees with what it does read: {key suffix: check(metadata, arch) -> bool}.
HARMLESS_ARCH_KEYS = {
    "attention.key_length": lambda m, a: m[f"{a}.attention.key_length"] == head_dim(m, a),
    "attention.value_length": lambda m, a: m[f"{a}.attention.value_length"] == head_dim(m, a),
}


def head_dim(meta: dict, arch: str) -> int | None:
    if f"{arch}.rope.dimension_count" in meta:
        return meta[f"{arch}.rope.dimension_count"]
    heads = meta.get(f"{arch}.attention.head_count")
    return meta[f"{arch}.embedding_length"] // heads if isinstance(heads, int) and heads else None


# ------------------------------------------------------------------------------------------------------ reading
def is_gguf(path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def read(gguf_file: Path):
    """(reader, metadata {key: value}) of a GGUF file; a file that is not one is refused."""
    from gguf import GGUFReader

    if not gguf_file.is_file():
        raise ConversionError(f"{gguf_file}: no such file")
    if not is_gguf(gguf_file):
        raise ConversionError(f"{gguf_file}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        reader = GGUFReader(str(gguf_file))
        meta = {k: f.contents() for k, f in reader.fields.items()}
    except Exception as e:  # a truncated or corrupt file: the reader's own words
        raise ConversionError(f"{gguf_file}: unreadable GGUF ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    return reader, meta


def fingerprint(gguf_file: Path) -> str:
    st = gguf_file.stat()
    return hashlib.sha256(f"{gguf_file.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def quantization(reader) -> tuple[str, dict]:
    """('Q4_1', {'Q4_1': 210, 'Q8_0': 1, 'F32': 61}): the most common non-float tensor type ('' if none) and all."""
    types = Counter(t.tensor_type.name for t in reader.tensors)
    quantized = Counter({k: v for k, v in types.items() if k not in FLOAT_TYPES})
    return (quantized.most_common(1)[0][0] if quantized else ""), dict(types.most_common())


# ------------------------------------------------------------------------------------------------------ checks
def check_supported(gguf_file: Path, reader, meta: dict) -> tuple[str, str]:
    """(architecture, tokenizer model) when transformers' loader handles both and reads every model-shaping key and
    tensor of the file; else a ConversionError naming what it would get wrong."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_TO_TRANSFORMERS_MAPPING

    arch = meta.get("general.architecture")
    loadable = sorted(set(GGUF_TO_TRANSFORMERS_MAPPING["config"]) - {"general", "tokenizer", "t5", "umt5"})
    if arch not in loadable:
        raise ConversionError(f"{gguf_file}: architecture '{arch}' is not one transformers' GGUF loader turns into a "
                              f"causal LM (it handles {', '.join(loadable)})")
    model = meta.get("tokenizer.ggml.model")
    if model not in ("gpt2", "llama"):
        raise ConversionError(f"{gguf_file}: tokenizer model '{model}' cannot be imported exactly (this imports "
                              "'gpt2' byte-level BPE and 'llama' SentencePiece vocabularies)")
    if model == "gpt2" and meta.get("tokenizer.ggml.pre") not in PRE_TOKENIZERS:
        raise ConversionError(f"{gguf_file}: byte-level BPE pre-tokenizer '{meta.get('tokenizer.ggml.pre')}' is not "
                              f"one this imports exactly ({', '.join(sorted(PRE_TOKENIZERS))})")
    arch_keys = GGUF_TO_TRANSFORMERS_MAPPING["config"][arch]
    for key in meta:
        rest = key[len(arch) + 1:]
        if key.startswith(arch + ".") and rest not in arch_keys:
            check = HARMLESS_ARCH_KEYS.get(rest)
            if check is None or not check(meta, arch):
                raise ConversionError(f"{gguf_file}: metadata {key} = {meta[key]!r} is not read by transformers' GGUF "
                                      "loader, so the imported model would differ from the GGUF's")
    return arch, model


@contextmanager
def name_tables_once():
    """transformers' GGUF name mapping rebuilds gguf's tensor-name table for every submodule (about 7 s for a
    30-layer model on a busy 2-core machine): within the block the table is built once per architecture."""
    import functools

    import gguf as gguf_py

    build = gguf_py.get_tensor_name_map
    gguf_py.get_tensor_name_map = functools.lru_cache(maxsize=None)(build)
    try:
        yield
    finally:
        gguf_py.get_tensor_name_map = build


def check_tensors(gguf_file: Path, reader, model) -> None:
    """Every tensor of the file has a place in the loaded model (the loader drops the others silently) and every
    parameter is a plain float tensor (nothing left in GGUF blocks)."""
    import torch
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    arch = reader.fields["general.architecture"].contents()
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=model.config.to_dict())
    with name_tables_once():
        placed = get_gguf_hf_weights_map(model, processor)  # the loader's own GGUF -> transformers name map
    dropped = [t.name for t in reader.tensors if t.name not in placed]
    if dropped:
        raise ConversionError(f"{gguf_file}: {len(dropped)} tensor(s) transformers' GGUF loader would drop: "
                              f"{', '.join(dropped[:5])}")
    odd = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
    if odd:
        raise ConversionError(f"{gguf_file}: {len(odd)} parameter(s) not dequantized to float32: {odd[:3]}")


# ------------------------------------------------------------------------------------------------------ tokenizer
def special_tokens(meta: dict, tokens: list[str]) -> dict:
    """{'bos_token': '<|im_start|>', ...} from the metadata's ids (pad only when it names one)."""
    out = {}
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        i = meta.get(f"tokenizer.ggml.{key}")
        if isinstance(i, int) and 0 <= i < len(tokens):
            out[f"{name}_token"] = tokens[i]
    return out


def added_tokens_processor(meta: dict, tokens: list[str], add_bos_default: bool):
    """The post-processor adding what llama.cpp adds around a text: BOS and/or EOS per tokenizer.ggml.add_bos_token /
    add_eos_token (absent: llama.cpp's default, BOS for SentencePiece and Llama-3's BPE); None for nothing (SmolLM2)."""
    from tokenizers import processors

    ids = [meta.get(f"tokenizer.ggml.{kind}_token_id") if meta.get(f"tokenizer.ggml.add_{kind}_token", default)
           else None for kind, default in (("bos", add_bos_default), ("eos", False))]
    if all(i is None for i in ids):
        return None
    bos, eos = ([f"{tokens[i]}:0"] if i is not None else [] for i in ids)
    return processors.TemplateProcessing(single=" ".join(bos + ["$A:0"] + eos),
                                         special_tokens=sorted({(tokens[i], i) for i in ids if i is not None}))


def byte_level_bpe(meta: dict):
    """The tokenizers.Tokenizer of a "gpt2" vocabulary: BPE over the GGUF's tokens and merges (no byte fallback, no
    unk), llama.cpp's pre-tokenizer for tokenizer.ggml.pre, the ByteLevel decoder, control tokens as special added
    tokens and user-defined ones as plain added tokens (both matched before BPE, as llama.cpp does)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    merges = []
    for m in meta.get("tokenizer.ggml.merges") or []:
        cut = m.find(" ", 1)  # as llama.cpp splits a merge
        merges.append((m[:cut], m[cut + 1:]))
    regex, digits, ignore_merges, add_bos = PRE_TOKENIZERS[meta["tokenizer.ggml.pre"]]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, byte_fallback=False,
                              ignore_merges=ignore_merges))
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    if regex is None:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True))
    else:
        steps += [pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                  pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]
    tk.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                           for i, t in enumerate(types) if t == CONTROL])
    tk.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                   for i, t in enumerate(types) if t == USER_DEFINED])
    tk.post_processor = added_tokens_processor(meta, tokens, add_bos_default=add_bos) or \
        processors.ByteLevel(trim_offsets=False)
    return tk


def build_tokenizer(gguf_file: Path, meta: dict, tokenizer_model: str):
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokens = meta["tokenizer.ggml.tokens"]
    if len(set(tokens)) != len(tokens):
        raise ConversionError(f"{gguf_file}: the vocabulary has {len(tokens) - len(set(tokens))} duplicate token "
                              "string(s); no tokenizer.json can hold it")
    specials = special_tokens(meta, tokens)
    arch = meta["general.architecture"]
    extra = {"model_max_length": meta[f"{arch}.context_length"]} if f"{arch}.context_length" in meta else {}
    if tokenizer_model == "gpt2":
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=byte_level_bpe(meta), clean_up_tokenization_spaces=False,
                                            **specials, **extra)
    else:  # SentencePiece: transformers' converter, with the special tokens it gets wrong set from the metadata
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        for name, token in specials.items():
            setattr(tokenizer, name, token)
        if "pad_token" not in specials:
            tokenizer.pad_token = None
        # transformers' converter ignores tokenizer.ggml.add_bos_token: llama.cpp adds the BOS to every SentencePiece
        # text unless the file says not to
        tokenizer.backend_tokenizer.post_processor = added_tokens_processor(meta, tokens, add_bos_default=True) or \
            processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    tokenizer.chat_template = meta.get("tokenizer.chat_template")
    vocab = tokenizer.get_vocab()
    wrong = [i for i, t in enumerate(tokens) if vocab.get(t) != i]
    if wrong or len(vocab) != len(tokens):
        raise ConversionError(f"{gguf_file}: the built tokenizer's vocabulary differs from the GGUF's "
                              f"({len(vocab)} vs {len(tokens)} tokens; first differing id {wrong[:1]})")
    return tokenizer


# ------------------------------------------------------------------------------------------------------ import
@contextmanager
def no_progress_bars():
    """transformers' own bars (loading, writing shards) and the GGUF loader's tqdm, off for the block: the import
    prints one line of its own."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as loader
    from transformers.utils import logging as hf_logging

    was, bar = hf_logging.is_progress_bar_enabled(), loader.tqdm
    hf_logging.disable_progress_bar()
    loader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        loader.tqdm = bar
        if was:
            hf_logging.enable_progress_bar()


def load_model(gguf_file: Path):
    """The GGUF-loaded model, dequantized to float32 on the CPU, with its GGUF quantizer state cleared."""
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    model, info = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32, output_loading_info=True,
        quantization_config=GgufConfig(gguf_file=gguf_file.name, dequantize=True))
    missing = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
    if missing:
        raise ConversionError(f"{gguf_file}: {len(missing)} weight(s) of the model are not in the file: {missing[:3]}")
    # Fault 1: everything is a plain dense float32 module now, but save_pretrained still sees a GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def is_imported(out: Path, **expected) -> bool:
    """out holds an import by this version of the code whose record has the expected values."""
    if not (Path(out) / RECORD).is_file():
        return False
    record = json.loads((Path(out) / RECORD).read_text())
    return record.get("importer_version") == VERSION and all(record.get(k) == v for k, v in expected.items())


def import_gguf(gguf_file, out_dir, max_shard_size: str = "4GB", quiet: bool = False) -> Path:
    """FILE.gguf -> out_dir (written atomically; reused when it holds this file's import).  Returns out_dir."""
    gguf_file, out = Path(gguf_file), Path(out_dir)
    fp = fingerprint(gguf_file) if gguf_file.is_file() else ""
    if is_imported(out, source_fingerprint=fp):
        return out
    reader, meta = read(gguf_file)
    arch, tokenizer_model = check_supported(gguf_file, reader, meta)
    with no_progress_bars(), name_tables_once():
        tokenizer = build_tokenizer(gguf_file, meta, tokenizer_model)
        model = load_model(gguf_file)
        check_tensors(gguf_file, reader, model)

    tokens = meta["tokenizer.ggml.tokens"]
    generation = model.generation_config
    eos = list(dict.fromkeys(meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
                             if k in meta))  # generation also stops at an end-of-turn token that is not the EOS
    ids = {"bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
           "eos_token_id": (eos[0] if len(eos) == 1 else eos) if eos else None,
           "pad_token_id": meta.get("tokenizer.ggml.padding_token_id")}
    for name, value in ids.items():  # the metadata's ids, and no others (a pad only when it names one)
        setattr(generation, name, value)
        setattr(model.config, name, value[0] if isinstance(value, list) else value)
    quant, types = quantization(reader)
    with no_progress_bars(), atomic_folder(out) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        generation.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps({
            "source": str(gguf_file.resolve()), "source_fingerprint": fp, "source_sha256": sha256(gguf_file),
            "direction": "gguf->transformers", "importer_version": VERSION, "architecture": arch,
            "model_type": model.config.model_type,
            "tokenizer": f"{tokenizer_model} ({meta.get('tokenizer.ggml.pre', 'spm')})", "vocab_size": len(tokens),
            "quantization": quant or "none", "tensor_types": types, "dequantized_to": "float32",
            "lossless_from_gguf": not quant}, indent=2) + "\n")
    if not quiet:
        counts = ", ".join(f"{n} {kind}" for kind, n in types.items())
        note = (f"weights dequantized from the GGUF's {quant} quantization ({counts} tensors) to float32: they are "
                "NOT the original model's weights") if quant else \
            f"weights converted exactly from the GGUF's {'/'.join(types)} tensors to float32"
        print(f"{gguf_file.name}: {note}", file=sys.stderr, flush=True)
    return out


def default_out(gguf_file: Path) -> Path:
    from . import CACHE

    return CACHE.resolve() / "converted" / f"{gguf_file.stem}-{fingerprint(gguf_file)[:8]}"
