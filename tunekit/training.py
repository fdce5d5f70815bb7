"""Training: HF Trainer or TRL SFTTrainer over the same tokenized data and collator, with a NaN guard, real-token
timing, a loss-curve PNG and a one-screen summary."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from .checkpoints import AtomicCheckpointMixin
from .data import PaddingCollator, to_hf_dataset
from .packing import PackingCollator, TokenBudgetBatchSampler, sample_lengths


class NonFiniteLossError(RuntimeError):
    pass


class TokenCountingMixin:
    """Counts real (non-pad) tokens per optimizer step: the honest throughput figure."""

    def training_step(self, model, inputs, *args, **kwargs):
        mask = inputs.get("attention_mask")
        self.tunekit_tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, *args, **kwargs)


class RunRecorder(TrainerCallback):
    """Per-step wall time and real tokens; stops on a non-finite loss (the Trainer would only average it away)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.step_times, self.step_tokens, self.step_peak_gib = [], [], []
        self.t_step = None
        self.t_start = None

    def on_train_begin(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.t_start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kw):
        if self.t_step is None:
            self.t_step = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()  # per-step peaks: a benchmark can skip the warm-up steps

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.step_peak_gib.append(round(torch.cuda.max_memory_allocated() / 2**30, 3))
        now = time.perf_counter()
        self.step_times.append(round(now - self.t_step, 6))
        self.step_tokens.append(self.trainer.tunekit_tokens)
        self.trainer.tunekit_tokens = 0
        self.t_step = now

    def on_log(self, args, state, control, logs=None, **kw):
        for key in ("loss", "eval_loss", "grad_norm"):
            v = (logs or {}).get(key)
            if v is not None and not math.isfinite(v):
                raise NonFiniteLossError(
                    f"{key} became {v} at step {state.global_step}: stopping. Lower --learning_rate, use --bf16 "
                    "instead of --fp16, or check the data for empty or extreme samples")


class SelectiveCheckpointing(TrainerCallback):
    """--gradient_checkpointing_fraction f < 1: after the Trainer turns checkpointing on in every decoder layer, only
    round(f x layers) of them, evenly spread, keep it; the others store their activations (no recomputation)."""

    def __init__(self, fraction: float):
        self.fraction = fraction

    def on_train_begin(self, args, state, control, model=None, **kw):
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        keep = round(len(layers) * self.fraction)
        chosen = {int(i * len(layers) / keep) for i in range(keep)} if keep else set()
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = layer.gradient_checkpointing and i in chosen


class ActivationOffloadMixin:
    """--offload_activations: what the forward saves for backward lives in (pinned) CPU memory.  With non-reentrant
    gradient checkpointing that is each layer's input, the memory that grows with sequence length; the recomputed
    activations inside a layer exist only during its backward."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        if not self.tunekit_args.offload_activations:
            return super().compute_loss(model, inputs, *args, **kwargs)
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
            return super().compute_loss(model, inputs, *args, **kwargs)


class TokenBudgetMixin:
    """--token_budget: micro-batches of up to that many tokens instead of a fixed number of samples."""

    def _get_train_sampler(self, train_dataset=None):
        ours = self.tunekit_args
        if not ours.token_budget:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return TokenBudgetBatchSampler(sample_lengths(dataset), ours.token_budget, ours.packing,
                                       seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
                                       rank=self.args.process_index, world_size=max(1, self.args.world_size))


def sft_config_from(train_args, max_length):
    """Our TrainingArguments as TRL's SFTConfig: the one place the two meet."""
    from trl import SFTConfig

    values = {f.name: getattr(train_args, f.name) for f in dataclasses.fields(train_args)
              if f.init and f.name in {g.name for g in dataclasses.fields(SFTConfig)}}
    values.update(max_length=max_length, packing=False, dataset_kwargs={"skip_prepare_dataset": True},
                  remove_unused_columns=False, dataset_text_field="text")
    return SFTConfig(**values)


def build_trainer(model, tokenizer, train_ds, eval_ds, train_args, trainer_kind="hf"):
    varlen = getattr(model.config, "_attn_implementation", None) == "varlen"
    collator = (PackingCollator(varlen=varlen) if train_args.packing
                else PaddingCollator(pad_token_id=tokenizer.pad_token_id))
    if trainer_kind == "trl":
        from trl import SFTTrainer

        base, args = SFTTrainer, sft_config_from(train_args, train_args.model_max_length)
        train_ds = to_hf_dataset(train_ds)
        eval_ds = to_hf_dataset(eval_ds) if eval_ds is not None else None
    else:
        base, args = Trainer, train_args
    mixins = (TokenCountingMixin, TokenBudgetMixin, ActivationOffloadMixin, AtomicCheckpointMixin)
    # tunekit_args: our TrainingArguments, whose own fields (packing, token_budget, ...) TRL's SFTConfig lacks
    cls = type(f"TokenCounting{base.__name__}", (*mixins, base), {"tunekit_tokens": 0, "tunekit_args": train_args})
    trainer = cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
                  processing_class=tokenizer)
    trainer.tunekit_recorder = RunRecorder(trainer)
    trainer.add_callback(trainer.tunekit_recorder)
    if train_args.gradient_checkpointing and train_args.gradient_checkpointing_fraction < 1:
        trainer.add_callback(SelectiveCheckpointing(train_args.gradient_checkpointing_fraction))
    return trainer


def plot_loss(log_history, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # e.g. a bare GPU image: the losses are in run_summary.json and trainer_state.json anyway
        print(f"note: matplotlib is not installed, so {path.name} was not drawn (pip install -r requirements.txt)")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summarize(trainer, model_report: dict, data_stats: dict, train_result) -> dict:
    rec = trainer.tunekit_recorder
    runtime = time.perf_counter() - rec.t_start
    tokens = sum(rec.step_tokens)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    return {
        **model_report,
        **data_stats,
        "steps": trainer.state.global_step,
        "world_size": trainer.args.world_size,
        "deepspeed": bool(trainer.is_deepspeed_enabled),
        "train_runtime_s": round(runtime, 3),
        "real_tokens": tokens,
        "tokens_per_s": round(tokens / runtime, 1) if runtime else None,
        "peak_gib": max(rec.step_peak_gib) if rec.step_peak_gib else None,  # during training steps
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "final_eval_loss": evals[-1] if evals else None,
        "train_loss": train_result.training_loss,
        "step_times": rec.step_times,
        "step_tokens": rec.step_tokens,
        "step_peak_gib": rec.step_peak_gib,
    }


def print_summary(s: dict, output_dir: str) -> None:
    rows = [
        ("output", output_dir),
        ("trainable params", f"{s['trainable_params']:,} of {s['all_params']:,}"),
        ("samples", f"{s['samples']} ({s['truncated']} truncated, {s['dropped']} dropped: no supervised token)"),
        ("steps", s["steps"]),
        ("loss", f"{s['first_loss']:.4f} -> {s['final_loss']:.4f}" if s["final_loss"] is not None else "-"),
        ("eval loss", f"{s['final_eval_loss']:.4f}" if s["final_eval_loss"] is not None else "-"),
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
