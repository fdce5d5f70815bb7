"""Causal-LM examples: samples rendered through the family's chat template, labels only on what the model must learn to
say (assistant turns with their end of turn; plain text whole); the datasets and transformers' collators."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch

from .errors import DataError
from .families import Family
from .formats import load_records

IGNORE_INDEX = -100
GUANACO_TURN = re.compile(r"### (Human|Assistant):")


def text_segments(text: str, tokenizer, family: Family) -> list[tuple[str, bool]]:
    segs = [(tokenizer.bos_token, False)] if family.add_bos_to_text and tokenizer.bos_token else []
    parts = GUANACO_TURN.split(text)
    if len(parts) == 1:  # plain language-modelling text: learn all of it
        segs.append((text, True))
    else:  # guanaco turns: learn the assistant's
        segs.append((parts[0], False))
        for role, body in zip(parts[1::2], parts[2::2]):
            segs += [(f"### Human:{body}", False)] if role == "Human" else [("### Assistant:", False), (body, True)]
    segs.append((tokenizer.eos_token, True))  # so the model learns to stop
    return segs


def chat_segments(messages: list[dict], tokenizer) -> list[tuple[str, bool]]:
    """Render with the tokenizer's own chat template; each assistant reply is what a full render adds beyond the
    render of the conversation before it with the generation prompt (so train and inference prompts are identical)."""
    segs, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError("the chat template does not render conversations prefix by prefix; "
                            "pass a --family whose template does")
        segs.append((prompt[len(done):], False))
        segs.append((full[len(prompt):], True))
        done = full
    return segs


@dataclass
class Stats:
    samples: int = 0
    truncated: int = 0
    dropped: int = 0
    supervised_tokens: int = 0
    tokens: int = 0
    guanaco: int = 0  # samples of '### Human: ... ### Assistant: ...' text (the run's prompt format: prompts.py)


def adgen_ids(sample: dict, tokenizer, family: Family, max_source_length=None, max_target_length=None):
    """ChatGLM2's ADGEN preprocessing: prefix + template(content) + summary + EOS, each part tokenized and cut alone."""
    content, summary = (m["content"] for m in sample["messages"])
    prefix = tokenizer.convert_tokens_to_ids(list(family.prefix_tokens))
    source = tokenizer(family.source_template.format(content=content), add_special_tokens=False)["input_ids"]
    target = tokenizer(summary, add_special_tokens=False)["input_ids"]
    if max_source_length:
        source = source[: max(max_source_length - len(prefix), 0)]
    if max_target_length:
        target = target[:max_target_length]
    input_ids = prefix + source + target + [tokenizer.eos_token_id]
    labels = [IGNORE_INDEX] * (len(prefix) + len(source)) + target + [tokenizer.eos_token_id]
    return input_ids, labels


def tokenize_sample(sample: dict, tokenizer, family: Family, max_length: int, max_source_length=None,
                    max_target_length=None) -> tuple[dict, bool]:
    """(example, truncated?): ADGEN records as ChatGLM2 preprocesses them, anything else rendered into segments."""
    if sample.get("adgen") and family.source_template:
        input_ids, labels = adgen_ids(sample, tokenizer, family, max_source_length, max_target_length)
    else:
        segs = text_segments(sample["text"], tokenizer, family) if "text" in sample else chat_segments(
            sample["messages"], tokenizer)
        input_ids, labels = segment_ids([(t, trained) for t, trained in segs if t], tokenizer)
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}, len(input_ids) > max_length


def segment_ids(segs: list[tuple[str, bool]], tokenizer) -> tuple[list[int], list[int]]:
    """(text, trained?) segments -> (ids, labels): the whole rendering tokenized at once (exactly the ids inference
    sees, no double BOS: the template holds BOS/EOS), each token labelled when its first character is trained."""
    if not tokenizer.is_fast:  # no offsets: tokenize segment by segment
        input_ids, labels = [], []
        for text, trained in segs:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
        return input_ids, labels
    spans, pos = [], 0
    for text, trained in segs:
        if trained:
            spans.append((pos, pos + len(text)))
        pos += len(text)
    enc = tokenizer("".join(t for t, _ in segs), add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [i if any(a <= start < b for a, b in spans) else IGNORE_INDEX
                              for i, (start, _) in zip(enc["input_ids"], enc["offset_mapping"])]


def to_dataset(records, encode, lazy: bool = False):
    """The examples (a `datasets.Dataset`, or lazy) with `.stats`; one with no supervised token is dropped."""
    if lazy:
        return LazyDataset(records, encode)
    import datasets
    from tqdm.auto import tqdm

    stats, examples = Stats(samples=len(records)), []
    for rec in tqdm(records, desc="tokenizing", disable=len(records) < 5000):
        ex, truncated = encode(rec)
        stats.truncated += truncated
        if not has_labels(ex):
            stats.dropped += 1
            continue
        stats.tokens += len(ex["input_ids"])
        stats.supervised_tokens += sum(x != IGNORE_INDEX for x in _label_list(ex))
        examples.append(ex)
    ds = datasets.Dataset.from_list(examples)
    ds.stats = stats
    return ds


class LazyDataset(torch.utils.data.Dataset):
    """--lazy_preprocess: each record encoded on first use and cached (one with no supervised token is counted, not
    dropped).  Not `datasets`' set_transform: it pickles every record to fingerprint the transform (1-2 s per 10 MB),
    and the Trainer's unused-column filter would drop the index column it reads."""

    def __init__(self, records, encode):
        self.records, self.encode, self.stats, self.cache = records, encode, Stats(samples=len(records)), {}

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if i not in self.cache:
            ex, truncated = self.encode(self.records[i])
            self.stats.truncated += truncated
            self.stats.dropped += not has_labels(ex)
            self.cache[i] = ex
        return self.cache[i]


def _label_list(example: dict) -> list:
    labels = example["labels"]
    return labels if isinstance(labels, list) else [labels]  # a classifier's one label per text


def has_labels(example: dict) -> bool:
    return any(x != IGNORE_INDEX for x in _label_list(example))


def build_dataset(path, tokenizer, family, max_length, lazy=False, max_samples=None, max_source_length=None,
                  max_target_length=None, encode=None):
    """`encode(sample, tokenizer, family, max_length, **limits)` builds an example (default: tokenize_sample)."""
    for key, value in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
        if value is not None and value < 1:
            raise DataError(f"--{key} must be a positive number of tokens, got {value}")
    records = load_records(path, max_samples)
    encode = encode or tokenize_sample
    limits = dict(max_source_length=max_source_length, max_target_length=max_target_length)
    ds = to_dataset(records, lambda rec: encode(rec, tokenizer, family, max_length, **limits), lazy)
    ds.stats.guanaco = sum("text" in r and bool(GUANACO_TURN.search(r["text"])) for r in records)
    if len(ds) == 0:
        raise DataError(f"{path}: every sample lost its supervised tokens to truncation at "
                        f"--model_max_length {max_length}; raise it")
    return ds


def build_datasets(data_args, tokenizer, family, max_length):
    """(train, eval or None) causal-LM datasets for a run's data arguments."""
    data = dict(tokenizer=tokenizer, family=family, max_length=max_length, lazy=data_args.lazy_preprocess,
                max_source_length=data_args.max_source_length, max_target_length=data_args.max_target_length)
    train = build_dataset(data_args.data_path, max_samples=data_args.max_samples, **data)
    if data_args.eval_on_train:  # the same examples: tokenized once
        return train, train
    return train, build_dataset(data_args.eval_data_path, **data) if data_args.eval_data_path else None


def collator(tokenizer, train_args, varlen: bool):
    """--packing: transformers' padding-free DataCollatorWithFlattening (varlen: with the cumulative lengths that
    tunekit/attention.py reads); otherwise right padding masked by position, so a pad equal to EOS never hides EOS."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if train_args.packing:
        return DataCollatorWithFlattening(return_position_ids=True, return_flash_attn_kwargs=varlen)
    return DataCollatorForSeq2Seq(right_padding(tokenizer), label_pad_token_id=IGNORE_INDEX, padding=True)


def right_padding(tokenizer):
    """The tokenizer, or a copy of it that pads on the right (positions then count from 0 in every row)."""
    if tokenizer.padding_side == "right":
        return tokenizer
    tokenizer = copy.copy(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer
