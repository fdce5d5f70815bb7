"""Talk to a trained model, in the prompt format it was trained with, the answer streamed as it is generated.

    tunekit chat out/qwen-qlora                  # an adapter folder (Q-LoRA: on its NF4 base, as trained)
    tunekit chat out/qwen-qlora-merged --system "You are terse." --temperature 0.7
    make qwen-chat    # the recipe's last output

/reset forgets the conversation, /exit (or end of input) leaves.  The history is rendered whole each turn through
the same template as training (tunekit/prompts.py), so turn two sees turn one exactly as training data showed it.
"""
from __future__ import annotations

import sys

from transformers.generation.streamers import BaseStreamer

from .errors import Parser, main_entry
from .generate import add_model_arguments, answer, load_from_args, positive, probability, read_from_args, temperature


class Streamer(BaseStreamer):
    """Writes the answer as tokens arrive; text that may be the start of a stop string ("### Human:") is held back
    until it is clear, so a stop string is never shown."""

    def __init__(self, tokenizer, fmt, out):
        self.tokenizer, self.fmt, self.out = tokenizer, fmt, out
        self.ids, self.shown, self.prompt_seen = [], 0, False

    def put(self, value):
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        self.ids += value.flatten().tolist()
        self._write(final=False)

    def end(self):
        self._write(final=True)
        self.out.write("\n")
        self.out.flush()

    def _write(self, final: bool):
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        if final:
            text = self.fmt.clean(text)
        elif text.endswith("\ufffd"):  # half of a multi-byte character
            return
        else:
            hold = max((k for stop in self.fmt.stop_strings() for k in range(1, len(stop) + 1)
                        if text.endswith(stop[:k])), default=0)
            text = text[:len(text) - hold]
        if len(text) > self.shown:
            self.out.write(text[self.shown:])
            self.out.flush()
            self.shown = len(text)


def chat(model, tokenizer, fmt, lines, out=sys.stdout, system: str | None = None, prompt: str = ">>> ",
         **options) -> list[dict]:
    """The loop: one user turn per input line; returns the history at the end."""
    history = [{"role": "system", "content": system}] if system else []
    start = list(history)
    for line in lines:
        line = line.strip()
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = list(start)
            out.write("(history cleared)\n")
        elif line:
            history.append({"role": "user", "content": line})
            reply = answer(model, tokenizer, fmt, [history], Streamer(tokenizer, fmt, out), **options)[0]
            history.append({"role": "assistant", "content": reply})
        out.write(prompt)
        out.flush()
    return history


def input_lines():
    while True:
        try:
            yield input()
        except EOFError:
            return


def main(argv=None):
    p = Parser(__doc__)
    add_model_arguments(p)
    p.add_argument("--system", help="a system prompt (families whose template has a system turn)")
    p.add_argument("--max_new_tokens", type=positive, default=512)
    p.add_argument("--temperature", type=temperature, default=0.7, help="0: greedy")
    p.add_argument("--top_p", type=probability, default=0.9)
    p.add_argument("--top_k", type=int, default=50, help="0: no limit")
    p.add_argument("--repetition_penalty", type=temperature, default=1.0, help="1: none")
    a = p.parse_args(argv)
    model, tokenizer, fmt = load_from_args(a, read_from_args(a, "chat"))
    print(f"chatting with {a.model} ({fmt.kind} format); /reset clears the history, /exit leaves", flush=True)
    sys.stdout.write(">>> ")
    sys.stdout.flush()
    chat(model, tokenizer, fmt, input_lines(), sys.stdout, a.system, max_new_tokens=a.max_new_tokens,
         temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, repetition_penalty=a.repetition_penalty)


if __name__ == "__main__":
    main_entry(main)
