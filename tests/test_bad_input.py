"""Bad input ends with one `error: ...` line naming the file/record/key and how to fix it, a non-zero exit status, no
traceback, and nothing on disk changed (issue 6).  tunekit.cli.run_cli is the command line's own entry point
(`python finetune.py` runs exactly `run_cli(finetune.main)`); every case also runs in a fresh process (the last test)."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import finetune
from conftest import ROOT, cpu_flags
from tunekit.errors import run_cli
from tunekit.errors import ArgumentError

GOOD = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]}


def tree(*roots):
    """Every path under the roots with its size, mtime and content hash: any change on disk shows."""
    import hashlib

    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p)] = (st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.fixture
def ws(tmp_path, tiny_llama2):
    """A workspace: a good data file, the tiny model, and an output folder that does not exist yet."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.jsonl").write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    return tmp_path


def refused(capsys, argv, pattern, *roots, runner=None):
    """Runs the command line; asserts a non-zero exit, an `error:` message matching pattern, no traceback, and no
    change under the roots."""
    before = tree(*roots)
    capsys.readouterr()
    code = (runner or (lambda a: run_cli(finetune.main, a)))(argv)
    out, err = capsys.readouterr()
    assert code not in (0, None), out + err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    assert re.search(pattern, err), err
    assert "Traceback" not in out + err
    assert tree(*roots) == before
    return err


def args(ws, model, data=None, **flags):
    data = data or str(ws / "data" / "good.jsonl")
    return ["--model_name_or_path", model, "--data_path", str(data), "--use_lora",
            *cpu_flags(ws / "out", max_steps=1, **flags)]


def write(path: Path, content) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- argument files

ARGUMENT_FILES = [
    ('{"lora_r": 8,}', r"bad\.json: not valid JSON \(line 1, column 14"),
    ('{"learnig_rate": 1e-4}', r"bad\.json: unknown key 'learnig_rate' \(did you mean 'learning_rate'\?\)"),
    ('{"lora_r": "eight"}', r"bad\.json: key 'lora_r' must be int, got 'eight'"),
    ('{"use_lora": 1}', r"bad\.json: key 'use_lora' must be bool, got 1"),
    ('[1, 2]', r"bad\.json: must hold one JSON object"),
]


@pytest.mark.parametrize("content,pattern", ARGUMENT_FILES)
def test_bad_argument_file(ws, tiny_llama2, capsys, content, pattern):
    bad = write(ws / "bad.json", content)
    refused(capsys, [bad, *args(ws, tiny_llama2)], pattern, ws, tiny_llama2)


def test_launcher_passes_the_exit_status_without_a_traceback(tmp_path):
    """recipes/launch.sh runs several processes under tunekit/torchrun.py: a worker that stops on bad input (here a
    stub that does what finetune's cli() does) gives its exit status 2, and its one error line stays the last line:
    no ChildFailedError traceback, no elastic agent's `failed (exitcode: 2)` line, no line of the launcher's own."""
    stub = tmp_path / "stub.py"
    stub.write_text("import sys\nprint('error: data.jsonl line 3: not valid UTF-8', file=sys.stderr)\nsys.exit(2)\n")
    r = subprocess.run([sys.executable, "-m", "tunekit.torchrun", "--nproc_per_node", "1", "--master_port", "29548",
                        str(stub)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == ["error: data.jsonl line 3: not valid UTF-8"], r.stderr[-3000:]
    assert r.stdout == ""


def test_unknown_flag_and_wrong_flag_type(ws, tiny_llama2, capsys):
    refused(capsys, [*args(ws, tiny_llama2), "--lora_rank", "8"], r"unknown argument --lora_rank", ws)
    refused(capsys, [*args(ws, tiny_llama2), "--lora_r", "eight"], r"argument --lora_r.*: invalid int value: 'eight'", ws)


# ---------------------------------------------------------------- data files

DATA_FILES = [
    ("empty.jsonl", "", r"empty\.jsonl: the file is empty"),
    ("empty.json", "  \n", r"empty\.json: the file is empty"),
    ("list.jsonl", json.dumps(GOOD) + "\n[1, 2]\n", r"list\.jsonl record 1: a record must be a JSON object, got list"),
    ("nomsg.jsonl", '{"messages": []}\n', r"nomsg\.jsonl record 0: 'messages' must be a non-empty list"),
    ("other.jsonl", '{"prompt": "hi", "answer": "ho"}\n',
     r"other\.jsonl record 0: unknown record format \(keys: \['answer', 'prompt'\]\)"),
    ("role.jsonl", json.dumps({"messages": [{"role": "robot", "content": "x"}, GOOD["messages"][1]]}) + "\n",
     r"role\.jsonl record 0: messages\[0\] has role='robot'; expected user, assistant or system"),
    ("noasst.jsonl", json.dumps({"messages": [GOOD["messages"][0]]}) + "\n",
     r"noasst\.jsonl record 0: no assistant turn"),
    ("latin1.jsonl", json.dumps(GOOD).encode() + b'\n{"text": "caf\xe9"}\n',
     r"latin1\.jsonl line 2: not valid UTF-8 \(byte \d+ is b'\\xe9'\); save the file as UTF-8"),
    ("broken.jsonl", json.dumps(GOOD) + '\n{"text": \n', r"broken\.jsonl line 2: not valid JSON"),
]


@pytest.mark.parametrize("name,content,pattern", DATA_FILES)
def test_bad_data_file(ws, tiny_llama2, capsys, name, content, pattern):
    path = write(ws / "data" / name, content)
    refused(capsys, args(ws, tiny_llama2, data=path), pattern, ws, tiny_llama2)


def test_missing_data_file(ws, tiny_llama2, capsys):
    refused(capsys, args(ws, tiny_llama2, data=ws / "nowhere.jsonl"), r"--data_path: file not found: .*nowhere\.jsonl",
            ws)


def test_every_sample_truncated_to_no_labels(ws, tiny_llama2, capsys):
    long_prompt = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    path = write(ws / "data" / "long.jsonl", json.dumps(long_prompt) + "\n")
    refused(capsys, args(ws, tiny_llama2, data=path, model_max_length=16),
            r"long\.jsonl: every sample lost its supervised tokens to truncation at --model_max_length 16; raise it",
            ws, tiny_llama2)


# ---------------------------------------------------------------- model folder, tokenizer, output folder

def test_missing_model_folder(ws, capsys):
    refused(capsys, args(ws, str(ws / "no-model")), r"--model_name_or_path: .*no-model does not exist", ws)


def test_model_folder_without_config(ws, capsys):
    (ws / "empty-model").mkdir()
    refused(capsys, args(ws, str(ws / "empty-model")), r"empty-model has no config\.json", ws)




def test_directory_as_data_and_hub_id_as_model(ws, tiny_llama2, capsys):
    refused(capsys, args(ws, tiny_llama2, data=ws / "data"), r"--data_path: .*data is a directory; pass a \.json or "
            r"\.jsonl file", ws)
    refused(capsys, args(ws, "meta-llama/Llama-2-7b-hf"), r"meta-llama/Llama-2-7b-hf is not a folder here; it looks "
            r"like a model hub id, and only local checkpoint folders are loaded", ws)


def test_output_folder_holding_a_finished_run(ws, tiny_llama2, capsys):
    out = ws / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"trained for a week")
    (out / "run_summary.json").write_text("{}")
    refused(capsys, args(ws, tiny_llama2), r"--output_dir: .*out holds a finished run \(run_summary\.json\); pass "
            r"--overwrite_output_dir to replace it", ws)


def test_overwrite_output_dir_replaces_a_finished_run(ws, tiny_llama2):
    """Asked explicitly, the run goes ahead; the old run's checkpoints are gone so the folder holds one run only."""
    out = ws / "out"
    (out / "checkpoint-500").mkdir(parents=True)
    (out / "run_summary.json").write_text('{"steps": 500}')
    trainer = finetune.main(args(ws, tiny_llama2) + ["--overwrite_output_dir"])
    assert trainer.state.global_step == 1
    assert not (out / "checkpoint-500").exists()
    assert json.loads((out / "run_summary.json").read_text())["steps"] == 1


# ---------------------------------------------------------------- quantization and DeepSpeed

def test_qlora_without_bitsandbytes(ws, tiny_llama2, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    refused(capsys, [*args(ws, tiny_llama2), "--q_lora"], r"--q_lora loads the model in 4 bits with bitsandbytes, "
            r"which cannot be imported \((ModuleNotFound|Import)Error.*pip install 'bitsandbytes", ws, tiny_llama2)


def test_library_older_than_the_tested_floor(ws, tiny_llama2, capsys, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.14.0" if name == "peft" else real(name))
    refused(capsys, args(ws, tiny_llama2), r"peft 0\.14\.0 is older than 0\.15\.1, which this project needs "
            r"\(missing-adapter-key .*pip install -r requirements\.txt", ws)


def test_zero3_with_4bit_and_a_different_quant_storage(ws, tiny_llama2, capsys, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")  # as under torchrun: the check comes before torch.distributed starts
    refused(capsys, [*args(ws, tiny_llama2), "--q_lora", "--bnb_4bit_quant_storage", "uint8", "--deepspeed",
                     str(ROOT / "ds_configs/zero3.json")],
            r"zero3\.json: ZeRO-3 shards the 4-bit weights only when they are stored in the model dtype: add "
            r"--bnb_4bit_quant_storage float32 \(now uint8\)", ws)


# ---------------------------------------------------------------- merge

def merge_cli(argv):
    from tunekit.merge import main

    return run_cli(main, argv)


@pytest.mark.parametrize("method", ["bitsandbytes", "gptq"])
def test_merge_onto_a_quantized_base(ws, tiny_llama2, random_qv_adapter, capsys, method):
    q = ws / f"base-{method}"
    shutil.copytree(tiny_llama2, q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": method, "bits": 4, "load_in_4bit": method == "bitsandbytes"}
    (q / "config.json").write_text(json.dumps(cfg))
    refused(capsys, ["--adapter", random_qv_adapter, "--base", str(q), "--output", str(ws / "merged")],
            rf"--base: .*base-{method} is quantized \({method}\); a LoRA adapter cannot be merged into 4-bit or GPTQ "
            r"weights\. Pass the original unquantized model with --base", ws, random_qv_adapter, runner=merge_cli)


def test_merge_adapter_onto_another_architecture(ws, tiny_qwen, random_qv_adapter, capsys):
    refused(capsys, ["--adapter", random_qv_adapter, "--base", tiny_qwen, "--output", str(ws / "merged")],
            r"llama-adapter: base_model\.model\.model\.layers\.0\.self_attn\.v_proj\.lora_B\.weight has shape \[64, 4\], "
            r"but 'model\.layers\.0\.self_attn\.v_proj' of the base .* has out_features=32: the adapter was trained on "
            r"another model", ws, random_qv_adapter, tiny_qwen, runner=merge_cli)


def test_merge_adapter_onto_a_model_without_its_modules(ws, tiny_llama2, random_qv_adapter, capsys):
    """A base whose layers are named differently (here: fewer layers) is refused by name."""
    small = ws / "one-layer"
    shutil.copytree(tiny_llama2, small)
    cfg = json.loads((small / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (small / "config.json").write_text(json.dumps(cfg))
    refused(capsys, ["--adapter", random_qv_adapter, "--base", str(small), "--output", str(ws / "merged")],
            r"adapts 'model\.layers\.1\.self_attn\.q_proj', which the base .*one-layer \(model_type 'llama'\) does "
            r"not have", ws, random_qv_adapter, runner=merge_cli)


def test_adapter_onto_an_already_wrapped_model(tiny_llama2, random_qv_adapter):
    """No command loads an adapter onto a model in training (resume goes through the Trainer), so this is the API
    merge uses: refused with the project error, and the wrapped model is left as it was."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.runfolder import load_adapter

    wrapped = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama2),
                             LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    before = {k: v.clone() for k, v in wrapped.state_dict().items()}
    for model in (wrapped, wrapped.base_model.model):
        with pytest.raises(ArgumentError, match="already carries LoRA layers .* load the adapter onto a freshly "
                                                "loaded base model"):
            load_adapter(model, random_qv_adapter)
    after = wrapped.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert list(wrapped.peft_config) == ["default"]


# ---------------------------------------------------------------- every case above, as the user sees it

DRIVER = """
import json, os, sys, tempfile
sys.path.insert(0, {root!r})


def captured(fn):
    # everything written to the process's stdout and stderr (file descriptors 1 and 2) while fn runs
    with tempfile.TemporaryFile() as out:
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1); os.dup2(out.fileno(), 2)
        try:
            code = fn()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        out.seek(0)
        return code, out.read().decode(errors="replace")


results = [["import finetune", *captured(lambda: __import__("finetune") and 0)]]
import finetune
from tunekit.errors import run_cli

for name, argv, env in json.load(open(sys.argv[1])):
    os.environ.update(env)
    results.append([name, *captured(lambda: run_cli(finetune.main, argv))])
    for key in env:
        del os.environ[key]
json.dump(results, open(sys.argv[2], "w"))
"""


def test_every_bad_input_is_one_error_line_in_a_fresh_process(ws, tiny_llama2, tmp_path_factory):
    """The cases above through a fresh interpreter, capturing file descriptors 1 and 2 (library warnings, C-level
    prints): importing finetune prints nothing, and each case prints exactly its one `error:` line."""
    cases = []  # (name, argv, env, pattern)
    for i, (content, pattern) in enumerate(ARGUMENT_FILES):
        cases.append((f"argument file {i}", [write(ws / f"bad{i}.json", content), *args(ws, tiny_llama2)], {},
                      pattern.replace("bad\\.json", f"bad{i}\\.json")))
    cases += [("unknown flag", [*args(ws, tiny_llama2), "--lora_rank", "8"], {}, r"unknown argument --lora_rank"),
              ("flag type", [*args(ws, tiny_llama2), "--lora_r", "eight"], {}, r"invalid int value: 'eight'")]
    for name, content, pattern in DATA_FILES:
        cases.append((name, args(ws, tiny_llama2, data=write(ws / "data" / name, content)), {}, pattern))
    long_prompt = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    long = write(ws / "data" / "long.jsonl", json.dumps(long_prompt) + "\n")
    (ws / "empty-model").mkdir()
    finished = ws / "finished"
    finished.mkdir()
    (finished / "run_summary.json").write_text("{}")
    cases += [
        ("all truncated", args(ws, tiny_llama2, data=long, model_max_length=16), {}, r"every sample lost its supervised"),
        ("missing data", args(ws, tiny_llama2, data=ws / "nowhere.jsonl"), {}, r"--data_path: file not found"),
        ("data directory", args(ws, tiny_llama2, data=ws / "data"), {}, r"is a directory"),
        ("missing model", args(ws, str(ws / "no-model")), {}, r"no-model does not exist"),
        ("hub id", args(ws, "meta-llama/Llama-2-7b-hf"), {}, r"looks like a model hub id"),
        ("no config", args(ws, str(ws / "empty-model")), {}, r"empty-model has no config\.json"),
        ("finished run", [*args(ws, tiny_llama2), "--output_dir", str(finished)], {}, r"holds a finished run"),
        ("zero3 4-bit", [*args(ws, tiny_llama2), "--q_lora", "--deepspeed", str(ROOT / "ds_configs/zero3.json")],
         {"LOCAL_RANK": "0"}, r"ZeRO-3 shards the 4-bit weights only when they are stored in the model dtype"),
    ]
    driver = tmp_path_factory.mktemp("driver")  # outside the workspace, which must not change
    spec, out = driver / "cases.json", driver / "results.json"
    spec.write_text(json.dumps([(name, argv, env) for name, argv, env, _ in cases]))
    before = tree(ws, tiny_llama2)
    r = subprocess.run([sys.executable, "-c", DRIVER.format(root=str(ROOT)), str(spec), str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results[0] == ["import finetune", 0, ""], results[0]
    for (name, code, text), (_, _, _, pattern) in zip(results[1:], cases):
        assert code == 2 and text.startswith("error: ") and text.count("\n") == 1, (name, text[-2000:])
        assert re.search(pattern, text), (name, text)
    assert len(results) == len(cases) + 1
    assert tree(ws, tiny_llama2) == before
