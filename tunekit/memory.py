"""--memory_snapshot PATH: where a step's GPU memory goes.  Every CUDA allocation of the first
--memory_snapshot_steps optimizer steps is recorded (torch.cuda.memory._record_memory_history) and written to PATH, a
torch memory snapshot that https://pytorch.org/memory_viz opens, and to PATH.peak.txt: what was alive at the peak,
largest first, grouped by where it was allocated.  Also written when the run stops on CUDA out-of-memory.

The peak is found by replaying the trace: memory allocated when recording began, plus every allocation, minus every
free (`free_requested`: when the tensor dies, which is when torch.cuda.max_memory_allocated stops counting it, even if
a side stream still delays the block's reuse).  Allocations made in the autograd engine's own C++ (most of the backward) have no Python frame; the
ones made under a Python forward or backward (recomputed layers, custom Functions) name their line.
"""
from __future__ import annotations

import os
import pickle
from collections import defaultdict

import torch
from transformers import TrainerCallback

MAX_ENTRIES = 2_000_000  # alloc/free events kept; a 500k-token step of a few layers makes ~10^5
OWN_FRAMES = ("/torch/", "<frozen", "/threading.py", "/contextlib.py")  # the library machinery, not the caller


def _where(frames: list[dict], depth: int = 4) -> str:
    """The innermost `depth` Python frames outside torch's own machinery, innermost first."""
    mine = [f for f in frames if not any(part in f.get("filename", "") for part in OWN_FRAMES)]
    if not mine:
        return "(no Python frame: the autograd engine or a C++ kernel)"
    return " < ".join(f"{_short(f['filename'])}:{f['line']} {f['name']}" for f in mine[:depth])


def _short(filename: str) -> str:
    for marker in ("site-packages/", "tunekit/", "bench/"):
        if marker in filename:
            return filename[filename.index(marker) + (len(marker) if marker == "site-packages/" else 0):]
    return filename


def peak_report(snapshot: dict, allocated_at_start: int = 0, device: int = 0, top: int = 30) -> str:
    """Text: the peak of allocated memory over the snapshot's trace, and the traced allocations alive at it, grouped
    by allocation site (size, count), largest first.  Pure Python over the snapshot dict (testable without a GPU)."""
    events = snapshot["device_traces"][device]
    now, peak, peak_at = allocated_at_start, allocated_at_start, -1
    for i, e in enumerate(events):
        if e["action"] == "alloc":
            now += e["size"]
        elif e["action"] == "free_requested":
            now -= e["size"]
        if now > peak:
            peak, peak_at = now, i
    live = {}
    for e in events[:peak_at + 1]:
        if e["action"] == "alloc":
            live[e["addr"]] = e
        elif e["action"] == "free_requested":
            live.pop(e["addr"], None)
    groups = defaultdict(lambda: [0, 0])
    for e in live.values():
        g = groups[_where(e.get("frames") or [])]
        g[0] += e["size"]
        g[1] += 1
    gib = 2 ** 30
    traced = sum(size for size, _ in groups.values())
    lines = [f"peak {peak / gib:.2f} GiB at event {peak_at + 1} of {len(events)}: {allocated_at_start / gib:.2f} GiB "
             f"allocated before recording began (weights, optimizer state) + {traced / gib:.2f} GiB traced, alive "
             f"at the peak{' (the trace was cut: raise MAX_ENTRIES)' if len(events) >= MAX_ENTRIES else ''}", ""]
    for where, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"{size / gib:8.2f} GiB  {count:5d} x  {where}")
    return "\n".join(lines) + "\n"


class MemorySnapshot(TrainerCallback):
    """Records from the start of training; writes PATH and PATH.peak.txt after `steps` optimizer steps (or on OOM)."""

    def __init__(self, path: str, steps: int):
        self.path, self.steps, self.start, self.recording = path, steps, 0, False

    def on_train_begin(self, args, state, control, **kw):
        torch.cuda.synchronize()
        self.start = torch.cuda.memory_allocated()
        torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES, stacks="python")
        self.recording = True

    def on_step_end(self, args, state, control, **kw):
        if self.recording and state.global_step >= self.steps:
            self.write()

    def write(self) -> None:
        if not self.recording:
            return
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        self.recording = False
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path + ".tmp", "wb") as f:  # no half-written snapshot under the final name
            pickle.dump(snapshot, f)
        os.replace(self.path + ".tmp", self.path)
        with open(self.path + ".peak.txt", "w") as f:
            f.write(peak_report(snapshot, self.start, torch.cuda.current_device()))
        print(f"memory snapshot: {self.path} (open at https://pytorch.org/memory_viz), peak: {self.path}.peak.txt")
