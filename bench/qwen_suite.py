"""The qwen suite of bench/run.py: Qwen2.5-7B-shaped bf16 checkpoint, its GPTQ-Int4 pack, our baseline on the bf16
checkpoint, the qwen recipes (lora, qlora, qlora-gptq), the seed's own DeepSpeed command line on the GPTQ checkpoint
and its adapter merged into the bf16 checkpoint.

    python bench/run.py --suite qwen --shape qwen2.5-7b [--deadline S] [--keep-checkpoints] [--save NAME]
                        [--skip lora,ours,qlora,qlora-gptq,seed,merge,refusal] [--all-baselines]
    python bench/run.py --suite qwen --shape tiny-qwen       # CPU smoke (no bitsandbytes/GPTQ/DeepSpeed steps)
    bash bench/gpu_qwen.sh --save h100-qwen                  # on the device machine

Steps, each child in its own process with a timeout (capped by --deadline, the runner's own time budget; a step
that no longer fits is recorded as skipped), failures recorded and the runner going on:
  a. the random-weight bf16 checkpoint (Qwen2, with a byte-level BPE ChatML tokenizer, see bench/baseline.py);
  b. `python -m tunekit.gptq SRC OUT --device cuda|cpu`: its GPTQ-Int4 pack, timed;
  c. the recipe `lora` first (the first training process on a fresh GPU runs slower: it is not the baseline's
     penalty), then our baseline `lora-bf16-all-linear-r16-bs4` on the same bf16 checkpoint (ratios are against it),
     then `qlora` (NF4 on the bf16 checkpoint) and `qlora-gptq` (on the GPTQ checkpoint), each 50 steps of batch 4 on
     a conversations file whose ChatML renderings have the baseline's lengths; steady state = steps 21..50;
  d. the seed's command line (torch.distributed.run + finetune.py + ds_configs/zero2.json, --fp16, GPTQ, 20 steps of
     batch 1 x 2 accumulation); if fp16 fails, once more with --bf16;
  e. its adapter merged into the bf16 checkpoint (`BASE=... NO_SAMPLE=1 bash recipes/qwen/merge.sh`), the probe
     difference parsed; and the merge refused with the GPTQ checkpoint as the only base (explicit BASE, and the base
     the adapter records);
  f. the JSON, BENCHMARKS.md, and (on a GPU, unless --keep-checkpoints) the big checkpoints deleted at the very end.
On a CPU (tiny-qwen) b runs when tunekit/gptq.py is there; qlora, qlora-gptq and the seed command need CUDA and are
skipped; e merges the lora recipe's adapter and checks the refusal with BASE=<the GPTQ pack>.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import baseline

BASELINE_RUN = "lora-bf16-all-linear-r16-bs4"
SKIPPABLE = ("lora", "ours", "qlora", "qlora-gptq", "seed", "merge", "refusal")
SEED_STEPS = int(os.environ.get("SEED_STEPS", 20))  # the seed command's own run (SEED_STEPS=4 for a merge-only run)
SEED_WARMUP = min(5, SEED_STEPS - 1)  # steady state over steps 6..20
LOSS_LINE = re.compile(r"""['"]loss['"]:\s*['"]?(-?[0-9.]+(?:e[-+]?[0-9]+)?|nan|inf|-inf)""", re.I)
PROBE_LINE = re.compile(r"probe logits: max \|diff\| (\S+) = (\S+) of the largest logit")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "generation_config.json")
# Per-step caps (seconds) for the 7B on an H100; the runner's --deadline caps them further.
CAPS = {"prepare": 240, "pack": 240, "recipe": 240, "baseline": 240, "seed": 240, "merge": 180, "refusal": 60}


def folder_gib(path: Path) -> float | None:
    if not path.is_dir():
        return None
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30, 2)


def write_workload(path: Path, shape: str) -> dict:
    """The baseline's samples as one-turn conversations whose ChatML renderings have exactly the same lengths."""
    samples = baseline.sample_workload(baseline.word_vocab(shape))
    words = baseline.chatml_space_words(baseline.word_vocab(shape))
    records = [baseline.conversation_from_ids(ids, words) for ids in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False))
    lengths = [len(ids) for ids in samples]
    return {"path": str(path), "format": "conversations", "samples": len(samples),
            "rendered_tokens": sum(lengths), "max_tokens": max(lengths),
            "note": f"ChatML renderings (default system prompt + user + assistant) of the baseline's lengths; "
                    f"{baseline.CHATML_OVERHEAD} template tokens each"}


def losses_from(lines: list[str]) -> list[float]:
    """The training losses of HF Trainer's log dicts ({'loss': '8.326', ...}; tqdm may put several on one line)."""
    return [float(match.group(1)) for line in lines for match in LOSS_LINE.finditer(line)]


def summary_row(output_dir: Path, steps: int, warmup: int) -> dict:
    """Throughput and memory figures from a finetune.py run_summary.json (whole run and steps warmup+1..steps)."""
    path = output_dir / "run_summary.json"
    if not path.is_file():
        return {"summary": f"no {path}"}
    summary = json.loads(path.read_text())
    row = {key: summary.get(key) for key in ("steps", "real_tokens", "tokens_per_s", "peak_gib", "first_loss",
                                             "final_loss", "train_runtime_s", "deepspeed", "trainable_params")}
    times, tokens = summary.get("step_times") or [], summary.get("step_tokens") or []
    if len(times) >= steps and warmup < steps:
        seconds = sum(times[warmup:steps])
        row["steady"] = {"steps": f"{warmup + 1}..{steps}", "seconds": round(seconds, 2),
                         "real_tokens": sum(tokens[warmup:steps]),
                         "tokens_per_s": round(sum(tokens[warmup:steps]) / seconds) if seconds else None,
                         "peak_gib": max(summary.get("step_peak_gib", [])[warmup:steps] or [None],
                                         key=lambda v: -1 if v is None else v)}
    return row


def main(args, run) -> int:
    """args: bench/run.py's parsed arguments; run: the bench/run.py module (its helpers)."""
    started = time.time()
    shape = args.shape
    key, out_dir, work_dir, checkpoint, log = run.suite_folders(args)
    gptq_dir = Path(checkpoint.rstrip("/") + "-gptq-int4")
    python = sys.executable
    ours_script = str(run.BENCH_DIR / "baseline.py")
    shape_flags = ["--shape", shape, "--checkpoint", checkpoint]
    suite = run.SUITES[args.suite]
    result = {"suite": args.suite, "shape": shape,
              "command": shlex.join(["python", "bench/run.py", *(args.argv or sys.argv[1:])]),
              "git_commit": run.git_commit(), "checkpoint": checkpoint, "gptq_checkpoint": str(gptq_dir),
              "repeat": 1, "runs": [], "skipped": [],
              "reference": "skipped: the reference script hard-codes a Llama model",
              "order": "recipe lora, ours (baseline), recipe qlora, recipe qlora-gptq, seed command, merge"}
    if args.deadline:
        result["deadline_s"] = args.deadline

    skip = set(args.skip or ())

    def time_left() -> float:
        return args.deadline - (time.time() - started) if args.deadline else float("inf")

    def child(label: str, command: list[str], cap: float, env: dict | None = None, need: float = 25) -> dict | None:
        """run.run_child with a timeout of min(cap, --child-timeout, what is left of --deadline); None (and a
        'skipped' entry) when less than `need` seconds are left."""
        timeout = min(cap, args.child_timeout, time_left() - 15)
        if timeout < need:
            result["skipped"].append(f"{label}: out of time ({time_left():.0f}s of --deadline left)")
            log.write(f"\n--- [{label}] skipped: out of time\n")
            return None
        return run.run_child(label, command, log, timeout, env)

    def finish() -> int:
        if on_gpu_holder and not args.keep_checkpoints:  # f. the big checkpoints go last
            removed = []
            for path in (Path(checkpoint), gptq_dir):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(str(path))
            result["deleted_checkpoints"] = removed
        run.save_result(result, started, out_dir / f"{key}.json", args.save, log)
        for row in result["runs"]:
            log.write("SUMMARY " + json.dumps((row["name"], row["implementation"], row.get("status"),
                                                row.get("tokens_per_s"), row.get("peak_gib"),
                                                row.get("tokens_per_s_vs_ours"))) + "\n")
        for name in ("gptq_pack", "seed_command", "merge", "merge_refusal"):
            if name in result:
                log.write(f"{name.upper()} " + json.dumps(result[name])[:1500] + "\n")
        ok = all(r.get("status") == "ok" or (r.get("status", "").startswith("skipped")
                                             and "out of time" not in r["status"]) for r in result["runs"])
        return 0 if ok and not result.get("error") else 1

    on_gpu_holder = False

    # a. the bf16 checkpoint
    prepare = child("prepare", [python, ours_script, *shape_flags, "--prepare"], CAPS["prepare"])
    described = run.tagged_json(prepare["lines"], "ENV") if prepare else []
    if not described:
        result["error"] = "could not build the checkpoint: " + (run.failure_text(prepare) if prepare else "no time")
        if prepare:
            result["prepare_log_tail"] = "".join(prepare["lines"])[-run.LOG_TAIL_CHARS:]
        return finish()
    env_info = described[-1]
    result["environment"] = {k: v for k, v in env_info.items() if k not in ("checkpoint", "built", "seconds")}
    result["checkpoint_build_s"] = env_info.get("seconds")
    result["checkpoint_gib"] = folder_gib(Path(checkpoint))
    on_gpu = env_info.get("device") not in (None, "cpu")
    on_gpu_holder = on_gpu
    device = "cuda" if on_gpu else "cpu"

    # b. the GPTQ-Int4 pack
    pack = {"command": shlex.join(["python", "-m", "tunekit.gptq", checkpoint, str(gptq_dir), "--device", device])}
    result["gptq_pack"] = pack
    gptq_ok = False
    if not (run.ROOT / "tunekit" / "gptq.py").is_file():
        pack["status"] = "failed: tunekit/gptq.py does not exist yet"
    else:
        shutil.rmtree(gptq_dir, ignore_errors=True)
        packed = child("gptq pack", [python, "-m", "tunekit.gptq", checkpoint, str(gptq_dir), "--device", device],
                       CAPS["pack"])
        if packed is None:
            pack["status"] = "skipped: out of time"
        else:
            pack["seconds"] = packed["seconds"]
            config_path = gptq_dir / "config.json"
            quant = json.loads(config_path.read_text()).get("quantization_config") if config_path.is_file() else None
            if packed["rc"] == 0 and quant and quant.get("quant_method") == "gptq":
                copied = [name for name in TOKENIZER_FILES
                          if (Path(checkpoint) / name).is_file() and not (gptq_dir / name).exists()]
                for name in copied:
                    shutil.copy2(Path(checkpoint) / name, gptq_dir / name)
                pack.update(status="ok", gib=folder_gib(gptq_dir),
                            quantization_config={k: quant.get(k) for k in ("quant_method", "bits", "group_size",
                                                                           "desc_act", "sym", "checkpoint_format")
                                                 if k in quant})
                if copied:
                    pack["note"] = f"the runner copied {copied} from the bf16 checkpoint (the pack left them out)"
                gptq_ok = True
            else:
                pack["status"] = ("failed: " + run.failure_text(packed) if packed["rc"] != 0 else
                                  f"failed: exit code 0 but {config_path} has no GPTQ quantization_config")
                pack["log_tail"] = "".join(packed["lines"])[-run.LOG_TAIL_CHARS:]

    # c. recipes and our baseline
    workload = write_workload(work_dir / "conversations.json", shape)
    result["workload"] = workload
    recipes = {}

    def recipe(method: str, model: str, skip_reason: str | None = None) -> dict:
        skip_reason = "--skip" if method in skip else skip_reason
        if skip_reason:
            row = {"name": f"recipe-qwen-{method}", "implementation": "recipe", "status": f"skipped: {skip_reason}"}
        else:
            timeout = min(CAPS["recipe"], args.child_timeout, time_left() - 15)
            if timeout < 60:
                row = {"name": f"recipe-qwen-{method}", "implementation": "recipe", "status": "skipped: out of time"}
            else:
                row = run.run_recipe(suite, model, Path(workload["path"]), work_dir, on_gpu, log, timeout,
                                     method=method)
                tokens = row.get("data_stats", {}).get("tokens")
                if row.get("status") == "ok" and tokens is not None:  # the engine tokenized what we meant
                    row["same_lengths_as_workload"] = tokens == workload["rendered_tokens"]
        recipes[method] = row
        result["runs"].append(row)
        return row

    recipe("lora", checkpoint)
    ours = None if "ours" in skip else child(f"ours {BASELINE_RUN}", [python, ours_script, *shape_flags, BASELINE_RUN],
                                             CAPS["baseline"], need=60)
    if "ours" in skip:
        result["runs"].append({"name": BASELINE_RUN, "implementation": "ours", "status": "skipped: --skip"})
    elif ours is None:
        result["runs"].append({"name": BASELINE_RUN, "implementation": "ours", "status": "skipped: out of time"})
    else:
        result["runs"].append({**run.baseline_row(ours, BASELINE_RUN, "ours"), "trial": 1})
    for name in suite.other_baseline_runs if args.all_baselines else ():
        extra = child(f"ours {name}", [python, ours_script, *shape_flags, name], CAPS["baseline"], need=60)
        if extra is not None:
            result["runs"].append({**run.baseline_row(extra, name, "ours"), "trial": 1})
    recipe("qlora", checkpoint, None if on_gpu else "needs CUDA (bitsandbytes NF4)")
    recipe("qlora-gptq", str(gptq_dir), None if on_gpu and gptq_ok else
           "needs CUDA (GPTQ kernels)" if not on_gpu else "no GPTQ checkpoint (the pack failed)")

    # d. the seed's command line on the GPTQ checkpoint, through DeepSpeed
    seed = {"attempts": []}
    result["seed_command"] = seed
    adapter, adapter_from = None, None
    if "seed" in skip:
        seed["status"] = "skipped: --skip"
    elif not on_gpu:
        seed["status"] = "skipped: needs CUDA (DeepSpeed + GPTQ)"
    elif not gptq_ok:
        seed["status"] = "skipped: no GPTQ checkpoint (the pack failed)"
    else:
        for precision in ("--fp16", "--bf16"):
            output_dir = work_dir / f"seed-command{precision.replace('--', '-')}"
            shutil.rmtree(output_dir, ignore_errors=True)
            command = [python, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "6601",
                       "finetune.py", "--model_name_or_path", str(gptq_dir), "--data_path", workload["path"],
                       precision, "True", "--output_dir", str(output_dir), "--num_train_epochs", "1",
                       "--max_steps", str(SEED_STEPS), "--per_device_train_batch_size", "1",
                       "--gradient_accumulation_steps", "2", "--evaluation_strategy", "no", "--save_strategy", "no",
                       "--learning_rate", "1e-5", "--weight_decay", "0.1", "--adam_beta2", "0.95",
                       "--warmup_ratio", "0.01", "--lr_scheduler_type", "cosine", "--logging_steps", "1",
                       "--report_to", "none", "--model_max_length", "1024", "--gradient_checkpointing", "True",
                       "--lazy_preprocess", "True", "--deepspeed", "ds_configs/zero2.json", "--use_lora", "--q_lora"]
            attempt = {"precision": precision[2:], "command": shlex.join(command).replace(python, "python", 1),
                       "output_dir": str(output_dir)}
            seed["attempts"].append(attempt)
            done = child(f"seed command {precision[2:]}", command, CAPS["seed"], need=60)
            if done is None:
                attempt["status"] = "skipped: out of time"
                break
            attempt.update(rc=done["rc"], seconds=done["seconds"], losses=losses_from(done["lines"]),
                           **summary_row(output_dir, SEED_STEPS, SEED_WARMUP))
            if done["rc"] == 0 and (output_dir / "adapter_config.json").is_file():
                attempt["status"] = "ok"
                adapter, adapter_from = output_dir, f"the seed command ({precision[2:]})"
                break
            attempt["status"] = "failed: " + run.failure_text(done)
            attempt["log_tail"] = "".join(done["lines"])[-run.LOG_TAIL_CHARS:]
        seed["status"] = seed["attempts"][-1].get("status", "?") if seed["attempts"] else "not run"

    # e. merge into the unquantized checkpoint, and the refusal with only the GPTQ checkpoint as base
    if adapter is None and recipes.get("qlora-gptq", {}).get("status") == "ok":
        adapter, adapter_from = Path(recipes["qlora-gptq"]["output_dir"]), "the qlora-gptq recipe (fallback)"
    if adapter is None and not on_gpu and recipes.get("lora", {}).get("status") == "ok":
        adapter, adapter_from = Path(recipes["lora"]["output_dir"]), "the lora recipe (CPU smoke)"
    merged = work_dir / "merged-qwen"
    merge_command = ["bash", "recipes/qwen/merge.sh", str(adapter or "ADAPTER"), str(merged)]
    merge = {"command": "BASE=" + shlex.quote(checkpoint) + " NO_SAMPLE=1 " + shlex.join(merge_command),
             "adapter_from": adapter_from}
    result["merge"] = merge
    if "merge" in skip:
        merge["status"] = "skipped: --skip"
    elif adapter is None:
        merge["status"] = "skipped: no adapter (the seed command and the qlora-gptq recipe failed or were skipped)"
    else:
        done = child("merge", merge_command, CAPS["merge"],
                     {"BASE": checkpoint, "NO_SAMPLE": "1", "PYTHON": python}, need=40)
        if done is None:
            merge["status"] = "skipped: out of time"
        else:
            probe = [PROBE_LINE.search(line) for line in done["lines"]]
            probe = [m for m in probe if m]
            ok = done["rc"] == 0 and (merged / "config.json").is_file()
            merge.update(status="ok" if ok else "failed: " + run.failure_text(done), seconds=done["seconds"],
                         merged_gib=folder_gib(merged))
            if probe:
                merge.update(probe_max_abs_diff=float(probe[-1].group(1)),
                             probe_relative_diff=float(probe[-1].group(2).rstrip(")")),
                             probe_line=probe[-1].group(0))
            if not ok:
                merge["log_tail"] = "".join(done["lines"])[-run.LOG_TAIL_CHARS:]
        shutil.rmtree(merged, ignore_errors=True)  # a merged 7B is 15 GB of /tmp

    refusal = {"expect": "non-zero exit code and 'quantized' in the output", "checks": []}
    result["merge_refusal"] = refusal
    variants = []
    if adapter is not None and gptq_ok and "refusal" not in skip:
        variants.append(("BASE=<the GPTQ checkpoint>", str(gptq_dir)))
        recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if recorded and Path(recorded).resolve() == gptq_dir.resolve():
            variants.append(("BASE unset (the adapter records the GPTQ checkpoint)", ""))
    for label, base in variants:
        refused = work_dir / "merged-qwen-refused"
        command = ["bash", "recipes/qwen/merge.sh", str(adapter), str(refused)]
        done = child(f"merge refusal ({label})", command, CAPS["refusal"],
                     {"BASE": base, "NO_SAMPLE": "1", "PYTHON": python}, need=15)
        if done is None:
            refusal["checks"].append({"base": label, "status": "skipped: out of time"})
            continue
        text = "".join(done["lines"])
        refused_ok = done["rc"] not in (0, None) and "quantized" in text and not (refused / "config.json").exists()
        message = [line.strip() for line in done["lines"] if "quantized" in line]
        refusal["checks"].append({"base": label, "rc": done["rc"], "seconds": done["seconds"],
                                  "status": "ok (refused)" if refused_ok else "failed: not refused as expected",
                                  "message": message[-1][:400] if message else text[-400:]})
        shutil.rmtree(refused, ignore_errors=True)
    refusal["status"] = ("skipped: --skip" if "refusal" in skip else
                         "skipped: needs an adapter and the GPTQ checkpoint" if not variants else
                         "ok" if all(c["status"].startswith("ok") for c in refusal["checks"]) else "failed")

    # ratios against our baseline on the same bf16 checkpoint: the 4-bit recipes against the NF4 baseline when
    # --all-baselines ran it, the rest against the bf16 one
    ours_by_name = {name: run.mean_of(result["runs"], name, "ours") for name in
                    {r["name"] for r in result["runs"] if r["implementation"] == "ours"}}
    ours_by_name = {k: v for k, v in ours_by_name.items() if v}
    nf4 = suite.other_baseline_runs[0] if suite.other_baseline_runs else None
    for row in result["runs"]:
        if nf4 in ours_by_name and row["name"] in ("recipe-qwen-qlora", "recipe-qwen-qlora-gptq"):
            row["compare_with"] = nf4
    run.add_ratios(result["runs"], ours_by_name, BASELINE_RUN)
    return finish()
