"""Where a training step's GPU memory peaks, module by module: finetune.py as it is, plus hooks that print the
allocated memory and the peak since the previous event at every module forward (and recompute) and at the start of
every module's backward (a hook on its output's gradient).  No allocation history: cheap at 500k tokens.

    python bench/memprobe.py recipes/llama2/qlora.json --model_name_or_path CKPT --data_path long.jsonl ... \
        --max_steps 1 [--probe_depth 2]

--probe_depth: 1 = decoder layers, 2 = also their attention, MLP and norms (default), 3 = every module.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import finetune  # noqa: E402
from tunekit import training  # noqa: E402

GIB = 2 ** 30
EVENTS = []


def mark(what: str) -> None:
    if not torch.cuda.is_available():  # a CPU smoke run of the hooks
        EVENTS.append((what, 0.0, 0.0))
        return
    torch.cuda.synchronize()
    EVENTS.append((what, torch.cuda.memory_allocated() / GIB, torch.cuda.max_memory_allocated() / GIB))
    print(f"MEM {what:60s} now {EVENTS[-1][1]:7.2f}  peak-since-last {EVENTS[-1][2]:7.2f}", flush=True)
    torch.cuda.reset_peak_memory_stats()


class Probe(TrainerCallback):
    def __init__(self, depth: int):
        self.depth, self.seen = depth, {}

    def _watch(self, name, module):
        def pre(mod, args):
            self.seen[name] = self.seen.get(name, 0) + 1
            mark(f"fwd#{self.seen[name]} {name} (before)")

        def post(mod, args, out):
            mark(f"fwd#{self.seen[name]} {name} (after)")
            t = out[0] if isinstance(out, tuple) else out
            if torch.is_tensor(t) and t.requires_grad:
                t.register_hook(lambda g: mark(f"bwd {name} (its output's gradient arrived)"))

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def on_train_begin(self, args, state, control, model=None, **kw):
        from transformers.modeling_layers import GradientCheckpointingLayer

        for name, module in model.named_modules():
            short = name.replace("base_model.model.", "")
            is_layer = isinstance(module, GradientCheckpointingLayer)
            part = short.rsplit(".", 1)[-1] in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
            top = short.endswith(("embed_tokens", "model.norm"))
            if is_layer or top or (self.depth >= 2 and part) or self.depth >= 3:
                self._watch(short, module)
        mark("train begin")

    def on_step_begin(self, args, state, control, **kw):
        mark(f"step {state.global_step + 1} begin")

    def on_step_end(self, args, state, control, **kw):
        mark(f"step {state.global_step} end")
        top = sorted(EVENTS, key=lambda e: -e[2])[:8]
        print("MEM highest peaks (reached just before these events):", flush=True)
        for what, now, peak in top:
            print(f"MEM   {peak:7.2f} GiB before {what}", flush=True)
        EVENTS.clear()


def main(argv):
    depth = 2
    if "--probe_depth" in argv:
        i = argv.index("--probe_depth")
        depth, argv = int(argv[i + 1]), argv[:i] + argv[i + 2:]
    build = training.build_trainer

    def with_probe(*a, **k):
        trainer = build(*a, **k)
        trainer.add_callback(Probe(depth))
        return trainer

    training.build_trainer = with_probe
    finetune.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
