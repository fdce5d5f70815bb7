"""What a user sees: no line from a library that the user cannot act on (`make qwen-qlora`'s and `make bert-cls`'s
whole screens are checked in test_make_targets.py with noise() below); bad input through make ends in one `error:`
line, the last before make's own; one process runs without torchrun."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

# What library noise looked like on this screen (each seen before tunekit/noise.py and recipes/launch.sh dealt with
# it): warnings of any kind, DeepSpeed's CPU notice, transformers' load table, DDP's and accelerate's advice for a
# one-process run, torchrun's failure lines, torch's own log format (W/E + date), torchao's kernel loading, and
# gptqmodel's banner.
NOISE = re.compile(r"warn|Setting accelerator|LOAD REPORT|find_unused_parameters|OMP_NUM_THREADS|torchrun"
                   r"|^[WE]\d{4} \d\d:\d\d|Failed to load|GPT-QModel|^INFO\b", re.I | re.M)


def run(argv, **env):
    """stdout and stderr as one stream, in the order printed (as on a terminal).  Started as a user starts it, not
    as a sub-make of `make test` (whose MAKELEVEL would turn make's own line into `make[1]: ***`)."""
    outer = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    r = subprocess.run(argv, cwd=ROOT, env={**outer, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=900)
    return r.returncode, r.stdout


def make(target, *variables):
    """make -s TARGET with the test's python, the install step skipped (as tests/test_safety.py calls it)."""
    return run(["make", "-s", "-o", "install", "-o", ".venv/.installed", target, f"PYTHON={sys.executable}",
                *variables])


def segments(out: str) -> list[str]:
    """Lines as a terminal shows them: progress bars redraw with \\r, so each redraw is its own segment."""
    return [s for s in re.split(r"[\r\n]", out) if s.strip()]


def noise(out: str) -> list[str]:
    return [s for s in segments(out) if NOISE.search(s)]


def test_building_the_tiny_default_is_quiet(tmp_path):
    """The first `make` of a clean clone builds the embedded tiny model (recipes/launch.sh runs tunekit.tiny): the
    tests above find it cached, so its screen is checked here, built afresh."""
    code, out = run([sys.executable, "-m", "tunekit.tiny", "qwen", "--out", str(tmp_path / "tiny")])
    assert code == 0, out[-3000:]
    assert noise(out) == [], "\n".join(noise(out))


def test_bad_input_through_make_ends_in_its_error_line(tmp_path):
    """The one `error:` line, then only make's own line: no torchrun lines, no traceback."""
    code, out = make("qwen-qlora", "DATA=/nonexistent.json", f"OUTPUT={tmp_path / 'run'}")
    lines = segments(out)
    assert code != 0 and lines[-1].startswith("make: ***"), out[-3000:]
    assert lines[-2].startswith("error: ") and "/nonexistent.json" in lines[-2], out[-3000:]
    assert [line for line in lines if line.startswith("error:")] == [lines[-2]], out[-3000:]
    assert noise(out) == [] and "Traceback" not in out, out[-3000:]
    assert not (tmp_path / "run").exists()


def launch_line(**env):
    """recipes/launch.sh's command (DRY_RUN) for llama2 qlora with these variables (None: unset)."""
    env = {**os.environ, "DRY_RUN": "1", "MODEL": "/models/x", "PYTHON": "python3", **env}
    r = subprocess.run(["bash", "recipes/llama2/train.sh", "qlora"], cwd=ROOT, capture_output=True, text=True,
                       env={k: v for k, v in env.items() if v is not None})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_one_process_on_one_node_runs_without_torchrun():
    """One process: python runs finetune.py itself, on the GPU torchrun's local rank 0 would take (the first visible);
    several processes, several nodes or DeepSpeed (it needs a distributed launch) keep torchrun."""
    one = "python3 finetune.py recipes/llama2/qlora.json --model_name_or_path /models/x"
    assert launch_line(GPUS_PER_NODE="1", CUDA_VISIBLE_DEVICES="2").startswith(one)
    assert launch_line(GPUS_PER_NODE="1", CUDA_VISIBLE_DEVICES="3,5").startswith(f"CUDA_VISIBLE_DEVICES=3 {one}")
    assert launch_line(GPUS_PER_NODE="1", CUDA_VISIBLE_DEVICES=None).startswith(f"CUDA_VISIBLE_DEVICES=0 {one}")
    torchrun = "python3 -m tunekit.torchrun --nnodes"
    assert launch_line(GPUS_PER_NODE="2").startswith(torchrun)
    assert launch_line(GPUS_PER_NODE="1", NNODES="2").startswith(torchrun)
    assert launch_line(GPUS_PER_NODE="1", DS_CONFIG="ds_configs/zero2.json").startswith(torchrun)


def test_torchrun_keeps_its_lines_for_a_crash(tmp_path):
    """A worker that crashes (not bad input): its traceback, the agent's failure line and one line naming the rank."""
    stub = tmp_path / "crash.py"
    stub.write_text("raise RuntimeError('boom')\n")
    r = subprocess.run([sys.executable, "-m", "tunekit.torchrun", "--nproc_per_node", "1", "--master_port", "29549",
                        str(stub)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "RuntimeError: boom" in r.stderr, r.stderr[-3000:]
    assert "failed (exitcode: 1)" in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == f"torchrun: {stub} stopped on rank 0 with exit status 1 (its output is above)"
