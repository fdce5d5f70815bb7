"""Classification tasks: one label per text (`seq_cls`) or one BIO tag per word (`token_cls`).

  seq_cls    {"text": ..., "label": ...}  (optionally "text_pair")      .json / .jsonl
  token_cls  {"tokens": [...], "tags": [...]}                           one tag per token

The label set is read from the training file (sorted), or given with --labels; it is saved as the model config's
id2label/label2id beside the adapter.  A label of the eval file that is not in the set is an error naming the record.
Token labels sit on the first sub-token of each word; the other sub-tokens (and special tokens) are ignored (-100).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import IGNORE_INDEX, right_padding, to_dataset
from .errors import DataError
from .formats import read_records


# ---------------------------------------------------------------- records and labels

def read_text_record(record, where: str) -> dict:
    if not isinstance(record, dict) or "text" not in record or "label" not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: --task seq_cls reads records {{\"text\": ..., \"label\": ...}} (optionally "
                        f"\"text_pair\"); this one has {keys} (see data/README.md)")
    for key in ("text", "text_pair"):
        if key in record and (not isinstance(record[key], str) or not record[key].strip()):
            raise DataError(f"{where}: '{key}' must be a non-empty string")
    if not isinstance(record["label"], (str, int)) or isinstance(record["label"], bool):
        raise DataError(f"{where}: 'label' must be a string or an integer, got {record['label']!r}")
    return {"text": record["text"], "text_pair": record.get("text_pair"), "label": str(record["label"])}


def read_token_record(record, where: str) -> dict:
    if not isinstance(record, dict) or "tokens" not in record or "tags" not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: --task token_cls reads records {{\"tokens\": [...], \"tags\": [...]}}; this one "
                        f"has {keys} (see data/README.md)")
    tokens, tags = record["tokens"], record["tags"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise DataError(f"{where}: 'tokens' must be a non-empty list of non-empty strings")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DataError(f"{where}: 'tags' must be a list of strings")
    if len(tags) != len(tokens):
        raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token")
    return {"tokens": tokens, "tags": tags}


def label_names(samples: list[dict], key: str, given=None) -> list[str]:
    if given:
        return list(given)
    found = set()
    for s in samples:
        found.update(s[key] if isinstance(s[key], list) else [s[key]])
    return sorted(found)


def check_labels(samples: list[dict], key: str, labels: list[str], path: str, what: str) -> None:
    known = set(labels)
    for i, s in enumerate(samples):
        for value in s[key] if isinstance(s[key], list) else [s[key]]:
            if value not in known:
                raise DataError(f"{path} record {i}: {key[:-1] if key == 'tags' else key} {value!r} is not among "
                                f"the {what} labels {sorted(known)}; add it to the training data or pass --labels")


# ---------------------------------------------------------------- examples

def encode_text(sample: dict, tokenizer, label2id: dict, max_length: int) -> tuple[dict, bool]:
    full = tokenizer(sample["text"], sample["text_pair"])["input_ids"]
    enc = tokenizer(sample["text"], sample["text_pair"], truncation=True, max_length=max_length)
    return {"input_ids": enc["input_ids"], "labels": label2id[sample["label"]]}, len(full) > max_length


def encode_tokens(sample: dict, tokenizer, label2id: dict, max_length: int) -> tuple[dict, bool]:
    enc = tokenizer(sample["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
    labels, previous = [], None
    for word in enc.word_ids():
        labels.append(label2id[sample["tags"][word]] if word is not None and word != previous else IGNORE_INDEX)
        previous = word
    covered = max((w for w in enc.word_ids() if w is not None), default=-1) + 1
    return {"input_ids": enc["input_ids"], "labels": labels}, covered < len(sample["tokens"])


@dataclass(frozen=True)
class Kind:
    read: object      # (record, where) -> sample
    key: str          # the sample's label field
    encode: object    # (sample, tokenizer, label2id, max_length) -> (example, truncated?)


KINDS = {"seq_cls": Kind(read_text_record, "label", encode_text),
         "token_cls": Kind(read_token_record, "tags", encode_tokens)}


def load_samples(path: str, kind: Kind, max_samples=None) -> list[dict]:
    raw = read_records(path)[:max_samples] if max_samples else read_records(path)
    if not raw:
        raise DataError(f"{path}: no records")
    return [kind.read(r, f"{path} record {i}") for i, r in enumerate(raw)]


def build_datasets(task_name: str, data_args, tokenizer, max_length: int):
    """(train, eval or None, label names) for a classification task; every record is checked before any is used."""
    kind = KINDS[task_name]
    train = load_samples(data_args.data_path, kind, data_args.max_samples)
    labels = label_names(train, kind.key, data_args.labels)
    check_labels(train, kind.key, labels, data_args.data_path, "--labels" if data_args.labels else "given")
    evals = load_samples(data_args.eval_data_path, kind) if data_args.eval_data_path else None
    if evals is not None:
        check_labels(evals, kind.key, labels, data_args.eval_data_path,
                     "--labels" if data_args.labels else "training file's")
    if len(labels) < 2 and kind.key == "label":
        raise DataError(f"{data_args.data_path}: only one label ({labels}); a classifier needs at least two")
    label2id = {name: i for i, name in enumerate(labels)}

    def encode(sample):
        return kind.encode(sample, tokenizer, label2id, max_length)

    return to_dataset(train, encode), (to_dataset(evals, encode) if evals is not None else None), labels


# ---------------------------------------------------------------- batches and metrics

def collator(tokenizer, task_name: str):
    """transformers' padding collators, on the right (attention_mask 0 there): one label per text (seq_cls), or
    per-token labels padded with -100 (token_cls)."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    tokenizer = right_padding(tokenizer)
    if task_name == "token_cls":
        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX)
    return DataCollatorWithPadding(tokenizer)


def metrics(task_name: str, labels: list[str]):
    """compute_metrics for the Trainer: accuracy and macro-F1 (scikit-learn) per text; entity-level precision, recall
    and F1 (seqeval, BIO) per token; each with the score of always predicting the most frequent gold label."""
    def logits(prediction):
        p = prediction.predictions
        return p[0] if isinstance(p, tuple) else p  # some models return (logits, ...)

    def per_text(prediction):
        from sklearn.metrics import accuracy_score, f1_score

        pred, gold = logits(prediction).argmax(-1), prediction.label_ids
        majority = torch.as_tensor(gold).mode().values.item()
        return {"accuracy": float(accuracy_score(gold, pred)),
                "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
                "majority_accuracy": float(accuracy_score(gold, [majority] * len(gold)))}

    def per_token(prediction):
        from seqeval.metrics import f1_score, precision_score, recall_score

        pred, gold = logits(prediction).argmax(-1), prediction.label_ids
        ref, hyp = [], []
        for p_row, g_row in zip(pred, gold):
            keep = g_row != IGNORE_INDEX
            ref.append([labels[g] for g in g_row[keep]])
            hyp.append([labels[p] for p in p_row[keep]])
        tags = [tag for row in ref for tag in row]
        common = max(set(tags), key=tags.count)
        return {"precision": float(precision_score(ref, hyp, zero_division=0)),
                "recall": float(recall_score(ref, hyp, zero_division=0)),
                "f1": float(f1_score(ref, hyp, zero_division=0)),
                "majority_f1": float(f1_score(ref, [[common] * len(row) for row in ref], zero_division=0))}

    return per_text if task_name == "seq_cls" else per_token
