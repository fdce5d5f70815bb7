"""Tasks: what the model learns, one row each that owns its behaviour (ARCHITECTURE.md, the task seam).  causal_lm:
next-token prediction on the assistant turns (data.py), served by chat, generate, evaluate and export; seq_cls (one
label per text) and token_cls (one BIO tag per word): classify.py, served by predict; dpo and kto (a causal LM
aligned on preferences, served as causal_lm is) and reward (a one-output classifier scoring a conversation, served by
predict): preference.py, trained by TRL's trainers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import classify, data, preference
from .errors import ArgumentError


@dataclass(frozen=True)
class Task:
    name: str
    auto_model: str           # the transformers class whose from_pretrained loads the model
    peft_task_type: str       # LoraConfig(task_type=...), how an adapter folder names its task
    architecture_suffix: str  # how a merged folder's config.json architectures name it
    build_datasets: Callable  # (data_args, tokenizer, family, max_length) -> (train, eval or None, labels or None)
    collator: Callable        # (tokenizer, train_args, varlen: bool) -> data collator
    served_by: tuple          # the commands that use the trained model, the one to name first
    head: Callable = lambda family: None  # a module trained fully and saved with the adapter (a classifier's head)
    check: Callable = lambda a: no_preference_flags(a)  # (parsed arguments) -> None, or ArgumentError
    save: Callable = lambda train_ds, family, output_dir: None  # what it leaves beside the adapter
    metrics: Callable = lambda labels: None  # the Trainer's compute_metrics, or None
    trainer: str | Callable = "Trainer"  # the transformers trainer class it trains with, or () -> another class
    trainer_args: Callable = lambda train_args: train_args  # our TrainingArguments -> that trainer's own config

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_model)

    def trainer_class(self):
        import transformers

        return self.trainer() if callable(self.trainer) else getattr(transformers, self.trainer)

    def require(self, command: str, where) -> None:
        """Refuses a model of this task in a command that does not serve it, naming the one that does."""
        if command not in self.served_by:
            raise ArgumentError(f"{where} is a {self.name} model: use `tunekit {self.served_by[0]}` for it, not "
                                f"`tunekit {command}`")


def causal_lm_datasets(data_args, tokenizer, family, max_length):
    return (*data.build_datasets(data_args, tokenizer, family, max_length), None)


def save_prompt_format(train_ds, family, output_dir) -> None:
    """The prompt format the run trained with (decided from its training samples), for chat/generate/export."""
    from . import prompts

    prompts.save(prompts.from_stats(train_ds.stats, family), output_dir)


def no_preference_flags(a) -> None:
    """A task without a reference model or preference loss refuses their flags rather than ignoring them."""
    from .arguments import PREFERENCE

    given = [f"--{k}" for k in PREFERENCE if getattr(a, k, None) not in (None, False)]
    if given:
        raise ArgumentError(f"{', '.join(given)}: only the preference tasks (--task dpo, kto) use it; --task {a.task} "
                            "has no preference loss: drop it")


def padded_only(a) -> None:
    no_preference_flags(a)
    if a.packing:
        raise ArgumentError(f"--task {a.task} trains a classifier on padded batches: drop --packing (it is for "
                            "causal_lm)")


def classification(name: str, auto_model: str, peft_task_type: str) -> Task:
    return Task(name, auto_model, peft_task_type, auto_model.removeprefix("AutoModel"),
                build_datasets=lambda data_args, tokenizer, family, max_length: classify.build_datasets(
                    name, data_args, tokenizer, max_length),
                collator=lambda tokenizer, train_args, varlen: classify.collator(tokenizer, name),
                served_by=("predict",), head=lambda family: family.classifier_head, check=padded_only,
                metrics=lambda labels: classify.metrics(name, labels))


def preference_task(name: str, auto_model: str, peft_task_type: str, **row) -> Task:
    """A row trained by TRL's trainer for the task: its config, its own collator (None), its reference handling."""
    return Task(name, auto_model, peft_task_type, auto_model.removeprefix("AutoModel"),
                build_datasets=lambda data_args, tokenizer, family, max_length: preference.build_datasets(
                    name, data_args, tokenizer, max_length),
                collator=lambda tokenizer, train_args, varlen: None, check=preference.check,
                trainer=lambda: preference.trainer_class(name),
                trainer_args=lambda train_args: preference.trainer_config(name, train_args), **row)


CHAT = ("chat", "generate", "evaluate", "export")
TASKS = {
    "causal_lm": Task("causal_lm", "AutoModelForCausalLM", "CAUSAL_LM", "ForCausalLM", causal_lm_datasets,
                      data.collator, served_by=CHAT, save=save_prompt_format),
    "seq_cls": classification("seq_cls", "AutoModelForSequenceClassification", "SEQ_CLS"),
    "token_cls": classification("token_cls", "AutoModelForTokenClassification", "TOKEN_CLS"),
    "dpo": preference_task("dpo", "AutoModelForCausalLM", "CAUSAL_LM", served_by=CHAT, save=save_prompt_format),
    "kto": preference_task("kto", "AutoModelForCausalLM", "CAUSAL_LM", served_by=CHAT, save=save_prompt_format),
    "reward": preference_task("reward", "AutoModelForSequenceClassification", "SEQ_CLS", served_by=("predict",),
                              head=lambda family: family.classifier_head),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ArgumentError(f"--task '{name}' is unknown; choose one of: {', '.join(TASKS)}")
    return TASKS[name]
