"""make dpo's closing table: the held-out win rate of the base model, the SFT run and the DPO run trained from it.

    python recipes/chat/win_rate.py DPO_RUN [--eval data/preference_eval.jsonl]

DPO_RUN is a DPO run folder trained with --init_adapter SFT_RUN (its finetune_args.json names both, and the base).
Each held-out record's question is asked, greedy, of the three models, each in its own chat template, exactly as
`tunekit generate` does (recipes/chat/before_after.py's answers).  An answer WINS when it has the style the pairs
prefer, exactly: it starts with "In short: ", is one sentence (one '.', '!' or '?' that ends a sentence: the last
character) with none of the rejected answers' filler, AND it states the fact: the record's "check" words (| between
alternatives) appear in it as whole words, any case.  Prints one row per question and the three rates; writes them to
DPO_RUN/win_rate.json.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from before_after import answers, short  # noqa: E402
from tunekit.errors import ArgumentError, Parser, main_entry  # noqa: E402

FILLER = re.compile(r"great question|wonderful thing|thanks so much|interesting question|i hope|let me know|"
                    r"feel free", re.I)
MODELS = ("base", "sft", "dpo")


def styled(text: str) -> bool:
    """"In short: " and then one sentence that ends the answer, with no filler (nor a second "In short")."""
    head, body = text[:10], text[10:].strip()
    ends = re.findall(r"[.!?](?=\s|$)", body)
    return (head == "In short: " and len(ends) == 1 and body[-1:] in (".", "!", "?")
            and not FILLER.search(body) and "in short" not in body.lower())


def right(text: str, check: str) -> bool:
    return re.search(rf"\b(?:{check})\b", text, re.I) is not None


def main(argv=None):
    from tunekit import runfolder
    from tunekit.formats import read_pair, read_records

    p = Parser(__doc__)
    p.add_argument("run", help="the DPO run folder (trained with --init_adapter SFT_RUN)")
    p.add_argument("--eval", default="data/preference_eval.jsonl", help="preference pairs, each with a \"check\"")
    p.add_argument("--max_new_tokens", type=int, default=48)
    a = p.parse_args(argv)
    run = Path(a.run)
    args = runfolder.read(run, "DPO_RUN").args  # finetune_args.json, {} for a folder training did not write
    if not args.get("init_adapter"):
        raise ArgumentError(f"{run}: not a finished run trained with --init_adapter (the SFT run)")
    folders = {"base": args["model_name_or_path"], "sft": args["init_adapter"], "dpo": str(run)}
    records = read_records(a.eval)
    prompts = [read_pair(r, f"{a.eval} record {i}")["prompt"] for i, r in enumerate(records)]
    checks = [r.get("check") or "" for r in records]
    if not all(checks):
        raise ArgumentError(f"{a.eval}: every record needs a \"check\" (the fact's words the answer must contain)")
    said = {m: answers(folders[m], prompts, a.max_new_tokens) for m in MODELS}
    rows = [{"prompt": prompt[-1]["content"], "check": check,
             **{m: {"answer": said[m][i], "style": styled(said[m][i]), "fact": right(said[m][i], check)}
                for m in MODELS}} for i, (prompt, check) in enumerate(zip(prompts, checks))]
    for r in rows:
        for m in MODELS:
            r[m]["win"] = r[m]["style"] and r[m]["fact"]
    print(f"\nbase: {folders['base']}\nsft:  {folders['sft']}\ndpo:  {folders['dpo']}\n(greedy, {a.max_new_tokens} "
          "new tokens at most; WIN: starts 'In short: ', one sentence, no filler, and states the checked fact)\n")
    print("| prompt | check | " + " | ".join(f"{m} | " for m in MODELS) + "\n|---|---|" + "---|---|" * len(MODELS))
    for r in rows:  # each answer's mark: WIN, or which half it has (style, fact) or neither (-)
        marks = {m: "WIN" if r[m]["win"] else "style" if r[m]["style"] else "fact" if r[m]["fact"] else "-"
                 for m in MODELS}
        print(f"| {short(r['prompt'], 36)} | {r['check']} | " +
              " | ".join(f"{short(r[m]['answer'], 36)} | {marks[m]}" for m in MODELS) + " |")
    n = len(rows)
    summary = {m: {k: sum(r[m][k] for r in rows) for k in ("win", "style", "fact")} for m in MODELS}
    print()
    for m in MODELS:
        s = summary[m]
        print(f"{m} win rate: {s['win']}/{n} ({100 * s['win'] / n:.0f}%); style {s['style']}/{n}, fact {s['fact']}/{n}")
    (run / "win_rate.json").write_text(json.dumps({"models": folders, "n": n, "summary": summary, "rows": rows},
                                                  indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main_entry(main)
