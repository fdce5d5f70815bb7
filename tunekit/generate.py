"""Generate with a trained model in the prompt format it was trained with (tunekit/prompts.py).

    python -m tunekit.generate MODEL "Give me three tips for better sleep."      # answers to prompts
    python -m tunekit.generate MODEL --input data/llama2_guanaco_eval.jsonl --output out/gen.jsonl
    python -m tunekit.generate MERGED --sample_from out/llama2-qlora              # a training record vs the model

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
import sys
from pathlib import Path

import torch

from . import prompts
from .errors import ArgumentError, DataError
from .formats import read_records


def run_settings(folder) -> dict:
    """The resolved arguments of the run that wrote `folder` (finetune_args.json), or {} for a folder from elsewhere."""
    path = Path(folder) / "finetune_args.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def trained_in_4bit(adapter: str | None) -> bool:
    """An adapter trained by Q-LoRA on a bitsandbytes 4-bit base (a GPTQ base is quantized by its own config)."""
    args = run_settings(adapter) if adapter else {}
    return bool(args.get("q_lora")) and args.get("bnb_4bit_quant_type") in ("nf4", "fp4")


BASE_IN_4BIT = {"auto": None, "yes": True, "no": False}


def add_model_arguments(p) -> None:
    """The model to load, as chat, generate and evaluate take it (see load)."""
    p.add_argument("model", help="an adapter folder written by finetune.py, a merged or a fully fine-tuned folder")
    p.add_argument("--adapter", help="an adapter folder to put on MODEL")
    p.add_argument("--base_in_4bit", choices=tuple(BASE_IN_4BIT), default="auto",
                   help="the adapter's base in NF4; auto: as it was trained (Q-LoRA adapters)")


def load_from_args(a):
    return load(a.model, a.adapter, BASE_IN_4BIT[a.base_in_4bit])


def load(model_dir: str, adapter: str | None = None, load_in_4bit: bool | None = None):
    """(model in eval mode, tokenizer, ChatFormat) for generation.  load_in_4bit None: as the adapter was trained
    (an NF4 base for a Q-LoRA adapter: the model that was trained, not its merge into the unquantized base)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from .merge import load_adapter
    from .model import keep_portable_4bit

    folder = Path(model_dir)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ArgumentError(f"{folder}: not a model or adapter folder (no config.json or adapter_config.json)")
    base = str(folder)
    if adapter is None and (folder / "adapter_config.json").is_file():
        adapter = str(folder)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        if cfg.get("task_type") not in (None, "CAUSAL_LM"):
            raise ArgumentError(f"{folder} is a {cfg['task_type']} classifier: use python -m tunekit.predict")
        base = cfg.get("base_model_name_or_path") or ""
        if not (Path(base) / "config.json").is_file():
            raise ArgumentError(f"{folder}: its base model {base!r} is not a folder here; pass the base as MODEL "
                                f"and this folder as --adapter")
    source = Path(adapter or folder)  # the tokenizer and format trained with the adapter
    if load_in_4bit is None:
        load_in_4bit = trained_in_4bit(adapter)
    tokenizer = AutoTokenizer.from_pretrained(source)
    cuda = torch.cuda.is_available()
    extra = {}
    if load_in_4bit:  # as Q-LoRA trained it: NF4, double quantization, computing in the dtype it runs in
        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 device_map={"": "cuda" if cuda else "cpu"}, **extra)
    keep_portable_4bit(model)
    if adapter:
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))  # as training did; the adapter carries the new rows
        model = load_adapter(model, adapter)
    return model.eval(), tokenizer, prompts.load(source)


def generation_kwargs(model, tokenizer, fmt, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0,
                      repetition_penalty=1.0) -> dict:
    """temperature 0 is greedy; the end-of-turn tokens of the model and its tokenizer both stop an answer."""
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
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


def rows_done(path: Path, records: list) -> int:
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
            if not line.endswith(b"\n") or n >= len(records) or row.get("index") != n:
                break
            good += len(line)
            n += 1
    os.truncate(path, good)
    return n


def generate_file(model, tokenizer, fmt, input_path: str, output_path: str, batch_size: int = 8,
                  limit: int | None = None, **options) -> int:
    """Writes one line per record of input_path to output_path (resuming); returns the number of lines."""
    from tqdm.auto import tqdm

    records = read_records(input_path)[:limit]
    items = [prompts.split_record(r, f"{input_path} record {i}") for i, r in enumerate(records)]
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = rows_done(out, records)
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(items), initial=start, desc="generating") as bar:
        for lo in range(start, len(items), batch_size):
            chunk = items[lo:lo + batch_size]
            for i, (conv, ref), text in zip(range(lo, lo + len(chunk)), chunk,
                                            answer(model, tokenizer, fmt, [c for c, _ in chunk], **options)):
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
    args = run_settings(run_dir)
    conv, ref = prompts.split_record(read_records(args["data_path"])[0], f"{args['data_path']} record 0")
    got = answer(model, tokenizer, fmt, [conv], **options)[0]
    same = " ".join(got.split()) == " ".join(ref.split())
    print(f">>> {conv[-1]['content']}\n--- trained answer (record 0 of {args['data_path']}):\n{ref}\n"
          f"--- model:\n{got}\n--- {'the model gives the trained answer' if same else 'differs from the trained answer'}")
    return same


def main(argv=None):
    from .noise import quiet_libraries

    quiet_libraries()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("prompts", nargs="*", help="prompts to answer (one user turn each)")
    p.add_argument("--input", help="records (any training format) to answer")
    p.add_argument("--output", help="with --input: the JSONL to write (resumed if it exists)")
    p.add_argument("--sample_from", metavar="RUN_DIR", help="answer the first training record of this run")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--limit", type=int, help="only the first N records")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top_p", type=float, default=1.0)
    a = p.parse_intermixed_args(argv)
    if bool(a.input) != bool(a.output):
        p.error("--input and --output go together")
    if not (a.prompts or a.input or a.sample_from):
        p.error("give prompts, --input/--output or --sample_from")
    options = dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p)
    try:
        model, tokenizer, fmt = load_from_args(a)
        if a.sample_from:
            sample_from_run(model, tokenizer, fmt, a.sample_from, **options)
        if a.prompts:
            for prompt, text in zip(a.prompts, answer(model, tokenizer, fmt, [[{"role": "user", "content": q}]
                                                                               for q in a.prompts], **options)):
                print(f">>> {prompt}\n{text}\n")
        if a.input:
            n = generate_file(model, tokenizer, fmt, a.input, a.output, a.batch_size, a.limit, **options)
            print(f"{n} generations -> {a.output}")
    except (ArgumentError, DataError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
