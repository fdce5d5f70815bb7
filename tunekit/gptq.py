"""GPTQ-Int4 checkpoints: load one to train LoRA on it, with a kernel that has a backward pass (the packer that makes
test checkpoints is tunekit/tiny/gptq.py); `check_trainable_kernels` verifies what was actually loaded."""
from __future__ import annotations

import os

from .errors import ArgumentError

QUANT_BUFFERS = ("qweight", "qzeros", "scales", "g_idx")
# Kernels that must not be used to train: no backward (Marlin, exllama), or a mode fixed on the first forward that
# turns training off after an eval/no-grad forward (TorchAtenLinear).
UNTRAINABLE_KERNELS = ("TorchAtenLinear",)
# Never `auto`: MarlinLinear cannot train; on CPU, TorchAtenLinear stops training after an eval-first forward.
BACKEND = {False: "gptq_torch", True: "auto_trainable"}  # by on_gpu


def require_gptq() -> None:
    """Raise ArgumentError saying how to install when optimum or gptqmodel is missing."""
    from importlib.util import find_spec

    missing = [name for name in ("optimum", "gptqmodel") if find_spec(name) is None]
    if missing:
        raise ArgumentError(f"this checkpoint is GPTQ-quantized, which needs {' and '.join(missing)} (not installed): "
                            "run `pip install -r requirements-gptq.txt` (after requirements.txt), or train an "
                            "unquantized checkpoint with --q_lora (bitsandbytes)")
    # tokenicer (imported by gptqmodel) sets HF_HOME=/tmp/tokenicer_hf_home when it is unset, moving the Hugging Face
    # cache for the rest of the process: pin it to where it already is.
    from huggingface_hub import constants

    os.environ.setdefault("HF_HOME", constants.HF_HOME)


def gptq_load_kwargs(quant_config: dict, on_gpu: bool) -> dict:
    """from_pretrained kwargs for a GPTQ checkpoint's quantization_config (transformers keeps its own config, takes
    only our `backend`)."""
    require_gptq()
    from transformers import GPTQConfig

    device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if on_gpu else "cpu"
    return {"quantization_config": GPTQConfig(bits=int(quant_config.get("bits", 4)), backend=BACKEND[on_gpu]),
            "device_map": device_map}


def check_trainable_kernels(model) -> set[str]:
    """The GPTQ kernel classes of `model`; RuntimeError when one cannot train LoRA or a quantized tensor would train."""
    layers = {name: m for name, m in model.named_modules() if hasattr(m, "qweight") and hasattr(m, "scales")}
    if not layers:
        raise RuntimeError("no GPTQ quantized layer found: the checkpoint was loaded unquantized")
    kinds = {type(m).__name__: m for m in layers.values()}
    bad = sorted(k for k, m in kinds.items()
                 if k in UNTRAINABLE_KERNELS or not getattr(type(m), "SUPPORTS_TRAINING", False))
    if bad:
        raise RuntimeError(f"GPTQ kernel(s) {bad} cannot train LoRA (no backward pass, or inference-only after an "
                           f"eval forward): load with backend='{BACKEND[False]}' on CPU or "
                           f"'{BACKEND[True]}' on GPU (gptq_load_kwargs)")
    trainable = [f"{n}.{p}" for n, m in layers.items() for p, t in m.named_parameters(recurse=False)
                 if t.requires_grad]
    if trainable:
        raise RuntimeError(f"quantized layers have trainable tensors: {trainable[:5]}")
    return set(kinds)
