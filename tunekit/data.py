"""Data: read .json/.jsonl in four formats, render them through the family's chat template, tokenize with labels
only on what the model must learn to say (assistant turns and their end-of-turn/EOS token), pad per batch.

Formats (detected per record):
  conversations  {"conversations": [{"from": "user"|"assistant"|"system", "value": ...}]}   (the Qwen seed's)
  messages       {"messages": [{"role": "user"|"assistant"|"system", "content": ...}]}     (OpenAI style)
  alpaca         {"instruction": ..., "input": ..., "output": ...}
  text           {"text": "..."}: plain text; guanaco-style "### Human: ... ### Assistant: ..." is split into turns
  adgen          {"content": ..., "summary": ...}  (ChatGLM2's ADGEN): for a family with a `source_template`
                 (chatglm2) prefix + template(content) cut to max_source_length, summary cut to max_target_length,
                 then EOS; loss on the summary and EOS only.  Other families: one user/assistant turn.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .arguments import ArgumentError
from .families import Family

IGNORE_INDEX = -100
ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
GUANACO_TURN = re.compile(r"### (Human|Assistant):")


class DataError(ArgumentError):
    pass


# ---------------------------------------------------------------- reading and normalising records

def read_records(path: str) -> list[dict]:
    p = Path(path)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path} line {line}: not valid UTF-8 (byte {e.start} is {raw[e.start:e.start + 1]!r}); "
                        "save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; it must hold training records (see data/README.md)")
    if path.endswith(".jsonl"):
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                        "a file with one record per line must be named .jsonl") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records (or use .jsonl, one record per line)")
    return data


def normalise(record, where: str) -> dict:
    """One record -> {"messages": [...]} or {"text": str}."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "conversations" in record or "messages" in record:
        key = "conversations" if "conversations" in record else "messages"
        role_key, content_key = ("from", "value") if key == "conversations" else ("role", "content")
        turns = record[key]
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: '{key}' must be a non-empty list of turns")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
                raise DataError(f"{where}: {key}[{i}] must be an object with '{role_key}' and '{content_key}'")
            role = ROLE_ALIASES.get(str(turn[role_key]).lower())
            if role is None:
                raise DataError(f"{where}: {key}[{i}] has {role_key}={turn[role_key]!r}; expected user, assistant or "
                                "system (human/gpt are accepted too)")
            if not isinstance(turn[content_key], str):
                raise DataError(f"{where}: {key}[{i}].{content_key} must be a string")
            messages.append({"role": role, "content": turn[content_key]})
        check_roles(messages, where)
        return {"messages": messages}
    if "instruction" in record and "output" in record:
        for k in ("instruction", "input", "output"):
            if not isinstance(record.get(k, ""), str):
                raise DataError(f"{where}: '{k}' must be a string")
        prompt = record["instruction"] + ("\n\n" + record["input"] if record.get("input") else "")
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]}
    if "content" in record and "summary" in record:
        for k in ("content", "summary"):
            if not isinstance(record[k], str) or not record[k].strip():
                raise DataError(f"{where}: '{k}' must be a non-empty string (ADGEN records: content + summary)")
        return {"messages": [{"role": "user", "content": record["content"]},
                             {"role": "assistant", "content": record["summary"]}], "adgen": True}
    if "text" in record:
        if not isinstance(record["text"], str) or not record["text"].strip():
            raise DataError(f"{where}: 'text' must be a non-empty string")
        return {"text": record["text"]}
    raise DataError(f"{where}: unknown record format (keys: {sorted(record)}); expected 'conversations', "
                    "'messages', 'instruction'+'output', 'content'+'summary' or 'text' (see data/README.md)")


def check_roles(messages: list[dict], where: str) -> None:
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(rest):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise DataError(f"{where}: turns must alternate user/assistant after an optional system turn; "
                            f"turn {i + len(messages) - len(rest)} is {m['role']}, expected {want}")
    if not any(m["role"] == "assistant" for m in rest):
        raise DataError(f"{where}: no assistant turn, so nothing to learn from")


def load_records(path: str, max_samples: int | None = None) -> list[dict]:
    raw = read_records(path)
    if max_samples:
        raw = raw[:max_samples]
    if not raw:
        raise DataError(f"{path}: no records")
    return [normalise(r, f"{path} record {i}") for i, r in enumerate(raw)]


# ---------------------------------------------------------------- rendering and tokenising

def render_segments(sample: dict, tokenizer, family: Family) -> list[tuple[str, bool]]:
    """A sample as (text, trained?) segments whose concatenation is exactly what the model sees."""
    if "text" in sample:
        return text_segments(sample["text"], tokenizer, family)
    return chat_segments(sample["messages"], tokenizer)


def text_segments(text: str, tokenizer, family: Family) -> list[tuple[str, bool]]:
    segs = [(tokenizer.bos_token, False)] if family.add_bos_to_text and tokenizer.bos_token else []
    parts = GUANACO_TURN.split(text)
    if len(parts) == 1:  # plain language-modelling text: learn all of it
        segs.append((text, True))
    else:
        if parts[0]:
            segs.append((parts[0], False))
        for role, body in zip(parts[1::2], parts[2::2]):
            if role == "Human":
                segs.append((f"### Human:{body}", False))
            else:
                segs.append(("### Assistant:", False))
                segs.append((body, True))
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


def adgen_ids(sample: dict, tokenizer, family: Family, max_source_length=None, max_target_length=None):
    """ChatGLM2's ADGEN preprocessing: prefix + template(content) (source, cut to max_source_length including the
    prefix) + summary (cut to max_target_length) + EOS, each part tokenized on its own; labels on summary and EOS."""
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
    """Tokenize the whole rendering at once (exactly the ids inference sees, no double BOS: the template already
    holds BOS/EOS) and label each token whose first character lies in a trained segment."""
    if sample.get("adgen") and family.source_template:
        input_ids, labels = adgen_ids(sample, tokenizer, family, max_source_length, max_target_length)
        return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}, len(input_ids) > max_length
    segs = [(t, trained) for t, trained in render_segments(sample, tokenizer, family) if t]
    if not tokenizer.is_fast:  # no offsets: tokenize segment by segment
        input_ids, labels = [], []
        for text, trained in segs:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
    else:
        spans, pos = [], 0
        for text, trained in segs:
            if trained:
                spans.append((pos, pos + len(text)))
            pos += len(text)
        enc = tokenizer("".join(t for t, _ in segs), add_special_tokens=False, return_offsets_mapping=True)
        input_ids = enc["input_ids"]
        labels = [i if any(a <= start < b for a, b in spans) else IGNORE_INDEX
                  for i, (start, _) in zip(input_ids, enc["offset_mapping"])]
    truncated = len(input_ids) > max_length
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}, truncated


def has_labels(example: dict) -> bool:
    return any(x != IGNORE_INDEX for x in example["labels"])


class SupervisedDataset(torch.utils.data.Dataset):
    """Tokenized up front; samples left with no supervised token after truncation are dropped (and counted)."""

    def __init__(self, records, tokenizer, family, max_length, **limits):
        from tqdm.auto import tqdm

        self.stats = Stats()
        self.examples = []
        for rec in tqdm(records, desc="tokenizing", disable=len(records) < 5000):
            ex, truncated = tokenize_sample(rec, tokenizer, family, max_length, **limits)
            self.stats.samples += 1
            self.stats.truncated += truncated
            if not has_labels(ex):
                self.stats.dropped += 1
                continue
            self.stats.tokens += len(ex["input_ids"])
            self.stats.supervised_tokens += sum(x != IGNORE_INDEX for x in ex["labels"])
            self.examples.append(ex)

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


class LazySupervisedDataset(torch.utils.data.Dataset):
    """Records are read and checked up front, tokenized on first use (--lazy_preprocess).  A sample left with no
    supervised token cannot be dropped here; it contributes no loss and is counted in stats."""

    def __init__(self, records, tokenizer, family, max_length, **limits):
        self.records, self.tokenizer, self.family, self.max_length = records, tokenizer, family, max_length
        self.limits = limits  # max_source_length / max_target_length of ADGEN records
        self.cache = {}
        self.stats = Stats(samples=len(records))

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if i not in self.cache:
            ex, truncated = tokenize_sample(self.records[i], self.tokenizer, self.family, self.max_length,
                                            **self.limits)
            self.stats.truncated += truncated
            self.stats.dropped += not has_labels(ex)
            self.cache[i] = ex
        return self.cache[i]


def build_dataset(path, tokenizer, family, max_length, lazy=False, max_samples=None, max_source_length=None,
                  max_target_length=None):
    for key, value in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
        if value is not None and value < 1:
            raise DataError(f"--{key} must be a positive number of tokens, got {value}")
    records = load_records(path, max_samples)
    cls = LazySupervisedDataset if lazy else SupervisedDataset
    ds = cls(records, tokenizer, family, max_length, max_source_length=max_source_length,
             max_target_length=max_target_length)
    if len(ds) == 0:
        raise DataError(f"{path}: every sample lost its supervised tokens to truncation at "
                        f"--model_max_length {max_length}; raise it")
    return ds


def to_hf_dataset(ds):
    """The same tokenized samples as a `datasets.Dataset` (what TRL's SFTTrainer requires)."""
    import datasets

    if isinstance(ds, LazySupervisedDataset):
        index = datasets.Dataset.from_dict({"index": list(range(len(ds)))})
        index.set_transform(lambda batch: _lazy_batch(ds, batch["index"]))
        return index
    return datasets.Dataset.from_dict({"input_ids": [e["input_ids"] for e in ds.examples],
                                       "labels": [e["labels"] for e in ds.examples]})


def _lazy_batch(ds, indices):
    exs = [ds[i] for i in indices]
    return {"input_ids": [e["input_ids"] for e in exs], "labels": [e["labels"] for e in exs]}


@dataclass
class PaddingCollator:
    """Pads each batch to its own longest sample, on the right; padding is masked by position (attention_mask 0,
    label -100), so a pad token equal to EOS could never hide the real EOS label."""
    pad_token_id: int
    pad_to_multiple_of: int | None = None
    keys: tuple = field(default=("input_ids", "labels"))

    def __call__(self, features):
        n = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            n = -(-n // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(features)
        input_ids = torch.full((batch, n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, n), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((batch, n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.as_tensor(f["input_ids"])
            labels[i, :k] = torch.as_tensor(f["labels"])
            attention[i, :k] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
