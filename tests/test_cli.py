"""One command line: `pip install -e .` gives a `tunekit` command listing every command, and each command ends bad
input the same way, in a fresh process: exactly one `error:` line naming what is wrong, exit status 2, no traceback,
no library noise, nothing written or removed."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from tunekit.cli import COMMANDS


def test_pip_install_e_gives_the_tunekit_command(tmp_path):
    """In a fresh venv (nothing of the project's environment): the package installs editable, and both the console
    script and `python -m tunekit` list every command.  The dependencies are requirements.txt's, installed by
    `make install` through the same pyproject.toml; here only the command line is checked, which imports none.  pip
    builds the package with setuptools from the package index, as on a user's fresh machine."""
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=300)
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", "-e",
                        str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for cmd in ([str(venv / "bin/tunekit"), "--help"], [str(venv / "bin/python"), "-m", "tunekit", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        listed = [line.split()[0] for line in r.stdout.split("commands:\n")[1].splitlines() if line.strip()]
        assert listed == list(COMMANDS), r.stdout
    r = subprocess.run([str(venv / "bin/tunekit"), "nonsense"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown command 'nonsense'"), r.stderr


def tree(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_llama2, random_qv_adapter):
    """A causal-LM adapter, a classifier-shaped adapter (never loaded: its errors come first), a folder that is no
    model, a directory where a file is expected, a file of records of the wrong kind."""
    root = tmp_path_factory.mktemp("cli")
    lm = root / "lm-adapter"
    shutil.copytree(random_qv_adapter, lm)
    cls = root / "cls-adapter"
    shutil.copytree(random_qv_adapter, cls)
    cfg = json.loads((cls / "adapter_config.json").read_text())
    (cls / "adapter_config.json").write_text(json.dumps({**cfg, "task_type": "SEQ_CLS"}))
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "notes.txt").write_text("hello")
    (root / "a-dir").mkdir()
    (root / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    (root / "texts.jsonl").write_text(json.dumps({"text": "good"}) + "\n" + "{not json\n")
    return root


# command, arguments ({root} is the folders fixture), what the one error line must say
CASES = [
    ("train", ["--data_path", "{root}/missing.json", "--model_name_or_path", "{root}/not-a-model"], r"missing\.json"),
    ("train", ["--not_a_flag", "1"], r"not_a_flag"),
    ("merge", ["--adapter", "{root}/not-a-model", "--output", "{root}/merged"], r"not-a-model is neither an adapter"),
    ("merge", ["--adapter", "{root}/lm-adapter"], r"required: --output"),
    ("chat", ["{root}/nowhere"], r"nowhere does not exist"),
    ("chat", ["{root}/cls-adapter"], r"cls-adapter is a seq_cls model: use `tunekit predict`"),
    ("generate", ["{root}/lm-adapter", "--input", "{root}/chat.jsonl", "--output", "{root}/a-dir"],
     r"--output: .*a-dir is a directory"),
    ("generate", ["{root}/lm-adapter", "--input", "{root}/chat.jsonl", "--output", "{root}/out.jsonl"],
     r"chat\.jsonl record 0"),
    ("generate", ["{root}/lm-adapter", "hello", "--batch_size", "0"], r"--batch_size.*>= 1"),
    ("chat", ["{root}/lm-adapter", "--top_p", "1.5"], r"--top_p: .*\(0, 1\]"),
    ("evaluate", ["{root}/lm-adapter", "--data", "{root}/a-dir"], r"--data: .*a-dir is a directory"),
    ("predict", ["{root}/nowhere", "{root}/texts.jsonl", "{root}/p.jsonl"], r"nowhere does not exist"),
    ("predict", ["{root}/not-a-model", "{root}/texts.jsonl", "{root}/p.jsonl"], r"neither an adapter"),
    ("predict", ["{root}/lm-adapter", "{root}/texts.jsonl", "{root}/p.jsonl"],
     r"lm-adapter is a causal_lm model: use `tunekit chat`"),
    ("predict", ["{root}/cls-adapter", "{root}/texts.jsonl", "{root}/p.jsonl"], r"texts\.jsonl line 2"),
    ("predict", ["{root}/cls-adapter", "{root}/chat.jsonl", "{root}/a-dir"], r"OUTPUT: .*a-dir is a directory"),
    ("export", ["{root}/lm-adapter", "{root}/gguf"], r"is a LoRA adapter: merge it first"),
    ("convert", ["{root}/nowhere"], r"nowhere does not exist"),
    ("compare", ["{root}/not-a-model"], r"no run_summary\.json"),
]


RUN_CASES = """
import contextlib, importlib, io, json, sys
sys.path.insert(0, {root!r})
from tunekit.cli import COMMANDS
from tunekit.errors import run_cli
results = []
for command, argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv[0] = "tunekit " + command
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(importlib.import_module(COMMANDS[command][0]).main, argv)
    results.append([code, out.getvalue() + err.getvalue()])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def outcomes(folders):
    """Every case run as `tunekit COMMAND ...` runs it (run_cli around the command's main), in one fresh process:
    {case index: (exit status, everything printed)}, and what was on disk before and after."""
    before = tree(folders)
    cases = [[c, [a.format(root=folders) for a in argv]] for c, argv, _ in CASES]
    r = subprocess.run([sys.executable, "-c", RUN_CASES.format(root=str(ROOT)), json.dumps(cases)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(enumerate(json.loads(r.stdout.strip().splitlines()[-1]))), before, tree(folders)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_command_ends_bad_input_with_one_error_line(outcomes, case):
    import re

    results, before, after = outcomes
    code, printed = results[case]
    lines = printed.strip().splitlines()
    assert code == 2, printed
    assert lines == [lines[-1]] and lines[-1].startswith("error: "), printed  # that line alone
    assert re.search(CASES[case][2], lines[-1]), lines[-1]
    assert before == after  # nothing written or removed by any case


def test_a_command_process_exits_2_with_its_one_line(folders):
    """The process itself, as make and shells see it."""
    r = subprocess.run([sys.executable, "-m", "tunekit", "predict", str(folders / "nowhere"), "x.jsonl", "y.jsonl"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: MODEL: "), r.stderr


def test_every_command_is_covered():
    assert {c for c, _, _ in CASES} == set(COMMANDS)
