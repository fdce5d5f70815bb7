"""A Llama-3-8B-shaped sequence classifier (random weights: vocab 128256, hidden 4096, 32 layers, 8 KV heads) trained
with NF4 Q-LoRA through recipes/llama-cls/qlora.json on one GPU: real tokens/s and peak GiB from the run summary, and
the predictions of the adapter reloaded from disk (NF4 again, a fresh base) against those of the model before saving.

    python bench/cls_gpu.py --out $OUT          (after bench/gpu.sh's wheel install: PYTHONPATH=/tmp/site)
"""
import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/bench/cls")
    p.add_argument("--shape", default="llama3.1-8b")
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args()
    import finetune
    from shapes import build_once, default_checkpoint
    from transformers import AutoTokenizer

    from tunekit import runfolder

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "cls-bench"
    work.mkdir(exist_ok=True)
    checkpoint = default_checkpoint(a.shape)
    built = build_once(checkpoint, a.shape)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    rng = random.Random(0)
    rows = [{"text": tok.decode([rng.randrange(3, min(30000, len(tok))) for _ in range(rng.randint(64, 512))]),
             "label": rng.choice(["negative", "neutral", "positive"])} for _ in range(600)]
    for name, part in (("train.jsonl", rows[:540]), ("eval.jsonl", rows[540:])):
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    adapter = work / "adapter"
    started = time.time()
    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "--bf16", "false", "--optim", "adamw_torch",
                                                "--gradient_checkpointing", "false"]
    trainer = finetune.main([str(ROOT / "recipes/llama-cls/qlora.json"), *cpu, "--model_name_or_path", checkpoint,
                             "--data_path", str(work / "train.jsonl"), "--eval_data_path", str(work / "eval.jsonl"),
                             "--output_dir", str(adapter), "--overwrite_output_dir", "--max_steps", str(a.steps),
                             "--save_strategy", "no", "--eval_strategy", "no", "--load_best_model_at_end", "false",
                             "--logging_steps", "5", "--disable_tqdm", "true"])
    summary = json.loads((adapter / "run_summary.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = [r["text"] for r in rows[540:572]]
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
    model = trainer.model.eval()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        before = model(**enc).logits.float().cpu()
    del trainer, model
    if device == "cuda":
        torch.cuda.empty_cache()
    reloaded, _ = runfolder.load(runfolder.read(adapter))  # as trained: the NF4 base, the head kept whole
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        after = reloaded(**enc).logits.float().cpu()
    steps = summary["step_times"][5:]  # after the warm-up steps
    result = {"shape": a.shape, "checkpoint_build_s": built["seconds"], "run_s": round(time.time() - started, 1),
              "steps": summary["steps"], "tokens_per_s_all": summary["tokens_per_s"],
              "tokens_per_s_after_5": round(sum(summary["step_tokens"][5:]) / sum(steps), 1),
              "peak_gib": summary["peak_gib"], "trainable_params": summary["trainable_params"],
              "lora_params": summary.get("lora_params"), "head_params": summary.get("head_params"),
              "first_loss": summary["first_loss"], "final_loss": summary["final_loss"],
              "predictions_equal": bool((before.argmax(-1) == after.argmax(-1)).all()),
              "max_abs_logit_diff": float((before - after).abs().max()),
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}
    print(json.dumps(result, indent=1))
    (out / "cls-llama3-8b.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
