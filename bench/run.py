"""The one benchmark runner: any suite of bench/suites.py, the project's recipes against the seed-style baseline.

    python bench/run.py --suite SUITE [--shape SHAPE] [--variants a,b] [--skip NAME,...] [--deadline S] [--save NAME]
    bash bench/gpu.sh SUITE [flags]          # on the device machine (bench/README.md)

Each step is a child process of its own (so peak memory is per run); one that fails is recorded, the runner goes on:
  a. the shape's random-weight checkpoint, built once under $TMPDIR (bench/shapes.py); ChatGLM2's original layout is
     converted, qwen's packed to GPTQ-Int4;
  b. the suite's runs of bench/baseline.py, its first also through the shared reference (llama2-7b shape, CUDA;
     --repeat N: N pairs in ABBA order);
  c. the variants, `bash recipes/<family>/train.sh METHOD ... FLAGS` (or the seed's command line), on the baseline's
     lengths, timed from the run_summary.json they write; longctx: one sequence per length until one fails;
  d. `recipes/<family>/merge.sh` on the first adapter of the suite's list that trained; qwen: the merge refused with
     only the GPTQ pack as base;
  e. DIR/<suite>-<shape>.json (rewritten after every run, "partial" until the end), DIR/run.log, BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import baseline  # noqa: E402  (bench/baseline.py: the seed-style loop and its workload)
import report  # noqa: E402
import shapes  # noqa: E402
from suites import BIG, CPU_FLAGS, SUITES, Variant  # noqa: E402

PYTHON, BASELINE = sys.executable, str(BENCH_DIR / "baseline.py")
# The shared reference baseline, copied into bench/reference/ when missing: $TUNEKIT_REFERENCE_BASELINE, else the
# checkout's sibling shared/ folder (where the project's shared notes live).
REFERENCE_SOURCE = Path(os.environ.get("TUNEKIT_REFERENCE_BASELINE",
                                       BENCH_DIR.parent.parent / "shared/gpu/baseline_seed_style.py"))
PEER = BENCH_DIR / "reference" / "peer_unsloth_sft.py"
REFERENCE = BENCH_DIR / "reference" / "baseline_seed_style.py"
RECIPE_FLAGS = ("--report_to", "none", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
                "--eval_data_path", "", "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "10")
CONFIG_KEYS = ("q_lora", "use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
               "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "kbit_upcast", "optim", "bf16",
               "gradient_checkpointing", "per_device_train_batch_size", "gradient_accumulation_steps",
               "model_max_length", "attn_implementation", "packing", "group_by_length")
NOTE_KEYS = ("lora_r", "lora_alpha", "lora_target_modules", "bnb_4bit_use_double_quant", "kbit_upcast")
PROBE_LINE = re.compile(r"probe logits: max \|diff\| (\S+) = (\S+) of the largest logit")


class Log:
    """Everything the children print, prefixed, to our stdout and to one combined log file."""

    def __init__(self, path: Path):
        self.file = path.open("w", encoding="utf-8")

    def write(self, line: str) -> None:
        for stream in (sys.stdout, self.file):
            stream.write(line)
            stream.flush()


def run_child(label: str, command: list[str], log: Log, timeout_s: float, env: dict | None = None) -> dict:
    """Runs one child in its own process group; returns rc, seconds, whether it timed out, and its output lines."""
    log.write(f"\n==> [{label}] {shlex.join(command)}\n")
    started, lines, timed_out = time.time(), [], threading.Event()
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                               start_new_session=True)

    def kill_group():
        timed_out.set()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout_s, kill_group)
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            log.write(f"[{label}] {line}")
        process.wait()
    finally:
        timer.cancel()
    seconds = round(time.time() - started, 1)
    log.write(f"<== [{label}] rc={process.returncode} in {seconds}s"
              + (f" (killed after {timeout_s:.0f}s)" if timed_out.is_set() else "") + "\n")
    return {"rc": process.returncode, "seconds": seconds, "timed_out": timed_out.is_set(), "lines": lines}


def results_of(child: dict | None) -> list[dict]:
    """The JSON of a child's `RESULT {...}` lines (the baselines' and the peer's report), in order."""
    return [json.loads(line[7:]) for line in (child or {}).get("lines", []) if line.startswith("RESULT {")]


def failure_text(child: dict) -> str:
    if child["timed_out"]:
        return f"timed out after {child['seconds']:.0f}s"
    failed = [line.strip() for line in child["lines"] if line.startswith("FAILED ")]
    if failed:
        return failed[-1][:500]
    if any("OutOfMemoryError" in line or "out of memory" in line for line in child["lines"]):
        return "out of memory"
    tail = [line.strip() for line in child["lines"] if line.strip()]
    return f"exit code {child['rc']}: " + " | ".join(tail[-3:])[-500:]


def log_tail(child: dict) -> str:
    return "".join(child["lines"])[-3000:]


def timed(summary: dict, warmup: int, total: int) -> dict | None:
    """Real tokens/s and peak over optimizer steps warmup+1..total of a run_summary.json (None: fewer steps)."""
    times, tokens = (summary.get("step_times") or [])[warmup:total], (summary.get("step_tokens") or [])[warmup:total]
    if len(times) < total - warmup or len(tokens) < total - warmup or not sum(times):
        return None
    peaks = [p for p in (summary.get("step_peak_gib") or [])[warmup:total] if p is not None]
    return {"seconds": round(sum(times), 2), "real_tokens": sum(tokens), "tokens_per_s": round(sum(tokens) / sum(times)),
            "peak_gib": max(peaks) if peaks else summary.get("peak_gib")}


def folder_gib(path: Path) -> float | None:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30, 2) if path.is_dir() else None


def mean_of(rows: list[dict], name: str, implementation: str) -> dict | None:
    """Mean tokens/s, max peak and the (identical) real-token set of the successful trials of one run."""
    ok = [r for r in rows if r["name"] == name and r["implementation"] == implementation and r.get("status") == "ok"]
    peaks = [r["peak_gib"] for r in ok if r.get("peak_gib") is not None]
    return {"name": name, "trials": len(ok), "each": [r["tokens_per_s"] for r in ok],
            "tokens_per_s": round(sum(r["tokens_per_s"] for r in ok) / len(ok)), "peak_gib": max(peaks, default=None),
            "real_tokens": ok[0]["real_tokens"] if len({r["real_tokens"] for r in ok}) == 1 else None} if ok else None


def git_commit() -> str | None:
    def git(*words):
        return subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        return (git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "-uno") else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_workload(kind: str, folder: Path, shape: str) -> dict:
    """The recipe's data: the baseline's samples as text lines ("t12 t345 ...", 2 words shorter: the engine adds BOS
    and EOS) or as one-turn conversations whose ChatML renderings have exactly their lengths; or (adgen) ADGEN-style
    records that max_source_length 512 / max_target_length 511 cut to exactly 1024 tokens each."""
    path = folder / ("conversations.json" if kind == "conversations" else f"{kind}.jsonl")
    if kind == "adgen":
        content = "类型#连衣裙*材质#真丝*颜色#墨绿色*风格#复古*裙长#长裙*" * 40
        summary = "这条墨绿色真丝长裙垂坠顺滑，复古的领口和收腰剪裁勾勒身形，走动时裙摆轻轻摆动，优雅又从容。" * 40
        path.write_text("".join(json.dumps({"content": content + str(i), "summary": summary}, ensure_ascii=False)
                                + "\n" for i in range(400)), encoding="utf-8")
        return {"path": str(path), "format": kind, "samples": 400, "sample_tokens": 1024}
    samples = baseline.sample_workload(shapes.word_vocab(shape))
    lengths = [len(ids) for ids in samples]
    info = {"path": str(path), "format": kind, "samples": len(samples), "rendered_tokens": sum(lengths),
            "max_tokens": max(lengths)}
    if kind == "text":
        path.write_text("".join(json.dumps({"text": " ".join(f"t{i}" for i in ids[:-2])}) + "\n" for ids in samples))
        return info
    words = shapes.chatml_space_words(shapes.word_vocab(shape))
    path.write_text(json.dumps([shapes.conversation_from_ids(ids, words) for ids in samples], ensure_ascii=False))
    return {**info, "note": "ChatML renderings (default system prompt + user + assistant) of the baseline's lengths; "
                            f"{shapes.CHATML_OVERHEAD} template tokens each"}


def env_text(env: dict) -> str:
    return "".join(f"{key}={shlex.quote(value)} " for key, value in env.items() if key != "PYTHON")


class Bench:
    def __init__(self, args, argv):
        self.args, self.suite, self.started = args, SUITES[args.suite], time.time()
        self.key = f"{args.suite}-{args.shape}"
        self.out_dir = Path(args.out or ROOT / "out" / "bench" / self.key).resolve()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = Path(shapes.tmp_root()) / f"tunekit-bench-{args.shape}"
        shutil.rmtree(self.work_dir, ignore_errors=True)  # adapters of an earlier run
        self.work_dir.mkdir(parents=True)
        self.checkpoint = args.checkpoint or shapes.default_checkpoint(args.shape)
        self.gptq_dir = Path(self.checkpoint.rstrip("/") + "-gptq-int4")
        self.log = Log(self.out_dir / "run.log")
        self.baseline_flags = ["--shape", args.shape, "--checkpoint", self.checkpoint]
        self.on_gpu, self.gptq_ok, self.built, self.adapters, self.variants, self.workload = False, False, [], {}, (), {}
        self.result = {"suite": args.suite, "shape": args.shape, "git_commit": git_commit(),
                       "command": shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
                       "checkpoint": self.checkpoint, "repeat": args.repeat, "runs": [], "skipped": []}
        if args.deadline:
            self.result["deadline_s"] = args.deadline

    def child(self, label: str, command: list[str], env: dict | None = None, cap: float = math.inf,
              need: float = 25) -> dict | None:
        """run_child with a timeout of min(cap, --child-timeout, what --deadline leaves); None (and a 'skipped'
        entry) when less than `need` seconds are left."""
        left = self.args.deadline - (time.time() - self.started) if self.args.deadline else math.inf
        if min(cap, self.args.child_timeout, left - 15) < need:
            self.result["skipped"].append(f"{label}: out of time ({left:.0f}s of --deadline left)")
            self.log.write(f"\n--- [{label}] skipped: out of time\n")
            return None
        return run_child(label, command, self.log, min(cap, self.args.child_timeout, left - 15), env)

    def add(self, row: dict) -> dict:
        self.result["runs"].append(row)  # and the JSON so far: a run killed at the device's time limit still reports
        (self.out_dir / f"{self.key}.json").write_text(json.dumps({**self.result, "partial": True}, indent=2))
        return row

    def run(self) -> int:
        args, suite = self.args, self.suite
        if not self.prepare():
            return self.finish()
        if suite.gptq:
            self.gptq_pack()
        self.variants = () if args.skip_recipe else tuple(v for v in suite.variants if (
            v.key in args.variants if args.variants else v.default == "always" or v.default == "cpu" and not self.on_gpu))
        if suite.lengths:
            self.longctx()
            return self.finish()
        self.workload = self.result["workload"] = write_workload(suite.workload, self.work_dir, args.shape)
        if args.skip_recipe:
            self.result["recipe"] = "skipped (--skip-recipe)"
        for variant in self.variants[:suite.baselines_after]:
            self.recipe(variant, self.workload["path"])
        self.baselines()
        for variant in self.variants[suite.baselines_after:]:
            self.recipe(variant, self.workload["path"])
        self.merge()
        self.ratios()
        return self.finish()

    def prepare(self) -> bool:
        """a. The checkpoint and a description of the machine, in a child so that the GPU is free again afterwards."""
        done = self.child("prepare", [PYTHON, BASELINE, *self.baseline_flags, "--prepare"])
        described = [json.loads(line[4:]) for line in done["lines"] if line.startswith("ENV {")] if done else []
        if not described:
            self.result.update(error="could not build the checkpoint: " + (failure_text(done) if done else "no time"),
                               prepare_log_tail=log_tail(done) if done else "")
            return False
        env = described[-1]
        self.result["environment"] = {k: v for k, v in env.items() if k not in (
            "checkpoint", "built", "seconds", "converted", "convert_s", "vocab_size")}
        self.result.update(checkpoint_build_s=env.get("seconds"), checkpoint_gib=folder_gib(Path(self.checkpoint)),
                           **{k: env[k] for k in ("converted", "convert_s") if k in env})
        self.on_gpu, self.built = env.get("device") not in (None, "cpu"), [self.checkpoint] if env.get("built") else []
        if env.get("converted"):  # ChatGLM2: the baseline runs on the conversion; the recipe converts (cached)
            self.baseline_flags = ["--checkpoint", env["converted"], "--vocab-size", str(env["vocab_size"])]
            self.built += [env["converted"]] if self.built else []  # a new original: its conversion is new too
        return True

    def gptq_pack(self) -> None:
        command = [PYTHON, "-m", "tunekit.tiny.gptq", self.checkpoint, str(self.gptq_dir), "--device",
                   "cuda" if self.on_gpu else "cpu"]
        pack = self.result["gptq_pack"] = {"command": shlex.join(["python", *command[1:]]), "status": "skipped: out of time"}
        self.result["gptq_checkpoint"] = str(self.gptq_dir)
        shutil.rmtree(self.gptq_dir, ignore_errors=True)
        done, config = self.child("gptq pack", command), self.gptq_dir / "config.json"
        quant = (json.loads(config.read_text()).get("quantization_config") if config.is_file() else None) or {}
        self.gptq_ok = bool(done) and done["rc"] == 0 and quant.get("quant_method") == "gptq"
        if done:
            pack.update(status="ok" if self.gptq_ok else "failed: " + (failure_text(done) if done["rc"] else
                                                                       f"no GPTQ quantization_config in {config}"),
                        seconds=done["seconds"], **({} if self.gptq_ok else {"log_tail": log_tail(done)}))
        if self.gptq_ok:
            self.built.append(str(self.gptq_dir))
            pack.update(gib=folder_gib(self.gptq_dir), quantization_config={k: quant[k] for k in (
                "quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format") if k in quant})

    def baselines(self) -> None:
        """b. Our baseline's runs (and the reference's, in ABBA order with ours), each in its own process."""
        args, runs = self.args, self.suite.baselines
        main = runs[0] if runs else None
        if self.on_gpu and runs and not self.suite.baselines_after and not args.no_warm_process:
            done = self.child("warm-up process (not measured)", [PYTHON, BASELINE, *self.baseline_flags, "--steps", "8",
                                                                 "--warmup", "4", main])
            self.result["warm_process"] = {"rc": done["rc"], "seconds": done["seconds"]} if done else "out of time"
        if args.shape == "llama2-7b" and self.on_gpu and not REFERENCE.is_file() and REFERENCE_SOURCE.is_file():
            REFERENCE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REFERENCE_SOURCE, REFERENCE)
        reference = ("skipped (--skip-reference)" if "reference" in args.skip else
                     "skipped: the reference hard-codes the llama2-7b shape and needs CUDA"
                     if args.shape != "llama2-7b" or not self.on_gpu else
                     None if REFERENCE.is_file() else f"skipped: {REFERENCE} is missing")
        if reference:
            self.result["reference"] = reference
        needed = {v.compare_with or main for v in self.variants} | ({main} if not args.variants else set())
        steps = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        for name, trial in [(n, t) for n in runs if n in needed or args.all_baselines
                            for t in range(1, (args.repeat if n == main else 1) + 1)]:
            both = ("reference", "ours") if trial % 2 else ("ours", "reference")
            for implementation in both if name == main and not reference else ("ours",):
                row = {"name": name, "implementation": implementation, "trial": trial}
                if implementation == "ours" and "ours" in args.skip:
                    self.add({**row, "status": "skipped: --skip"})
                    continue
                if implementation == "ours":
                    done = self.child(f"ours {name} #{trial}", [PYTHON, BASELINE, *self.baseline_flags, name, *steps],
                                      need=60)
                else:  # the reference reads its checkpoint and steps from the environment
                    done = self.child(f"reference #{trial}", [PYTHON, str(REFERENCE), name], {
                        "BASELINE_CKPT": self.checkpoint, "BASELINE_STEPS": steps[1], "BASELINE_WARM": steps[3]})
                results = results_of(done)
                if results and results[-1].get("name") == name:
                    row = {**results[-1], **row, "status": "ok", "wall_s": done["seconds"]}
                else:
                    row.update({"status": "skipped: out of time"} if not done else dict(
                        status="failed", error=failure_text(done), wall_s=done["seconds"], log_tail=log_tail(done)))
                self.add(row)

    def recipe(self, variant: Variant, data: str) -> dict:
        """c. One variant; its row has the figures over the timed steps, the recipe's config and the data's stats."""
        args, family, on_gpu = self.args, self.suite.family, self.on_gpu
        if variant.peer:
            return self.peer(variant)
        name, output_dir = variant.name(family), self.work_dir / variant.name(family)
        shutil.rmtree(output_dir, ignore_errors=True)
        recipe_file = ROOT / f"recipes/{family}/{variant.method}.json"
        budget = json.loads(recipe_file.read_text()).get("token_budget", 0) if recipe_file.is_file() else 0
        steps = variant.steps or (BIG if budget >= 16384 and "--token_budget" not in variant.flags else None)
        total, warmup = steps if steps and on_gpu else (args.steps, args.warmup)
        extra = list(variant.flags) + list(variant.gpu_flags if on_gpu else ())
        extra += [flag.format(name=name) for flag in shlex.split(args.recipe_flags)]  # e.g. --logging_steps 1
        if not on_gpu and "--token_budget" in extra:  # CPU smoke: SDPA's packed mask is quadratic in the row length
            extra[extra.index("--token_budget") + 1] = str(min(int(extra[extra.index("--token_budget") + 1]), 2048))
        model = str(self.gptq_dir) if variant.gptq else self.checkpoint
        if variant.command:  # the seed's own command line
            command = [part.format(python=PYTHON, model=model, data=data, output_dir=output_dir, steps=total)
                       for part in variant.command] + extra
        else:  # train.sh reads MODEL (an original layout is converted), DATA, OUTPUT_DIR and PYTHON
            command = ["bash", f"recipes/{family}/train.sh", variant.method, *variant.overlays, "--max_steps", str(total),
                       *RECIPE_FLAGS,
                       *(() if on_gpu else CPU_FLAGS), *extra]
        env = {} if variant.command else {"MODEL": model, "DATA": data, "OUTPUT_DIR": str(output_dir), "PYTHON": PYTHON}
        row = {"name": name, "implementation": "seed" if variant.command else "recipe", "output_dir": str(output_dir),
               "command": env_text(env) + shlex.join(command).replace(PYTHON, "python")}
        reason = ("--skip" if variant.key in args.skip else variant.cuda if variant.cuda and not on_gpu else
                  "no GPTQ checkpoint (the pack failed)" if variant.gptq and not self.gptq_ok else None)
        done = None if reason else self.child(name, command, env, need=60)
        if done is None:
            return self.add({**row, "status": f"skipped: {reason or 'out of time'}"})
        summary_path = output_dir / "run_summary.json"
        summary = json.loads(summary_path.read_text()) if done["rc"] == 0 and summary_path.is_file() else {}
        steady, row["wall_s"] = timed(summary, warmup, total), done["seconds"]
        if not steady:
            return self.add({**row, "status": "failed", "log_tail": log_tail(done), "error": failure_text(done)
                             if done["rc"] else f"no {summary_path}" if not summary else
                             f"run_summary.json has {len(summary.get('step_times') or [])} step times; need {total}"})
        recorded = output_dir / "finetune_args.json"
        recorded = json.loads(recorded.read_text()) if recorded.is_file() else {}
        config = {key: recorded[key] for key in CONFIG_KEYS if key in recorded}
        losses = [summary.get("first_loss"), summary.get("final_loss")]
        row.update(status="ok" if all(v is None or math.isfinite(v) for v in losses) else "failed: loss",
                   steps=total - warmup, **steady, losses=losses, whole_run_peak_gib=summary.get("peak_gib"),
                   trainable_params=summary.get("trainable_params"), final_loss=summary.get("final_loss"),
                   train_runtime_s=summary.get("train_runtime_s"), whole_run_tokens_per_s=summary.get("tokens_per_s"),
                   whole_run_real_tokens=summary.get("real_tokens"), config=config,
                   data_stats={k: summary[k] for k in ("samples", "truncated", "dropped", "tokens") if k in summary},
                   note="peak over the timed steps; " + ", ".join(f"{k}={v}" for k, v in config.items()
                                                                  if k in NOTE_KEYS))
        if self.workload.get("rendered_tokens") and "tokens" in summary and not variant.command:  # tokenized as meant
            row["same_lengths_as_workload"] = summary["tokens"] == self.workload["rendered_tokens"]
        if self.workload.get("sample_tokens"):
            row["samples_per_s"] = round(row["tokens_per_s"] / self.workload["sample_tokens"], 3)
            row["note"] += f"; {row['samples_per_s']} samples/s of {self.workload['sample_tokens']} tokens"
        if row["status"] == "ok":
            self.adapters[variant.key] = (output_dir, name)
        return self.add(row)

    def peer(self, variant: Variant) -> dict:
        """c''. A peer's own training path on the same checkpoint and lengths (bench/reference/peer_unsloth_sft.py
        MODE); its RESULT line has real tokens/s and peak GiB over its timed steps."""
        name, site = variant.name(self.suite.family), os.environ.get("PEER_SITE", "")
        row = {"name": name, "implementation": "unsloth", "command": f"python {PEER.relative_to(ROOT)} {variant.peer}"}
        reason = ("--skip" if variant.key in self.args.skip else
                  variant.cuda if not self.on_gpu or not site or not Path(site).is_dir() else
                  f"{PEER} is missing (copy ../shared/gpu/peer_unsloth_sft.py there)" if not PEER.is_file() else None)
        done = None if reason else self.child(name, [PYTHON, str(PEER), variant.peer], {
            "BASELINE_CKPT": self.checkpoint, "PYTHONPATH": f"{site}:{os.environ.get('PYTHONPATH', '')}",
            "HF_HUB_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1"}, need=60)
        if done is None:
            return self.add({**row, "status": f"skipped: {reason or 'out of time'}"})
        results = results_of(done)
        if not results:
            return self.add({**row, "status": "failed", "error": failure_text(done), "log_tail": log_tail(done),
                             "wall_s": done["seconds"]})
        result = results[-1]
        versions = {pkg: next((d.name[len(pkg) + 1:-len(".dist-info")] for d in Path(site).glob(f"{pkg}-*.dist-info")),
                              None) for pkg in ("unsloth", "unsloth_zoo", "trl", "datasets")}
        return self.add({**row, "status": "ok", "tokens_per_s": result["tokens_per_s"], "peak_gib": result["peak_gib"],
                         "real_tokens": result["real_tokens"], "steps": result["steps"], "seconds": result["seconds"],
                         "wall_s": done["seconds"], "versions": versions, "note": (
                             f"Unsloth's SFTTrainer, packing={result.get('packing')}, padding_free="
                             f"{result.get('padding_free')}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))})

    def longctx(self) -> None:
        """c'. One sequence of each length in turn (ascending), two steps, until one fails or time runs out."""
        variant, vocab, first = self.suite.variants[0], shapes.SHAPES[self.args.shape]["vocab_size"], shapes.FIRST_WORD_ID
        self.result["longest_ok"] = None
        for length in self.args.lengths or self.suite.lengths[self.args.shape]:
            data = self.work_dir / f"long-{length}.jsonl"  # one record of exactly `length` tokens with BOS and EOS
            data.write_text(json.dumps({"text": " ".join(f"t{first + 7 * i % (vocab - first)}"
                                                         for i in range(length - 2))}) + "\n")
            row = self.recipe(dataclasses.replace(variant, suffix=f"-{length}", flags=variant.flags + (
                "--model_max_length", str(length))), str(data))
            shutil.rmtree(row["output_dir"], ignore_errors=True)
            if row["status"] != "ok":
                break
            self.result["longest_ok"] = length

    def merge(self) -> None:
        """d. `recipes/<family>/merge.sh` on the first adapter of the suite's list that trained; qwen: the merge
        refused with only the GPTQ pack as base (given as BASE, and as the base the adapter records)."""
        suite, family, skip = self.suite, self.suite.family, self.args.skip
        order = suite.merge or ((self.variants[0].key,) if self.args.merge and self.variants else ())
        adapter, adapter_from = next((self.adapters[k] for k in order if k in self.adapters), (None, None))
        merged, script = self.work_dir / f"merged-{family}", f"recipes/{family}/merge.sh"
        env = {key: value.format(checkpoint=self.checkpoint) for key, value in suite.merge_env}
        merge = {"command": env_text(env) + shlex.join(["bash", script, str(adapter or "ADAPTER"), str(merged)]),
                 "adapter_from": adapter_from, "status": "skipped: --skip" if "merge" in skip else
                 f"skipped: no adapter ({', '.join(order)} did not train)" if adapter is None else "skipped: out of time"}
        if order:
            self.result["merge"] = merge
        if self.on_gpu and adapter and self.checkpoint in self.built and "converted" in self.result:
            shutil.rmtree(self.checkpoint, ignore_errors=True)  # disk: the conversion keeps the original's files
        done = self.child("merge", ["bash", script, str(adapter), str(merged)], {**env, "PYTHON": PYTHON}, need=40) \
            if order and adapter and "merge" not in skip else None
        if done:
            ok, probe = done["rc"] == 0 and (merged / "config.json").is_file(), [
                m for m in map(PROBE_LINE.search, done["lines"]) if m]
            merge.update(status="ok" if ok else "failed: " + failure_text(done), seconds=done["seconds"],
                         merged_gib=folder_gib(merged), **({} if ok else {"log_tail": log_tail(done)}))
            if probe:
                merge.update(probe_max_abs_diff=float(probe[-1].group(1)), probe_line=probe[-1].group(0),
                             probe_relative_diff=float(probe[-1].group(2).rstrip(")")))
            reverse = Path(f"{merged}-{family}") / "config.json"  # chatglm2: written back in the original layout
            if reverse.is_file():
                merge["reverse_config"] = {k: json.loads(reverse.read_text()).get(k) for k in (
                    "model_type", "num_layers", "multi_query_group_num", "padded_vocab_size", "torch_dtype")}
        for path in (merged, Path(f"{merged}-{family}")):
            shutil.rmtree(path, ignore_errors=True)  # a merged 7B is 13.5 GB of /tmp
        if not suite.gptq:
            return
        refusal = self.result["merge_refusal"] = {"expect": "non-zero exit code and 'quantized' in the output",
                                                  "checks": []}
        recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path") \
            if adapter else None
        bases = [("BASE=<the GPTQ checkpoint>", str(self.gptq_dir))] + (
            [("BASE unset (the adapter records the GPTQ checkpoint)", "")]
            if recorded and Path(recorded).resolve() == self.gptq_dir.resolve() else [])
        for label, base in bases if adapter and self.gptq_ok and "refusal" not in skip else ():
            refused = self.work_dir / "merged-refused"
            done = self.child(f"merge refusal ({label})", ["bash", script, str(adapter), str(refused)],
                              {"BASE": base, "NO_SAMPLE": "1", "PYTHON": PYTHON}, cap=60, need=15)
            message = [line.strip() for line in done["lines"] if "quantized" in line] if done else []
            refused_ok = done and done["rc"] not in (0, None) and message and not (refused / "config.json").exists()
            refusal["checks"].append({"base": label, "status": "skipped: out of time"} if not done else {
                "base": label, "rc": done["rc"], "seconds": done["seconds"],
                "status": "ok (refused)" if refused_ok else "failed: not refused as expected",
                "message": message[-1][:400] if message else "".join(done["lines"])[-400:]})
            shutil.rmtree(refused, ignore_errors=True)
        checks = refusal["checks"]
        refusal["status"] = ("skipped: --skip" if "refusal" in skip else
                             "skipped: needs an adapter and the GPTQ checkpoint" if not checks else
                             "ok" if all(c["status"].startswith("ok") for c in checks) else "failed")

    def ratios(self) -> None:
        """Ratios to our baseline of the same run (mean over its trials; a variant's: the run it names), and how
        well ours reproduces the reference."""
        runs, main = self.result["runs"], (self.suite.baselines or ("",))[0]
        ours = {name: m for name in {r["name"] for r in runs if r["implementation"] == "ours"}
                if (m := mean_of(runs, name, "ours"))}
        variants = {v.name(self.suite.family): v for v in self.variants}
        for row in runs if self.suite.ratios else ():
            v = variants.get(row["name"])
            base = next((ours[n] for n in ([v.prefer, v.compare_with or main] if v else [row["name"]]) if n in ours),
                        None)
            if row.get("status") == "ok" and base:
                row.update(compared_with=base["name"], same_real_tokens_as_ours=row["real_tokens"] == base["real_tokens"],
                           tokens_per_s_vs_ours=round(row["tokens_per_s"] / base["tokens_per_s"], 3))
                if row.get("peak_gib") and base.get("peak_gib"):
                    row["peak_vs_ours"] = round(row["peak_gib"] / base["peak_gib"], 3)
        peers = {r["name"]: r for r in runs if r["implementation"] == "unsloth" and r.get("status") == "ok"}
        for row in runs:
            v = variants.get(row["name"])
            peer = peers.get(f"unsloth-sft-{v.vs_peer}") if v and v.vs_peer else None
            if peer and row.get("status") == "ok":
                row.update(compared_with_peer=peer["name"],
                           tokens_per_s_vs_peer=round(row["tokens_per_s"] / peer["tokens_per_s"], 3),
                           peak_vs_peer=round(row["peak_gib"] / peer["peak_gib"], 3))
        reference, mine = mean_of(runs, main, "reference"), ours.get(main)
        if reference and mine:
            ratio = mine["tokens_per_s"] / reference["tokens_per_s"]
            self.result["reproduction"] = {
                "name": main, "trials": min(reference["trials"], mine["trials"]), "tokens_per_s_ratio": round(ratio, 4),
                **{f"{who}_{key}": row[field] for who, row in (("reference", reference), ("ours", mine))
                   for key, field in (("tokens_per_s", "tokens_per_s"), ("tokens_per_s_each", "each"),
                                      ("peak_gib", "peak_gib"))},
                "same_real_tokens": reference["real_tokens"] == mine["real_tokens"],
                "within_5_percent": abs(ratio - 1) <= 0.05}

    def finish(self) -> int:
        """e. On a GPU the checkpoints built here go first; then the JSON, BENCHMARKS.md and a summary in the log."""
        result = self.result
        if self.on_gpu and not self.args.keep_checkpoints and self.built:
            for path in self.built:
                shutil.rmtree(path, ignore_errors=True)
            result["deleted_checkpoints"] = self.built
        result.update(runner_seconds=round(time.time() - self.started, 1),
                      finished_at=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        json_path = self.out_dir / f"{self.key}.json"
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        if self.args.save:
            shutil.copy2(json_path, report.RESULTS_DIR / f"{self.args.save}.json")
        report.write_benchmarks()
        self.log.write(f"\nwrote {json_path} and {report.BENCHMARKS} in {result['runner_seconds']}s\n")
        for row in result["runs"]:
            self.log.write("SUMMARY " + json.dumps([row.get(k) for k in ("name", "implementation", "status",
                                                                      "tokens_per_s", "peak_gib",
                                                                      "tokens_per_s_vs_ours")]) + "\n")
        for name in ("reproduction", "gptq_pack", "merge", "merge_refusal", "longest_ok", "error"):
            if name in result:
                self.log.write(f"{name.upper()} " + json.dumps(result[name])[:1500] + "\n")
        ok = self.suite.lengths or all(r["status"] == "ok" or r["status"].startswith("skipped")
                                       and "out of time" not in r["status"] for r in result["runs"])
        return 0 if ok and not result.get("error") and (result.get("longest_ok") or not self.suite.lengths) else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add, names = parser.add_argument, lambda text: [name.strip("-") for name in text.split(",") if name]
    add("--suite", choices=sorted(SUITES), required=True)
    add("--shape", help="default: the suite's first (real) shape")
    add("--out", help="folder for <suite>-<shape>.json and run.log (default: out/bench/<suite>-<shape>)")
    add("--checkpoint", help="checkpoint folder (default: under $TMPDIR; built if missing)")
    add("--variants", type=names, help="run only these variants (e.g. nf4-r16-packed) and the baselines they need")
    add("--skip", default=[], action="extend", type=names, help="variants or steps: reference, ours, merge, refusal")
    add("--skip-reference", dest="skip", action="append_const", const="reference", help="= --skip reference")
    add("--skip-recipe", action="store_true", help="only the checkpoint and the baselines")
    add("--all-baselines", action="store_true", help="also run the suite's other baseline runs")
    add("--repeat", type=int, default=1, help="pairs of reference/ours runs, in ABBA order")
    add("--no-warm-process", action="store_true", help="no short unmeasured GPU run first")
    add("--merge", action="store_true", help="also merge the first variant's adapter (llama2 suites)")
    add("--keep-checkpoints", action="store_true", help="on a GPU, keep the checkpoints built here")
    add("--child-timeout", type=float, help="seconds before a child is killed (default: the suite's)")
    add("--steps", type=int, help="optimizer steps a run (default: the suite's; GPU variants may have their own)")
    add("--warmup", type=int, help="steps before the clock starts (default: the suite's)")
    add("--lengths", type=lambda text: [int(x) for x in text.split(",")], help="longctx: lengths to try, ascending")
    add("--recipe-flags", default="", help="appended to every recipe run, {name} = the run's name (e.g. "
        "'--logging_steps 1')")
    add("--deadline", type=float, default=0, help="seconds the whole runner may take (0: no limit)")
    add("--save", metavar="NAME", help="also keep the JSON as bench/results/NAME.json")
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    args.shape, args.child_timeout = args.shape or suite.shapes[0], args.child_timeout or suite.child_timeout
    args.steps, args.warmup = args.steps or suite.steps[0], suite.steps[1] if args.warmup is None else args.warmup
    keys = {v.key for v in suite.variants}
    for flag, unknown in (("--variants", set(args.variants or ()) - keys),
                          ("--skip", set(args.skip) - keys - {"reference", "ours", "merge", "refusal"})):
        if unknown:
            parser.error(f"{flag}: unknown {sorted(unknown)}; known: {', '.join(sorted(keys))}")
    if args.shape not in suite.shapes or not 0 <= args.warmup < args.steps or args.repeat < 1:
        parser.error(f"--suite {args.suite} runs on --shape {' or '.join(suite.shapes)}; need 0 <= --warmup < --steps "
                     "and --repeat >= 1")
    return args


if __name__ == "__main__":
    sys.exit(Bench(parse_args(), None).run())
