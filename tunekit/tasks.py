"""Tasks: what the model learns.  One row per task says which transformers auto class loads the model, how the
datasets (inputs and labels) are built, which collator batches them, PEFT's task type, and the evaluation metrics.

  causal_lm   next-token prediction on the assistant turns (tunekit/data.py)
  seq_cls     one label per text; token_cls: one BIO tag per word (tunekit/classify.py)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import classify, data
from .errors import ArgumentError
from .packing import PackingCollator


@dataclass(frozen=True)
class Task:
    name: str
    auto_model: str         # the transformers class whose from_pretrained loads the model
    peft_task_type: str     # LoraConfig(task_type=...)
    build_datasets: Callable  # (data_args, tokenizer, family, max_length) -> (train, eval or None, labels or None)
    collator: Callable      # (tokenizer, train_args, varlen: bool) -> data collator
    metrics: Callable | None = None  # (labels) -> the Trainer's compute_metrics
    classifier: bool = False  # a head on top: trained fully, saved with the adapter, labels in the config

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_model)


def causal_lm_datasets(data_args, tokenizer, family, max_length):
    return (*data.build_datasets(data_args, tokenizer, family, max_length), None)


def causal_lm_collator(tokenizer, train_args, varlen: bool):
    """Packed rows (padding-free) with --packing, else batches padded to their longest sample."""
    if train_args.packing:
        return PackingCollator(varlen=varlen)
    return data.PaddingCollator(pad_token_id=tokenizer.pad_token_id)


def classification(name: str, auto_model: str, peft_task_type: str) -> Task:
    return Task(name, auto_model, peft_task_type,
                lambda data_args, tokenizer, family, max_length: classify.build_datasets(name, data_args, tokenizer,
                                                                                         max_length),
                lambda tokenizer, train_args, varlen: classify.LabelCollator(pad_token_id=tokenizer.pad_token_id),
                lambda labels: classify.metrics(name, labels), classifier=True)


TASKS = {
    "causal_lm": Task("causal_lm", "AutoModelForCausalLM", "CAUSAL_LM", causal_lm_datasets, causal_lm_collator),
    "seq_cls": classification("seq_cls", "AutoModelForSequenceClassification", "SEQ_CLS"),
    "token_cls": classification("token_cls", "AutoModelForTokenClassification", "TOKEN_CLS"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ArgumentError(f"--task '{name}' is unknown; choose one of: {', '.join(TASKS)}")
    return TASKS[name]
