"""Safety (issue 6): no code from a model folder runs without --trust_remote_code; weights only as safetensors,
arguments as JSON, pickles loaded with weights_only=True; data parsed, never evaluated; the shell launchers and the
Makefile pass hostile paths through untouched and execute nothing from them."""
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import finetune
from tunekit.errors import run_cli
from conftest import ROOT, cpu_flags

GOOD = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]}
# A path component that would run commands if any script pasted it into a command line unquoted.
HOSTILE = "dir with spaces $(touch {m}) `touch {m}` ; touch {m} 'q\" $HOME"


def remote_code_folder(tmp_path, model_type="evil"):
    """A model folder whose config maps classes to its own modeling_*.py / configuration_*.py, each writing a marker
    file when imported."""
    folder = tmp_path / f"remote-{model_type}"
    folder.mkdir()
    marker = tmp_path / f"ran-{model_type}"
    side_effect = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
    (folder / "configuration_evil.py").write_text(side_effect + "from transformers import PretrainedConfig\n\n"
                                                  "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (folder / "modeling_evil.py").write_text(side_effect)
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type, "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}}))
    return folder, marker


def cli(tmp_path, model, *extra):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    return run_cli(finetune.main, ["--model_name_or_path", str(model), "--data_path", str(data), "--use_lora",
                                   *cpu_flags(tmp_path / "out", max_steps=1), *extra])


def test_remote_code_is_refused_without_the_flag(tmp_path, capsys):
    folder, marker = remote_code_folder(tmp_path)
    assert cli(tmp_path, folder) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder}/config.json: this checkpoint ships its own Python code "
                          "(configuration_evil.py, modeling_evil.py via auto_map)")
    assert "pass --trust_remote_code" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the fixture does run code when imported, so the absence of the marker means something
    runpy.run_path(str(folder / "modeling_evil.py"))
    assert marker.read_text() == "imported"


@pytest.mark.parametrize("model_type,converter", [("chatglm", "python -m tunekit.convert"),
                                                  ("qwen", "python -m tunekit.convert")])
def test_remote_code_checkpoints_point_at_the_converter(tmp_path, capsys, model_type, converter):
    folder, marker = remote_code_folder(tmp_path, model_type)
    assert cli(tmp_path, folder) == 2
    err = capsys.readouterr().err
    assert "--trust_remote_code" in err and f"convert the checkpoint once with `{converter} {folder}`" in err
    assert not marker.exists()


def test_tokenizer_auto_map_is_refused_too(tmp_path, tiny_llama2, capsys):
    folder = tmp_path / "tok-remote"
    shutil.copytree(tiny_llama2, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert cli(tmp_path, folder) == 2
    assert "tokenizer_config.json: this checkpoint ships its own Python code (tokenization_evil.py" in \
        capsys.readouterr().err


def test_merge_refuses_a_remote_code_base(tmp_path, capsys):
    from tunekit.merge import main

    folder, marker = remote_code_folder(tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(folder)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    from tunekit.errors import run_cli

    assert run_cli(main, ["--adapter", str(adapter), "--output", str(tmp_path / "merged")]) == 2
    assert "--trust_remote_code" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "merged").exists()


# ---------------------------------------------------------------- static checks over the package

SOURCES = sorted([*ROOT.glob("tunekit/**/*.py"), ROOT / "finetune.py"])
FIXTURE_BUILDERS = {"tunekit/tiny/chatglm2.py"}  # writes THUDM-style pickled shards on purpose, as a test input


def code_lines(path):
    for i, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.split("#")[0]
        if stripped.strip():
            yield i, stripped


def test_nothing_is_pickled_evaluated_or_loaded_unsafely():
    """Weights via save_pretrained (safetensors), arguments via JSON; torch.load only with weights_only=True; no
    eval/exec/pickle/yaml.load on anything read from disk; no AutoPeftModel (it loads tokenizers with remote code,
    pitfall #38); no state_dict monkey-patching (pitfall #5a)."""
    bad = []
    for path in SOURCES:
        for i, line in code_lines(path):
            where = f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
            if "torch.save(" in line and str(path.relative_to(ROOT)) not in FIXTURE_BUILDERS:
                bad.append(where)
            if "torch.load(" in line and "weights_only=True" not in line:
                bad.append(where)
            if re.search(r"(?<![\w.])(eval|exec)\(|pickle\.|yaml\.load\(|AutoPeftModel|\.state_dict = ", line):
                bad.append(where)
            if "save_safetensors" in line and "False" in line:
                bad.append(where)
    assert not bad, bad


# ---------------------------------------------------------------- launchers and Makefile

FAKE_PYTHON = """#!/usr/bin/env bash
# Records each invocation's argv, one argument per line, then a separator; as `-m tunekit.convert MODEL` it prints
# MODEL back, as the real one does for a folder that needs no conversion.
{ for a in "$@"; do printf '%s\\n' "$a"; done; echo ---; } >> "$ARGV_LOG"
if [ "$2" = tunekit.convert ]; then printf '%s\\n' "$3"; fi
"""


@pytest.fixture
def hostile(tmp_path, tiny_llama2):
    """MODEL, DATA and OUTPUT paths with spaces, quotes, `...`, $(...) and ; in them, and a fake python that records
    the argv it receives."""
    marker = "tunekit-PWNED"
    base = tmp_path / HOSTILE.format(m=marker)
    (base / "data").mkdir(parents=True)
    data = base / "data" / f"train $(touch {marker}).jsonl"
    data.write_text("\n".join(json.dumps(GOOD) for _ in range(4)) + "\n")
    model = base / "model"
    shutil.copytree(tiny_llama2, model)
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return {"base": base, "data": str(data), "model": str(model), "output": str(base / "out 'run'"),
            "marker": marker, "fake": str(fake), "log": tmp_path / "argv.log"}


def no_marker(h):
    """No injected `touch tunekit-PWNED` ran: not where the scripts run (the repository, recipes/), not beside the
    hostile folder, not inside it."""
    places = [ROOT, ROOT / "recipes", ROOT / "recipes" / "llama2", h["base"].parent, Path.cwd()]
    found = [p for d in places for p in d.glob(h["marker"])] + list(h["base"].rglob(h["marker"]))
    assert not found, found


def invocations(log: Path):
    """Each recorded argv, but the launcher's `python -c` probes (is there a GPU?), which take no paths."""
    argvs = [chunk.strip("\n").split("\n") for chunk in log.read_text().split("---\n") if chunk.strip()]
    return [a for a in argvs if a[0] != "-c"]


def test_train_sh_passes_hostile_paths_as_single_arguments(hostile):
    env = dict(os.environ, PYTHON=hostile["fake"], ARGV_LOG=str(hostile["log"]), MODEL=hostile["model"],
               DATA=hostile["data"], OUTPUT_DIR=hostile["output"], GPUS_PER_NODE="1", MASTER_PORT="29550")
    r = subprocess.run(["bash", "recipes/llama2/train.sh", "lora", "--run_name", f"x $(touch {hostile['marker']})"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    convert, argv = invocations(hostile["log"])
    assert convert == ["-m", "tunekit.convert", hostile["model"]]
    i = argv.index("finetune.py")
    assert i == 0  # one process on one node: finetune.py run by python itself, no torchrun
    assert argv[i + 1:] == ["recipes/llama2/lora.json", "--model_name_or_path", hostile["model"], "--output_dir",
                            hostile["output"], "--data_path", hostile["data"], "--run_name", f"x $(touch {hostile['marker']})"]
    no_marker(hostile)


def test_make_passes_hostile_paths_as_single_arguments(hostile):
    """make llama2-lora MODEL=... DATA=... OUTPUT=...: training, merge and the sample all get the paths verbatim."""
    r = subprocess.run(["make", "-s", "-o", "install", "-o", ".venv/.installed", "llama2-lora",
                        f"PYTHON={hostile['fake']}", f"MODEL={hostile['model']}", f"DATA={hostile['data']}",
                        f"OUTPUT={hostile['output']}"],
                       cwd=ROOT, env=dict(os.environ, ARGV_LOG=str(hostile["log"]), GPUS_PER_NODE="1",
                                          MASTER_PORT="29550"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    convert, train, merge, generate = invocations(hostile["log"])
    assert convert == ["-m", "tunekit.convert", hostile["model"]]
    i = train.index("finetune.py")
    assert train[i + 1:] == ["recipes/llama2/lora.json", "--model_name_or_path", hostile["model"], "--output_dir",
                             hostile["output"], "--data_path", hostile["data"]]
    assert merge[:2] == ["-m", "tunekit.merge"]
    assert merge[merge.index("--adapter") + 1] == hostile["output"]
    assert merge[merge.index("--output") + 1] == hostile["output"] + "-merged"
    assert generate[:5] == ["-m", "tunekit.generate", hostile["output"], "--sample_from", hostile["output"]]
    no_marker(hostile)


def test_make_runs_a_real_recipe_with_hostile_paths(hostile):
    """A real run: make llama2-full DATA=... OUTPUT=... trains the embedded tiny model (MODEL empty: the CPU
    settings of recipes/cpu-tiny.json apply; a real MODEL path is checked above) on DATA into OUTPUT."""
    env = dict(os.environ, GPUS_PER_NODE="1", OMP_NUM_THREADS="2", MASTER_PORT="29547")
    r = subprocess.run(["make", "-s", "-o", "install", "-o", ".venv/.installed", "llama2-full",
                        f"PYTHON={sys.executable}", "MODEL=", f"DATA={hostile['data']}", f"OUTPUT={hostile['output']}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + "\n".join(l for l in r.stderr.splitlines() if "rror" in l)
    out = Path(hostile["output"])
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["samples"] == 4 and summary["steps"] >= 1
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert json.loads((out / "finetune_args.json").read_text())["data_path"] == hostile["data"]
    no_marker(hostile)


def test_atomic_folders_and_files_honour_the_umask(tmp_path):
    """A merged, exported or cached folder gets mkdir's permissions, not mkdtemp's private 0700; a written file (predict's
    output) open()'s, not mkstemp's private 0600."""
    import os

    from tunekit.atomic import atomic_file, atomic_folder

    old = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
        with atomic_file(tmp_path / "out.jsonl") as f:
            f.write("{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o644


def test_an_adapter_that_never_trained_is_one_error_line(tiny_llama2, tmp_path, capsys):
    """One step at learning rate 0 (warm-up) leaves every lora_B zero: the run says so in one line, status 1."""
    import json

    from tunekit.errors import run_cli
    from tunekit.train import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    argv = ["recipes/cpu-tiny.json", "--model_name_or_path", tiny_llama2, "--data_path", str(data), "--output_dir",
            str(tmp_path / "o"), "--use_lora", "--max_steps", "1", "--warmup_steps", "1", "--eval_on_train", "false",
            "--eval_strategy", "no"]
    assert run_cli(main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()  # progress bars, then the one error line, no traceback
    assert [line for line in err if line.startswith("error: ")] == err[-1:] and "every lora_B is zero" in err[-1]
    assert not any("Traceback" in line for line in err)
