"""Classification tasks: one label per text (`seq_cls`: "text", "label", optionally "text_pair") or one BIO tag per
word, on its first sub-token (`token_cls`: "tokens", "tags"); labels: the training file's (sorted) or --labels."""
from __future__ import annotations

import functools

import torch

from .data import IGNORE_INDEX, right_padding, to_dataset
from .errors import DataError
from .formats import load_records


# ---------------------------------------------------------------- records and labels

def _require(record, where: str, task: str, keys: tuple, shape: str) -> None:
    if not isinstance(record, dict) or any(k not in record for k in keys):
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: --task {task} reads records {shape}; this one has {found} (see data/README.md)")


def read_text_record(record, where: str) -> dict:
    _require(record, where, "seq_cls", ("text", "label"), '{"text": ..., "label": ...} (optionally "text_pair")')
    for key in ("text", "text_pair"):
        if key in record and (not isinstance(record[key], str) or not record[key].strip()):
            raise DataError(f"{where}: '{key}' must be a non-empty string")
    if not isinstance(record["label"], (str, int)) or isinstance(record["label"], bool):
        raise DataError(f"{where}: 'label' must be a string or an integer, got {record['label']!r}")
    return {"text": record["text"], "text_pair": record.get("text_pair"), "label": str(record["label"])}


def read_token_record(record, where: str) -> dict:
    _require(record, where, "token_cls", ("tokens", "tags"), '{"tokens": [...], "tags": [...]}')
    tokens, tags = record["tokens"], record["tags"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise DataError(f"{where}: 'tokens' must be a non-empty list of non-empty strings")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DataError(f"{where}: 'tags' must be a list of strings")
    if len(tags) != len(tokens):
        raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token")
    return {"tokens": tokens, "tags": tags}


def _values(sample: dict, key: str) -> list:
    return sample[key] if isinstance(sample[key], list) else [sample[key]]  # tags, or a text's one label


def check_labels(samples: list[dict], key: str, labels: list[str], path: str, what: str) -> None:
    known = set(labels)
    for i, s in enumerate(samples):
        for value in _values(s, key):
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
    words = enc.word_ids()  # a word's label on its first sub-token only
    labels = [label2id[sample["tags"][w]] if w is not None and w != previous else IGNORE_INDEX
              for w, previous in zip(words, [None, *words])]
    covered = max((w for w in words if w is not None), default=-1) + 1
    return {"input_ids": enc["input_ids"], "labels": labels}, covered < len(sample["tokens"])


# task -> (record reader, label field, encoder: (sample, tokenizer, label2id, max_length) -> (example, truncated?))
KINDS = {"seq_cls": (read_text_record, "label", encode_text), "token_cls": (read_token_record, "tags", encode_tokens)}


def build_datasets(task_name: str, data_args, tokenizer, max_length: int):
    """(train, eval or None, label names) for a classification task; every record is checked before any is used."""
    read, key, encode_sample = KINDS[task_name]
    train = load_records(data_args.data_path, data_args.max_samples, read)
    labels = list(data_args.labels or sorted({value for s in train for value in _values(s, key)}))
    what = "--labels" if data_args.labels else "training file's"
    if data_args.labels:  # the training file's own labels cannot miss
        check_labels(train, key, labels, data_args.data_path, what)
    evals = load_records(data_args.eval_data_path, read=read) if data_args.eval_data_path else None
    if evals is not None:
        check_labels(evals, key, labels, data_args.eval_data_path, what)
    if len(labels) < 2 and key == "label":
        raise DataError(f"{data_args.data_path}: only one label ({labels}); a classifier needs at least two")
    label2id = {name: i for i, name in enumerate(labels)}
    encode = functools.partial(encode_sample, tokenizer=tokenizer, label2id=label2id, max_length=max_length)
    return to_dataset(train, encode), (to_dataset(evals, encode) if evals is not None else None), labels


# ---------------------------------------------------------------- batches and metrics

def collator(tokenizer, task_name: str):
    """transformers' padding collators, on the right; token_cls labels padded with -100."""
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
