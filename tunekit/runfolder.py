"""What a run leaves behind, read once (`read`), and the model it trained, loaded one way for every command after
training (`load`, with training's functions): the base quantized as trained unless asked otherwise, then the adapter."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

from . import prompts
from .errors import ArgumentError
from .families import read_json

ARGS, ADAPTER, CONFIG = "finetune_args.json", "adapter_config.json", "config.json"
LABEL_KEYS = ("id2label", "label2id", "pad_token_id")  # a classifier's head config, saved beside its adapter


@dataclass(frozen=True)
class RunFolder:
    path: Path
    args: dict            # finetune_args.json: every resolved argument of training ({} for a folder from elsewhere)
    adapter: dict | None  # adapter_config.json, or None for a full model
    config: dict          # config.json: the model's, or a classifier's head config beside its adapter
    fmt: prompts.ChatFormat

    @property
    def base(self) -> str:
        """The folder holding the base weights: the adapter's recorded base, or this folder itself."""
        return (self.adapter.get("base_model_name_or_path") or "") if self.adapter is not None else str(self.path)

    @property
    def task(self):
        from .tasks import TASKS, get_task

        if self.args.get("task"):
            return get_task(self.args["task"])
        if self.adapter is not None:
            kind = self.adapter.get("task_type") or "CAUSAL_LM"
            task = next((t for t in TASKS.values() if t.peft_task_type == kind), None)
            if task is None:
                raise ArgumentError(f"{self.path / ADAPTER}: task_type {kind!r} is not one tunekit trains")
            return task
        arch = (self.config.get("architectures") or [""])[0]
        return next((t for t in TASKS.values() if arch.endswith(t.architecture_suffix)), TASKS["causal_lm"])

    def family(self, name: str | None = None):
        """--family, else the run's, else the one of the base's config.json model_type."""
        from .families import resolve_family

        return resolve_family(self.base, name or self.args.get("family") or self.fmt.family)

    def lora_arguments(self):
        """The run's LoRA and quantization arguments (its bnb_4bit_* settings), defaults where it recorded none."""
        from .arguments import LoraArguments

        return LoraArguments(**{f.name: self.args[f.name] for f in fields(LoraArguments) if f.name in self.args})

    def trained_in_4bit(self) -> bool:
        """A Q-LoRA adapter whose base bitsandbytes quantized on load (not a GPTQ base, not a merged model)."""
        quantized_base = base_config(self.base).get("quantization_config")
        return self.adapter is not None and bool(self.args.get("q_lora")) and not quantized_base


def read(folder, flag: str = "MODEL") -> RunFolder:
    path = Path(folder)
    if not path.is_dir():
        raise ArgumentError(f"{flag}: {folder} {'is a file' if path.exists() else 'does not exist'}; pass a folder "
                            "written by tunekit train (an adapter) or merge, or a model folder")
    adapter = read_json(path / ADAPTER) if (path / ADAPTER).is_file() else None
    config = read_json(path / CONFIG)
    if adapter is None and not config:
        raise ArgumentError(f"{flag}: {path} is neither an adapter folder ({ADAPTER}) nor a model folder "
                            f"({CONFIG}); pass the output_dir of a run, or its merged folder")
    run = RunFolder(path, read_json(path / ARGS), adapter, config, prompts.ChatFormat(**read_json(path / prompts.FILE)))
    if adapter is not None and not (path / "adapter_model.safetensors").is_file():
        raise ArgumentError(f"{flag}: {path} has {ADAPTER} but no adapter_model.safetensors: the run did not finish "
                            "saving; train again or pass another folder")
    return run


def read_for(command: str, folder, flag: str = "MODEL", base: str | None = None) -> RunFolder:
    """A run folder for `command`, checked before anything loads: its task is one the command serves, and its base
    (`base`, given as MODEL beside an --adapter, or the one the adapter records) is a model folder here."""
    run = read(folder, flag)
    run.task.require(command, run.path)
    if base:
        base_config(base, "MODEL")
    elif run.adapter is not None:
        base_config(run.base, f"{run.path}: its base")
    return run


def base_config(base: str, flag: str = "the base model") -> dict:
    path = Path(base) / CONFIG
    if not path.is_file():
        raise ArgumentError(f"{flag} {base!r} is not a model folder here (no {CONFIG}); pass the base with --base "
                            "(merge) or as MODEL with the run as --adapter")
    return read_json(path)


def model_class_and_config(run: RunFolder, base: str, trust_remote_code: bool = False):
    """The task's auto class and the base's config, with a classifier's labels and pad id from beside its adapter."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    if run.adapter is not None:
        config.update({k: run.config[k] for k in LABEL_KEYS if k in run.config})
        if "id2label" in run.config:
            config.id2label = {int(k): v for k, v in config.id2label.items()}
    return run.task.model_class(), config


def quantization_kwargs(run: RunFolder, base: str, quantized: bool | None, compute_dtype) -> dict:
    """from_pretrained kwargs for the base: a GPTQ (or saved bitsandbytes) base loads as it is; otherwise 4-bit with
    the run's bitsandbytes settings when it trained in 4 bits (quantized None) or when asked (True)."""
    import torch

    existing = base_config(base).get("quantization_config")
    if existing:
        if existing.get("quant_method") == "gptq":
            from .gptq import gptq_load_kwargs

            return gptq_load_kwargs(existing, on_gpu=torch.cuda.is_available())
        return {}
    if not (run.trained_in_4bit() if quantized is None else quantized):
        return {}
    from .model import bnb_config

    head = run.task.head(run.family())
    return {"quantization_config": bnb_config(run.lora_arguments(), compute_dtype, skip=[head] if head else None)}


def load(run: RunFolder, base: str | None = None, quantized: bool | None = None, dtype=None, device: str | None = None,
         trust_remote_code: bool = False):
    """(model in eval mode, tokenizer): the run's model as trained (quantized None), its base unquantized (False)
    or in 4 bits (True); dtype/device default to bf16 on a GPU, fp32 on a CPU."""
    import torch
    from transformers import AutoTokenizer

    from .model import keep_portable_4bit, resize_embeddings, train_dtype

    base = base or run.base
    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    compute = train_dtype(SimpleNamespace(**{"bf16": False, "fp16": False, **run.args})) if cuda else torch.float32
    model_class, config = model_class_and_config(run, base, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(run.path, trust_remote_code=trust_remote_code)
    kwargs = {"device_map": {"": device}, **quantization_kwargs(run, base, quantized, compute)}  # GPTQ: its own map
    model = model_class.from_pretrained(base, config=config, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    keep_portable_4bit(model)
    if run.adapter is not None:
        resize_embeddings(model, tokenizer)  # as training did; the adapter carries the new rows
        model = load_adapter(model, str(run.path))
    return model.eval(), tokenizer


def load_adapter(base_model, adapter_dir: str, is_trainable: bool = False):
    """model.load_adapter: PeftModel.from_pretrained on a bare base model, refusing what would load as nothing."""
    from .model import load_adapter as load

    return load(base_model, adapter_dir, is_trainable)
