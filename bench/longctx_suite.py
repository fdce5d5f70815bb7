"""The longctx suite of bench/run.py: how long one sequence can be for NF4 Q-LoRA on one GPU.

    python bench/run.py --suite longctx [--shape llama3.1-8b|tiny-long] [--deadline S] [--lengths 131072,196608]
    SUITE=longctx bash bench/gpu_llama2.sh --save h100-longctx        # on the device machine

A random-weight Llama-3.1-8B-shaped checkpoint; for each length in turn (ascending, stopping at the first failure or
when time runs out), one plain-text record of exactly that many tokens (labels on every position) trains two
optimizer steps of batch 1 through `recipes/llama2/train.sh qlora` with r=32 on all linear layers, non-reentrant
gradient checkpointing, activations offloaded to CPU and Liger's fused linear cross-entropy (the loss is computed in
chunks, never as a [length x vocabulary] logits tensor).  A length passes when both losses are finite.  Reported:
each length's status, peak GiB and seconds, and the longest length that passed.  (Published on 80 GB: 28,454 tokens
for HF + FlashAttention 2, 342,733 for Unsloth.)
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import baseline

LENGTHS = {"llama3.1-8b": (131072, 196608, 262144, 327680), "tiny-long": (2048, 4096)}
FLAGS = ("--lora_r", "32", "--lora_alpha", "64", "--lora_target_modules", "all-linear", "--lora_dropout", "0",
         "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--max_steps", "2",
         "--gradient_checkpointing", "true", "--offload_activations", "true", "--logging_steps", "1",
         "--save_strategy", "no", "--eval_strategy", "no", "--eval_data_path", "", "--report_to", "none",
         "--learning_rate", "1e-4", "--warmup_steps", "0",
         # one unpadded sequence: SDPA's causal flash path, as measured (the recipes' packing defaults do not apply)
         "--packing", "false", "--token_budget", "0", "--attn_implementation", "sdpa")
GPU_FLAGS = ("--use_liger_kernel", "true", "--bf16", "true")


def write_record(path: Path, length: int, vocab_size: int) -> None:
    """One `text` record that the word tokenizer turns into exactly `length` tokens (BOS + words + EOS)."""
    ids = [baseline.FIRST_WORD_ID + (7 * i) % (vocab_size - baseline.FIRST_WORD_ID) for i in range(length - 2)]
    path.write_text(json.dumps({"text": " ".join(f"t{i}" for i in ids)}) + "\n")


def main(args, run) -> int:
    started = time.time()
    shape = args.shape
    key, out_dir, work_dir, checkpoint, log = run.suite_folders(args)
    lengths = [int(x) for x in args.lengths.split(",")] if getattr(args, "lengths", None) else LENGTHS[shape]
    result = {"suite": args.suite, "shape": shape, "git_commit": run.git_commit(), "checkpoint": checkpoint,
              "command": " ".join(["python", "bench/run.py", *(args.argv or sys.argv[1:])]), "runs": [],
              "lengths": []}

    def time_left() -> float:
        return args.deadline - (time.time() - started) if args.deadline else math.inf

    prepare = run.run_child("prepare", [sys.executable, str(run.BENCH_DIR / "baseline.py"), "--shape", shape,
                                        "--checkpoint", checkpoint, "--prepare"], log,
                            min(300, time_left()))
    described = run.tagged_json(prepare["lines"], "ENV")
    if not described:
        result["error"] = "could not build the checkpoint: " + run.failure_text(prepare)
    else:
        result["environment"] = {k: v for k, v in described[-1].items() if k not in ("checkpoint", "built")}
        on_gpu = described[-1].get("device") not in (None, "cpu")
        vocab = baseline.SHAPES[shape]["vocab_size"]
        for length in lengths:
            timeout = min(args.child_timeout, time_left() - 10)
            if timeout < 60:
                result["lengths"].append({"length": length, "status": "skipped: out of time"})
                continue
            data = work_dir / f"long-{length}.jsonl"
            write_record(data, length, vocab)
            output_dir = work_dir / f"longctx-{length}"
            command = ["bash", "recipes/llama2/train.sh", "qlora", "--model_name_or_path", checkpoint,
                       "--data_path", str(data), "--output_dir", str(output_dir), "--model_max_length", str(length),
                       *FLAGS, *(GPU_FLAGS if on_gpu else run.CPU_FLAGS)]
            child = run.run_child(f"length {length}", command, log, timeout,
                                  {"MODEL": checkpoint, "DATA": str(data), "OUTPUT": str(output_dir),
                                   "PYTHON": sys.executable})
            row = {"length": length, "rc": child["rc"], "seconds": child["seconds"], "command": " ".join(command)}
            summary_path = output_dir / "run_summary.json"
            if child["rc"] == 0 and summary_path.is_file():
                summary = json.loads(summary_path.read_text())
                losses = [h for h in summary.get("losses", [])] or [summary.get("first_loss"), summary.get("final_loss")]
                finite = all(v is not None and math.isfinite(v) for v in losses)
                row.update(steps=summary.get("steps"), real_tokens=summary.get("real_tokens"),
                           tokens_per_s=summary.get("tokens_per_s"), peak_gib=summary.get("peak_gib"),
                           losses=losses, status="ok" if finite and summary.get("steps") == 2 else "failed: loss")
            else:
                oom = any("OutOfMemoryError" in line or "out of memory" in line for line in child["lines"])
                row.update(status="failed: out of memory" if oom else "failed: " + run.failure_text(child),
                           log_tail="".join(child["lines"])[-run.LOG_TAIL_CHARS:])
            shutil.rmtree(output_dir, ignore_errors=True)
            result["lengths"].append(row)
            log.write(f"LENGTH {json.dumps({k: v for k, v in row.items() if k != 'log_tail'})}\n")
            if row["status"] != "ok":
                break
        passed = [r["length"] for r in result["lengths"] if r.get("status") == "ok"]
        result["longest_ok"] = max(passed) if passed else None
    run.save_result(result, started, out_dir / f"{key}.json", args.save, log)
    log.write(f"longest length that trained: {result.get('longest_ok')}\n")
    return 0 if result.get("longest_ok") else 1
