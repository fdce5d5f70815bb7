"""Predict with a trained classifier: a JSONL of texts (or token lists) in, labels and probabilities out.

    python -m tunekit.predict MODEL INPUT.jsonl OUTPUT.jsonl [--batch_size 32]

MODEL is an adapter folder written by finetune.py (base + adapter, loaded the supported way: the bare base model,
then PeftModel.from_pretrained) or a merged folder.  seq_cls records {"text": ...[, "text_pair": ...]} get
"prediction" and "probabilities" ({label: p}); token_cls records {"tokens": [...]} get "predicted_tags" (one per token);
gold "label"/"tags" fields stay as they are.  The model runs in
eval mode without dropout, so every load gives the same outputs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .errors import ArgumentError
from .formats import read_records

AUTO = {"SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification"}


def load_classifier(folder: str, load_in_4bit: bool = False):
    """(model in eval mode, tokenizer, task name) from an adapter folder or a merged classifier folder.
    load_in_4bit: quantize the base as NF4 Q-LoRA training did (bf16 compute, the head kept whole), so the logits are
    those of the model that was trained."""
    import transformers

    from .merge import load_adapter
    from .model import keep_portable_4bit

    folder = Path(folder)
    adapter_cfg = folder / "adapter_config.json"
    config = transformers.AutoConfig.from_pretrained(folder)
    if adapter_cfg.is_file():
        adapter = json.loads(adapter_cfg.read_text())
        if adapter.get("task_type") not in AUTO:
            raise ArgumentError(f"{adapter_cfg}: task_type {adapter.get('task_type')!r} is not a classifier's")
        cls = getattr(transformers, AUTO[adapter["task_type"]])
        extra = {}
        if load_in_4bit:
            extra = dict(dtype=torch.bfloat16, device_map={"": 0 if torch.cuda.is_available() else "cpu"},
                         quantization_config=transformers.BitsAndBytesConfig(
                             load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16,
                             llm_int8_skip_modules=list(adapter["modules_to_save"] or [])))
        base = cls.from_pretrained(adapter["base_model_name_or_path"], config=config, **extra)
        keep_portable_4bit(base)
        model = load_adapter(base, str(folder))
    else:
        arch = (config.architectures or [""])[0]
        kind = "SEQ_CLS" if arch.endswith("ForSequenceClassification") else "TOKEN_CLS"
        if not arch.endswith(("ForSequenceClassification", "ForTokenClassification")):
            raise ArgumentError(f"{folder}: neither an adapter folder nor a classifier (architectures {arch!r})")
        model = getattr(transformers, AUTO[kind]).from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    task = "seq_cls" if "SequenceClassification" in type(model.get_base_model() if hasattr(model, "get_base_model")
                                                              else model).__name__ else "token_cls"
    return model.eval(), tokenizer, task


@torch.no_grad()
def predict(model, tokenizer, task: str, records: list[dict], batch_size: int = 32) -> list[dict]:
    id2label = model.config.id2label
    out = []
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        if task == "seq_cls":
            enc = tokenizer([r["text"] for r in batch], [r.get("text_pair") for r in batch]
                            if any(r.get("text_pair") for r in batch) else None, padding=True, truncation=True,
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
                tags, previous = ["O"] * len(r["tokens"]), None
                for pos, word in enumerate(enc.word_ids(i)):
                    if word is not None and word != previous:
                        tags[word] = id2label[int(best[i, pos])]
                    previous = word
                out.append({**r, "predicted_tags": tags})
    return out


def main(argv=None):
    from .noise import quiet_libraries

    quiet_libraries()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--batch_size", type=int, default=32)
    a = p.parse_args(argv)
    try:
        model, tokenizer, task = load_classifier(a.model)
        rows = predict(model, tokenizer, task, read_records(a.input), a.batch_size)
    except ArgumentError as e:
        sys.exit(f"error: {e}")
    Path(a.output).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} predictions -> {a.output}")


if __name__ == "__main__":
    main()
