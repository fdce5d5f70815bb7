"""Predict with a trained classifier: a JSONL of texts (or token lists) in, labels and probabilities out.

    tunekit predict MODEL INPUT.jsonl OUTPUT.jsonl [--batch_size 32]

MODEL is a classifier's adapter folder or its merged folder.  seq_cls records {"text": ...[, "text_pair": ...]} get
"prediction" and "probabilities" ({label: p}), token_cls records {"tokens": [...]} get "predicted_tags" (one per
token); a reward model's preference pairs get "scores" ({"chosen": s, "rejected": s}), its conversations (any chat
format) a "score"; every other field, gold "label"/"tags" too, is kept.
"""
from __future__ import annotations

import json

import torch

from . import runfolder
from .atomic import atomic_file
from .errors import DataError, Parser, main_entry
from .formats import normalise, preference_kind, read_pair, read_records
from .generate import check_output_file, positive


@torch.no_grad()
def predict(model, tokenizer, task: str, records: list[dict], batch_size: int = 32) -> list[dict]:
    id2label = model.config.id2label
    out = []
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        if task == "seq_cls":
            pairs = [r.get("text_pair") for r in batch]
            enc = tokenizer([r["text"] for r in batch], pairs if any(pairs) else None, padding=True, truncation=True,
                            return_tensors="pt")
            probs = model(**enc).logits.float().softmax(-1)
            for r, p in zip(batch, probs):
                out.append({**r, "prediction": id2label[int(p.argmax())],
                            "probabilities": {id2label[i]: round(float(v), 6) for i, v in enumerate(p)}})
        else:
            enc = tokenizer([r["tokens"] for r in batch], is_split_into_words=True, padding=True, truncation=True,
                            return_tensors="pt")
            best = model(**enc).logits.argmax(-1)
            for i, r in enumerate(batch):
                words, tags = enc.word_ids(i), ["O"] * len(r["tokens"])
                for pos, (word, previous) in enumerate(zip(words, [None, *words])):  # a word's tag on its first token
                    if word is not None and word != previous:
                        tags[word] = id2label[int(best[i, pos])]
                out.append({**r, "predicted_tags": tags})
    return out


def reward_scores(model, tokenizer, records: list[dict], where: str, batch_size: int = 32) -> list[dict]:
    """Each record's conversation(s) scored whole, in the chat template, as the reward model trained on them."""
    from .preference import scores

    conversations, slots = [], []
    for i, r in enumerate(records):
        if preference_kind(r) == "pair":
            pair = read_pair(r, f"{where} record {i}")
            slots.append(("chosen", "rejected"))
            conversations += [pair["prompt"] + pair["chosen"], pair["prompt"] + pair["rejected"]]
        else:
            slots.append(None)
            conversations.append(normalise(r, f"{where} record {i}")["messages"])
    values = iter(scores(model, tokenizer, conversations, batch_size))
    return [{**r, "scores": {k: round(next(values), 6) for k in keys}} if keys else
            {**r, "score": round(next(values), 6)}
            for r, keys in zip(records, slots)]


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("model", help="a classifier's adapter folder written by training, or its merged folder")
    p.add_argument("input", help="records to label (.json or .jsonl)")
    p.add_argument("output", help="the JSONL to write")
    p.add_argument("--batch_size", type=positive, default=32)
    a = p.parse_args(argv)
    run = runfolder.read_for("predict", a.model)
    check_output_file(a.output, "OUTPUT")
    records = read_records(a.input)
    for i, r in enumerate(records):  # every record checked before the model loads
        check_record(run.task.name, r, f"{a.input} record {i}")
    model, tokenizer = runfolder.load(run)
    if run.task.name == "reward":
        rows = reward_scores(model, tokenizer, records, a.input, a.batch_size)
    else:
        rows = predict(model, tokenizer, run.task.name, records, a.batch_size)
    with atomic_file(a.output) as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} predictions -> {a.output}")


def check_record(task: str, r, where: str) -> None:
    if task == "reward":  # a preference pair, or a conversation in any chat format
        (read_pair if preference_kind(r) == "pair" else normalise)(r, where)
        return
    key = "text" if task == "seq_cls" else "tokens"
    if not isinstance(r, dict) or not r.get(key) or not isinstance(r[key], str if key == "text" else list):
        what = '{"text": "..."}' if key == "text" else '{"tokens": ["...", ...]}'
        raise DataError(f"{where}: a {task} record is {what}; this one has "
                        f"{sorted(r) if isinstance(r, dict) else type(r).__name__}")


if __name__ == "__main__":
    main_entry(main)
