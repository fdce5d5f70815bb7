"""GPTQ-Int4 checkpoints: load one to train LoRA on it (the packer that makes test checkpoints is tunekit/tiny/gptq.py).

The loader (tunekit/model.py) takes `gptq_load_kwargs` when config.json says `quant_method: gptq`.  The kernel must
have a backward pass: `gptq_torch` on CPU (never `auto`/`auto_trainable` there: TorchAtenLinear stops training after an
eval-first forward), `auto_trainable` on GPU (never `auto`: MarlinLinear cannot train).
`check_trainable_kernels` verifies what was actually loaded: a kernel without a backward trains nothing, silently.
"""
from __future__ import annotations

import os

from .errors import ArgumentError

QUANT_BUFFERS = ("qweight", "qzeros", "scales", "g_idx")
# Kernels that must not be used to train: no backward (Marlin, exllama), or a mode fixed on the first forward that
# turns training off after an eval/no-grad forward (TorchAtenLinear).
UNTRAINABLE_KERNELS = ("TorchAtenLinear",)
INSTALL_HINT = "pip install -r requirements-gptq.txt"


def require_gptq() -> None:
    """Raise ArgumentError saying how to install when optimum or gptqmodel is missing."""
    from importlib.util import find_spec

    missing = [name for name in ("optimum", "gptqmodel") if find_spec(name) is None]
    if missing:
        raise ArgumentError(f"this checkpoint is GPTQ-quantized, which needs {' and '.join(missing)} (not installed): "
                            f"run `{INSTALL_HINT}` (after requirements.txt), or train an unquantized checkpoint "
                            "with --q_lora (bitsandbytes)")
    # tokenicer (imported by gptqmodel) sets HF_HOME=/tmp/tokenicer_hf_home when it is unset, moving the Hugging Face
    # cache for the rest of the process: pin it to where it already is.
    from huggingface_hub import constants

    os.environ.setdefault("HF_HOME", constants.HF_HOME)


def gptq_backend(on_gpu: bool) -> str:
    return "auto_trainable" if on_gpu else "gptq_torch"


def gptq_load_kwargs(quant_config: dict, on_gpu: bool) -> dict:
    """from_pretrained kwargs to train LoRA on a GPTQ checkpoint whose config.json holds `quant_config`.

    transformers keeps the checkpoint's own quantization_config and takes only the loading attributes (`backend`,
    `max_input_length`) from the GPTQConfig passed here, so `bits` is only the required argument."""
    require_gptq()
    from transformers import GPTQConfig

    method = quant_config.get("quant_method")
    if method != "gptq":
        raise ArgumentError(f"gptq_load_kwargs: quant_method is '{method}', not 'gptq'")
    device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if on_gpu else "cpu"
    return {"quantization_config": GPTQConfig(bits=int(quant_config.get("bits", 4)), backend=gptq_backend(on_gpu)),
            "device_map": device_map}


def quantized_modules(model) -> dict:
    """{name: module} of every GPTQ quantized linear layer (anything carrying a `qweight` buffer)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "qweight") and hasattr(m, "scales")}


def quantized_tensor_names(model) -> list[str]:
    """State-dict names of every qweight/qzeros/scales/g_idx tensor (for snapshots in tests)."""
    return [name for name, _ in model.named_buffers() if name.rsplit(".", 1)[-1] in QUANT_BUFFERS]


def check_trainable_kernels(model) -> set[str]:
    """The GPTQ kernel classes of `model`; raise RuntimeError when any cannot train LoRA through it, or when a
    quantized tensor would be trained.  Call it after from_pretrained (and after get_peft_model)."""
    layers = quantized_modules(model)
    if not layers:
        raise RuntimeError("no GPTQ quantized layer found: the checkpoint was loaded unquantized")
    kinds = {type(m).__name__: m for m in layers.values()}
    bad = sorted(k for k, m in kinds.items()
                 if k in UNTRAINABLE_KERNELS or not getattr(type(m), "SUPPORTS_TRAINING", False))
    if bad:
        raise RuntimeError(f"GPTQ kernel(s) {bad} cannot train LoRA (no backward pass, or inference-only after an "
                           f"eval forward): load with backend='{gptq_backend(False)}' on CPU or "
                           f"'{gptq_backend(True)}' on GPU (gptq_load_kwargs)")
    trainable = [f"{n}.{p}" for n, m in layers.items() for p, t in m.named_parameters(recurse=False)
                 if t.requires_grad]
    if trainable:
        raise RuntimeError(f"quantized layers have trainable tensors: {trainable[:5]}")
    return set(kinds)
