"""Everything a model family needs, one module per family (llama2.py, qwen.py, chatglm2.py): LoRA targets, chat
template, special tokens, data quirks, and the converter of its original layout when it has one.

The family is chosen by `--family`, defaulting from the checkpoint's own config.json `model_type`, never its path.
To add a family: write tunekit/families/<name>.py with `FAMILY = Family(...)` and add it to FAMILIES below.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArgumentError
from . import bert, chatglm2, llama2, qwen
from .base import Family

__all__ = ["FAMILIES", "CONVERTERS", "Family", "read_config", "resolve_family"]


FAMILIES = {f.name: f for f in (llama2.FAMILY, qwen.FAMILY, chatglm2.FAMILY, bert.FAMILY)}
# The one converter table: original model_type -> converter module (tunekit/convert/ dispatches on it).
CONVERTERS = {f.original_model_type: f.converter for f in FAMILIES.values() if f.converter}


def read_config(model_path: str) -> dict:
    cfg = Path(model_path) / "config.json"
    if not cfg.is_file():
        raise ArgumentError(f"--model_name_or_path: {model_path} has no config.json (is it a checkpoint folder?)")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ArgumentError(f"{cfg}: not valid JSON (line {e.lineno}: {e.msg})") from None


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
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    raise ArgumentError(f"{model_path}/config.json has model_type '{model_type}', which no family covers; "
                        f"pass --family (one of: {known}) if the architecture matches one")
