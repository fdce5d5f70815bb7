"""Checkpoints complete or absent (staged, marked complete last, renamed into place, only then rotated), and resuming
from the newest complete one of the same run, planned before any model loads (README: "Crashes, reruns and safety")."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from .errors import ArgumentError, EmptyAdapterError

MARKER = "tunekit_checkpoint.json"
FINISHED = "run_summary.json"  # written last by finetune.py: the folder holds a finished run
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Arguments that do not change what is computed: a run may be resumed with different values of these.
NOT_FINGERPRINTED = {
    "output_dir", "run_name", "resume_from_checkpoint", "overwrite_output_dir", "report_to", "disable_tqdm",
    "eval_data_path", "per_device_eval_batch_size", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "dataloader_multiprocessing_context",
    "trust_remote_code", "lazy_preprocess", "ddp_timeout", "debug", "skip_memory_metrics", "project",
    "do_eval", "do_predict", "do_train", "prediction_loss_only", "batch_eval_metrics", "include_for_metrics",
    "include_num_input_tokens_seen", "metric_for_best_model", "greater_is_better", "load_best_model_at_end",
    "enable_jit_checkpoint", "torch_empty_cache_steps",
    # memory/speed knobs: the same loss and gradients either way
    "offload_activations", "offload_activations_async", "tiled_mlp_tokens", "fused_lora", "precompute_ref_log_probs",
}
NOT_FINGERPRINTED_PREFIXES = ("logging_", "log_", "save_", "eval_", "hub_", "push_to_hub", "trackio_")
FINGERPRINTED_ANYWAY = {"logging_nan_inf_filter"}  # decides whether a non-finite loss stops the run


# ---------------------------------------------------------------- run fingerprint

def fingerprint(args: dict) -> dict:
    """What a checkpoint must match to continue this run: the arguments that change the computation, data, processes."""
    fp = {k: v for k, v in sorted(args.items()) if k in FINGERPRINTED_ANYWAY
          or (k not in NOT_FINGERPRINTED and not k.startswith(NOT_FINGERPRINTED_PREFIXES))}
    if args.get("data_path") and Path(args["data_path"]).is_file():
        with open(args["data_path"], "rb") as f:
            fp["data_sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
    fp["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return fp


def differences(a: dict, b: dict) -> list[str]:
    return [f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# ---------------------------------------------------------------- which checkpoints are complete

def list_checkpoints(output_dir) -> list[Path]:
    """checkpoint-N folders, newest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def why_incomplete(ckpt: Path) -> str | None:
    """None for a complete checkpoint, else the reason it cannot be resumed from."""
    try:
        files = json.loads((ckpt / MARKER).read_text())["files"]
    except OSError:
        return f"no completion marker {MARKER}"
    except (ValueError, KeyError, TypeError):
        return f"unreadable {MARKER}"
    for name, size in files.items():
        p = ckpt / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, {size} were written"
    # what a resume needs beyond the weights (DeepSpeed keeps the optimizer in global_step*/…optim_states.pt)
    base = [n.split("/")[-1] for n in files]
    needs = {
        "trainer_state.json": "trainer_state.json" in base,
        "weights": any(n in base for n in ("adapter_model.safetensors", "model.safetensors",
                                           "model.safetensors.index.json", "mp_rank_00_model_states.pt")),
        "optimizer state (saved with --save_only_model?)":
            "optimizer.pt" in base or any(n.endswith("optim_states.pt") for n in base),
        "scheduler.pt": "scheduler.pt" in base,
        "RNG state": any(n.startswith("rng_state") for n in base),
    }
    missing = [what for what, ok in needs.items() if not ok]
    return f"missing {', '.join(missing)}" if missing else None


def newest_complete(output_dir) -> Path | None:
    for ckpt in list_checkpoints(output_dir):
        reason = why_incomplete(ckpt)
        if reason is None:
            return ckpt
        print(f"warning: skipping {ckpt}: incomplete ({reason}); it is replaced when that step is saved again",
              flush=True)
    return None


# ---------------------------------------------------------------- deciding how a run starts

def plan_run(train_args, fp: dict) -> str | None:
    """The checkpoint to resume from (None: afresh), or ArgumentError when the output folder must not be touched."""
    out = Path(train_args.output_dir)
    requested = train_args.resume_from_checkpoint
    if requested and str(requested).lower() in ("false", "no", "none"):
        requested = None
    how = "pass --overwrite_output_dir to replace it, or choose another --output_dir"
    if train_args.overwrite_output_dir:
        if requested:
            raise ArgumentError("--overwrite_output_dir starts the run afresh, --resume_from_checkpoint continues it: "
                                "pass only one of them")
        return None
    if (out / FINISHED).is_file():
        raise ArgumentError(f"--output_dir: {out} holds a finished run ({FINISHED}); {how}")
    if requested and str(requested).lower() not in ("auto", "true"):
        ckpt = Path(requested)
        if not ckpt.is_dir():
            raise ArgumentError(f"--resume_from_checkpoint: {ckpt} is not a folder")
        reason = why_incomplete(ckpt)
        if reason:
            raise ArgumentError(f"--resume_from_checkpoint: {ckpt} is incomplete ({reason}); pass "
                                "--resume_from_checkpoint auto to use the newest complete checkpoint")
    else:
        ckpt = newest_complete(out)
        if ckpt is None:
            if requested:
                print(f"note: --resume_from_checkpoint auto: no complete checkpoint in {out}, starting afresh")
            return None
    marker = json.loads((ckpt / MARKER).read_text())
    diff = differences(marker.get("fingerprint", {}), fp)
    if diff:
        raise ArgumentError(f"{ckpt} belongs to a different run ({'; '.join(diff[:5])}); resume with the same "
                            f"arguments and data, or {how}")
    print(f"note: resuming from {ckpt} (step {marker['step']})", flush=True)
    return str(ckpt)


def clear_for_overwrite(output_dir) -> None:
    """--overwrite_output_dir: the old run's marker and checkpoints go once the new run has loaded, before it writes."""
    out = Path(output_dir)
    if not out.is_dir():
        return
    (out / FINISHED).unlink(missing_ok=True)
    for p in out.iterdir():
        if p.is_dir() and (CHECKPOINT.match(p.name) or p.name.startswith(".tmp-checkpoint-")):
            shutil.rmtree(p)


# ---------------------------------------------------------------- saving atomically

def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem syncs a directory
        _fsync(folder)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(root, name))
    _fsync_dir(folder)


def write_marker(ckpt: Path, step: int, fp: dict | None) -> None:
    files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*")) if p.is_file()}
    tmp = ckpt / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "fingerprint": fp or {}, "files": files}, indent=1))
    _fsync_tree(ckpt)
    tmp.replace(ckpt / MARKER)


def rotate(run_dir: Path, keep: int | None, protect: str | None) -> None:
    """Keep the newest `keep` complete checkpoints (and the best one); never delete the last complete one."""
    if not keep or keep <= 0:
        return
    protected = Path(protect).resolve() if protect else None
    for p in [p for p in list_checkpoints(run_dir) if why_incomplete(p) is None][keep:]:
        if p.resolve() != protected:
            shutil.rmtree(p, ignore_errors=True)


def validate_adapter(folder, expected_keys, trained: bool, head: str | None = None) -> None:
    """After every adapter save: the file exists, holds exactly the adapter's keys (and a classifier's head), no empty
    tensor (ZeRO-3's 40-byte adapter without gathered weights), and once trained, not every lora_B is zero."""
    from safetensors import safe_open

    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        raise EmptyAdapterError(f"{path} was not written")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        problems = []
        missing, extra = set(expected_keys) - keys, keys - set(expected_keys)
        if missing or extra:
            problems.append(f"{len(missing)} adapter tensors missing (e.g. {sorted(missing)[:2]}), "
                            f"{len(extra)} unexpected (e.g. {sorted(extra)[:2]})")
        empty = [k for k in keys if 0 in f.get_slice(k).get_shape()]
        if empty:
            problems.append(f"{len(empty)} empty tensors (e.g. {empty[0]})")
        lora_b = [k for k in keys if "lora_B" in k and k not in empty]
        if trained and lora_b and all(not f.get_tensor(k).any() for k in lora_b):
            problems.append("every lora_B is zero after training steps: the adapter is a no-op")
        if head and not any(f"{head}.modules_to_save" in k or f".{head}." in k for k in keys):
            problems.append(f"the classification head '{head}' is not in the adapter, so every load would draw a new "
                            "random head and predictions would change (modules_to_save must hold it)")
    if problems:
        raise EmptyAdapterError(f"{path}: {'; '.join(problems)}. Under DeepSpeed ZeRO-3 set "
                                "stage3_gather_16bit_weights_on_model_save: true")


class AtomicCheckpointMixin:
    """Trainer mixin: checkpoints staged under a temporary name, marked complete last, renamed into place."""

    run_fingerprint: dict | None = None  # the run's (set by training.build_trainer): in every completion marker
    run_head: str | None = None  # a classifier's head: it must be in every saved adapter, its config beside it
    _staging: str | None = None

    def _get_output_dir(self, trial):
        return self._staging if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staging = run_dir / f".tmp-{name}"
        main_process = self.args.should_save
        if main_process:
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotation happens after the rename
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank's shards are written
        if main_process:
            final = run_dir / name
            if self.state.best_global_step:  # the Trainer looked for the best checkpoint inside the staging folder
                best = run_dir / f"checkpoint-{self.state.best_global_step}"
                if best.exists() or self.state.best_global_step == self.state.global_step:
                    self.state.best_model_checkpoint = str(best)
                self.state.save_to_json(str(staging / name / "trainer_state.json"))
            write_marker(staging / name, self.state.global_step, self.run_fingerprint)
            if final.exists():  # an incomplete leftover, or the previous run's (overwrite)
                shutil.rmtree(final)
            os.rename(staging / name, final)
            staging.rmdir()
            _fsync_dir(run_dir)
            rotate(run_dir, limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir=None, state_dict=None):
        """Weights as safetensors (save_pretrained's default), training arguments as JSON, never pickled."""
        super()._save(output_dir, state_dict)
        out = Path(output_dir if output_dir is not None else self.args.output_dir)
        if getattr(self.model, "peft_config", None) and (out / "adapter_config.json").is_file():
            from peft import get_peft_model_state_dict

            model = self.accelerator.unwrap_model(self.model)
            # from the gathered state dict when the Trainer passes one: under ZeRO-3 the model's own are shards
            expected = get_peft_model_state_dict(model, state_dict=state_dict).keys()
            validate_adapter(out, expected, trained=self.state.global_step > 0, head=self.run_head)
            if self.run_head and self.args.should_save:  # the labels (id2label) and pad id the head was trained with
                config = model.config.to_dict()
                config.pop("quantization_config", None)  # the base is quantized on load, never stored quantized
                (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (out / "training_args.bin").unlink(missing_ok=True)
        (out / "training_args.json").write_text(self.args.to_json_string())
