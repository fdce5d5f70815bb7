"""The family registry (one module per family: LoRA targets, data quirks, converter; never a prompt format: the
tokenizer's chat template is), chosen by `--family` or else config.json's `model_type`; any other model is "any"."""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from ..errors import ArgumentError
from . import bert, chatglm2, llama2, qwen
from .base import Family  # noqa: F401 (re-exported)

# "any": a model no family knows (Qwen3, Mistral, Gemma, Phi, ...): LoRA on all its linear layers, nothing else.
FAMILIES = {f.name: f for f in (llama2.FAMILY, qwen.FAMILY, chatglm2.FAMILY, bert.FAMILY, Family("any", ()))}
# The one converter table: original model_type -> converter module (tunekit/convert/ dispatches on it).
CONVERTERS = {f.original_model_type: f.converter for f in FAMILIES.values() if f.converter}


def read_json(path: Path) -> dict:
    """A model or run folder's JSON file as a dict ({} when absent or not an object), or one error line naming it;
    parsed once per version of the file (a run's checks each ask for config.json)."""
    path = Path(path)
    if not path.is_file():
        return {}
    stat = path.stat()
    return copy.deepcopy(_parse(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=64)
def _parse(path: str, mtime_ns: int, size: int) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArgumentError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def read_config(model_path: str) -> dict:
    if not (Path(model_path) / "config.json").is_file():
        raise ArgumentError(f"--model_name_or_path: {model_path} has no config.json (is it a checkpoint folder?)")
    return read_json(Path(model_path) / "config.json")


def resolve_family(model_path: str, family: str | None) -> Family:
    """The explicit --family, else the one whose model_types hold the checkpoint's config.json model_type."""
    known = ", ".join(FAMILIES)
    if family:
        if family not in FAMILIES:
            raise ArgumentError(f"--family '{family}' is unknown; choose one of: {known}")
        return FAMILIES[family]
    model_type = read_config(model_path).get("model_type")
    if model_type in CONVERTERS:
        raise ArgumentError(f"{model_path}/config.json has model_type '{model_type}', an original layout that needs the "
                            f"checkpoint's own code: convert it first with `python -m tunekit.convert {model_path}` "
                            "(the recipes' train.sh does this for you)")
    return next((fam for fam in FAMILIES.values() if model_type in fam.model_types), FAMILIES["any"])
