"""Preference tasks (the dpo, kto and reward rows of tasks.py): records read into TRL's conversational form
(formats.py), checked and rendered through the model's chat template before any model loads, then trained by TRL's
own trainers with their tokenisation, collators, losses, metrics and reference handling.  Each trainer's config
(DPOConfig ...) is built from our TrainingArguments, keeping our fields, which the mixins read."""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

from . import templates
from .data import Stats, adds_bos
from .errors import ArgumentError
from .formats import PREFERENCE_FORMATS, load_records


class Trainer(NamedTuple):
    records: str           # formats.PREFERENCE_FORMATS: pair or unpaired
    trainer: str           # TRL's trainer class
    config: str            # and its config class
    losses: tuple = ()     # the --loss_type values offered, the first TRL's default
    too_long: str = "truncated"  # what TRL does with a record longer than max_length
    labels: list | None = None   # the model's outputs (a reward model's one: num_labels 1)
    reference: bool = True       # trained against a reference model (--beta, --precompute_ref_log_probs)


TRAINERS = {
    "dpo": Trainer("pair", "DPOTrainer", "DPOConfig", ("sigmoid", "ipo")),
    "kto": Trainer("unpaired", "KTOTrainer", "KTOConfig", ("kto", "apo_zero_unpaired")),
    "reward": Trainer("pair", "RewardTrainer", "RewardConfig", too_long="dropped", labels=["reward"], reference=False),
}
ANSWERS = {"pair": ("chosen", "rejected"), "unpaired": ("completion",)}


def check(a) -> None:
    """What the preference tasks refuse before loading: TRL pads every batch itself, and offers these losses."""
    row = TRAINERS[a.task]
    for flag in ("packing", "token_budget", "lazy_preprocess"):
        if getattr(a, flag):
            raise ArgumentError(f"--task {a.task}: TRL's {row.trainer} tokenizes and pads the records itself: drop "
                                f"--{flag}")
    if a.loss_type is not None and a.loss_type not in row.losses:
        raise ArgumentError(f"--loss_type {a.loss_type} is not one --task {a.task} offers: " +
                            (", ".join(row.losses) if row.losses else "it has none (drop --loss_type)"))
    if not row.reference and (a.beta is not None or a.precompute_ref_log_probs):
        raise ArgumentError(f"--task {a.task} has no reference model: drop --beta / --precompute_ref_log_probs")
    if a.beta is not None and a.beta <= 0:
        raise ArgumentError(f"--beta {a.beta} must be positive")
    if a.sft_weight is not None and (a.task != "dpo" or a.sft_weight < 0):
        raise ArgumentError(f"--sft_weight {a.sft_weight}: a weight >= 0 of --task dpo's added NLL loss")


def build_datasets(task: str, data_args, tokenizer, max_length: int):
    """(train, eval or None, labels): a reward model's one output is named 'reward' (num_labels 1)."""
    if not tokenizer.chat_template:
        raise templates.missing(tokenizer.name_or_path)
    row = TRAINERS[task]
    train = dataset(data_args.data_path, row, tokenizer, max_length, data_args.max_samples)
    if data_args.eval_on_train:
        evals = train
    else:
        evals = dataset(data_args.eval_data_path, row, tokenizer, max_length) if data_args.eval_data_path else None
    return train, evals, row.labels


def dataset(path: str, row: Trainer, tokenizer, max_length: int, max_samples: int | None = None):
    """Every record read and rendered once here, so a bad record or a template that refuses it is one error line
    before the model loads (TRL renders them again, tokenizing, inside the trainer); its stats count the tokens and
    the records longer than max_length (which TRL truncates, or drops)."""
    import datasets

    samples = load_records(path, max_samples, PREFERENCE_FORMATS[row.records][1])
    named = templates.named(tokenizer)
    stats = Stats(samples=len(samples), stop=templates.end_of_turn(tokenizer, named), template=named,
                  bos_on_text=adds_bos(tokenizer))
    for i, sample in enumerate(samples):
        where = f"{path} record {i}"
        templates.render(tokenizer, sample["prompt"], True, where)
        lengths = [len(tokenizer(templates.render(tokenizer, sample["prompt"] + sample[key], False, where),
                                 add_special_tokens=False)["input_ids"]) for key in ANSWERS[row.records]]
        stats.tokens += sum(lengths)
        if max(lengths) > max_length:
            setattr(stats, row.too_long, getattr(stats, row.too_long) + 1)
    ds = datasets.Dataset.from_list(samples)
    ds.stats = stats
    return ds


@functools.cache
def _config_class(base, ours):
    """TRL's config with our TrainingArguments' fields too (RunMixin reads them): one dataclass of both, a global of
    this module so that the Trainer can pickle it."""
    cls = dataclasses.make_dataclass(f"Tunekit{base.__name__}", [], bases=(base, ours))
    cls.__module__ = __name__  # Python 3.11's make_dataclass has no module argument
    globals()[cls.__name__] = cls
    return cls


def trainer_config(task: str, train_args):
    """The TRL trainer's config from our parsed TrainingArguments: every value as given, TRL's max_length from
    --model_max_length, --beta and --loss_type where given (TRL's defaults otherwise)."""
    import transformers
    import trl

    base = getattr(trl, TRAINERS[task].config)
    values = {f.name: getattr(train_args, f.name) for f in dataclasses.fields(train_args) if f.init}
    values["max_length"] = train_args.model_max_length
    for key in ("beta", "loss_type"):
        if values[key] is None or key not in {f.name for f in dataclasses.fields(base)}:
            values.pop(key)
    # the trainer's own sampling order where the user kept transformers' (KTO's KL pairs neighbours: sequential)
    if values["train_sampling_strategy"] == transformers.TrainingArguments.train_sampling_strategy:
        values.pop("train_sampling_strategy")
    if task == "dpo" and "loss_type" in values:
        values["loss_type"] = [values["loss_type"]]  # DPOConfig takes a list (losses may be combined)
    if values["sft_weight"]:  # the chosen answer's NLL added (TRL's 'sft' loss), as RPO does
        values["loss_type"] = values.get("loss_type", ["sigmoid"]) + ["sft"]
        values["loss_weights"] = [1.0, values["sft_weight"]]
    try:
        return _config_class(base, type(train_args))(**values)
    except ValueError as e:
        raise ArgumentError(f"arguments: {e}") from None


class SharedReference:
    """The reference without a second model.  Given a PEFT model, TRL copies its adapter as a frozen 'ref' adapter
    and computes the reference through it.  A fresh adapter (every lora_B zero) is exactly the base, so the copy goes:
    the reference is the base with the adapter disabled.  An adapter trained before (--init_adapter: an SFT run) keeps
    it, since the reference is then the SFT model; only the trained adapter ('default') is saved.  With
    --precompute_ref_log_probs TRL computes the reference while it is built, before Trainer.train patches Liger's
    kernels in: they are patched first, so reference and policy share kernels (unpatched, the first DPO loss of a
    7B-shaped NF4 model on an H100 was ln 2 + 0.047, bench/dpo.py)."""

    def __init__(self, *args, **kwargs):
        config = kwargs["args"]
        if config.use_liger_kernel and getattr(config, "precompute_ref_log_probs", False):
            from transformers.integrations.liger import apply_liger_kernel

            # TRL's preference trainers refuse Liger's fused loss: their log-probs need the logits
            apply_liger_kernel(kwargs["model"], {**(config.liger_kernel_config or {}),
                                                 "fused_linear_cross_entropy": False})
        super().__init__(*args, **kwargs)
        model = self.model
        if "ref" not in (getattr(model, "peft_config", None) or {}):
            return
        if all(not p.any() for name, p in model.named_parameters() if "lora_B.default" in name):
            model.delete_adapter("ref")
        else:
            model.save_pretrained = functools.partial(model.save_pretrained, selected_adapters=["default"])


@functools.cache
def trainer_class(task: str):
    import trl

    name = TRAINERS[task].trainer
    return type(name, (SharedReference, getattr(trl, name)), {})


def scores(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16) -> list[float]:
    """A reward model's score of each whole conversation, tokenized as RewardTrainer tokenizes it (chat template)."""
    import torch

    from .data import right_padding

    tokenizer, out = right_padding(tokenizer), []
    for start in range(0, len(conversations), batch_size):
        ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]
               for c in conversations[start:start + batch_size]]
        batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(model.device)
        with torch.no_grad():
            out += model(**batch).logits[:, 0].float().tolist()
    return out
