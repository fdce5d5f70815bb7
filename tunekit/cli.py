"""The one command line: `tunekit <command>` (console script) and `python -m tunekit <command>`; finetune.py is
`tunekit train`.  Every command ends the same way (tunekit/errors.py: library noise off, bad input as one `error:`
line with exit status 2, a torchrun process group left cleanly)."""
from __future__ import annotations

import importlib
import sys

from .errors import main_entry
from .noise import quiet_libraries

quiet_libraries()  # at import: finetune.py imports this module first, before transformers pulls the libraries in

# command -> (module whose main(argv) runs it, what it does)
COMMANDS = {
    "train": ("tunekit.train", "fine-tune from JSON argument files and flags (= python finetune.py)"),
    "merge": ("tunekit.merge", "merge a LoRA adapter into its unquantized base, checked, as a plain model"),
    "chat": ("tunekit.chat", "talk to a trained model in the prompt format it was trained with"),
    "generate": ("tunekit.generate", "answer prompts or a file of records (batched, resumable)"),
    "evaluate": ("tunekit.evaluate", "loss and perplexity on a file; with --generate ROUGE and BLEU"),
    "predict": ("tunekit.predict", "labels and probabilities from a trained classifier"),
    "export": ("tunekit.export", "a merged model as GGUF with an Ollama Modelfile"),
    "convert": ("tunekit.convert.__main__",
                "original ChatGLM2/3 and Qwen-1 folders to and from native layouts; a GGUF file to a folder"),
    "compare": ("tunekit.report", "one markdown table of finished runs"),
}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        width = max(map(len, COMMANDS))
        print("usage: tunekit <command> [arguments]   (tunekit <command> --help: its arguments)\n\ncommands:")
        for name, (_, what) in COMMANDS.items():
            print(f"  {name:<{width}}  {what}")
        sys.exit(0)
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; the commands are: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    sys.argv[0] = f"tunekit {argv[0]}"  # what each command's usage and errors call it
    main_entry(importlib.import_module(COMMANDS[argv[0]][0]).main, argv[1:])
