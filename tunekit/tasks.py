"""Tasks: what the model learns.  One row per task says which transformers auto class loads the model, how an
example (inputs and labels) is built from a normalised sample, which collator batches examples, and PEFT's task type.
`causal_lm` is the only task so far; a new task (sequence or token classification) is one row and its functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .data import PaddingCollator, tokenize_sample
from .errors import ArgumentError
from .packing import PackingCollator


@dataclass(frozen=True)
class Task:
    name: str
    auto_model: str         # the transformers class whose from_pretrained loads the model
    peft_task_type: str     # LoraConfig(task_type=...)
    encode: Callable        # (sample, tokenizer, family, max_length, **limits) -> (example, truncated?)
    collator: Callable      # (tokenizer, train_args, varlen: bool) -> data collator

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_model)


def causal_lm_collator(tokenizer, train_args, varlen: bool):
    """Packed rows (padding-free) with --packing, else batches padded to their longest sample."""
    if train_args.packing:
        return PackingCollator(varlen=varlen)
    return PaddingCollator(pad_token_id=tokenizer.pad_token_id)


TASKS = {
    "causal_lm": Task("causal_lm", "AutoModelForCausalLM", "CAUSAL_LM", tokenize_sample, causal_lm_collator),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ArgumentError(f"--task '{name}' is unknown; choose one of: {', '.join(TASKS)}")
    return TASKS[name]
