"""make sft's closing table: the base model and the fine-tuned one, greedy, on prompts the run never trained on.

    python recipes/chat/before_after.py RUN [--model FOLDER] [--heldout FILE] [--general FILE]

RUN is the training run folder (its finetune_args.json names the base); FOLDER is the fine-tuned model to ask (default
RUN-merged when it exists, else RUN itself).  Each record of the two files is a `messages` conversation whose last
user turn is asked and whose `check` string (case-sensitive) the answer must contain: the held-out identity questions
(data/identity_heldout.jsonl, none of them in the training file) and general questions whose answers must not get
worse (data/general_check.jsonl).  Both models answer in their own chat template, exactly as `tunekit generate` does
(tunekit.runfolder.load, tunekit.generate.answer).  Prints one row per question and the success rates; writes them to
RUN/before_after.json.
"""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's tunekit, installed or not
from tunekit.errors import ArgumentError, Parser, main_entry  # noqa: E402

WIDTH = 44  # characters of each answer shown in the table


def read_checks(path: str) -> list[tuple[list[dict], str]]:
    """(the conversation up to its last user turn, the string its answer must contain) per record."""
    from tunekit.formats import read_records
    from tunekit.prompts import split_record

    items = []
    for i, record in enumerate(read_records(path)):
        check = record.get("check")
        if not isinstance(check, str) or not check:
            raise ArgumentError(f"{path} record {i}: no \"check\" string (what the answer must contain)")
        conversation, _ = split_record(record, f"{path} record {i}")
        items.append((conversation, check))
    return items


def answers(folder: str, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy answers of the model in `folder`, in its own chat template (or the run's, for a run folder)."""
    from tunekit import runfolder
    from tunekit.generate import answer

    run = runfolder.read(folder)
    model, tokenizer = runfolder.load(run)
    try:
        return answer(model, tokenizer, run.fmt, conversations, max_new_tokens=max_new_tokens)
    finally:
        del model
        gc.collect()


def short(text: str, width: int = WIDTH) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= width else text[:width - 1] + "…"


def rate(rows: list[dict], key: str) -> str:
    passed = sum(r[key] for r in rows)
    return f"{passed}/{len(rows)} ({100 * passed / max(len(rows), 1):.0f}%)"


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("run", help="the training run folder (its finetune_args.json names the base model)")
    p.add_argument("--model", help="the fine-tuned model to ask (default: RUN-merged if it exists, else RUN)")
    p.add_argument("--heldout", default="data/identity_heldout.jsonl")
    p.add_argument("--general", default="data/general_check.jsonl")
    p.add_argument("--max_new_tokens", type=int, default=32)
    a = p.parse_args(argv)
    run = Path(a.run)
    args_file = run / "finetune_args.json"
    if not args_file.is_file():
        raise ArgumentError(f"{run}: no finetune_args.json; pass the output_dir of a finished run")
    base = json.loads(args_file.read_text())["model_name_or_path"]
    merged = run.with_name(run.name + "-merged")
    tuned = a.model or str(merged if (merged / "config.json").is_file() else run)
    items = [("held-out", c, check) for c, check in read_checks(a.heldout)]
    items += [("general", c, check) for c, check in read_checks(a.general)]
    conversations = [c for _, c, _ in items]
    before = answers(base, conversations, a.max_new_tokens)
    after = answers(tuned, conversations, a.max_new_tokens)
    rows = [{"set": kind, "prompt": c[-1]["content"], "check": check, "before": b, "after": f,
             "pass_before": check in b, "pass_after": check in f}
            for (kind, c, check), b, f in zip(items, before, after)]
    print(f"\nbefore: {base}\nafter:  {tuned}\n(greedy, {a.max_new_tokens} new tokens at most; a row passes when the "
          "answer contains the check string)\n")
    print("| set | prompt | check | before | | after | |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {short(r['prompt'], 40)} | {r['check']} | {short(r['before'])} | "
              f"{'pass' if r['pass_before'] else 'FAIL'} | {short(r['after'])} | {'pass' if r['pass_after'] else 'FAIL'} |")
    summary = {}
    for kind in ("held-out", "general"):
        part = [r for r in rows if r["set"] == kind]
        summary[kind] = {"n": len(part), "before": sum(r["pass_before"] for r in part),
                         "after": sum(r["pass_after"] for r in part)}
        print(f"\n{kind} success: {rate(part, 'pass_before')} before, {rate(part, 'pass_after')} after", end="")
    general = [r for r in rows if r["set"] == "general"]
    same = sum(r["before"] == r["after"] for r in general)
    summary["general"]["unchanged"] = same
    print(f"; {same}/{len(general)} general answers word for word the same\n")
    (run / "before_after.json").write_text(json.dumps({"base": base, "model": tuned, "summary": summary, "rows": rows},
                                                      indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main_entry(main)
