"""Checks that keep a run from executing code it was not asked to, or from failing deep inside a library:
remote code in a model folder, and the quantization backend Q-LoRA needs.  They read files only."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from .arguments import ArgumentError

# model_type of checkpoints that only exist as remote code, and the converter to a native transformers model.
CONVERTERS = {
    "chatglm": "python -m tunekit.convert_chatglm2",  # ChatGLM2/3-6B -> native glm
    "qwen": "python -m tunekit.convert_qwen",         # Qwen(1.0) -> native qwen2
}


def _auto_map(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArgumentError(f"{path}: not valid JSON ({e})") from None
    return data.get("auto_map") if isinstance(data, dict) else None


def check_remote_code(model_path: str | None, trust_remote_code: bool) -> None:
    """A checkpoint whose config.json / tokenizer_config.json maps classes to Python files in the folder (auto_map)
    is refused unless --trust_remote_code: transformers would import those files, running whatever they contain."""
    if not model_path:
        return
    folder = Path(model_path)
    if not folder.exists():
        raise ArgumentError(f"--model_name_or_path: {model_path} does not exist (a checkpoint folder is expected)")
    if trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        auto_map = _auto_map(folder / name)
        if not auto_map:
            continue
        model_type = ""
        if (folder / "config.json").is_file():
            try:
                model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
            except ValueError:
                pass
        hint = ""
        if model_type in CONVERTERS:
            hint = (f" For model_type '{model_type}' there is a better way: convert the checkpoint once with "
                    f"`{CONVERTERS[model_type]} {shlex.quote(str(folder))}` (it prints the converted folder) and "
                    "train that folder, which needs no remote code (recipes/*/train.sh does this by itself).")
        files = sorted({str(v).split(".")[0] + ".py" for v in _flatten(auto_map)})
        raise ArgumentError(
            f"{folder / name}: this checkpoint ships its own Python code ({', '.join(files)} via auto_map), which "
            f"loading it would run. Nothing from a model folder runs unless you pass --trust_remote_code, and only "
            f"pass it for a folder whose code you have read.{hint}")


def _flatten(auto_map: dict):
    for v in auto_map.values():
        if isinstance(v, (list, tuple)):
            yield from (x for x in v if x)
        elif v:
            yield v


def check_quantization_backend(model_path: str, q_lora: bool) -> None:
    """--q_lora on an unquantized checkpoint quantizes it with bitsandbytes: say so now, not in a library traceback
    after the tokenizer and data are loaded."""
    if not q_lora:
        return
    from .families import read_config

    existing = read_config(model_path).get("quantization_config")
    if existing and existing.get("quant_method") != "bitsandbytes":
        return  # e.g. GPTQ: its own backend is checked where it loads (tunekit/gptq.py)
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything at import time
        raise ArgumentError(f"--q_lora loads the model in 4 bits with bitsandbytes, which cannot be imported "
                            f"({type(e).__name__}: {e}). Install it: pip install 'bitsandbytes>=0.43.3' "
                            "(or train without --q_lora)") from None


# Oldest versions whose behaviour the project relies on (pitfalls.md §10.1); requirements.txt pins newer ones.
VERSION_FLOORS = {
    "transformers": ("5.0.0", "ZeRO-3 saves of PEFT adapters gather only the adapter (pitfall #5), GA loss fixes (#25)"),
    "peft": ("0.15.1", "missing-adapter-key and second-wrap warnings (#1), modules_to_save under ZeRO-3 (#5d)"),
}


def check_versions() -> None:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    for package, (floor, why) in VERSION_FLOORS.items():
        try:
            found = version(package)
        except PackageNotFoundError:
            raise ArgumentError(f"{package} is not installed: pip install -r requirements.txt") from None
        if Version(found) < Version(floor):
            raise ArgumentError(f"{package} {found} is older than {floor}, which this project needs ({why}): "
                                "pip install -r requirements.txt")
