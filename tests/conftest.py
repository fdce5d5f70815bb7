"""Shared fixtures: tiny random models with tokenizers built offline (nothing here touches the network)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# On a multi-GPU box one test process must see one GPU: with several, the Trainer would use DataParallel (and packed
# runs are refused). Set before anything imports torch.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "data"


def assert_same_adapter(a: Path, b: Path, atol=1e-5) -> None:
    """Two runs' adapter_model.safetensors hold the same tensors (to atol), and the adapters really trained."""
    import torch
    from safetensors.torch import load_file

    one, two = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    moved = 0
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=atol, rtol=0, msg=k)
        moved += "lora_B" in k and one[k].abs().max() > 1e-3
    assert moved  # the adapters really trained


@pytest.fixture(scope="session")
def tiny_llama2(tmp_path_factory):
    from tunekit.tiny import build

    return str(build("llama2", tmp_path_factory.mktemp("models") / "llama2"))


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    from tunekit.tiny import build

    return str(build("qwen", tmp_path_factory.mktemp("models") / "qwen"))


@pytest.fixture(scope="session")
def random_qv_adapter(tiny_llama2, tmp_path_factory):
    """A saved LoRA adapter (q/v, r=4) on tiny_llama2 with non-zero A and B (init_lora_weights=False), so checks on it
    are not vacuous.  Read-only: copy it before changing it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama2),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                                      task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("adapter") / "llama-adapter"  # error messages name this folder
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama2).save_pretrained(out)
    return str(out)


@pytest.fixture
def guanaco_small(tmp_path):
    """The first 24 records of the shipped guanaco sample."""
    lines = (DATA / "llama2_guanaco.jsonl").read_text(encoding="utf-8").splitlines()[:24]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def write_json(path: Path, obj) -> str:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return str(path)


def resolve(argv):
    """What finetune.main works out before loading anything: parse, then the pre-flight; the four dataclasses."""
    from tunekit.arguments import parse_args
    from tunekit.preflight import preflight

    run = preflight(parse_args(argv))
    return run.model_args, run.data_args, run.lora_args, run.train_args


def cpu_flags(output_dir, **overrides):
    """Flags for a quick, deterministic CPU run of finetune.main."""
    flags = {"output_dir": str(output_dir), "use_cpu": True, "bf16": False, "optim": "adamw_torch",
             "report_to": "none", "save_strategy": "no", "logging_steps": 1, "per_device_train_batch_size": 4,
             "gradient_accumulation_steps": 1, "learning_rate": 5e-3, "lr_scheduler_type": "constant",
             "model_max_length": 128, "seed": 0, "dataloader_num_workers": 0, "disable_tqdm": True}
    flags.update(overrides)
    argv = []
    for k, v in flags.items():
        if isinstance(v, list):
            argv += [f"--{k}", *map(str, v)]
        else:
            argv += [f"--{k}", str(v)]
    return argv


def load_for_chat(folder, **kw):
    """(model, tokenizer, prompt format) of a folder, loaded as chat/generate/evaluate load it."""
    from tunekit import runfolder

    run = runfolder.read(folder)
    model, tok = runfolder.load(run, **kw)
    return model, tok, run.fmt
