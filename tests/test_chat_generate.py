"""After training: chat (scripted stdin, streamed, history in the family's template, /reset), generate over a file
(batched == one by one, a killed run resumed == an uninterrupted one), evaluate (perplexity == exp of the token-mean
loss of a plain forward pass) and --eval_generation at the end of training."""
import io
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import DATA, ROOT, cpu_flags
from tunekit.prompts import ChatFormat


@pytest.fixture(scope="module")
def qwen(tiny_qwen):
    from conftest import load_for_chat

    return load_for_chat(tiny_qwen)


def spy_prompts(model, tok):
    """Records the text of every prompt model.generate is given."""
    seen, real = [], model.generate

    def generate(**kw):
        seen.append(tok.decode(kw["input_ids"][0]))
        return real(**kw)
    model.generate = generate
    return seen, real


def test_chat_two_turns_in_the_template_streamed_and_reset(qwen):
    from tunekit.chat import chat

    model, tok, fmt = qwen
    seen, real = spy_prompts(model, tok)

    class Out(io.StringIO):
        writes = 0

        def write(self, s):
            Out.writes += 1
            return super().write(s)
    out = Out()
    try:
        history = chat(model, tok, fmt, ["What is 2+2?", "And 3+3?", "/reset", "Hello", "/exit", "never read"], out,
                       system="Be brief.", max_new_tokens=8, temperature=0)
    finally:
        model.generate = real
    assert len(seen) == 3
    # the second prompt holds the whole first turn exactly as the ChatML template renders it
    turn1 = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
                                    tokenize=False, add_generation_prompt=True)
    assert seen[0] == turn1
    assert seen[1].startswith(turn1) and "<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n" in seen[1]
    # after /reset only the system turn is left
    assert seen[2] == tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Hello"}], tokenize=False,
                                              add_generation_prompt=True)
    assert [m["content"] for m in history if m["role"] == "user"] == ["Hello"]
    assert "(history cleared)" in out.getvalue()
    assert Out.writes > 3 * 3  # the answers arrived in pieces, not once per turn


def test_chat_guanaco_history_and_stop_string_never_shown(tiny_llama2):
    """A guanaco-trained run renders turns as its text records did; '### Human:' ends an answer and is held back."""
    from transformers import AutoTokenizer

    from tunekit.chat import Streamer

    tok = AutoTokenizer.from_pretrained(tiny_llama2)
    fmt = ChatFormat("guanaco", "llama2", True)
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"}]
    assert fmt.render(conv, tok) == "<s>### Human: Hi### Assistant: Hello!### Human: Bye### Assistant:"
    out = io.StringIO()
    s = Streamer(tok, fmt, out)
    s.put(torch.tensor([[1, 2]]))  # the prompt: not shown
    shown = []
    for piece in tok(" See you soon.### Human:", add_special_tokens=False)["input_ids"]:
        s.put(torch.tensor([piece]))
        shown.append(out.getvalue())
    s.end()
    assert all("#" not in x for x in shown)  # "###..." was held back while it could be the stop string
    assert out.getvalue() == "See you soon.\n"  # generation stops after the stop string; none of it shows


def test_chat_command_line_reads_stdin(tiny_qwen):
    r = subprocess.run([sys.executable, "-m", "tunekit.chat", tiny_qwen, "--temperature", "0", "--max_new_tokens", "4"],
                       input="Hi\n/reset\n/exit\n", cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "chatting with" in r.stdout and "(history cleared)" in r.stdout and r.stdout.count(">>> ") == 3


def records_file(tmp_path, n=10):
    lines = (DATA / "qwen_conversations_eval.json").read_text(encoding="utf-8")
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(json.loads(lines)[:n], ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_generate_batched_equals_one_by_one(qwen, tmp_path):
    from tunekit.generate import generate_file, read_items

    model, tok, fmt = qwen
    data = records_file(tmp_path, 6)
    generate_file(model, tok, fmt, read_items(data), str(tmp_path / "b4.jsonl"), batch_size=4, max_new_tokens=12)
    generate_file(model, tok, fmt, read_items(data), str(tmp_path / "b1.jsonl"), batch_size=1, max_new_tokens=12)
    a, b = (tmp_path / "b4.jsonl").read_text(), (tmp_path / "b1.jsonl").read_text()
    rows = [json.loads(x) for x in a.splitlines()]
    assert len(rows) == 6 and all(r["reference"] and "output" in r for r in rows)
    assert len({len(r["prompt"]) for r in rows}) > 1  # prompts of different lengths: left padding really happened
    assert a == b


def test_generate_killed_and_resumed_equals_uninterrupted(tiny_qwen, tmp_path):
    data = records_file(tmp_path, 10)
    cmd = [sys.executable, "-m", "tunekit.generate", tiny_qwen, "--input", data, "--batch_size", "2",
           "--max_new_tokens", "24"]
    full = tmp_path / "full.jsonl"
    subprocess.run(cmd + ["--output", str(full)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    part = tmp_path / "part.jsonl"
    p = subprocess.Popen(cmd + ["--output", str(part)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not part.exists() or part.read_text().count("\n") < 2):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    written = part.read_text().count("\n")
    assert 2 <= written < 10, written  # killed part-way
    with open(part, "a") as f:
        f.write('{"index": ')  # and as if the kill had landed in the middle of a line
    subprocess.run(cmd + ["--output", str(part)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    assert part.read_text() == full.read_text()


def test_perplexity_is_exp_of_the_token_mean_loss_of_a_forward_pass(qwen, tmp_path):
    from tunekit.data import build_dataset
    from tunekit.evaluate import evaluate
    from tunekit.families import FAMILIES

    model, tok, fmt = qwen
    data = records_file(tmp_path, 5)
    m = evaluate(model, tok, fmt, FAMILIES["qwen"], data, tmp_path, {"model_max_length": 512})
    total, n = 0.0, 0
    with torch.no_grad():
        for ex in build_dataset(data, tok, FAMILIES["qwen"], 512):  # one sample at a time, HF's own loss
            labels = torch.tensor([ex["labels"]])
            k = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=torch.tensor([ex["input_ids"]]), labels=labels).loss.item() * k
            n += k
    assert m["tokens"] == n and m["samples"] == 5
    assert m["loss"] == pytest.approx(total / n, abs=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(total / n), rel=1e-4)
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["perplexity"] == m["perplexity"]


def test_eval_generation_after_training_writes_metrics_and_links_them(tiny_qwen, tmp_path):
    import finetune
    from tunekit.errors import run_cli

    out = tmp_path / "run"
    data = str(DATA / "qwen_conversations.json")
    flags = cpu_flags(out, max_samples=4, eval_on_train=True, num_train_epochs=1, eval_max_new_tokens=8)
    run_cli(finetune.main, ["--model_name_or_path", tiny_qwen, "--data_path", data, "--use_lora",
                            "--eval_generation", *flags])
    metrics = json.loads((out / "eval_metrics.json").read_text())
    rows = [json.loads(x) for x in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and metrics["samples"] == 4
    for key in ("rouge-1", "rouge-2", "rouge-l", "bleu-4", "perplexity"):
        assert 0 <= metrics[key] < float("inf")
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["evaluation"]["metrics"] == "eval_metrics.json"
    assert summary["evaluation"]["predictions"] == "eval_predictions.jsonl"
    assert summary["evaluation"]["loss"] == pytest.approx(summary["final_eval_loss"], rel=0.05)
    assert json.loads((out / "chat_format.json").read_text())["kind"] == "chat_template"


def test_eval_generation_needs_eval_data():
    from tunekit.arguments import parse_args
    from tunekit.errors import ArgumentError

    with pytest.raises(ArgumentError, match="--eval_generation"):
        parse_args(["--model_name_or_path", "m", "--data_path", "x.jsonl", "--eval_generation", "--output_dir", "o"])
