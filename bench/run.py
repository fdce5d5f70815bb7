"""Benchmark runner: the project's recipe against the seed-style baseline, in one process tree on one machine.

    python bench/run.py --suite llama2-qlora [--shape llama2-7b|tiny] [--out DIR] [--skip-recipe] [--merge]
                        [--all-baselines] [--repeat N] [--save NAME]
    bash bench/gpu_llama2.sh [flags]     # on the device machine: installs the carried wheels, then the above
    python bench/run.py --suite qwen [--shape qwen2.5-7b|tiny-qwen] [--deadline S] [--keep-checkpoints] ...
    bash bench/gpu_qwen.sh [flags]       # the qwen suite on the device machine (bench/qwen_suite.py describes it)

Steps, each child in its own process (so peak memory is per run):
  a. build the random-weight checkpoint once under $TMPDIR (with a tokenizer where each word t{i} is one token);
     On a GPU, a short unmeasured run of our baseline follows (the first training process of a fresh machine is
     slower; --no-warm-process skips it);
  b. run the shared reference baseline (bench/reference/baseline_seed_style.py, copied from /work/shared/gpu/ when
     missing; git-ignored, never committed) for the suite's baseline run, when present (llama2-7b shape, CUDA);
  c. run our bench/baseline.py for the same run (and, with --all-baselines, for its other runs); with --repeat N,
     b and c run N times each in ABBA order and ratios use the means (single runs of one process swing ~±7%);
  d. run the project's recipe (`bash recipes/<family>/train.sh <method> ...`, 50 steps) on a jsonl file of the same
     lengths, and take its steady-state tokens/s from steps 21..50 of the run_summary.json it writes;
  e. with --merge, `bash recipes/<family>/merge.sh ADAPTER OUTPUT` (failure is recorded, not raised);
  f. write DIR/<suite>-<shape>.json and DIR/run.log, and regenerate BENCHMARKS.md from bench/results/*.json
     (with --save NAME, this run's JSON is first kept as bench/results/NAME.json).
A step that fails is recorded in the JSON and the runner goes on.  (The steps above are the llama2-qlora suite's; the
qwen suite's are in bench/qwen_suite.py.)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import baseline  # noqa: E402  (bench/baseline.py: shapes, runs, workload, checkpoint)
import report  # noqa: E402

REFERENCE_SOURCE = Path("/work/shared/gpu/baseline_seed_style.py")
REFERENCE = BENCH_DIR / "reference" / "baseline_seed_style.py"
LOG_TAIL_CHARS = 3000


@dataclass(frozen=True)
class Variant:
    """An extra recipe run: the recipe with `flags` added, named recipe-<family>-<method><suffix>."""
    suffix: str
    flags: tuple[str, ...]
    compare_with: str | None = None  # the baseline run its ratio is taken against (default: the suite's)
    gpu_only: bool = False  # Liger (Triton) and flex attention's backward need CUDA: skipped in the CPU smoke
    # (total, warm-up) optimizer steps on a GPU instead of the suite's: a packed step of 16k tokens is ~13 of the
    # baseline's steps, so 30 timed steps would take minutes; 10 still time 160k tokens, ~3 of the baseline's 30 steps
    steps: tuple[int, int] | None = None
    # which runs without --variants: "always", "cpu" (the CPU smoke's SDPA stand-ins; on a GPU only by name) or
    # "extra" (diagnostics, only by name): a suite's default set must finish within 8 minutes on one GPU
    default: str = "always"


@dataclass(frozen=True)
class Suite:
    family: str
    method: str  # recipes/<family>/<method>.json through recipes/<family>/train.sh
    baseline_run: str  # the bench/baseline.py run the recipe is compared with (and the reference reproduced on)
    other_baseline_runs: tuple[str, ...] = ()
    variants: tuple[Variant, ...] = ()
    shapes: tuple[str, ...] = ("llama2-7b", "tiny")  # the first is the default
    plain_recipe: bool = True  # also time the recipe as it is (the speed suites time only their variants)
    # the speed suites run their variants before the baselines and skip the warm-up process: the first process on a
    # fresh GPU runs slow, and this way that costs the recipe, never the baseline
    baselines_last: bool = False


# LoRA r=16, alpha=32 on every linear layer (the baseline's adapters), padding-free batches of a token budget.
FAST_R16 = ("--lora_r", "16", "--lora_alpha", "32", "--lora_target_modules", "all-linear", "--packing", "true",
            "--per_device_train_batch_size", "1", "--model_max_length", "1024")
BF16 = ("--q_lora", "false")
LIGER = ("--use_liger_kernel", "true")
SDPA = ("--attn_implementation", "sdpa")  # the recipes default to varlen: the SDPA variants say so
NO_LIGER = ("--use_liger_kernel", "false")
# flex attention (transformers' flex_attention with the packed block mask) ran at 22 s per 16k-token step on an
# H200 (2026-11-30): dropped for varlen, PyTorch's variable-length flash attention (tunekit/attention.py)
VARLEN_LIGER = ("--attn_implementation", "varlen", *LIGER)
NO_GC = ("--gradient_checkpointing", "false")
NO_DROPOUT = ("--lora_dropout", "0")
# A CPU smoke run: no bitsandbytes, no bf16, and none of the GPU-only speed switches the recipes default to (a variant
# may set a token budget again; the longctx suite uses these too)
CPU_FLAGS = ("--q_lora", "false", "--bf16", "false", "--use_cpu", "true", "--optim", "adamw_torch",
             "--attn_implementation", "sdpa", "--use_liger_kernel", "false", "--token_budget", "0")
BIG, MID, LOW = (16, 6), (26, 8), (30, 10)  # (total, warm-up) GPU steps of 16k-, 8k- and 4k-token variants
LEAN = ("--offload_activations", "true", "--optim", "adamw_bnb_8bit", "--token_budget", "4096")
QLORA_R16, LORA_R16 = "qlora-all-linear-r16-bs4", "lora-bf16-all-linear-r16-bs4"

SUITES = {
    "llama2-qlora": Suite("llama2", "qlora", "qlora-seed-qv-r64-bs4", (QLORA_R16, LORA_R16),
                          variants=(Variant("-qv-r64-single-quant", ("--lora_target_modules", "q_proj", "v_proj",
                                                                      "--no_bnb_4bit_use_double_quant")),)),
    # Issue 5's speed suites: the recipe with the fast switches against the baseline's all-linear r16 runs.  SDPA
    # keeps packed samples apart with a dense [tokens x tokens] mask; varlen attends only inside each sample.
    "throughput": Suite("llama2", "qlora", QLORA_R16, (LORA_R16,), plain_recipe=False, baselines_last=True, variants=(
        Variant("-nf4-r16-packed", FAST_R16 + SDPA + NO_LIGER + ("--token_budget", "16384"), steps=BIG,
                default="cpu"),
        Variant("-nf4-r16-packed-varlen-liger", FAST_R16 + VARLEN_LIGER + ("--token_budget", "16384"),
                gpu_only=True, steps=BIG),
        Variant("-nf4-r16-packed-varlen-liger-no-gc", FAST_R16 + VARLEN_LIGER + NO_GC + ("--token_budget", "8192"),
                gpu_only=True, steps=MID, default="extra"),
        Variant("-nf4-r16-packed-8k-liger", FAST_R16 + SDPA + LIGER + ("--token_budget", "8192"), gpu_only=True,
                steps=MID, default="extra"),
        Variant("-bf16-r16-packed", FAST_R16 + BF16 + SDPA + NO_LIGER + ("--token_budget", "16384"), LORA_R16,
                steps=BIG, default="cpu"),
        Variant("-bf16-r16-packed-varlen-liger", FAST_R16 + BF16 + VARLEN_LIGER + ("--token_budget", "16384"),
                LORA_R16, gpu_only=True, steps=BIG),
        Variant("-bf16-r16-packed-varlen-liger-no-gc", FAST_R16 + BF16 + VARLEN_LIGER + NO_GC + (
            "--token_budget", "8192"), LORA_R16, gpu_only=True, steps=MID),
        Variant("-bf16-r16-packed-varlen-liger-gc-half", FAST_R16 + BF16 + VARLEN_LIGER + (
            "--token_budget", "16384", "--gradient_checkpointing_fraction", "0.5"), LORA_R16, gpu_only=True, steps=BIG,
                default="extra"),  # 6.51x at 64.7 GiB (H200): no-gc at 8k is faster for less memory
        Variant("-bf16-r16-packed-8k-liger", FAST_R16 + BF16 + SDPA + LIGER + ("--token_budget", "8192"), LORA_R16,
                gpu_only=True, steps=MID, default="extra"))),
    "lean": Suite("llama2", "qlora", QLORA_R16, plain_recipe=False, baselines_last=True, variants=(
        Variant("-nf4-r16-lean", FAST_R16 + SDPA + NO_LIGER + ("--token_budget", "4096", "--offload_activations", "true"),
                steps=LOW, default="cpu"),
        # 8-bit AdamW (not paged: its state stays in torch's allocator, so the peak counts it): the r=16 adapters'
        # fp32 Adam state would be 0.3 GiB of a 4.9 GiB budget
        Variant("-nf4-r16-lean-varlen-liger-adam8", FAST_R16 + VARLEN_LIGER + LEAN, gpu_only=True, steps=LOW),
        Variant("-nf4-r16-lean-2k-varlen-liger-adam8", FAST_R16 + VARLEN_LIGER + LEAN[:-1] + ("2048",),
                gpu_only=True, steps=LOW, default="extra"),
        Variant("-nf4-r16-lean-3k-varlen-liger-adam8", FAST_R16 + VARLEN_LIGER + LEAN[:-1] + ("3072",),
                gpu_only=True, steps=LOW, default="extra"),
        # between the measured 3k (4.79 GiB, 2.19x) and 4k (5.05 GiB, 2.75x) of 2026-11-30
        Variant("-nf4-r16-lean-3.5k-varlen-liger-adam8", FAST_R16 + VARLEN_LIGER + LEAN[:-1] + ("3584",),
                gpu_only=True, steps=LOW, default="extra"),
        # LoRA dropout (the recipe's 0.1) stores a dropped copy of each adapted layer's input for the backward;
        # without it the adapters read the input the base layer already holds.  Measured on an H200: 4k 4.78 GiB
        # (3.01x, recipes/lean.json), 5k 4.97 GiB, 6k 5.14 GiB; 4k with dropout 5.05 GiB
        Variant("-nf4-r16-lean-nodrop-varlen-liger-adam8", FAST_R16 + VARLEN_LIGER + LEAN + NO_DROPOUT,
                gpu_only=True, steps=LOW),
        Variant("-nf4-r16-lean-5k-nodrop-varlen-liger-adam8", FAST_R16 + VARLEN_LIGER + LEAN[:-1] + ("5120",)
                + NO_DROPOUT, gpu_only=True, steps=LOW),
        Variant("-nf4-r16-lean-6k-nodrop-varlen-liger-adam8", FAST_R16 + VARLEN_LIGER + LEAN[:-1] + ("6144",)
                + NO_DROPOUT, gpu_only=True, steps=LOW),
        Variant("-nf4-r16-lean-3.5k-nodrop-varlen-liger-adam8", FAST_R16 + VARLEN_LIGER + LEAN[:-1] + ("3584",)
                + NO_DROPOUT, gpu_only=True, steps=LOW, default="extra"),
        Variant("-nf4-r16-lean-liger-adam8", FAST_R16 + SDPA + LIGER + LEAN, gpu_only=True, steps=LOW,
                default="extra"))),
    # bench/longctx_suite.py: one sequence per length, NF4 Q-LoRA r=32, offloaded activations, Liger's chunked loss
    "longctx": Suite("llama2", "qlora", "", shapes=("llama3.1-8b", "tiny-long")),
    # bench/qwen_suite.py: recipes lora, qlora, qlora-gptq and the seed's DeepSpeed command on a GPTQ pack
    "qwen": Suite("qwen", "lora", LORA_R16, (QLORA_R16,), shapes=("qwen2.5-7b", "tiny-qwen")),
}


# ---------------------------------------------------------------------------------------------- child processes

class Log:
    """Everything the children print, prefixed, to our stdout and to one combined log file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w", encoding="utf-8")

    def write(self, line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()
        self.file.write(line)
        self.file.flush()


def run_child(label: str, command: list[str], log: Log, timeout_s: float, env: dict | None = None) -> dict:
    """Runs one child in its own process group; returns rc, seconds, whether it timed out, and its output lines."""
    log.write(f"\n==> [{label}] {shlex.join(command)}\n")
    started = time.time()
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        process = subprocess.Popen(command, cwd=ROOT, env=child_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    except OSError as error:
        log.write(f"[{label}] could not start: {error}\n")
        return {"rc": None, "seconds": 0.0, "timed_out": False, "lines": [], "error": str(error)}
    timed_out = threading.Event()

    def kill_group():
        timed_out.set()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout_s, kill_group)
    timer.start()
    lines = []
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


def tagged_json(lines: list[str], tag: str) -> list[dict]:
    out = []
    for line in lines:
        if line.startswith(tag + " "):
            try:
                out.append(json.loads(line[len(tag) + 1:]))
            except json.JSONDecodeError:
                pass
    return out


def failure_text(child: dict) -> str:
    if child.get("error"):
        return child["error"]
    if child["timed_out"]:
        return f"timed out after {child['seconds']:.0f}s"
    failed = [line.strip() for line in child["lines"] if line.startswith("FAILED ")]
    if failed:
        return failed[-1][:500]
    tail = [line.strip() for line in child["lines"] if line.strip()][-3:]
    return f"exit code {child['rc']}: " + " | ".join(tail)[-500:]


def baseline_row(child: dict, name: str, implementation: str) -> dict:
    results = [r for r in tagged_json(child["lines"], "RESULT") if r.get("name") == name]
    if results:
        return {**results[-1], "implementation": implementation, "status": "ok", "wall_s": child["seconds"]}
    return {"name": name, "implementation": implementation, "status": "failed", "error": failure_text(child),
            "wall_s": child["seconds"], "log_tail": "".join(child["lines"])[-LOG_TAIL_CHARS:]}


# ---------------------------------------------------------------------------------------------- the recipe

def write_workload(path: Path, vocab_size: int) -> dict:
    """The baseline's samples as {"text": "t12 t345 ..."} lines, each 2 words shorter: the engine adds BOS and EOS."""
    samples = baseline.sample_workload(vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for ids in samples:
            out.write(json.dumps({"text": " ".join(f"t{i}" for i in ids[:-2])}) + "\n")
    lengths = [len(ids) for ids in samples]
    return {"path": str(path), "samples": len(samples), "tokens_with_bos_eos": sum(lengths),
            "max_tokens": max(lengths)}


def steady_state(summary: dict, warmup: int, total: int) -> dict:
    """Tokens/s over optimizer steps warmup+1..total from the engine's per-step lists."""
    times, tokens = summary.get("step_times") or [], summary.get("step_tokens") or []
    if len(times) < total or len(tokens) < total:
        raise ValueError(f"run_summary.json has {len(times)} step times and {len(tokens)} step token counts; "
                         f"need {total}")
    seconds, real = sum(times[warmup:total]), sum(tokens[warmup:total])
    return {"seconds": round(seconds, 2), "real_tokens": real, "tokens_per_s": round(real / seconds)}


RECIPE_CONFIG_KEYS = ("q_lora", "use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                      "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "kbit_upcast", "optim", "bf16",
                      "gradient_checkpointing", "per_device_train_batch_size", "gradient_accumulation_steps",
                      "model_max_length", "trainer", "attn_implementation", "packing", "group_by_length")


def run_recipe(suite: Suite, checkpoint: str, workload: Path, work_dir: Path, on_gpu: bool, log: Log,
               timeout_s: float, variant: Variant = Variant("", ()), method: str | None = None) -> dict:
    method = method or suite.method
    name = f"recipe-{suite.family}-{method}{variant.suffix}"
    output_dir = work_dir / name
    shutil.rmtree(output_dir, ignore_errors=True)
    recipe_file = ROOT / f"recipes/{suite.family}/{method}.json"
    budget = json.loads(recipe_file.read_text()).get("token_budget", 0) if recipe_file.is_file() else 0
    steps = variant.steps or (BIG if budget >= 16384 and "--token_budget" not in variant.flags else None)
    total, warmup = steps if steps and on_gpu else (baseline.TOTAL_STEPS, baseline.WARMUP_STEPS)
    flags = ["--model_name_or_path", checkpoint, "--data_path", str(workload), "--output_dir", str(output_dir),
             "--max_steps", str(total), "--report_to", "none",
             "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
             "--eval_data_path", "", "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "10"]
    if not on_gpu:
        flags += CPU_FLAGS
    script = f"recipes/{suite.family}/train.sh"
    extra = list(variant.flags)
    if not on_gpu and "--token_budget" in extra:  # CPU smoke: SDPA's packed mask is quadratic in the row length
        at = extra.index("--token_budget") + 1
        extra[at] = str(min(int(extra[at]), 2048))
    command = ["bash", script, method, *flags, *extra]
    # train.sh reads MODEL/DATA/OUTPUT_DIR (an empty MODEL means its tiny CPU default), and PYTHON.
    env = {"MODEL": checkpoint, "DATA": str(workload), "OUTPUT_DIR": str(output_dir), "PYTHON": sys.executable}
    row = {"name": name, "implementation": "recipe", "command": shlex.join(command), "output_dir": str(output_dir)}
    if variant.compare_with:
        row["compare_with"] = variant.compare_with
    if variant.gpu_only and not on_gpu:
        return {**row, "status": "skipped: needs CUDA"}
    if not (ROOT / script).is_file():
        return {**row, "status": "failed", "error": f"{script} does not exist yet"}
    child = run_child(name, command, log, timeout_s, env)
    row["wall_s"] = child["seconds"]
    summary_path = output_dir / "run_summary.json"
    if child["rc"] != 0 or not summary_path.is_file():
        return {**row, "status": "failed", "error": failure_text(child) if child["rc"] != 0 else
                f"exit code 0 but no {summary_path}", "log_tail": "".join(child["lines"])[-LOG_TAIL_CHARS:]}
    summary = json.loads(summary_path.read_text())
    try:
        steady = steady_state(summary, warmup, total)
    except ValueError as error:
        return {**row, "status": "failed", "error": str(error), "summary": summary}
    config = {}
    args_path = output_dir / "finetune_args.json"
    if args_path.is_file():
        recorded = json.loads(args_path.read_text())
        config = {key: recorded[key] for key in RECIPE_CONFIG_KEYS if key in recorded}
    timed_peaks = summary.get("step_peak_gib", [])[warmup:total]
    return {**row, "status": "ok", "steps": total - warmup, **steady,
            "peak_gib": max(timed_peaks) if timed_peaks else summary.get("peak_gib"),
            "whole_run_peak_gib": summary.get("peak_gib"), "trainable_params": summary.get("trainable_params"),
            "final_loss": summary.get("final_loss"), "train_runtime_s": summary.get("train_runtime_s"),
            "whole_run_tokens_per_s": summary.get("tokens_per_s"), "whole_run_real_tokens": summary.get("real_tokens"),
            "data_stats": {key: summary[key] for key in ("samples", "truncated", "dropped", "tokens")
                           if key in summary},
            "config": config,
            "note": "peak over the timed steps; " + ", ".join(f"{k}={v}" for k, v in config.items()
                                                             if k in ("lora_r", "lora_alpha", "lora_target_modules",
                                                                      "bnb_4bit_use_double_quant", "kbit_upcast",
                                                                      "trainer"))}


def run_merge(suite: Suite, recipe: dict, work_dir: Path, log: Log, timeout_s: float) -> dict:
    script = f"recipes/{suite.family}/merge.sh"
    output = work_dir / f"merged-{suite.family}-{suite.method}"
    command = ["bash", script, recipe.get("output_dir", ""), str(output)]
    row = {"command": shlex.join(command)}
    if recipe.get("status") != "ok":
        return {**row, "status": "skipped: the recipe run failed"}
    if not (ROOT / script).is_file():
        return {**row, "status": f"failed: {script} does not exist yet"}
    shutil.rmtree(output, ignore_errors=True)
    env = {"ADAPTER": recipe["output_dir"], "OUTPUT": str(output), "OUT": str(output), "PYTHON": sys.executable}
    child = run_child("merge", command, log, timeout_s, env)
    ok = child["rc"] == 0 and (output / "config.json").is_file()
    result = {**row, "status": "ok" if ok else "failed: " + failure_text(child), "seconds": child["seconds"]}
    if not ok:
        result["log_tail"] = "".join(child["lines"])[-LOG_TAIL_CHARS:]
    shutil.rmtree(output, ignore_errors=True)  # a merged 7B is 13.5 GB of /tmp
    return result


# ---------------------------------------------------------------------------------------------- main

def suite_folders(args) -> tuple[str, Path, Path, str, Log]:
    """A delegated suite's (qwen, longctx) key, output folder, emptied work folder under $TMPDIR, checkpoint path and
    log."""
    key = f"{args.suite}-{args.shape}"
    out_dir = Path(args.out or ROOT / "out" / "bench" / key).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(baseline.tmp_root()) / f"tunekit-bench-{args.shape}"
    shutil.rmtree(work_dir, ignore_errors=True)  # adapters of an earlier run
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or baseline.default_checkpoint(args.shape)
    return key, out_dir, work_dir, checkpoint, Log(out_dir / "run.log")


def save_result(result: dict, started: float, json_path: Path, save: str | None, log: Log) -> None:
    """Every suite ends here: the JSON (also kept as bench/results/SAVE.json), then BENCHMARKS.md regenerated."""
    result["runner_seconds"] = round(time.time() - started, 1)
    result["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    if save:
        report.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy2(json_path, report.RESULTS_DIR / f"{save}.json")
    report.write_benchmarks()
    log.write(f"\nwrote {json_path} and {report.BENCHMARKS} in {result['runner_seconds']}s\n")


def git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def ensure_reference() -> bool:
    if not REFERENCE.is_file() and REFERENCE_SOURCE.is_file():
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REFERENCE_SOURCE, REFERENCE)
    return REFERENCE.is_file()


def mean_of(rows: list[dict], name: str, implementation: str) -> dict | None:
    """Mean tokens/s, max peak and the (identical) real-token set of the successful trials of one run."""
    ok = [r for r in rows if r["name"] == name and r["implementation"] == implementation and r.get("status") == "ok"]
    if not ok:
        return None
    peaks = [r["peak_gib"] for r in ok if r.get("peak_gib") is not None]
    return {"name": name, "trials": len(ok), "each": [r["tokens_per_s"] for r in ok],
            "tokens_per_s": round(sum(r["tokens_per_s"] for r in ok) / len(ok)),
            "peak_gib": max(peaks) if peaks else None,
            "real_tokens": ok[0]["real_tokens"] if len({r["real_tokens"] for r in ok}) == 1 else None}


def add_ratios(rows: list[dict], ours_by_name: dict, compare_with: str) -> None:
    for row in rows:
        if row.get("status") != "ok":
            continue
        ours = ours_by_name.get(row.get("compare_with") or compare_with if row["implementation"] == "recipe"
                                else row["name"])
        if not ours:
            continue
        row["compared_with"] = ours["name"]
        row["tokens_per_s_vs_ours"] = round(row["tokens_per_s"] / ours["tokens_per_s"], 3)
        row["same_real_tokens_as_ours"] = row["real_tokens"] == ours["real_tokens"]  # same batches in the same order
        if row.get("peak_gib") and ours.get("peak_gib"):
            row["peak_vs_ours"] = round(row["peak_gib"] / ours["peak_gib"], 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--shape", choices=sorted(baseline.SHAPES),
                        help="default: the suite's real shape (llama2-7b, qwen2.5-7b)")
    parser.add_argument("--out", help="folder for <suite>-<shape>.json and run.log (default: out/bench/<suite>-<shape>)")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: under $TMPDIR; built if missing)")
    parser.add_argument("--skip-reference", action="store_true", help="do not run the shared reference script")
    parser.add_argument("--skip-recipe", action="store_true", help="only the checkpoint and the baselines (a-c)")
    parser.add_argument("--all-baselines", action="store_true",
                        help="also run our baseline's other runs (all-linear NF4 and bf16 LoRA)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="pairs of reference/ours runs of the baseline run, in ABBA order (default 1)")
    parser.add_argument("--no-warm-process", action="store_true",
                        help="skip the short unmeasured GPU run made before the measured ones")
    parser.add_argument("--merge", action="store_true", help="also run the recipe's merge.sh on its adapter")
    parser.add_argument("--child-timeout", type=float, default=420, help="seconds before a child is killed")
    parser.add_argument("--steps", type=int, default=baseline.TOTAL_STEPS,
                        help="optimizer steps per run (a CPU smoke test uses a few)")
    parser.add_argument("--warmup", type=int, default=baseline.WARMUP_STEPS, help="steps before the clock starts")
    parser.add_argument("--lengths", help="longctx suite: comma-separated sequence lengths to try, ascending")
    parser.add_argument("--variants", type=lambda text: [name.strip("-") for name in text.split(",") if name],
                        help="run only these variants of the suite (suffixes, e.g. nf4-r16-packed), and only the "
                             "baseline runs they are compared with")
    parser.add_argument("--save", metavar="NAME", help="also keep the JSON as bench/results/NAME.json")
    parser.add_argument("--deadline", type=float, default=0,
                        help="qwen suite: seconds the whole runner may take; children's timeouts are capped so the "
                             "JSON is written in time, and steps that no longer fit are recorded as skipped")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="qwen suite: keep the bf16 and GPTQ checkpoints (deleted at the end on a GPU)")
    parser.add_argument("--skip", type=lambda text: [name for name in text.split(",") if name],
                        help="qwen suite: comma-separated steps to leave out: lora, ours, qlora, qlora-gptq, seed, "
                             "merge, refusal")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be smaller than --steps")
    baseline.TOTAL_STEPS, baseline.WARMUP_STEPS = args.steps, args.warmup  # read by run_recipe
    suite = SUITES[args.suite]
    if args.variants:
        known = {v.suffix.strip("-") for v in suite.variants}
        if set(args.variants) - known:
            parser.error(f"--variants: unknown {sorted(set(args.variants) - known)}; known: {', '.join(sorted(known))}")
        suite = dataclasses.replace(suite, variants=tuple(v for v in suite.variants
                                                          if v.suffix.strip("-") in args.variants))
    args.shape = args.shape or suite.shapes[0]
    if args.shape not in suite.shapes:
        parser.error(f"--suite {args.suite} runs on --shape {' or '.join(suite.shapes)}")
    if args.suite == "longctx":
        import longctx_suite

        args.argv = argv
        return longctx_suite.main(args, sys.modules[__name__])
    if args.suite == "qwen":
        import qwen_suite

        unknown = sorted(set(args.skip or ()) - set(qwen_suite.SKIPPABLE))
        if unknown:
            parser.error(f"--skip: unknown step(s) {unknown}; known: {', '.join(qwen_suite.SKIPPABLE)}")

        args.argv = argv
        return qwen_suite.main(args, sys.modules[__name__])

    started = time.time()
    key = f"{args.suite}-{args.shape}"
    out_dir = Path(args.out or ROOT / "out" / "bench" / key).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(baseline.tmp_root()) / f"tunekit-bench-{args.shape}"
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or baseline.default_checkpoint(args.shape)
    log = Log(out_dir / "run.log")
    python = sys.executable
    ours_script = str(BENCH_DIR / "baseline.py")
    shape_flags = ["--shape", args.shape, "--checkpoint", checkpoint]
    result = {"suite": args.suite, "shape": args.shape, "command": shlex.join(["python", "bench/run.py",
                                                                                *(argv or sys.argv[1:])]),
              "git_commit": git_commit(), "checkpoint": checkpoint, "repeat": args.repeat, "runs": []}

    def finish() -> int:
        save_result(result, started, out_dir / f"{key}.json", args.save, log)
        summary = [(r["name"], r["implementation"], r.get("status"), r.get("tokens_per_s"), r.get("peak_gib"),
                    r.get("tokens_per_s_vs_ours")) for r in result["runs"]]
        for row in summary:
            log.write("SUMMARY " + json.dumps(row) + "\n")
        if result.get("reproduction"):
            log.write("REPRODUCTION " + json.dumps(result["reproduction"]) + "\n")
        return 0 if all(r.get("status") == "ok" or r.get("status", "").startswith("skipped")
                        for r in result["runs"]) else 1

    # a. the checkpoint (and a description of the machine), in a child so the GPU is free again afterwards
    prepare = run_child("prepare", [python, ours_script, *shape_flags, "--prepare"], log, args.child_timeout)
    described = tagged_json(prepare["lines"], "ENV")
    if not described:
        result["error"] = "could not build the checkpoint: " + failure_text(prepare)
        result["prepare_log_tail"] = "".join(prepare["lines"])[-LOG_TAIL_CHARS:]
        return finish()
    env_info = described[-1]
    result["environment"] = {k: v for k, v in env_info.items() if k not in ("checkpoint", "built", "seconds")}
    result["checkpoint_build_s"] = env_info.get("seconds")
    on_gpu = env_info.get("device") not in (None, "cpu")

    # The first GPU training process on a fresh machine ran ~10% slower than later ones (H100, twice: 2,103 vs
    # 2,217-2,434 tokens/s), whichever script it was; a short throwaway run first keeps that out of the figures.
    if not args.variants:  # the default set: see Variant.default
        suite = dataclasses.replace(suite, variants=tuple(
            v for v in suite.variants if v.default == "always" or (v.default == "cpu" and not on_gpu)))
    if on_gpu and not args.no_warm_process and not suite.baselines_last:
        child = run_child("warm-up process (not measured)", [python, ours_script, *shape_flags, "--steps", "8",
                                                             "--warmup", "4", suite.baseline_run],
                          log, args.child_timeout)
        result["warm_process"] = {"rc": child["rc"], "seconds": child["seconds"]}

    # b + c. the shared reference and our baseline for the suite's baseline run, each in its own process; with
    # --repeat N, N pairs in ABBA order (reference, ours, ours, reference, ...) so that drift favours neither
    if args.skip_reference:
        result["reference"] = "skipped (--skip-reference)"
    elif not ensure_reference():
        result["reference"] = f"skipped: {REFERENCE} is missing"
    elif args.shape != "llama2-7b" or not on_gpu:
        result["reference"] = "skipped: the reference hard-codes the llama2-7b shape and needs CUDA"
    with_reference = "reference" not in result

    def partial() -> None:  # the JSON so far, so that a run killed at the device's time limit still reports
        (out_dir / f"{key}.json").write_text(json.dumps({**result, "partial": True}, indent=2) + "\n")

    def run_reference(trial):
        child = run_child(f"reference #{trial}", [python, str(REFERENCE), suite.baseline_run], log,
                          args.child_timeout, {"BASELINE_CKPT": checkpoint})
        result["runs"].append({**baseline_row(child, suite.baseline_run, "reference"), "trial": trial})

    def run_ours(name, trial):
        child = run_child(f"ours {name} #{trial}", [python, ours_script, *shape_flags, name, "--steps",
                                                    str(args.steps), "--warmup", str(args.warmup)], log,
                          args.child_timeout)
        result["runs"].append({**baseline_row(child, name, "ours"), "trial": trial})
        partial()

    def run_baselines() -> None:
        # with --variants, the suite's own baseline run only when a chosen variant (or the plain recipe) compares with it
        needs_main = suite.plain_recipe or not args.variants or any(v.compare_with is None for v in suite.variants)
        for trial in range(1, args.repeat + 1 if needs_main else 1):
            if trial % 2 and with_reference:
                run_reference(trial)
            run_ours(suite.baseline_run, trial)
            if not trial % 2 and with_reference:
                run_reference(trial)
        compared = {v.compare_with for v in suite.variants}  # baselines a variant needs always run
        for name in [n for n in suite.other_baseline_runs if args.all_baselines or n in compared]:
            run_ours(name, 1)

    def run_recipes() -> None:
        # d. the project's recipe on the same lengths, e. its merge
        if args.skip_recipe:
            result["recipe"] = "skipped (--skip-recipe)"
        else:
            workload = write_workload(work_dir / "workload.jsonl", baseline.SHAPES[args.shape]["vocab_size"])
            result["workload"] = workload
            if suite.plain_recipe:
                recipe = run_recipe(suite, checkpoint, Path(workload["path"]), work_dir, on_gpu, log, args.child_timeout)
                result["runs"].append(recipe)
            if args.merge and suite.plain_recipe:
                result["merge"] = run_merge(suite, recipe, work_dir, log, args.child_timeout)
            for variant in suite.variants:
                result["runs"].append(run_recipe(suite, checkpoint, Path(workload["path"]), work_dir, on_gpu, log,
                                                 args.child_timeout, variant))
                partial()

    for step in ((run_recipes, run_baselines) if suite.baselines_last else (run_baselines, run_recipes)):
        step()

    # f. ratios to our baseline of the same run (mean over its trials), and how well ours reproduces the reference
    ours_by_name = {name: mean_of(result["runs"], name, "ours") for name in
                    {r["name"] for r in result["runs"] if r["implementation"] == "ours"}}
    ours_by_name = {name: row for name, row in ours_by_name.items() if row}
    add_ratios(result["runs"], ours_by_name, suite.baseline_run)
    reference, ours = mean_of(result["runs"], suite.baseline_run, "reference"), ours_by_name.get(suite.baseline_run)
    if reference and ours:
        ratio = ours["tokens_per_s"] / reference["tokens_per_s"]
        result["reproduction"] = {
            "name": suite.baseline_run, "trials": min(reference["trials"], ours["trials"]),
            "reference_tokens_per_s": reference["tokens_per_s"], "ours_tokens_per_s": ours["tokens_per_s"],
            "reference_tokens_per_s_each": reference["each"], "ours_tokens_per_s_each": ours["each"],
            "tokens_per_s_ratio": round(ratio, 4),
            "reference_peak_gib": reference["peak_gib"], "ours_peak_gib": ours["peak_gib"],
            "same_real_tokens": reference["real_tokens"] == ours["real_tokens"],
            "within_5_percent": abs(ratio - 1) <= 0.05}
    return finish()


if __name__ == "__main__":
    sys.exit(main())
