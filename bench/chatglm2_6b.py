"""ChatGLM2-6B on a GPU, through the recipe (issue 4, bar 5): a random-weight ChatGLM2-6B-shaped checkpoint in the
ORIGINAL layout is converted by recipes/chatglm2/train.sh (MODEL= the original folder), trained with bf16 LoRA r=32,
batch 4, length 1024 and with NF4 Q-LoRA batch 1, length 1024 (the settings of the published LLaMA-Factory vs ChatGLM
P-Tuning comparison: 21.67 samples/s and 5.14 GB on an A100), merged and written back in the original layout.

    python bench/chatglm2_6b.py --root /tmp/chatglm2-bench --out $OUT [--steps 30 --warmup 10]
    python bench/chatglm2_6b.py --tiny --steps 2 --warmup 1      # the same flow on the tiny shape, on a CPU

Throughput is over the timed steps only (after --warmup steps), from the recipe's own per-step record
(run_summary.json: step_times, step_tokens, step_peak_gib).  Every sample is exactly 1024 tokens (ADGEN records cut by
max_source_length 512 / max_target_length 511, + EOS), so samples/s = tokens/s / 1024.  Prints and writes one JSON.
The seed-style bench/baseline.py loop runs on the same converted checkpoint in the same process tree
(`lora-bf16-all-linear-r16-bs4` and `qlora-all-linear-r16-bs4`, its own long-tailed workload, ids below the converted vocabulary),
so the recipe's figures stand next to it.  Status: written but not yet run on a GPU.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def long_adgen(path: Path, n: int = 400) -> Path:
    content = "类型#连衣裙*材质#真丝*颜色#墨绿色*风格#复古*裙长#长裙*" * 40
    summary = "这条墨绿色真丝长裙垂坠顺滑，复古的领口和收腰剪裁勾勒身形，走动时裙摆轻轻摆动，优雅又从容。" * 40
    path.write_text("".join(json.dumps({"content": content + str(i), "summary": summary}, ensure_ascii=False) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def run(cmd, env, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        f.flush()
        r = subprocess.run(list(map(str, cmd)), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}; see {log}")
    return time.perf_counter() - start


def timed(summary: dict, warmup: int, batch: int) -> dict:
    times, tokens = summary["step_times"][warmup:], summary["step_tokens"][warmup:]
    secs = sum(times)
    return {"timed_steps": len(times), "tokens_per_s": round(sum(tokens) / secs, 1),
            "samples_per_s": round(len(times) * batch / secs, 3), "peak_gib": summary["peak_gib"],
            "tokens_per_step": sorted(set(tokens)), "first_loss": summary["first_loss"],
            "final_loss": summary["final_loss"]}


def main():
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/chatglm2-bench")
    p.add_argument("--out", default=os.environ.get("OUT", "out/bench/chatglm2"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--tiny", action="store_true", help="tiny shape, fp32, CPU: a smoke test of this script")
    a = p.parse_args()
    root, out = Path(a.root), Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "chatglm2_6b.log"
    result = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none", "torch": torch.__version__}

    from tunekit.tiny_chatglm2 import CHATGLM2_6B, build_original

    start = time.perf_counter()
    if a.tiny:
        original = build_original(root / "chatglm2-tiny-random")
    else:
        original = build_original(root / "chatglm2-6b-random", dtype=torch.bfloat16, device="cuda", **CHATGLM2_6B)
    result["build_original_s"] = round(time.perf_counter() - start, 1)
    data = long_adgen(root / "adgen_long.jsonl")
    import socket

    with socket.socket() as sock:  # a free port for torchrun's rendezvous (6001 may be taken)
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MODEL=str(original), DATA=str(data), PYTHONUNBUFFERED="1", MASTER_PORT=str(port))
    common = ["--max_steps", a.steps + a.warmup, "--gradient_accumulation_steps", 1, "--model_max_length", 1024,
              "--max_source_length", 512, "--max_target_length", 511, "--eval_strategy", "no",
              "--save_strategy", "no", "--logging_steps", 5, "--lora_r", 32,
              "--token_budget", 0]  # the published settings are batches of samples: 4 (or 1) packed per row
    if a.tiny:
        common += ["--bf16", "false", "--use_cpu", "true", "--optim", "adamw_torch", "--gradient_checkpointing", "false",
                   "--attn_implementation", "sdpa"]

    start = time.perf_counter()
    converted = subprocess.run([sys.executable, "-m", "tunekit.convert_chatglm2", original], cwd=ROOT, env=env,
                               capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    result["convert_s"] = round(time.perf_counter() - start, 1)  # train.sh below finds it cached

    baselines, vocab = {}, json.loads((Path(converted) / "config.json").read_text())["vocab_size"]
    for name in ("lora-bf16-all-linear-r16-bs4", "qlora-all-linear-r16-bs4"):
        done = subprocess.run([sys.executable, "bench/baseline.py", name, "--checkpoint", converted, "--vocab-size",
                               str(vocab), "--steps", str(a.steps + a.warmup), "--warmup", str(a.warmup)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        with log.open("a") as f:
            f.write(done.stdout + done.stderr)
        rows = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        baselines[name] = rows[-1] if rows else {"failed": (done.stdout + done.stderr)[-1500:]}
    result["baseline"] = baselines

    lora = root / "lora"
    result["lora_run_s"] = round(run(["bash", "recipes/chatglm2/train.sh", "lora", "--per_device_train_batch_size", 4,
                                      *common], dict(env, OUTPUT_DIR=str(lora)), log), 1)
    result["lora_bf16_r32_bs4_len1024"] = timed(json.loads((lora / "run_summary.json").read_text()), a.warmup, 4)

    qlora = root / "qlora"
    result["qlora_run_s"] = round(run(["bash", "recipes/chatglm2/train.sh", "qlora", "--per_device_train_batch_size", 1,
                                       *common], dict(env, OUTPUT_DIR=str(qlora)), log), 1)
    result["qlora_nf4_r32_bs1_len1024"] = timed(json.loads((qlora / "run_summary.json").read_text()), a.warmup, 1)

    shutil.rmtree(original)  # disk: the conversion keeps the original's config/tokenizer files for the reverse step
    merged = root / "lora-merged"
    result["merge_generate_reverse_s"] = round(run(["bash", "recipes/chatglm2/merge.sh", lora, merged],
                                                   dict(env, ORIGINAL=converted), log), 1)
    result["sample"] = log.read_text(encoding="utf-8").rsplit(">>> ", 1)[-1][:300]
    back = json.loads((root / "lora-merged-chatglm2" / "config.json").read_text())
    result["reverse_config"] = {k: back[k] for k in ("model_type", "num_layers", "multi_query_group_num",
                                                      "padded_vocab_size", "torch_dtype")}
    print(json.dumps(result, indent=2))
    (out / "chatglm2_6b.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
