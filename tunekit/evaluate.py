"""Score a trained model on a file: loss and perplexity, and with --generate its answers against the file's.

    tunekit evaluate out/chatglm2-lora --data data/chatglm2_adgen_eval.jsonl --generate
    make chatglm2-eval

Loss is the mean over every supervised token of the file, rendered and truncated as training does; perplexity is exp
of it.  --generate answers each prompt greedily and scores ROUGE-1/2/L and BLEU-4 (Chinese as ChatGLM2's ADGEN
evaluation does).  eval_metrics.json and eval_predictions.jsonl go into the model folder (or --out).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch

from . import prompts
from .data import IGNORE_INDEX, build_dataset, collator
from .errors import ArgumentError, Parser, main_entry
from .formats import read_records
from .generate import add_model_arguments, generate_file, load_from_args, positive, read_from_args, read_items
from .report import write_json
from .scores import score_generations

METRICS, PREDICTIONS = "eval_metrics.json", "eval_predictions.jsonl"


def eval_file(settings: dict) -> tuple[str | None, int | None]:
    """The file a run evaluated on and how many records: its eval file, or with --eval_on_train its training file."""
    if settings.get("eval_on_train"):
        return settings.get("data_path"), settings.get("max_samples")
    return settings.get("eval_data_path"), None


# Not Trainer.evaluate: its eval_loss averages per-batch means, so padding and batch size would move the number; this
# is the token-mean over the whole file (perplexity = exp of it), whatever the batching.
@torch.no_grad()
def loss_and_perplexity(model, tokenizer, family, path: str, settings: dict, batch_size: int = 8,
                        max_samples: int | None = None) -> dict:
    ds = build_dataset(path, tokenizer, family, settings.get("model_max_length") or 2048, max_samples=max_samples,
                       max_source_length=settings.get("max_source_length"),
                       max_target_length=settings.get("max_target_length"))
    collate = collator(tokenizer, SimpleNamespace(packing=False), False)
    total, tokens = 0.0, 0
    for batch in torch.utils.data.DataLoader(ds, batch_size, collate_fn=collate):
        batch = batch.to(model.device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                                   reduction="sum").item()
        tokens += int((labels != IGNORE_INDEX).sum())
    loss = total / tokens
    return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 700)), 4), "tokens": tokens,
            "samples": len(ds)}


def evaluate(model, tokenizer, fmt, family, data: str, out_dir, settings: dict, generate: bool = False,
             batch_size: int = 8, max_new_tokens: int = 256, limit: int | None = None, resume: bool = False) -> dict:
    """Writes out_dir/eval_metrics.json (and eval_predictions.jsonl); returns the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    metrics = {"data": data, **loss_and_perplexity(model, tokenizer, family, data, settings, batch_size, limit)}
    if generate:
        predictions = out / PREDICTIONS
        if not resume:
            predictions.unlink(missing_ok=True)  # another model's answers must not be scored as this one's
        generate_file(model, tokenizer, fmt, read_items(data, limit), str(predictions), batch_size,
                      max_new_tokens=max_new_tokens)
        rows = read_records(str(predictions))
        scores = score_generations([r["output"] for r in rows], [r["reference"] for r in rows])
        metrics.update({k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()})
        metrics["predictions"] = PREDICTIONS
    write_json(out / METRICS, metrics)
    summary = out / "run_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        s["evaluation"] = {"metrics": METRICS, **({"predictions": PREDICTIONS} if generate else {})}
        write_json(summary, s)
    return metrics


def after_training(trainer, tokenizer, run, train_ds) -> dict:
    """--eval_generation: the trained model (still in memory) on the eval file, written beside the adapter."""
    t = run.train_args
    fmt = prompts.from_stats(train_ds.stats, run.family)
    data, limit = eval_file(run.arguments)
    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training, use_cache, attn = model.training, model.config.use_cache, base.config._attn_implementation
    model.config.use_cache = True  # gradient checkpointing turned the cache off for training
    if attn == "varlen":  # the packed-batch kernel needs packed rows; generation pads prompts
        base.set_attn_implementation("sdpa")
    try:
        metrics = evaluate(model, tokenizer, fmt, run.family, data, t.output_dir, run.arguments, generate=True,
                           batch_size=t.per_device_eval_batch_size, max_new_tokens=t.eval_max_new_tokens, limit=limit)
        return {"metrics": METRICS, **metrics}
    finally:
        model.config.use_cache = use_cache
        if attn == "varlen":
            base.set_attn_implementation(attn)
        model.train(was_training)


def main(argv=None):
    p = Parser(__doc__)
    add_model_arguments(p)
    p.add_argument("--data", help="records in any training format; default: the run's eval file")
    p.add_argument("--generate", action="store_true", help="also answer each prompt and score ROUGE/BLEU")
    p.add_argument("--out", help="where eval_metrics.json goes; default: the adapter (or model) folder")
    p.add_argument("--batch_size", type=positive, default=8)
    p.add_argument("--max_new_tokens", type=positive, default=256)
    p.add_argument("--limit", type=positive, help="only the first N records")
    p.add_argument("--resume", action="store_true", help="keep the answers an interrupted --generate wrote")
    p.add_argument("--family", help="default: the run's, else from config.json")
    a = p.parse_args(argv)
    run = read_from_args(a, "evaluate")
    data, limit = (a.data, None) if a.data else eval_file(run.args)
    if not data:
        raise ArgumentError(f"--data is required ({run.path} records no eval file)")
    if not Path(data).is_file():
        raise ArgumentError(f"--data: {data} {'is a directory' if Path(data).is_dir() else 'not found'}; pass a "
                            ".json or .jsonl file of records")
    out = Path(a.out or run.path)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out: {out} is a file; pass a folder for eval_metrics.json")
    family = run.family(a.family)
    if a.generate:
        read_items(data, a.limit or limit)  # every record has a prompt to answer, checked before the model loads
    model, tokenizer, fmt = load_from_args(a, run)
    metrics = evaluate(model, tokenizer, fmt, family, data, out, run.args, a.generate, a.batch_size,
                       a.max_new_tokens, a.limit or limit, a.resume)
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v}")
    print(f"-> {out / METRICS}")


if __name__ == "__main__":
    main_entry(main)
