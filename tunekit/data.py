"""Causal-LM examples: samples rendered through the family's chat template, labels only on what the model must learn to
say (assistant turns with their end of turn; plain text whole); the datasets and transformers' collators."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import torch

from .errors import DataError
from . import templates
from .families import Family
from .formats import load_records

IGNORE_INDEX = -100
GUANACO_TURN = re.compile(r"### (Human|Assistant):")


def text_segments(text: str, tokenizer) -> list[tuple[str, bool]]:
    segs = [(tokenizer.bos_token, False)] if adds_bos(tokenizer) else []
    parts = GUANACO_TURN.split(text)
    if len(parts) == 1:  # plain language-modelling text: learn all of it
        segs.append((text, True))
    else:  # guanaco turns: learn the assistant's
        segs.append((parts[0], False))
        for role, body in zip(parts[1::2], parts[2::2]):
            segs += [(f"### Human:{body}", False)] if role == "Human" else [("### Assistant:", False), (body, True)]
    segs.append((tokenizer.eos_token, True))  # so the model learns to stop
    return segs


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts a text with BOS (Llama, Gemma do; Qwen does not): plain text is trained so too."""
    return tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


@dataclass
class Stats:
    samples: int = 0
    truncated: int = 0
    dropped: int = 0
    supervised_tokens: int = 0
    tokens: int = 0
    guanaco: int = 0  # samples trained as '### Human: ... ### Assistant: ...' text (the run's prompt format: prompts.py)
    bos_on_text: bool = False  # text samples start with BOS
    stop: list = field(default_factory=list)  # the strings that ended the trained answers (end-of-turn tokens)
    template: str | None = None  # the named template (--template) of a tokenizer without its own


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
                    max_target_length=None, stops=None) -> tuple[list[dict], int]:
    """(examples, how many were truncated): ADGEN records as ChatGLM2 preprocesses them, conversations (and guanaco
    text, when the tokenizer has a chat template) in the chat template, other text as it is."""
    if sample.get("adgen") and family.source_template:
        exs = [adgen_ids(sample, tokenizer, family, max_source_length, max_target_length)]
    else:
        where = sample.get("where", "a record")
        messages = sample.get("messages") or (guanaco_messages(sample["text"]) if tokenizer.chat_template else None)
        if messages and not tokenizer.chat_template:
            raise templates.missing(tokenizer.name_or_path)
        stops = templates.end_of_turn(tokenizer, templates.named(tokenizer)) if stops is None else stops
        segments = templates.examples(messages, tokenizer, stops, where) if messages else [
            text_segments(sample["text"], tokenizer)]
        exs = [segment_ids([(t, trained) for t, trained in segs if t], tokenizer) for segs in segments]
    return ([{"input_ids": ids[:max_length], "labels": labels[:max_length]} for ids, labels in exs],
            sum(len(ids) > max_length for ids, _ in exs))


def guanaco_messages(text: str) -> list[dict] | None:
    """'### Human: ...### Assistant: ...' text as a conversation (None for plain text)."""
    parts = GUANACO_TURN.split(text)
    if len(parts) < 3:
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": b.strip()} for r, b in zip(parts[1::2], parts[2::2])]


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
        exs, truncated = encode(rec)
        stats.truncated += truncated
        for ex in exs if isinstance(exs, list) else [exs]:  # a conversation may give one example per answer
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
            if isinstance(ex, list):
                if len(ex) != 1:
                    raise DataError(f"{self.records[i].get('where')}: the chat template renders this conversation as "
                                    f"{len(ex)} examples (one per answer), which --lazy_preprocess cannot index; "
                                    "drop --lazy_preprocess")
                ex = ex[0]
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
                  max_target_length=None, encode=None, template=None):
    """`encode(sample, tokenizer, family, max_length, **limits)` builds an example (default: tokenize_sample)."""
    for key, value in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
        if value is not None and value < 1:
            raise DataError(f"--{key} must be a positive number of tokens, got {value}")
    records = load_records(path, max_samples)
    for i, r in enumerate(records):
        r["where"] = f"{path} record {i}"
    limits = dict(max_source_length=max_source_length, max_target_length=max_target_length)
    if encode is None:
        encode, limits["stops"] = tokenize_sample, templates.end_of_turn(tokenizer, template)
    ds = to_dataset(records, lambda rec: encode(rec, tokenizer, family, max_length, **limits), lazy)
    if not tokenizer.chat_template:  # with a template, guanaco text trains in it (tokenize_sample)
        ds.stats.guanaco = sum("text" in r and bool(GUANACO_TURN.search(r["text"])) for r in records)
    ds.stats.bos_on_text, ds.stats.stop, ds.stats.template = adds_bos(tokenizer), limits.get("stops", []), template
    if len(ds) == 0:
        raise DataError(f"{path}: every sample lost its supervised tokens to truncation at "
                        f"--model_max_length {max_length}; raise it")
    return ds


def build_datasets(data_args, tokenizer, family, max_length):
    """(train, eval or None) causal-LM datasets for a run's data arguments."""
    data = dict(tokenizer=tokenizer, family=family, max_length=max_length, lazy=data_args.lazy_preprocess,
                max_source_length=data_args.max_source_length, max_target_length=data_args.max_target_length,
                template=templates.named(tokenizer))
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
