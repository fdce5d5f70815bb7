"""Crash and resume, atomic checkpoints, determinism (issue 6, pitfalls #27, #28).

The crash test kills a real LoRA run with SIGKILL right after its second checkpoint, restarts it with the same
arguments, and compares it with a run that was never interrupted: the final adapters agree to 1e-6 and every loss
logged after the restart equals the uninterrupted run's at the same step."""
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, cpu_flags
from finetune import main
from tunekit.arguments import ArgumentError
from tunekit.checkpoints import MARKER, newest_complete, why_incomplete

# Runs finetune.main in a child process that SIGKILLs itself as soon as checkpoint-4 is on disk.
KILLED_RUN = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
import finetune
from tunekit import training
from transformers import TrainerCallback

class KillAfterSecondCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kw):  # called once the checkpoint is complete
        if state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)

build = training.build_trainer
def build_and_arm(*a, **k):
    trainer = build(*a, **k)
    trainer.add_callback(KillAfterSecondCheckpoint())
    return trainer

training.build_trainer = build_and_arm
finetune.main(sys.argv[1:])
"""


# The speed issue's fast paths: padding-free packing and token-budget micro-batches (about 6 per epoch here).
FAST = ["--packing", "--token_budget", "256"]
SPEED = pytest.mark.parametrize("fast", [False, True], ids=["padded", "packed-token-budget"])


def argv(model, data, out, fast=False, **flags):
    # 24 samples, batch 4: 6 steps per epoch, so the resumed part crosses into the second epoch's shuffle.
    flags = {"max_steps": 8, "save_strategy": "steps", "save_steps": 2, "lora_dropout": 0.1, "model_max_length": 64,
             **flags}
    return ["--model_name_or_path", model, "--data_path", data, "--use_lora", *cpu_flags(out, **flags),
            *(FAST if fast else [])]


def losses_by_step(log_history, after=0):
    return {h["step"]: h["loss"] for h in log_history if "loss" in h and h["step"] > after}


def adapter(folder):
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


class AbruptStop(BaseException):
    """Stands in for the kill in the packed and TRL variants: raised right after checkpoint-4 is complete, it unwinds
    without any further write, so the folder is left exactly as a SIGKILL at that moment leaves it (the SIGKILL
    itself is exercised by the padded variant; more child processes would cost a minute of imports each on CI)."""


def stop_after_second_checkpoint(monkeypatch):
    import finetune
    from tunekit import training
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 4:
                raise AbruptStop

    build = training.build_trainer

    def build_and_arm(*a, **k):
        trainer = build(*a, **k)
        trainer.add_callback(Stop())
        return trainer

    monkeypatch.setattr("tunekit.training.build_trainer", build_and_arm)


@pytest.mark.parametrize("fast", [False, True], ids=["padded", "packed-token-budget"])
def test_killed_run_resumes_exactly(fast, tiny_llama2, guanaco_small, tmp_path, capsys, monkeypatch):
    reference = main(argv(tiny_llama2, guanaco_small, tmp_path / "straight", fast))
    if fast:  # the fast paths really are on: one packed row per micro-batch, batches cut by tokens
        batch = next(iter(reference.get_train_dataloader()))
        assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch
        assert reference.args.token_budget == 256

    crashed = tmp_path / "crashed"
    command = argv(tiny_llama2, guanaco_small, crashed, fast)
    if not fast:  # a real process, killed with SIGKILL right after its second checkpoint
        r = subprocess.run([sys.executable, "-c", KILLED_RUN, *command], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    else:
        with monkeypatch.context() as m:
            stop_after_second_checkpoint(m)
            with pytest.raises(AbruptStop):
                main(command)
    assert sorted(p.name for p in crashed.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2",
                                                                                            "checkpoint-4"]
    assert not (crashed / "run_summary.json").exists() and not (crashed / "adapter_model.safetensors").exists()
    assert why_incomplete(crashed / "checkpoint-4") is None

    # A checkpoint cut short by hand: no completion marker, the optimizer state missing.  It is newer, so a resume
    # that trusted folder names (transformers' get_last_checkpoint) would pick it.
    shutil.copytree(crashed / "checkpoint-4", crashed / "checkpoint-6")
    (crashed / "checkpoint-6" / "optimizer.pt").unlink()
    (crashed / "checkpoint-6" / MARKER).unlink()
    capsys.readouterr()

    resumed = main(command)  # the same command again
    printed = capsys.readouterr().out
    assert "skipping" in printed and "checkpoint-6: incomplete (no completion marker" in printed
    assert f"resuming from {crashed / 'checkpoint-4'} (step 4)" in printed

    want, got = adapter(tmp_path / "straight"), adapter(crashed)
    assert want.keys() == got.keys() and any("lora_B" in k for k in want)
    worst = max((want[k] - got[k]).abs().max().item() for k in want)
    assert worst <= 1e-6, worst
    # the tolerance is meaningful: four more steps move the adapter far more than 1e-6
    at_crash = adapter(crashed / "checkpoint-4")
    assert max((want[k] - at_crash[k]).abs().max().item() for k in want) > 1e-4

    straight_losses = losses_by_step(reference.state.log_history)
    after_restart = losses_by_step(resumed.state.log_history, after=4)
    assert sorted(after_restart) == [5, 6, 7, 8]
    for step, loss in after_restart.items():
        assert abs(loss - straight_losses[step]) <= 1e-6, (step, loss, straight_losses[step])
    # the step-6 checkpoint written after the restart replaced the truncated one, and is complete
    assert why_incomplete(crashed / "checkpoint-6") is None and why_incomplete(crashed / "checkpoint-8") is None
    assert not list(crashed.glob(".tmp-*"))


def test_newest_complete_checkpoint_is_chosen(tmp_path):
    """Resolver unit test: folder names alone do not make a checkpoint."""
    from tunekit.checkpoints import write_marker

    for step in (2, 4, 6, 10):
        c = tmp_path / f"checkpoint-{step}"
        c.mkdir()
        for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"):
            (c / name).write_bytes(b"x" * (step + 10))
        if step != 10:
            write_marker(c, step, {})
    (tmp_path / "checkpoint-6" / "optimizer.pt").write_bytes(b"short")  # truncated after the marker was written
    (tmp_path / ".tmp-checkpoint-12").mkdir()  # a save that was killed half way
    assert why_incomplete(tmp_path / "checkpoint-10") == f"no completion marker {MARKER}"
    assert "optimizer.pt has 5 bytes, 16 were written" == why_incomplete(tmp_path / "checkpoint-6")
    assert newest_complete(tmp_path) == tmp_path / "checkpoint-4"
    (tmp_path / "checkpoint-14").mkdir()  # complete marker, but no optimizer state to resume from
    for name in ("trainer_state.json", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"):
        (tmp_path / "checkpoint-14" / name).write_text("{}")
    write_marker(tmp_path / "checkpoint-14", 14, {})
    assert why_incomplete(tmp_path / "checkpoint-14") == "missing optimizer state (saved with --save_only_model?)"
    assert newest_complete(tmp_path) == tmp_path / "checkpoint-4"


def test_crash_while_saving_leaves_no_checkpoint_and_keeps_the_previous(tiny_llama2, guanaco_small, tmp_path,
                                                                        monkeypatch):
    """A save that dies half way (the optimizer state raises) leaves no `checkpoint-4`, only the staging folder, and
    `checkpoint-2` intact; with save_total_limit=1 the last complete checkpoint is never rotated away first."""
    from transformers import Trainer

    real = Trainer._save_optimizer_and_scheduler

    def failing(self, output_dir):
        if self.state.global_step == 4:
            raise OSError("disk full (simulated)")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", failing)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="simulated"):
        main(argv(tiny_llama2, guanaco_small, out, max_steps=4, save_total_limit=1))
    assert not (out / "checkpoint-4").exists() and (out / ".tmp-checkpoint-4").is_dir()
    assert why_incomplete(out / "checkpoint-2") is None
    assert newest_complete(out) == out / "checkpoint-2"


def test_checkpoint_files_and_another_runs_checkpoint_refused(tiny_llama2, guanaco_small, tmp_path):
    out = tmp_path / "out"
    main(argv(tiny_llama2, guanaco_small, out, max_steps=2))
    for folder in (out, out / "checkpoint-2"):  # arguments as JSON, never pickled; weights as safetensors
        names = {p.name for p in folder.iterdir()}
        assert "training_args.bin" not in names and "training_args.json" in names
        assert json.loads((folder / "training_args.json").read_text())["learning_rate"] == 0.005
        assert not [n for n in names if n.endswith((".bin", ".pkl", ".pickle"))]
    marker = json.loads((out / "checkpoint-2" / MARKER).read_text())
    assert marker["step"] == 2 and marker["fingerprint"]["data_sha256"] and "optimizer.pt" in marker["files"]

    (out / "run_summary.json").unlink()  # as if it had crashed after its last checkpoint
    before = sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*"))
    with pytest.raises(ArgumentError, match=r"checkpoint-2 belongs to a different run \(learning_rate: 0.005 then, "
                                            r"0.001 now\)"):
        main(argv(tiny_llama2, guanaco_small, out, max_steps=2, learning_rate=1e-3))
    assert sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*")) == before


@SPEED
def test_same_seed_same_adapter_other_seed_other_adapter(fast, tiny_llama2, guanaco_small, tmp_path):
    """--seed fixes LoRA init, dropout and data order: the same seed gives bit-identical adapters on CPU."""
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        main(argv(tiny_llama2, guanaco_small, tmp_path / name, fast, max_steps=2, save_strategy="no", seed=seed))
        runs[name] = adapter(tmp_path / name)
    a, b, c = runs["a"], runs["b"], runs["c"]
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    assert sum(not torch.equal(a[k], c[k]) for k in a) == len(a)  # every tensor differs with another seed
