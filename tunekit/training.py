"""Training: the HF Trainer over the task's datasets and collator, with a NaN guard, real-token timing per step,
token-budget batches, activation offload and atomic checkpoints (checkpoints.py)."""
from __future__ import annotations

import contextlib
import math
import time

import torch
from transformers import Trainer, TrainerCallback

from .checkpoints import AtomicCheckpointMixin
from .errors import NonFiniteLossError
from .packing import TokenBudgetBatchSampler, sample_lengths

__all__ = ["build_trainer", "NonFiniteLossError"]


class RunMixin:
    """On any trainer: real tokens counted per step, activation offload, --token_budget batches."""

    real_tokens = 0
    async_offload = None

    def training_step(self, model, inputs, *args, **kwargs):
        """Counts real (non-pad) tokens per optimizer step: the honest throughput figure."""
        mask = inputs.get("attention_mask")
        self.real_tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, *args, **kwargs)

    def compute_loss(self, model, inputs, *args, **kwargs):
        """--offload_activations(_async): what the forward saves for backward lives in pinned CPU memory."""
        if self.args.offload_activations_async:
            if self.async_offload is None:  # built once: it hooks the output head, which it keeps on the GPU
                self.async_offload = async_offload_context(self.model)
            context = self.async_offload
        elif self.args.offload_activations:
            context = torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
        else:
            context = contextlib.nullcontext()
        with context:
            return super().compute_loss(model, inputs, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        """--token_budget: micro-batches of up to that many tokens instead of a fixed number of samples."""
        if not self.args.token_budget:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return TokenBudgetBatchSampler(sample_lengths(dataset), self.args.token_budget, self.args.packing,
                                       seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
                                       rank=self.args.process_index, world_size=max(1, self.args.world_size))


def async_offload_context(model):
    """--offload_activations_async: TRL's OffloadActivations (SFTTrainer's activation_offloading), the copies on a side
    stream.  It replaced our own: on an H100 (bench/offload_tiling.py, 16 layers of the Llama-3.1-8B shape, one 64k
    sequence) 7,143 against 7,169 tokens/s at the same peak (31.81 against 31.87 GiB), half the memory reserved."""
    from trl.models.activation_offloading import get_act_offloading_ctx_manager

    # no head warning: a classifier's head (score, classifier) has no vocabulary-sized output worth keeping on the GPU
    return get_act_offloading_ctx_manager(model, warn_if_no_head=False)


class RunRecorder(TrainerCallback):
    """Per-step wall time and real tokens; stops on a non-finite loss (the Trainer would only average it away)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.step_times, self.step_tokens, self.step_peak_gib = [], [], []
        self.t_step = self.t_start = None

    def on_train_begin(self, args, state, control, **kw):
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
        self.step_tokens.append(self.trainer.real_tokens)
        self.trainer.real_tokens = 0
        self.t_step = now

    def on_log(self, args, state, control, logs=None, **kw):
        for key in ("loss", "eval_loss", "grad_norm"):
            v = (logs or {}).get(key)
            if v is not None and not math.isfinite(v):
                raise NonFiniteLossError(
                    f"{key} became {v} at step {state.global_step}: stopping. Lower --learning_rate, use --bf16 "
                    "instead of --fp16, or check the data for empty or extreme samples")


class AfterSetup(TrainerCallback):
    """Redone once Trainer.train has set the model up: --gradient_checkpointing_fraction < 1 keeps that share of the
    decoder layers checkpointing, evenly spread; --tiled_mlp_tokens tiles again (--use_liger_kernel's patching rebinds
    every MLP's forward)."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        if args.gradient_checkpointing and args.gradient_checkpointing_fraction < 1:
            from transformers.modeling_layers import GradientCheckpointingLayer

            layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
            keep = round(len(layers) * args.gradient_checkpointing_fraction)
            chosen = {int(i * len(layers) / keep) for i in range(keep)} if keep else set()
            for i, layer in enumerate(layers):
                layer.gradient_checkpointing = layer.gradient_checkpointing and i in chosen
        if args.tiled_mlp_tokens:
            from .tiling import apply_tiled_mlp

            apply_tiled_mlp(model, args.tiled_mlp_tokens)


def build_trainer(model, tokenizer, train_ds, eval_ds, train_args, collator, fingerprint=None, head=None,
                  compute_metrics=None, base=Trainer):
    """The task's trainer class (base) with our mixins; head: a classifier's, checked in every saved adapter."""
    cls = type(f"Tunekit{base.__name__}", (RunMixin, AtomicCheckpointMixin, base),
               {"run_fingerprint": fingerprint, "run_head": head})
    trainer = cls(model=model, args=train_args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
                  processing_class=tokenizer, compute_metrics=compute_metrics)
    trainer.recorder = RunRecorder(trainer)
    for callback in (trainer.recorder, AfterSetup()):
        trainer.add_callback(callback)
    return trainer
