"""The pre-flight: every check that needs no model, right after parsing, so that bad input stops before anything is
loaded or written; it resolves the family, the task and the checkpoint to resume from, and builds the dataclasses."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from . import arguments
from .checkpoints import fingerprint, plan_run
from .errors import ArgumentError
from .families import CONVERTERS, Family, read_config, read_json, resolve_family


@dataclass(frozen=True)
class Run:
    """One checked run: the argument dataclasses and what the pre-flight resolved."""
    model_args: arguments.ModelArguments
    data_args: arguments.DataArguments
    lora_args: arguments.LoraArguments
    train_args: arguments.TrainingArguments
    family: Family
    task: object                 # tunekit.tasks.Task
    resume_from: str | None      # the checkpoint to resume from, or None to start afresh
    arguments: dict              # every resolved argument, as written to finetune_args.json
    fingerprint: dict            # what a checkpoint must match to continue this run


def preflight(a) -> Run:
    """a: the namespace from arguments.parse_args."""
    from .tasks import get_task

    check_files(a)
    check_init_adapter(a)
    check_machine(a)
    resolved = check_deepspeed(a)
    check_remote_code(a.model_name_or_path, a.trust_remote_code)  # before anything reads the model folder further
    family = resolve_family(a.model_name_or_path, a.family)
    task = get_task(a.task)
    task.check(a)
    model_args, data_args, lora_args, train_args = arguments.build(a, family=family.name, **resolved)
    run_args = arguments.to_jsonable(model_args, data_args, lora_args, train_args)
    run_fingerprint = fingerprint(run_args)
    resume = plan_run(train_args, run_fingerprint)  # a finished run is never overwritten unless asked
    check_versions()
    check_quantization_backend(a.model_name_or_path, a.q_lora)
    return Run(model_args, data_args, lora_args, train_args, family, task, resume, run_args, run_fingerprint)


def check_files(a) -> None:
    for key in ("data_path", "eval_data_path"):
        path = getattr(a, key)
        if path and Path(path).is_dir():
            raise ArgumentError(f"--{key}: {path} is a directory; pass a .json or .jsonl file (see data/README.md)")
        if path and not path.endswith((".json", ".jsonl")):
            raise ArgumentError(f"--{key}: {path} must be a .json or .jsonl file")
        if path and not Path(path).is_file():
            raise ArgumentError(f"--{key}: file not found: {path}")


def check_init_adapter(a) -> None:
    """--init_adapter: a saved LoRA adapter trained on this run's model (SFT then DPO: the SFT run's output_dir)."""
    if not a.init_adapter:
        return
    folder = Path(a.init_adapter)
    if not a.use_lora:
        raise ArgumentError("--init_adapter trains a saved LoRA adapter further: add --use_lora")
    if not (folder / "adapter_config.json").is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise ArgumentError(f"--init_adapter: {folder} holds no saved adapter (adapter_config.json and "
                            "adapter_model.safetensors); pass the output_dir of a finished LoRA run")
    base = read_json(folder / "adapter_config.json").get("base_model_name_or_path") or ""
    if a.model_name_or_path and Path(base).resolve() != Path(a.model_name_or_path).resolve():
        raise ArgumentError(f"--init_adapter: {folder} was trained on {base}, not on --model_name_or_path "
                            f"{a.model_name_or_path}; pass the model it was trained on")


def is_distributed_launch() -> bool:
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _cuda_count() -> int:  # the one seam the tests set to pretend a GPU box
    import torch

    return torch.cuda.device_count()


def check_machine(a) -> None:
    cuda_only = (("use_liger_kernel", "Liger's kernels are Triton"),
                 ("offload_activations_async", "its copies run on a side CUDA stream; recipes/lean.json turns it on"))
    for flag, why in cuda_only:
        if getattr(a, flag) and not _cuda_count():
            raise ArgumentError(f"--{flag} needs a CUDA GPU ({why}); on a CPU pass --{flag} false, or add "
                                "recipes/cpu.json last (CPU settings)")
    if a.attn_implementation == "varlen":
        check_varlen(a.packing)
    if a.eval_generation and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ArgumentError("--eval_generation runs on one process; with several, score the saved adapter "
                            "afterwards: python -m tunekit.evaluate OUTPUT_DIR --generate")
    gpus = 0 if a.use_cpu or is_distributed_launch() else _cuda_count()  # torchrun: one GPU per process
    if a.packing and gpus > 1:
        raise ArgumentError(f"--packing with {gpus} GPUs visible to one process: the Trainer would wrap the "
                            "model in DataParallel, which splits every batch along its first dimension, and a packed "
                            "batch is one row; launch one process per GPU with recipes/<family>/train.sh (torchrun), "
                            "or make one GPU visible (CUDA_VISIBLE_DEVICES=0)")


def check_varlen(packing: bool) -> None:
    """varlen is flash attention on packed rows: packing, CUDA on an Ampere or newer GPU, and torch >= 2.10."""
    import torch

    if not (packing and _cuda_count()):
        raise ArgumentError("--attn_implementation varlen needs --packing true and a CUDA GPU (its kernel is flash "
                            "attention on packed rows); use sdpa otherwise (on a CPU: add recipes/cpu.json)")
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        raise ArgumentError(f"--attn_implementation varlen needs torch >= 2.10 (this is {torch.__version__}); "
                            "use sdpa")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise ArgumentError(f"--attn_implementation varlen needs an Ampere or newer GPU (flash attention); this "
                            f"{torch.cuda.get_device_name()} is sm{major}{minor}: use sdpa")


def checkpointing_kwargs(zero_stage: int, use_lora: bool, kwargs) -> dict:
    """Non-reentrant checkpointing (reentrant breaks DDP and needs LoRA's enable_input_require_grads), except ZeRO-3
    with PEFT: its re-partitioned frozen weights fail non-reentrant's recompute check ('Recomputed values ...')."""
    kwargs = json.loads(kwargs) if isinstance(kwargs, str) else dict(kwargs or {})
    return {**kwargs, "use_reentrant": True} if zero_stage == 3 and use_lora else kwargs


def zero_stage(deepspeed) -> int:
    """The ZeRO stage of a DeepSpeed config (a path or a dict; 0 without one): its one reader."""
    if not deepspeed:
        return 0
    config = deepspeed if isinstance(deepspeed, dict) else json.loads(Path(deepspeed).read_text())
    return int(config.get("zero_optimization", {}).get("stage", 0))


def check_deepspeed(a) -> dict:
    """The DeepSpeed config file and what it implies; returns the arguments it resolves (checkpointing kwargs)."""
    if not a.deepspeed:
        return {}
    if not Path(a.deepspeed).is_file():
        raise ArgumentError(f"--deepspeed: config file not found: {a.deepspeed}")
    try:
        stage = zero_stage(a.deepspeed)
    except json.JSONDecodeError as e:
        raise ArgumentError(f"{a.deepspeed}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if stage == 3 and a.q_lora:
        dtype = "bfloat16" if a.bf16 else "float16" if a.fp16 else "float32"
        if a.bnb_4bit_quant_storage != dtype:  # ZeRO-3 shards flat buffers of one dtype: the packed 4-bit too
            raise ArgumentError(f"--deepspeed {a.deepspeed}: ZeRO-3 shards the 4-bit weights only when they are stored "
                                f"in the model dtype: add --bnb_4bit_quant_storage {dtype} (now "
                                f"{a.bnb_4bit_quant_storage}), or use ds_configs/zero2.json")
    if stage == 3 and a.tiled_mlp_tokens:  # untested: ZeRO-3 gathers weights per forward, our backward reruns it
        raise ArgumentError(f"--deepspeed {a.deepspeed}: --tiled_mlp_tokens is not supported with ZeRO-3 yet; use "
                            "ds_configs/zero2.json or --tiled_mlp_tokens 0")
    if not is_distributed_launch():
        raise ArgumentError("--deepspeed needs a distributed launch: run `torchrun --nproc_per_node N finetune.py ...` "
                            "(N=1 is fine), not plain `python`")
    if not a.gradient_checkpointing:
        return {}
    return {"gradient_checkpointing_kwargs": checkpointing_kwargs(stage, a.use_lora, a.gradient_checkpointing_kwargs)}


# ---------------------------------------------------------------- the model folder: remote code, quantization

def check_remote_code(model_path: str | None, trust_remote_code: bool) -> None:
    """A model folder's own Python (auto_map), which loading would import and run, needs --trust_remote_code."""
    if not model_path:
        return
    folder = Path(model_path)
    if not folder.exists():
        if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model_path):  # a hub id, not a path like ./x/y or ~/x
            name = model_path.split("/")[-1]
            raise ArgumentError(f"--model_name_or_path: {model_path} is not a folder here; it looks like a model hub "
                                "id, and only local checkpoint folders are loaded (no download happens): fetch it "
                                f"first, e.g. `hf download {model_path} --local-dir /models/{name}`, and "
                                "pass that folder")
        raise ArgumentError(f"--model_name_or_path: {model_path} does not exist (a checkpoint folder is expected)")
    if trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        auto_map = read_json(folder / name).get("auto_map")
        if not auto_map:
            continue
        model_type, hint = read_json(folder / "config.json").get("model_type", ""), ""
        if model_type in CONVERTERS:
            hint = (f" For model_type '{model_type}' there is a better way: convert the checkpoint once with "
                    f"`python -m tunekit.convert {shlex.quote(str(folder))}` (it prints the converted folder) and "
                    "train that folder, which needs no remote code (recipes/*/train.sh does this by itself).")
        refs = [x for v in auto_map.values() for x in (v if isinstance(v, (list, tuple)) else [v]) if x]
        files = sorted({str(v).split(".")[0] + ".py" for v in refs})
        raise ArgumentError(
            f"{folder / name}: this checkpoint ships its own Python code ({', '.join(files)} via auto_map), which "
            f"loading it would run. Nothing from a model folder runs unless you pass --trust_remote_code, and only "
            f"pass it for a folder whose code you have read.{hint}")


def check_quantization_backend(model_path: str, q_lora: bool) -> None:
    """--q_lora quantizes an unquantized checkpoint with bitsandbytes: check it imports now, before the data loads."""
    if not q_lora:
        return
    existing = read_config(model_path).get("quantization_config")
    if existing and existing.get("quant_method") != "bitsandbytes":
        return  # e.g. GPTQ: its own backend is checked where it loads (tunekit/gptq.py)
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything at import time
        raise ArgumentError(f"--q_lora loads the model in 4 bits with bitsandbytes, which cannot be imported "
                            f"({type(e).__name__}: {e}). Install it: pip install 'bitsandbytes>=0.43.3' "
                            "(or train without --q_lora)") from None


# Oldest versions whose behaviour the project relies on; requirements.txt pins newer ones.
VERSION_FLOORS = {
    "transformers": ("5.0.0", "ZeRO-3 saves of PEFT adapters gather only the adapter, the gradient-accumulation loss fix"),
    "peft": ("0.15.1", "missing-adapter-key and second-wrap warnings, modules_to_save under ZeRO-3"),
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
