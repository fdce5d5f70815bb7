"""The real-model recipe on a GPU: `recipes/chat/{lora,qlora}.json` as they are (bf16 LoRA and NF4 Q-LoRA) on the
SmolLM2-135M-Instruct shape, each run in its own `finetune.py` process; its time per epoch, real tokens/s and peak GiB
from run_summary.json, into one JSON.

The weights are random draws of the real shape (config.json and tokenizer of the imported model): the 98 MB GGUF does
not fit the device machine's 64 MiB carry, and speed and memory depend on the shape, not on the weight values.

    python bench/real_model.py --model_dir DIR_WITH_CONFIG_AND_TOKENIZER --data data/identity_train.jsonl --out R.json
    (--cpu: the CPU smoke, recipes/cpu.json added)
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def random_checkpoint(src: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(src)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    if (src / "generation_config.json").is_file():
        shutil.copy2(src / "generation_config.json", out / "generation_config.json")
    return out


def run(method: str, model: Path, data: str, epochs: int, work: Path, cpu: bool) -> dict:
    out = work / f"run-{method}"
    cmd = [sys.executable, "finetune.py", f"recipes/chat/{method}.json", *(["recipes/cpu.json"] if cpu else []),
           "--model_name_or_path", str(model), "--data_path", data, "--output_dir", str(out),
           "--num_train_epochs", str(epochs), "--save_strategy", "no", "--logging_steps", "1"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"method": method, "error": (done.stderr + done.stdout)[-2000:], "command": " ".join(cmd)}
    s = json.loads((out / "run_summary.json").read_text())
    return {"method": method, "command": " ".join(cmd), "epochs": epochs, "steps": s.get("steps"),
            "train_runtime_s": s["train_runtime_s"], "s_per_epoch": round(s["train_runtime_s"] / epochs, 3),
            "tokens_per_s": s["tokens_per_s"], "real_tokens": s["real_tokens"], "peak_gib": s["peak_gib"],
            "final_loss": s.get("final_loss"), "process_wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="config.json + tokenizer of the real model")
    p.add_argument("--data", default="data/identity_train.jsonl")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=["lora", "qlora"])
    p.add_argument("--work", default="/tmp/real-model-bench")
    p.add_argument("--out", required=True)
    p.add_argument("--cpu", action="store_true")
    a = p.parse_args()
    import torch
    import transformers

    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = random_checkpoint(Path(a.model_dir), work / "smollm2-135m-shape")
    results = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
               "torch": torch.__version__, "transformers": transformers.__version__, "data": a.data,
               "weights": "random draws of SmolLM2-135M-Instruct's shape (real config and tokenizer)",
               "runs": [run(m, model, a.data, a.epochs, work, a.cpu) for m in a.methods]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
