"""Merge a LoRA adapter into its unquantized base and save a plain transformers model (sharded safetensors +
tokenizer), checked against the adapter model on a probe batch, written to a temporary folder renamed into place.

    python -m tunekit.merge --adapter out/llama2-qlora --output out/llama2-qlora-merged [--base /models/Llama-2-7b-hf]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch

from . import prompts
from .atomic import atomic_folder
from .errors import ArgumentError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# The check's tolerance on logits, relative to the largest logit: fp32 agrees to rounding (1.75e-5 measured on the
# 28-layer ChatGLM2-6B shape with a strongly trained adapter, hence 1e-4), bf16 (8-bit mantissa) to a few parts in a
# hundred; a wrong merge (a missed or misplaced delta) is off by far more than either.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def available_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0


def compute_dtype(n_params: int, device: str, save_dtype: torch.dtype) -> torch.dtype:
    """The merge runs in fp32 where 1.25x the fp32 model fits: W + BA is rounded to the saved dtype once, and the
    check holds to rounding.  In bf16 the adapter model and the merged one each round differently, and a strongly
    trained adapter on a 28-layer model drifted 8% of the largest logit apart (ChatGLM2-6B shape, H200)."""
    return torch.float32 if available_bytes(device) >= n_params * 4 * 1.25 else save_dtype


def load_adapter(base_model, adapter_dir: str, is_trainable: bool = False):
    """PeftModel.from_pretrained on a bare base model.  On a model already wrapped by get_peft_model the adapter
    would load as nothing, silently (pitfall #1), so that is refused."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(base_model, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in base_model.modules()):
        raise ArgumentError("the base model already carries LoRA layers (get_peft_model was called on it): load the "
                            "adapter onto a freshly loaded base model instead")
    with warnings.catch_warnings(record=True) as caught:  # PEFT only warns when adapter weights do not load
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)
    for w in caught:
        if "missing adapter keys" in str(w.message):
            raise ArgumentError(f"{adapter_dir}: some adapter weights were not loaded, so the model would silently "
                                f"behave more like its base: {str(w.message)[:300]}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


def check_base(base: str, trust_remote_code: bool = False) -> None:
    from .preflight import check_remote_code

    cfg = Path(base) / "config.json"
    if not cfg.is_file():
        raise ArgumentError(f"--base: {base} has no config.json; pass the original (unquantized) model folder")
    check_remote_code(base, trust_remote_code)
    quant = json.loads(cfg.read_text()).get("quantization_config")
    if quant:
        raise ArgumentError(f"--base: {base} is quantized ({quant.get('quant_method', '?')}); a LoRA adapter cannot "
                            "be merged into 4-bit or GPTQ weights. Pass the original unquantized model with --base")


def check_adapter_fits(adapter: str, base: str, trust_remote_code: bool = False) -> int:
    """Every module the adapter adapts exists in the base, with the in/out sizes the adapter was trained on.  Checked
    on an empty (meta-device) copy of the base, before any weight is read: a Qwen adapter on a Llama base, or a 7B
    adapter on a 13B base, is refused here instead of failing inside PEFT with a size-mismatch trace."""
    from safetensors import safe_open

    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        raise ArgumentError(f"--adapter: {adapter} has no adapter_model.safetensors")
    model_class, config = base_class_and_config(adapter, base, trust_remote_code)
    with torch.device("meta"):
        empty = model_class.from_config(config, trust_remote_code=trust_remote_code)
    modules = dict(empty.named_modules())
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            name = key.removeprefix("base_model.model.")
            part = ".lora_A." if ".lora_A." in name else ".lora_B." if ".lora_B." in name else None
            if part is None:
                continue
            target = name.split(part)[0]
            module = modules.get(target)
            if module is None or not hasattr(module, "in_features"):
                raise ArgumentError(f"--adapter {adapter} adapts '{target}', which the base {base} (model_type "
                                    f"'{config.model_type}') does not have: the adapter was trained on another model; "
                                    "pass the model it was trained on with --base")
            shape = f.get_slice(key).get_shape()
            got, want = (shape[1], module.in_features) if part == ".lora_A." else (shape[0], module.out_features)
            if got != want:
                raise ArgumentError(f"--adapter {adapter}: {key} has shape {list(shape)}, but '{target}' of the base "
                                    f"{base} has {'in' if part == '.lora_A.' else 'out'}_features={want}: the adapter "
                                    "was trained on another model (architecture or size); pass that model with --base")
    return sum(p.numel() for p in empty.parameters())


def base_class_and_config(adapter: str, base: str, trust_remote_code: bool = False):
    """The auto class of the adapter's task (PEFT's task_type: a causal LM or a classifier) and the base's config;
    a classifier's labels and pad id come from the config.json saved beside its adapter."""
    from transformers import AutoConfig

    from .tasks import TASKS

    task_type = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("task_type") or "CAUSAL_LM"
    task = next((t for t in TASKS.values() if t.peft_task_type == task_type), None)
    if task is None:
        raise ArgumentError(f"--adapter {adapter}: task_type {task_type!r} is not one this project trains")
    config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    if task.classifier and (Path(adapter) / "config.json").is_file():
        saved = json.loads((Path(adapter) / "config.json").read_text())
        config.update({k: saved[k] for k in ("id2label", "label2id", "pad_token_id") if k in saved})
        config.id2label = {int(k): v for k, v in config.id2label.items()}
    return task.model_class(), config


def probe_batch(tokenizer, n_tokens: int = 32) -> torch.Tensor:
    text = "Fine-tuning check: the merged model must give the same logits as base plus adapter. " * 4
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return torch.tensor([ids, ids[::-1]])


@torch.no_grad()
def merge(adapter: str, output: str, base: str | None = None, dtype: str = "bfloat16",
          max_shard_size: str = "2GB", overwrite: bool = False, trust_remote_code: bool = False) -> dict:
    from transformers import AutoTokenizer

    adapter_cfg = Path(adapter) / "adapter_config.json"
    if not adapter_cfg.is_file():
        raise ArgumentError(f"--adapter: {adapter} has no adapter_config.json (is it a LoRA output folder?)")
    base = base or json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
    if not base:
        raise ArgumentError("--base is required: the adapter does not record its base model")
    check_base(base, trust_remote_code)
    out = Path(output)
    if out.exists() and not overwrite:
        raise ArgumentError(f"--output: {out} already exists; pass --overwrite to replace it")
    n_params = check_adapter_fits(adapter, base, trust_remote_code)

    torch_dtype = DTYPES[dtype]
    tokenizer = AutoTokenizer.from_pretrained(adapter, trust_remote_code=trust_remote_code)  # the tokenizer trained with the adapter, template included
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a 7B merge is minutes faster on a GPU
    work_dtype = compute_dtype(n_params, device, torch_dtype)
    model_class, config = base_class_and_config(adapter, base, trust_remote_code)
    model = model_class.from_pretrained(base, config=config, dtype=work_dtype, device_map={"": device},
                                        trust_remote_code=trust_remote_code)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # as training did; never drop padded rows
        model.resize_token_embeddings(len(tokenizer))  # before loading: the adapter carries the resized rows
    model = load_adapter(model, adapter).eval()
    probe = probe_batch(tokenizer).to(device)
    expected = model(input_ids=probe).logits.float()
    model = model.merge_and_unload(safe_merge=True)
    got = model(input_ids=probe).logits.float()
    diff = (got - expected).abs().max().item()
    relative = diff / max(expected.abs().max().item(), 1e-6)
    if relative > TOLERANCE[work_dtype]:
        raise RuntimeError(f"merged logits differ from the adapter model's by {diff:.3g} ({relative:.2%} of the largest "
                           f"logit, more than {TOLERANCE[work_dtype]:.2%} for {work_dtype}); nothing was written")
    model = model.to(torch_dtype)  # rounded once, after the check
    if hasattr(model.config, "pretraining_tp"):
        model.config.pretraining_tp = 1
    model.config.use_cache = True

    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        if (Path(adapter) / prompts.FILE).is_file():  # the prompt format trained with, for chat/generate/export
            shutil.copy2(Path(adapter) / prompts.FILE, Path(tmp) / prompts.FILE)
    report = {"base": base, "adapter": adapter, "output": str(out), "dtype": dtype,
              "merged_in": str(work_dtype).removeprefix("torch."), "probe_max_abs_diff": diff,
              "probe_relative_diff": relative}
    print(f"merged {adapter} into {base} -> {out} (probe logits: max |diff| {diff:.2e} = {relative:.2e} of the "
          f"largest logit, merged in {report['merged_in']})", flush=True)
    return report


def main(argv=None):
    from .noise import quiet_libraries

    quiet_libraries()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="folder written by finetune.py with --use_lora")
    p.add_argument("--output", required=True, help="folder for the merged model")
    p.add_argument("--base", help="the unquantized base model (default: the one recorded in the adapter)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    p.add_argument("--max_shard_size", default="2GB")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--trust_remote_code", action="store_true", help="run code shipped in the base model folder")
    a = p.parse_args(argv)
    try:
        merge(a.adapter, a.output, a.base, a.dtype, a.max_shard_size, a.overwrite, a.trust_remote_code)
    except ArgumentError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
