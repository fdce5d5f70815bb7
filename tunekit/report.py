"""What a run leaves beside its adapter: finetune_args.json, loss_curve.png and run_summary.json (written last: the run
finished), and the summary it prints; the task's own files come from its row (tunekit/tasks.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .errors import ArgumentError, Parser, main_entry

TIMINGS = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_epoch"}  # logged, not metrics
# what every train log holds; anything else a trainer logs (DPO's rewards/*, a reward model's accuracy) is a metric
BOOKKEEPING = {"loss", "grad_norm", "learning_rate", "epoch", "step", "num_tokens"}


def finish(trainer, run, model_report: dict, data_stats: dict, train_result, evaluation: dict | None = None) -> dict:
    """The run's summary; on the main process its files are written and the summary printed."""
    summary = summarize(trainer, model_report, data_stats, train_result)
    summary["resumed_from"] = str(run.resume_from) if run.resume_from else None
    if evaluation:
        summary["evaluation"] = evaluation
    if trainer.is_world_process_zero():
        out = Path(run.train_args.output_dir)
        write_json(out / "finetune_args.json", run.arguments)
        plot_loss(trainer.state.log_history, out / "loss_curve.png")
        write_json(out / "run_summary.json", summary)  # last
        print_summary(summary, str(out))
    return summary


def plot_loss(log_history, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # e.g. a bare GPU image: the losses are in run_summary.json and trainer_state.json anyway
        print(f"note: matplotlib is not installed, so {path.name} was not drawn (pip install -r requirements.txt)")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, style, label in (("loss", "-", "train loss"), ("eval_loss", "o-", "eval loss")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set(xlabel="optimizer step", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    margins = [(h["step"], h["rewards/margins"]) for h in log_history if "rewards/margins" in h]
    if margins:  # a preference run: the reward margin (chosen - rejected) beside the loss
        right = ax.twinx()
        right.plot(*zip(*margins), "--", color="tab:green", label="reward margin")
        right.set(ylabel="reward margin")
        right.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summarize(trainer, model_report: dict, data_stats: dict, train_result) -> dict:
    import torch

    rec = trainer.recorder
    runtime = time.perf_counter() - rec.t_start
    # each step's real tokens summed over every process (every rank runs the same steps): tokens/s is the whole job's
    step_tokens = torch.tensor(rec.step_tokens, dtype=torch.long, device=trainer.args.device)
    step_tokens = trainer.accelerator.reduce(step_tokens, "sum").tolist()
    tokens = sum(step_tokens)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logs]
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    return {
        **model_report,
        **data_stats,
        "steps": trainer.state.global_step,
        "world_size": trainer.args.world_size,
        "effective_batch": effective_batch(trainer.args),
        "learning_rate": trainer.args.learning_rate,
        "deepspeed": bool(trainer.is_deepspeed_enabled),
        "train_runtime_s": round(runtime, 3),
        "real_tokens": tokens,
        "tokens_per_s": round(tokens / runtime, 1),
        "peak_gib": max(rec.step_peak_gib) if rec.step_peak_gib else None,  # during training steps
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "first_eval_loss": evals[0] if evals else None,
        "final_eval_loss": evals[-1] if evals else None,
        "first_metrics": metrics(logs[0]) if logs else {},
        "final_metrics": metrics(logs[-1]) if logs else {},
        "eval_metrics": next(({k: v for k, v in h.items() if k.startswith("eval_") and isinstance(v, float)}
                              for h in reversed(trainer.state.log_history) if "eval_loss" in h), {}),
        "train_loss": train_result.training_loss,
        "step_times": rec.step_times,
        "step_tokens": step_tokens,
        "tokens_per_s_per_process": round(tokens / runtime / trainer.args.world_size, 1),
        "step_peak_gib": rec.step_peak_gib,
    }


def metrics(log: dict) -> dict:
    """What a train log holds besides the loss and bookkeeping (DPO: rewards/chosen, rewards/margins ...)."""
    return {k: v for k, v in log.items() if k not in BOOKKEEPING and isinstance(v, (int, float))}


def shown(metric: str) -> bool:
    """The logged metrics the printed summary shows of a trainer that logs many (TRL's): rewards and accuracies."""
    return metric.startswith("rewards/") or metric in ("accuracy", "margin")


def effective_batch(args) -> dict:
    """What one optimizer step trains on, over every process (more GPUs with the same flags: a larger batch)."""
    world, accumulation, budget = args.world_size, args.gradient_accumulation_steps, args.token_budget
    return {"processes": world, "gradient_accumulation_steps": accumulation,
            "micro_batch": f"{budget} tokens" if budget else f"{args.per_device_train_batch_size} samples",
            "per_step": f"{budget * accumulation * world} tokens at most" if budget else
                        f"{args.per_device_train_batch_size * accumulation * world} samples"}


def print_summary(s: dict, output_dir: str) -> None:
    rows = [
        ("output", output_dir),
        ("trainable params", f"{s['trainable_params']:,} of {s['all_params']:,}"),
        ("samples", f"{s['samples']} ({s['truncated']} truncated, {s['dropped']} dropped: no supervised token)"),
        ("steps", s["steps"]),
        ("batch per step", "{per_step} ({processes} process{es} x accumulation {gradient_accumulation_steps} x "
                           "{micro_batch}), learning rate {lr:g}".format(
                               **s["effective_batch"], es="es" if s["effective_batch"]["processes"] > 1 else "",
                               lr=s["learning_rate"])),
        ("loss", f"{s['first_loss']:.4f} -> {s['final_loss']:.4f}" if s["final_loss"] is not None else "-"),
        ("eval loss", f"{s['final_eval_loss']:.4f}" if s["final_eval_loss"] is not None else "-"),
        *[(f"train {name}", f"{s['first_metrics'][name]:.4f} -> {value:.4f}")
          for name, value in s["final_metrics"].items() if name in s["first_metrics"] and shown(name)],
        # a classifier's eval metrics all; of a trainer that logs many per step (TRL's), the rewards and accuracies
        *[(name.removeprefix("eval_"), f"{value:.4f}") for name, value in s["eval_metrics"].items()
          if name != "eval_loss" and name not in TIMINGS and (not s["final_metrics"] or shown(name[5:]))],
        *[(f"generation {k}", f"{v:.2f}") for k, v in (s.get("evaluation") or {}).items()
          if k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")],
        ("real tokens/s", f"{s['tokens_per_s']:,.0f} ({s['real_tokens']:,} tokens in {s['train_runtime_s']:.1f} s)"),
        ("peak GPU memory", f"{s['peak_gib']:.2f} GiB" if s["peak_gib"] is not None else "- (no GPU)"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "=" * 64)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("=" * 64, flush=True)


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    tmp.replace(path)


def compare(folders, markdown=None) -> str:
    """One markdown table of finished runs: trainable parameters and the last evaluation's metrics."""
    runs = [(Path(f).name, json.loads((Path(f) / "run_summary.json").read_text())) for f in folders]
    names = [k for k in runs[0][1]["eval_metrics"] if k not in TIMINGS]
    lines = ["| run | trainable params | " + " | ".join(n.removeprefix("eval_") for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for name, s in runs:
        values = " | ".join(f"{s['eval_metrics'].get(n, float('nan')):.4f}" for n in names)
        lines.append(f"| {name} | {s['trainable_params']:,} | {values} |")
    table = "\n".join(lines) + "\n"
    if markdown:
        Path(markdown).write_text(table)
    return table


def main(argv=None):
    p = Parser("Compare finished runs: tunekit compare RUN... [--markdown F]")
    p.add_argument("runs", nargs="+", help="output folders of finished runs (each with run_summary.json)")
    p.add_argument("--markdown", help="also write the table to this file")
    a = p.parse_args(argv)
    for run in a.runs:
        if not (Path(run) / "run_summary.json").is_file():
            raise ArgumentError(f"{run}: no run_summary.json (not a finished run's output_dir)")
    print(compare(a.runs, a.markdown), end="")


if __name__ == "__main__":
    main_entry(main)
