"""Export a merged model for serving: OUT/model.gguf, written by llama.cpp's own converter (llama.cpp, Ollama, LM
Studio load it), and OUT/Modelfile for Ollama, whose TEMPLATE and `stop` parameters reproduce the chat template and
end-of-turn token of training.  Both land in a temporary folder renamed into place: a failed conversion leaves nothing.

    tunekit export out/llama2-qlora-merged out/llama2-qlora-gguf [--outtype f16] [--family llama2]
    ollama create my-model -f out/llama2-qlora-gguf/Modelfile        # or: llama-server -m .../model.gguf --jinja

The converter (convert_hf_to_gguf.py with its conversion/ and gguf-py/) comes from `make install-gguf`, into
.venv/llama.cpp/; --converter or $LLAMA_CPP_CONVERTER name another (the script, or a llama.cpp checkout).  An adapter
folder is refused: merge it first (tunekit merge), and serve the merged folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import prompts, runfolder
from .atomic import atomic_folder
from .errors import ArgumentError, ConversionError, Parser, main_entry

# `make install-gguf` puts the converter into the environment that runs this (.venv/llama.cpp/ for the project's).
DEFAULT_CONVERTER = Path(sys.prefix) / "llama.cpp" / "convert_hf_to_gguf.py"
OUTTYPES = ("f16", "bf16", "q8_0", "f32")


def find_converter(given: str | None = None) -> Path:
    path = Path(given or os.environ.get("LLAMA_CPP_CONVERTER") or DEFAULT_CONVERTER)
    path = path / "convert_hf_to_gguf.py" if path.is_dir() else path
    if not path.is_file():
        raise ArgumentError(f"llama.cpp's GGUF converter is not at {path}: run `make install-gguf` (or pass "
                            "--converter /path/to/llama.cpp/convert_hf_to_gguf.py)")
    return path


def full_modules(run) -> list[str]:
    """The modules an adapter carries whole beside its LoRA factors (modules_to_save: embed_tokens, lm_head, heads)."""
    from safetensors import safe_open

    names = list(run.adapter.get("modules_to_save") or [])
    with safe_open(str(run.path / "adapter_model.safetensors"), "np") as f:
        keys = [k for k in f.keys() if "lora_" not in k]
    for key in keys:
        name = key.removeprefix("base_model.model.").rsplit(".", 1)[0].replace(".modules_to_save", "")
        if not any(name == n or name.endswith("." + n) for n in names):
            names.append(name)
    return names


def modelfile(tokenizer, fmt: prompts.ChatFormat, source: str) -> str:
    """The Ollama Modelfile of the run's prompt format (chat_format.json): its TEMPLATE, SYSTEM and stops; without a
    named template that renders as the chat template does, no TEMPLATE (Ollama then reads the GGUF's own template)."""
    found = fmt.ollama(tokenizer)
    what = "guanaco prompt ('### Human: ...### Assistant: ...')" if fmt.kind == "guanaco" else "chat template"
    lines = [f"# Written by tunekit export from {source}: the {what} and end-of-turn tokens it was trained with.",
             "FROM ./model.gguf"]
    stops = (*(found[2] if found else fmt.stop), *([tokenizer.eos_token] if tokenizer.eos_token else []))
    if found:
        lines.append(f'TEMPLATE """{found[0]}"""')
        if found[1]:
            lines.append(f'SYSTEM """{found[1]}"""')
    return "\n".join(lines + [f'PARAMETER stop "{s}"' for s in dict.fromkeys(stops)]) + "\n"


def convert(folder: Path, gguf: Path, converter: Path, outtype: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the converter's own gguf-py, not a pip gguf
    cmd = [sys.executable, str(converter), str(folder), "--outfile", str(gguf), "--outtype", outtype]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode == 0 and gguf.is_file():
        return
    log = done.stderr + done.stdout
    if "pre-tokenizer was not recognized" in log:
        raise ConversionError(f"llama.cpp's converter does not recognise the tokenizer of {folder}: it knows BPE "
                              "pre-tokenizers by a hash of real vocabularies, so a synthetic or retrained vocabulary "
                              "fails; export a real checkpoint's fine-tune (its tokenizer unchanged)")
    tail = "\n  ".join(log.strip().splitlines()[-12:])
    raise ConversionError(f"llama.cpp's converter failed on {folder} (exit {done.returncode}); nothing was written. "
                          f"Its last lines:\n  {tail}")


def export(model_dir: str, out_dir: str, outtype: str = "f16", family: str | None = None,
           converter: str | None = None, overwrite: bool = False) -> Path:
    from transformers import AutoTokenizer

    run, out = runfolder.read(model_dir), Path(out_dir)
    folder = run.path
    if run.adapter is not None:
        mods = full_modules(run)
        if mods:
            print(f"warning: {folder} carries whole modules beside its LoRA factors ({', '.join(mods[:4])}): vLLM "
                  "refuses such an adapter as a LoRA; serve the merged folder instead", file=sys.stderr)
        raise ArgumentError(f"{folder} is a LoRA adapter: merge it first (`tunekit merge --adapter {folder} "
                            f"--output {folder}-merged`, or `make <family>-merge ADAPTER={folder}`), then export that")
    run.task.require("export", folder)
    fam = run.family(family)
    if not fam.chat:
        raise ArgumentError(f"{folder} is not a chat model (family '{fam.name}'): only causal LMs are exported for "
                            "serving; classifiers are served by tunekit predict")
    script = find_converter(converter)
    if out.exists() and not overwrite:
        raise ArgumentError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{out} is a file; pass a folder for model.gguf and Modelfile")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    kind = run.fmt.kind
    if kind == "guanaco":
        print("warning: the run trained on guanaco text ('### Human: ...### Assistant: ...'), which the Modelfile's "
              "TEMPLATE renders; the GGUF's tokenizer.chat_template is the tokenizer's own, so llama-server needs the "
              "prompt built by hand", file=sys.stderr)
    elif not tokenizer.chat_template:
        raise ArgumentError(f"{folder}: the tokenizer has no chat template, so a server would not know the prompt")
    elif run.fmt.ollama(tokenizer) is None:
        print("warning: no named template (tunekit/chat_templates/) renders as this chat template does, so the "
              "Modelfile has no TEMPLATE: Ollama takes the prompt format from the GGUF's own chat template, "
              "llama-server with --jinja renders it exactly", file=sys.stderr)
    print(f"converting {folder} to GGUF ({outtype}) with {script} ...", flush=True)
    with atomic_folder(out) as tmp:
        convert(folder, tmp / "model.gguf", script, outtype)
        (tmp / "Modelfile").write_text(modelfile(tokenizer, run.fmt, str(folder)), encoding="utf-8")
    size = (out / "model.gguf").stat().st_size / 2**20
    server = f" or `llama-server -m {out}/model.gguf --jinja`" if kind == "chat_template" else ""
    print(f"wrote {out}/model.gguf ({size:.1f} MiB) and {out}/Modelfile (family {fam.name}, {kind}); serve with "
          f"`ollama create NAME -f {out}/Modelfile`{server}", flush=True)
    return out


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("model_dir", help="a merged model folder (recipes/merge.sh writes one), not an adapter")
    p.add_argument("out_dir", help="folder for model.gguf and Modelfile")
    p.add_argument("--outtype", choices=OUTTYPES, default="f16")
    p.add_argument("--family", help="default: the run's, else the one of config.json's model_type")
    p.add_argument("--converter", help="llama.cpp's convert_hf_to_gguf.py (default: $LLAMA_CPP_CONVERTER, then "
                                       "llama.cpp/ in this Python's environment, where `make install-gguf` puts it)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    export(a.model_dir, a.out_dir, a.outtype, a.family, a.converter, a.overwrite)


if __name__ == "__main__":
    main_entry(main)
