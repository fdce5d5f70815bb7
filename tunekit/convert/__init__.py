"""Original checkpoint layouts that need remote code <-> transformers' native models, exact both ways, without running
the checkpoint's code: ChatGLM2/3 (`chatglm`) <-> `glm` (chatglm2.py), Qwen-1 (`qwen`) <-> `qwen2` (qwen.py).

    python -m tunekit.convert MODEL [OUT]                           # prints the folder to train (MODEL if native)
    python -m tunekit.convert --reverse NATIVE OUT --original ORIGINAL
    python -m tunekit.convert FILE.gguf [OUT]                       # a GGUF -> a plain transformers folder (gguf.py)

Which converter runs is read from the checkpoint's config.json `model_type` through the families' one table
(tunekit.families.CONVERTERS).  This module holds what both converters share: reading and writing weights, the source
fingerprint that caches a conversion, writing the native folder, and the texts a converted tokenizer is checked on.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import ConversionError
from ..families import CONVERTERS, FAMILIES

# Documented defaults, relative to where the command runs (recipes/launch.sh runs it from the checkout): converted
# folders are cached under $TUNEKIT_CACHE (default .cache) and a converted tokenizer must also reproduce the texts
# of data/ when there is one.
CACHE = Path(os.environ.get("TUNEKIT_CACHE", ".cache"))
DATA_DIR = Path("data")
RECORD = "tunekit_conversion.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


# ------------------------------------------------------------------------------------------------------ dispatch
def converter_for(folder, reverse: bool = False) -> object | None:
    """The converter module for a folder in an original layout (by its model_type) or, with reverse, for a native
    folder of a family that has one; None for anything else."""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return None
    model_type = json.loads(cfg.read_text()).get("model_type")
    if reverse:
        name = next((f.converter for f in FAMILIES.values() if model_type in f.model_types and f.converter), None)
    else:
        name = CONVERTERS.get(model_type)
    return importlib.import_module(name) if name else None


# ------------------------------------------------------------------------------------------------------ weights
def weight_files(folder: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            names = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ConversionError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")
    return files


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in weight_files(Path(folder)):
        if f.suffix == ".safetensors":
            state.update(load_file(str(f)))
        else:  # pickled shards: tensors only, never code
            state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    return state


def save_weights(state: dict, folder: Path, max_shard_size: str = "4GB") -> None:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n].contiguous() for n in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def renamed(top: dict, per_layer: dict, layers: int, layer_names: tuple[str, str]) -> list[tuple[str, str]]:
    """(original, native) name pairs from {native: original} tables: the top-level ones, then every layer's (under
    layer_names = (original prefix, native prefix), with {n})."""
    pairs = [(original, native) for native, original in top.items()]
    for n in range(layers):
        src, dst = (prefix.format(n=n) for prefix in layer_names)
        pairs += [(src + original, dst + native) for native, original in per_layer.items()]
    return pairs


def rename_native(state: dict, layers: int, layer_names: tuple[str, str], top: dict, per_layer: dict,
                  fused: dict, layout: str) -> dict:
    """A native state dict under the original names: `top` and `per_layer` {native: original} renames (per layer under
    layer_names = (native prefix, original prefix) with {n}), `fused` {original: (native parts)} concatenated along the
    output dimension (weights, and biases when every part has one).  Every native tensor must find a place."""
    rest, out = dict(state), {}
    for a, b in top.items():
        out[b] = rest.pop(a)
    for n in range(layers):
        s, d = (prefix.format(n=n) for prefix in layer_names)
        for a, b in per_layer.items():
            out[d + b] = rest.pop(s + a)
        for b, parts in fused.items():
            for kind in ("weight", "bias"):
                got = [rest.pop(f"{s}{part}.{kind}", None) for part in parts]
                if all(g is not None for g in got):
                    out[f"{d}{b}.{kind}"] = torch.cat(got, dim=0)
                elif any(g is not None for g in got):
                    raise ConversionError(f"layer {n}: {kind} present for only some of {parts}")
    if rest:
        raise ConversionError(f"{len(rest)} native tensor(s) with no place in the {layout} layout: {sorted(rest)[:5]}")
    return out


def check_shapes(state: dict, model_class, config, where) -> None:
    """The converted tensors have exactly the target model's names and shapes (checked without allocating it)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        raise ConversionError(f"{where}: converted tensors do not match {model_class.__name__}'s: "
                              f"{sorted(set(got.items()) ^ set(expected.items()))[:5]}")


# ------------------------------------------------------------------------------------------------------ folders
def read_config(src: Path, what: str) -> dict:
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src}: no config.json (pass a {what} checkpoint folder)")
    try:
        return json.loads((src / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{src}/config.json: not valid JSON (line {e.lineno}: {e.msg})") from None


def check_model_type(cfg: dict, where: str, original: str, native: str, what: str) -> None:
    mt = cfg.get("model_type")
    if mt == native:
        raise ConversionError(f"{where}: model_type is already '{native}' (a native folder): train it directly")
    if mt != original:
        raise ConversionError(f"{where}: model_type '{mt}' is not '{original}'; this converts {what} folders")


def source_fingerprint(src: Path) -> str:
    """Names, sizes and times of the source's files plus its config: a changed source is converted again."""
    h = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    h.update((src / "config.json").read_bytes())
    return h.hexdigest()[:16]


def default_out(src: Path, native_type: str) -> Path:
    return CACHE.resolve() / "converted" / f"{src.resolve().name}-{native_type}-{source_fingerprint(src)[:8]}"


def is_cached(out: Path, fp: str) -> bool:
    return (out / RECORD).is_file() and json.loads((out / RECORD).read_text()).get("source_fingerprint") == fp


def copy_side_files(src: Path, dst: Path, skip=()) -> None:
    """Every plain file but the weights and their index (config, tokenizer, code: copied as files, never imported)."""
    dst.mkdir(exist_ok=True)
    for f in src.iterdir():
        weights = f.suffix in WEIGHT_SUFFIXES or f.name.endswith(".index.json")
        if f.is_file() and f.name not in skip and not weights:
            shutil.copy2(f, dst / f.name)


def write_native(tmp: Path, src: Path, state: dict, config, generation_config, tokenizer, originals: str,
                 record: dict, max_shard_size: str) -> None:
    """A converted folder: weights, config, generation config, tokenizer, the source's files under `originals` (for
    provenance and the reverse conversion) and the record that caches it."""
    save_weights(state, tmp, max_shard_size)
    config.save_pretrained(tmp)
    generation_config.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    copy_side_files(src, tmp / originals)
    (tmp / RECORD).write_text(json.dumps({"source": str(src.resolve()), **record}, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------------ tokenizers
def corpus(data_dir: Path = DATA_DIR):
    """Every text of the repository's data/ samples: chat turns, plain texts, classification texts and token lists."""
    from ..formats import PREFERENCE_FORMATS, normalise, preference_kind, read_records

    for path in sorted(Path(data_dir).glob("*.json*")):
        for i, rec in enumerate(read_records(str(path))):
            kind = preference_kind(rec)
            if kind:  # preference records: every turn and every answer, rejected ones too
                sample = PREFERENCE_FORMATS[kind][1](rec, f"{path} record {i}")
                yield from (m["content"] for turns in sample.values() if isinstance(turns, list) for m in turns)
                continue
            if isinstance(rec, dict) and ("label" in rec or "tokens" in rec):  # classification records
                yield from [rec[k] for k in ("text", "text_pair") if isinstance(rec.get(k), str)]
                if isinstance(rec.get("tokens"), list):
                    yield " ".join(rec["tokens"])
                continue
            sample = normalise(rec, f"{path} record {i}")
            if "text" in sample:
                yield sample["text"]
            else:
                yield from (m["content"] for m in sample["messages"])


def check_texts(extra=()):
    """Mixed Chinese/English lines a converted tokenizer must get exactly right: fixed edge cases, data/, `extra`."""
    edge = ["", " ", "  two  spaces  ", "\t制表符\tand tabs", "line one\nline two\n\n", "sop eop [Round 1]",
            "数字 12345 和 3.14159, 1e-5", "emoji 😀🚀 and ümlaut façade", "def f(x):\n    return x ** 2  # code",
            "中文English混合mixed文本。", "全角，标点！？“引号”", "   leading spaces", "trailing spaces   ",
            "[Round 1]\n\n问：你好\n\n答：", "URL https://example.com/a?b=c&d=e"]
    lines = list(edge)
    for text in corpus():
        lines += [line for line in text.split("\n") if line] + [text]
    return lines + list(extra)


def first_difference(got: list, want: list) -> int:
    return next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
