"""Generate with a trained model in the prompt format it was trained with (tunekit/prompts.py).

    tunekit generate MODEL "Give me three tips for better sleep."      # answers to prompts
    tunekit generate MODEL --input data/llama2_guanaco_eval.jsonl --output out/gen.jsonl
    tunekit generate MERGED --sample_from out/llama2-qlora              # a training record vs the model

MODEL is a merged or fully fine-tuned folder, or an adapter folder (its base, recorded in adapter_config.json, loaded
bare and the adapter put on it, as PEFT supports); --adapter DIR puts an adapter on MODEL instead.  A file of records
in any training format gives one JSON line per record: the conversation up to its last answer ("messages", the last
user turn as "prompt"), that answer ("reference") and the model's ("output").  Greedy by default, batched with left
padding (the same answers as one by one), and resumable: a rerun keeps the lines already written and goes on.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch

from . import prompts, runfolder
from .errors import ArgumentError, Parser, main_entry
from .formats import read_records


BASE_IN_4BIT = {"auto": None, "yes": True, "no": False}


def add_model_arguments(p) -> None:
    """The model to load, as chat, generate and evaluate take it (see load_from_args)."""
    p.add_argument("model", help="an adapter folder written by training, a merged or a fully fine-tuned folder")
    p.add_argument("--adapter", help="an adapter folder to put on MODEL")
    p.add_argument("--base_in_4bit", choices=tuple(BASE_IN_4BIT), default="auto",
                   help="the adapter's base in 4 bits; auto: as it was trained (Q-LoRA: the run's NF4/FP4 settings)")


def read_from_args(a, command: str):
    """The run folder the arguments name (the adapter, or MODEL), checked before anything loads."""
    if a.adapter:
        return runfolder.read_for(command, a.adapter, "--adapter", base=a.model)
    return runfolder.read_for(command, a.model)


def load_from_args(a, run):
    """(model in eval mode, tokenizer, ChatFormat): the run's model as trained unless --base_in_4bit says otherwise."""
    model, tokenizer = runfolder.load(run, base=a.model if a.adapter else None, quantized=BASE_IN_4BIT[a.base_in_4bit])
    return model, tokenizer, run.fmt


def generation_kwargs(model, tokenizer, fmt, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0,
                      repetition_penalty=1.0) -> dict:
    """temperature 0 is greedy; the end-of-turn tokens of the model, its tokenizer and training stop an answer."""
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    for token in (tokenizer.eos_token, *fmt.stop):  # the end-of-turn tokens training ended answers with
        if token and (token_id := tokenizer.convert_tokens_to_ids(token)) not in eos:
            eos.append(token_id)
    kw = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
              repetition_penalty=repetition_penalty, use_cache=True)
    if fmt.stop_strings():
        kw.update(stop_strings=fmt.stop_strings(), tokenizer=tokenizer)
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


@torch.no_grad()
def answer(model, tokenizer, fmt, conversations: list[list[dict]], streamer=None, **options) -> list[str]:
    """One answer per conversation (each ends with a user turn), generated as one left-padded batch."""
    tok = copy.copy(tokenizer)
    tok.padding_side = "left"  # training pads on the right; a batch of prompts must end where the answer starts
    texts = [fmt.render(c, tokenizer) for c in conversations]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(**batch, streamer=streamer, **generation_kwargs(model, tokenizer, fmt, **options))
    return [fmt.clean(tokenizer.decode(o[batch["input_ids"].shape[1]:], skip_special_tokens=True)) for o in out]


def rows_done(path: Path, n_items: int) -> int:
    """Lines already written by an earlier (perhaps killed) run; a half-written last line is cut off."""
    if not path.exists():
        return 0
    good, n = 0, 0
    with open(path, "rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n") or n >= n_items or not isinstance(row, dict) or row.get("index") != n:
                break
            good += len(line)
            n += 1
    os.truncate(path, good)
    return n


def read_items(path: str, limit: int | None = None) -> list[tuple[list[dict], str]]:
    """Every record of a file as (the conversation up to its last answer, that answer), each checked."""
    records = read_records(path)[:limit]
    return [prompts.split_record(r, f"{path} record {i}") for i, r in enumerate(records)]


def check_output_file(path: str, flag: str) -> None:
    """An output file that can be written, checked before any model loads."""
    out = Path(path)
    if out.is_dir():
        raise ArgumentError(f"{flag}: {path} is a directory; pass a file name (e.g. {out / 'out.jsonl'})")
    if out.parent.exists() and not out.parent.is_dir():
        raise ArgumentError(f"{flag}: {out.parent} is not a directory")


def bounded(kind, low, high=None, low_open=False, what=""):
    """An argparse type: a number of `kind` from low (excluded when low_open) to high; `what` says it in words."""
    def parse(value: str):
        try:
            n = kind(value)
        except ValueError:
            n = None
        if n is None or n < low or (low_open and n == low) or (high is not None and n > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return n
    return parse


positive = bounded(int, 1, what="a whole number >= 1")
probability = bounded(float, 0, 1, low_open=True, what="a number in (0, 1]")
temperature = bounded(float, 0, what="0 (greedy) or a positive number")


def generate_file(model, tokenizer, fmt, items, output_path: str, batch_size: int = 8, **options) -> int:
    """Writes one line per (conversation, reference) item to output_path (resuming); returns the number of lines."""
    from tqdm.auto import tqdm

    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = rows_done(out, len(items))
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(items), initial=start, desc="generating") as bar:
        for lo in range(start, len(items), batch_size):
            chunk = items[lo:lo + batch_size]
            texts = answer(model, tokenizer, fmt, [conv for conv, _ in chunk], **options)
            for i, ((conv, ref), text) in enumerate(zip(chunk, texts), lo):
                row = {"index": i, "prompt": conv[-1]["content"], "reference": ref, "output": text}
                if len(conv) > 1:
                    row["messages"] = conv
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a killed run loses at most the batch in flight
            bar.update(len(chunk))
    return len(items)


def sample_from_run(model, tokenizer, fmt, run_dir: str, **options) -> bool:
    """Prints the run's first training record's prompt, the trained answer and the model's; True if they match."""
    args = runfolder.read(run_dir, "--sample_from").args
    if not args.get("data_path"):
        raise ArgumentError(f"--sample_from: {run_dir} has no finetune_args.json naming its training data")
    conv, ref = prompts.split_record(read_records(args["data_path"])[0], f"{args['data_path']} record 0")
    got = answer(model, tokenizer, fmt, [conv], **options)[0]
    same = " ".join(got.split()) == " ".join(ref.split())
    verdict = "the model gives the trained answer" if same else "differs from the trained answer"
    print(f">>> {conv[-1]['content']}\n--- trained answer (record 0 of {args['data_path']}):\n{ref}\n"
          f"--- model:\n{got}\n--- {verdict}")
    return same


def main(argv=None):
    p = Parser(__doc__)
    add_model_arguments(p)
    p.add_argument("prompts", nargs="*", help="prompts to answer (one user turn each)")
    p.add_argument("--input", help="records (any training format) to answer")
    p.add_argument("--output", help="with --input: the JSONL to write (resumed if it exists)")
    p.add_argument("--sample_from", metavar="RUN_DIR", help="answer the first training record of this run")
    p.add_argument("--batch_size", type=positive, default=8)
    p.add_argument("--limit", type=positive, help="only the first N records")
    p.add_argument("--max_new_tokens", type=positive, default=256)
    p.add_argument("--temperature", type=temperature, default=0.0, help="0: greedy")
    p.add_argument("--top_p", type=probability, default=1.0)
    a = p.parse_intermixed_args(argv)
    if bool(a.input) != bool(a.output):
        p.error("--input and --output go together")
    if not (a.prompts or a.input or a.sample_from):
        p.error("give prompts, --input/--output or --sample_from")
    run = read_from_args(a, "generate")
    if a.input:
        check_output_file(a.output, "--output")
        items = read_items(a.input, a.limit)  # every record checked before the model loads
    options = dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p)
    model, tokenizer, fmt = load_from_args(a, run)
    if a.sample_from:
        sample_from_run(model, tokenizer, fmt, a.sample_from, **options)
    if a.prompts:
        conversations = [[{"role": "user", "content": q}] for q in a.prompts]
        for prompt, text in zip(a.prompts, answer(model, tokenizer, fmt, conversations, **options)):
            print(f">>> {prompt}\n{text}\n")
    if a.input:
        n = generate_file(model, tokenizer, fmt, items, a.output, a.batch_size, **options)
        print(f"{n} generations -> {a.output}")


if __name__ == "__main__":
    main_entry(main)
