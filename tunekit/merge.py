"""Merge a LoRA adapter into its unquantized base and save a plain transformers model (sharded safetensors +
tokenizer), checked against the adapter model on a probe batch, written to a temporary folder renamed into place.

    tunekit merge --adapter out/llama2-qlora --output out/llama2-qlora-merged [--base /models/Llama-2-7b-hf]
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from . import prompts, runfolder
from .atomic import atomic_folder
from .errors import ArgumentError, Parser, main_entry

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# The check's tolerance on logits, relative to the largest logit: fp32 agrees to rounding (1.75e-5 measured on the
# 28-layer ChatGLM2-6B shape with a strongly trained adapter, hence 1e-4), bf16 (8-bit mantissa) to a few parts in a
# hundred; a wrong merge (a missed or misplaced delta) is off by far more than either.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def available_bytes(device: str) -> int:
    import psutil  # accelerate's dependency

    return torch.cuda.mem_get_info()[0] if device == "cuda" else psutil.virtual_memory().available


def compute_dtype(n_params: int, device: str, save_dtype: torch.dtype) -> torch.dtype:
    """fp32 where 1.25x the fp32 model fits, so W + BA is rounded once: merged in bf16, a strongly trained adapter on a
    28-layer model drifted 8% of the largest logit from the adapter model (ChatGLM2-6B shape, H200)."""
    return torch.float32 if available_bytes(device) >= n_params * 4 * 1.25 else save_dtype


def check_base(base: str, trust_remote_code: bool = False) -> None:
    from .preflight import check_remote_code

    config = runfolder.base_config(base, "--base")
    check_remote_code(base, trust_remote_code)
    quant = config.get("quantization_config")
    if quant:
        raise ArgumentError(f"--base: {base} is quantized ({quant.get('quant_method', '?')}); a LoRA adapter cannot "
                            "be merged into 4-bit or GPTQ weights. Pass the original unquantized model with --base")


def check_adapter_fits(run, base: str, trust_remote_code: bool = False) -> int:
    """Every adapted module exists in the base with the adapter's in/out sizes, checked on a meta-device copy before
    any weight is read (not a size-mismatch trace from inside PEFT); returns the base's parameter count."""
    from safetensors import safe_open

    adapter, weights = run.path, run.path / "adapter_model.safetensors"
    model_class, config = runfolder.model_class_and_config(run, base, trust_remote_code)
    with torch.device("meta"):
        empty = model_class.from_config(config, trust_remote_code=trust_remote_code)
    modules = dict(empty.named_modules())
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            if not (match := re.match(r"(?:base_model\.model\.)?(.+?)\.lora_([AB])\.", key)):
                continue
            target, part = match.groups()
            module = modules.get(target)
            if module is None or not hasattr(module, "in_features"):
                raise ArgumentError(f"--adapter {adapter} adapts '{target}', which the base {base} (model_type "
                                    f"'{config.model_type}') does not have: the adapter was trained on another model; "
                                    "pass the model it was trained on with --base")
            shape = f.get_slice(key).get_shape()
            got, want = (shape[1], module.in_features) if part == "A" else (shape[0], module.out_features)
            if got != want:
                raise ArgumentError(f"--adapter {adapter}: {key} has shape {list(shape)}, but '{target}' of the base "
                                    f"{base} has {'in' if part == 'A' else 'out'}_features={want}: the adapter "
                                    "was trained on another model (architecture or size); pass that model with --base")
    return sum(p.numel() for p in empty.parameters())


def probe_batch(tokenizer, n_tokens: int = 32) -> torch.Tensor:
    text = "Fine-tuning check: the merged model must give the same logits as base plus adapter. " * 4
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return torch.tensor([ids, ids[::-1]])


@torch.no_grad()
def merge(adapter: str, output: str, base: str | None = None, dtype: str = "bfloat16",
          max_shard_size: str = "2GB", overwrite: bool = False, trust_remote_code: bool = False) -> dict:
    run = runfolder.read(adapter, "--adapter")
    if run.adapter is None:
        raise ArgumentError(f"--adapter: {adapter} has no adapter_config.json: it is a full model already (a LoRA "
                            "run's output_dir is merged)")
    base = base or run.base
    if not base:
        raise ArgumentError("--base is required: the adapter does not record its base model")
    check_base(base, trust_remote_code)
    out = Path(output)
    if out.exists() and not overwrite:
        raise ArgumentError(f"--output: {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--output: {out} is a file; pass a folder for the merged model")
    n_params = check_adapter_fits(run, base, trust_remote_code)

    torch_dtype = DTYPES[dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a 7B merge is minutes faster on a GPU
    work_dtype = compute_dtype(n_params, device, torch_dtype)
    model, tokenizer = runfolder.load(run, base, quantized=False, dtype=work_dtype, device=device,
                                      trust_remote_code=trust_remote_code)
    probe = probe_batch(tokenizer).to(device)
    expected = model(input_ids=probe).logits.float()
    model = model.merge_and_unload(safe_merge=True)
    got = model(input_ids=probe).logits.float()
    diff = (got - expected).abs().max().item()
    relative = diff / max(expected.abs().max().item(), 1e-6)
    limit = TOLERANCE[work_dtype]
    if relative > limit:
        raise RuntimeError(f"merged logits differ from the adapter model's by {diff:.3g} ({relative:.2%} of the "
                           f"largest logit, more than {limit:.2%} for {work_dtype}); nothing was written")
    model = model.to(torch_dtype)  # rounded once, after the check
    if hasattr(model.config, "pretraining_tp"):
        model.config.pretraining_tp = 1
    model.config.use_cache = True

    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        # the prompt format trained with (for chat/generate/export) and how it was trained (its task: a reward
        # model is no seq_cls) go along
        for name in (prompts.FILE, runfolder.ARGS):
            if (run.path / name).is_file():
                shutil.copy2(run.path / name, Path(tmp) / name)
    report = {"base": base, "adapter": adapter, "output": str(out), "dtype": dtype,
              "merged_in": str(work_dtype).removeprefix("torch."), "probe_max_abs_diff": diff,
              "probe_relative_diff": relative}
    print(f"merged {adapter} into {base} -> {out} (probe logits: max |diff| {diff:.2e} = {relative:.2e} of the "
          f"largest logit, merged in {report['merged_in']})", flush=True)
    return report


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("--adapter", required=True, help="folder written by training with --use_lora")
    p.add_argument("--output", required=True, help="folder for the merged model")
    p.add_argument("--base", help="the unquantized base model (default: the one recorded in the adapter)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    p.add_argument("--max_shard_size", default="2GB")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--trust_remote_code", action="store_true", help="run code shipped in the base model folder")
    a = p.parse_args(argv)
    merge(a.adapter, a.output, a.base, a.dtype, a.max_shard_size, a.overwrite, a.trust_remote_code)


if __name__ == "__main__":
    main_entry(main)
