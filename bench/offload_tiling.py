"""Issue 21: can TRL's activation offloading and DeepSpeed's TiledMLP replace tunekit/offload.py and tunekit/tiling.py?
TRL's did (same speed and peak, half the memory reserved: results-offload/h100-16l-offload-tiling.json, the last run
with our own, tunekit/offload.py, as "ours"); DeepSpeed's is slower (tunekit/tiling.py says by how much).

One long random sequence through a Llama-3.1-8B-shaped model cut to a few layers (random bf16 weights, LoRA r=16 alpha=32
on all linear layers with PEFT's fp32 adapters, non-reentrant gradient checkpointing, bf16 autocast as the Trainer's
--bf16, AdamW), warm-up steps then timed steps, each variant in its own process (its own peak memory), at each length.
The offload context is around the decoder's forward; the loss comes after it, in non-reentrant-checkpointed chunks of
--loss_chunk tokens so that no (tokens x vocab) logits exist (--loss_in_context puts it inside: on an H100, torch 2.11,
our former offload failed the checkpoint's recompute check, "Recomputed values ... have different metadata"; TRL's runs).

  offload group   none         no offload
                  trl          tunekit.training.async_offload_context(model): TRL's get_act_offloading_ctx_manager (as
                               SFTTrainer builds it), built once and reused every step, as RunMixin does
  tiled group     ours-tiled   tunekit.tiling.apply_tiled_mlp(model, CHUNK) + that offload
                  ds-tiled     deepspeed's TiledMLP (ceil(tokens / CHUNK) shards of the same size) + that offload

Same seed everywhere: the losses of every step (and the gradient norms) of a group are printed side by side.
Tokens/s = tokens x timed steps / their wall time; peak = torch.cuda.max_memory_allocated over the whole run.

    python bench/offload_tiling.py --smoke                   # CPU, 2 tiny layers, 256 tokens: the logic only
    OUT=$OUT python3 bench/offload_tiling.py                 # GPU: 4 layers of the 8B shape, 16k and 64k tokens

Writes $OUT/offload-tiling.json (or --out) and, on a GPU, bench/results-offload/<h100|h200>-offload-tiling.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = {"offload": ["none", "trl"], "tiled": ["ours-tiled", "ds-tiled"]}
VARIANTS = [v for g in GROUPS.values() for v in g]
LLAMA31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                  num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
                  tie_word_embeddings=False,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192})
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)


# ------------------------------------------------------------------------------------------------ one variant (child)
def ds_tile(model, chunk: int) -> int:
    """DeepSpeed's TiledMLP on every MLP instance, as its docstring's example patches LlamaMLP.forward, with shards of
    `chunk` tokens (the same cut as ours) and the trainable LoRA weights as compute_params."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP
    from tunekit.tiling import mlp_modules

    found = mlp_modules(model)
    for mlp in found:
        untiled = mlp.forward
        params = [p for p in mlp.parameters() if p.requires_grad]

        def forward(x, mlp=mlp, untiled=untiled, params=params):
            shards = max(1, math.ceil(x.shape[:-1].numel() / chunk))
            return TiledMLP.apply(lambda self, part: untiled(part), mlp, x, shards, params)

        mlp.forward = forward
    return len(found)


def trl_ctx(model, cpu: bool):
    from trl.models.activation_offloading import get_act_offloading_ctx_manager
    import torch

    if not cpu:
        from tunekit.training import async_offload_context

        return async_offload_context(model)  # --offload_activations_async
    # CPU smoke only: TRL reads the accelerator's type and device module; present the CPU as one, without pinned
    # memory, so that its pack/unpack logic runs at all (its CUDA path is what the GPU run measures)
    real = torch.accelerator.current_accelerator
    torch.accelerator.current_accelerator = lambda *a, **k: torch.device("cpu")
    if not hasattr(torch.cpu, "empty_cache"):  # its __enter__ empties the cache whenever bitsandbytes is imported
        torch.cpu.empty_cache = lambda: None
    try:
        return get_act_offloading_ctx_manager(model, use_pin_memory=False, use_streams=False)
    finally:
        torch.accelerator.current_accelerator = real


def child(a) -> dict:
    import contextlib

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from torch.utils.checkpoint import checkpoint
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, ROOT)
    from tunekit.tiling import apply_tiled_mlp

    cuda = torch.cuda.is_available() and not a.smoke
    if a.ckpt_debug:
        torch.utils.checkpoint.set_checkpoint_debug_enabled(True)
    dev = torch.device("cuda" if cuda else "cpu")
    T, variant = a.tokens, a.child
    config = LlamaConfig(**(TINY if a.smoke else LLAMA31_8B), num_hidden_layers=a.layers, use_cache=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with dev:
        base = LlamaForCausalLM(config)
    torch.set_default_dtype(prev)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))  # fp32 adapters (autocast_adapter_dtype)
    model.train()
    if variant == "ours-tiled":
        assert apply_tiled_mlp(model, a.chunk) == a.layers
    elif variant == "ds-tiled":
        assert ds_tile(model, a.chunk) == a.layers
    body, head = model.base_model.model.model, model.base_model.model.lm_head
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (1, T), generator=torch.Generator().manual_seed(1)).to(dev)

    def chunk_loss(h, target):  # one slice of the logits at a time, recomputed in the backward
        return F.cross_entropy(head(h).float().flatten(0, 1), target.flatten(), reduction="sum")

    def loss_of(h):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            total = 0
            for s in range(0, T - 1, a.loss_chunk):
                e = min(s + a.loss_chunk, T - 1)
                total = total + checkpoint(chunk_loss, h[:, s:e], ids[:, s + 1:e + 1], use_reentrant=False)
            return total / (T - 1)

    def forward(ctx):
        """The decoder under the offload context; the chunked loss after it (as a fused linear-cross-entropy would
        run: its inputs are slices of one tensor), unless --loss_in_context."""
        with ctx:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                h = body(input_ids=ids).last_hidden_state
            if a.loss_in_context:
                return loss_of(h)
        return loss_of(h)

    offload = trl_ctx(model, not cuda) if variant != "none" else contextlib.nullcontext()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    losses, norms, times = [], [], []
    sync()
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = forward(offload)
        loss.backward()
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float())
                                                           for p in trainable])))
        losses.append(loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
    timed = times[a.warmup:]
    out = dict(variant=variant, tokens=T, layers=a.layers, steps=a.steps, warmup=a.warmup,
               tokens_per_s=round(T * len(timed) / sum(timed), 1), step_s=[round(t, 4) for t in times],
               losses=[float(x) for x in losses], grad_norms=[float(x) for x in norms],
               bitsandbytes_imported="bitsandbytes" in sys.modules)
    if cuda:
        out.update(peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3),
                   reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 3))
    return out


# ------------------------------------------------------------------------------------------------------------ runner
def device_name() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", "cpu"
    name = torch.cuda.get_device_name()
    return name, ("h200" if "H200" in name else "h100" if "H100" in name else name.split()[-1].lower())


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    got = {}
    for pkg in ("torch", "transformers", "peft", "accelerate", "trl", "deepspeed"):
        try:
            got[pkg] = version(pkg)
        except PackageNotFoundError:
            got[pkg] = None
    return got


def compare(runs: list, tokens: int) -> dict:
    """Per group and length: each variant against the group's first, same steps: loss and gradient-norm differences
    (0.0: bit-identical), speed and peak ratios."""
    result = {}
    for group, names in GROUPS.items():
        got = {r["variant"]: r for r in runs if r.get("tokens") == tokens and "losses" in r and r["variant"] in names}
        if names[0] not in got:
            continue
        ref = got[names[0]]
        for name in names[1:]:
            if name not in got:
                continue
            r = got[name]
            row = dict(vs=names[0],
                       max_abs_loss_diff=max(abs(x - y) for x, y in zip(r["losses"], ref["losses"])),
                       max_rel_grad_norm_diff=max(abs(x - y) / max(abs(y), 1e-30)
                                                  for x, y in zip(r["grad_norms"], ref["grad_norms"])),
                       speed_ratio=round(r["tokens_per_s"] / ref["tokens_per_s"], 4))
            if "peak_gib" in r and "peak_gib" in ref:
                row["peak_ratio"] = round(r["peak_gib"] / ref["peak_gib"], 4)
                row["peak_diff_gib"] = round(r["peak_gib"] - ref["peak_gib"], 3)
            result[f"{group}:{name}"] = row
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU: 2 tiny layers, 256 tokens, chunk 64")
    p.add_argument("--tokens", default=None, help="comma-separated lengths (default 16384,65536; smoke 256)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 4; smoke 2)")
    p.add_argument("--chunk", type=int, default=None, help="tiled MLP tokens per chunk (default 8192; smoke 64)")
    p.add_argument("--loss_chunk", type=int, default=None, help="tokens per logits slice (default 4096; smoke 64)")
    p.add_argument("--loss_in_context", action="store_true",
                   help="the checkpointed loss chunks inside the offload context too (a probe)")
    p.add_argument("--ckpt_debug", action="store_true", help="torch.utils.checkpoint debug mode (with a probe)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeat", type=int, default=1, help="passes over the variants, each pass in reverse order")
    p.add_argument("--deadline", type=float, default=560, help="seconds: runs that no longer start are skipped")
    p.add_argument("--no_prime", action="store_true", help="skip the unmeasured first GPU process")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "out", "offload-tiling"))
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.layers = a.layers or (2 if a.smoke else 4)
    a.chunk = a.chunk or (64 if a.smoke else 8192)
    a.loss_chunk = a.loss_chunk or (64 if a.smoke else 4096)
    if a.child:
        a.tokens = int(a.tokens)
        try:
            print("RESULT " + json.dumps(child(a)), flush=True)
        except Exception as e:  # an OOM is a result too
            print("RESULT " + json.dumps(dict(variant=a.child, tokens=a.tokens, error=f"{type(e).__name__}: {e}"[:500])),
                  flush=True)
            raise
        return 0

    start = time.time()
    lengths = [int(t) for t in (a.tokens or ("256" if a.smoke else "16384,65536")).split(",")]
    variants = a.variants.split(",")
    name, short = ("cpu", "cpu") if a.smoke else device_name()
    report = dict(device=name, versions=versions(), shape="tiny" if a.smoke else "llama3.1-8b",
                  layers=a.layers, chunk=a.chunk, loss_chunk=a.loss_chunk, warmup=a.warmup, steps=a.steps,
                  lora="r=16 alpha=32 all-linear, fp32 adapters, dropout 0", dtype="bf16 weights, bf16 autocast",
                  command=" ".join([os.path.basename(sys.executable)] + sys.argv), runs=[], comparisons={})
    os.makedirs(a.out, exist_ok=True)
    paths = [os.path.join(a.out, "offload-tiling.json")]
    if not a.smoke:
        paths.append(os.path.join(ROOT, "bench", "results-offload", f"{short}-offload-tiling.json"))

    def save(partial=True):
        report["partial"], report["elapsed_s"] = partial, round(time.time() - start, 1)
        report["comparisons"] = {str(t): compare(report["runs"], t) for t in lengths}
        for path in paths:
            with open(path, "w") as f:
                json.dump(report, f, indent=1)

    def launch(variant, tokens, warmup, steps):
        left = a.deadline - (time.time() - start)
        if left < 20:
            return dict(variant=variant, tokens=tokens, skipped="deadline")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--tokens", str(tokens),
               "--layers", str(a.layers), "--chunk", str(a.chunk), "--loss_chunk", str(a.loss_chunk),
               "--warmup", str(warmup), "--steps", str(steps)] + (["--smoke"] if a.smoke else []) + (
               ["--loss_in_context"] if a.loss_in_context else []) + (["--ckpt_debug"] if a.ckpt_debug else [])
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            return dict(variant=variant, tokens=tokens, error="timeout (deadline)")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        r = json.loads(lines[-1][7:]) if lines else dict(variant=variant, tokens=tokens, error=f"exit {proc.returncode}")
        r["process_s"] = round(time.time() - t0, 1)
        return r

    if not a.smoke and not a.no_prime:  # a fresh GPU's first process runs slow: not one we measure
        r = launch("none", min(lengths), 1, 1)
        print(f"prime: {r.get('process_s')} s {r.get('error', '')}", flush=True)
    for rep in range(a.repeat):
        for li, tokens in enumerate(lengths):
            order = variants if (li + rep) % 2 == 0 else variants[::-1]
            for variant in order:
                r = launch(variant, tokens, a.warmup, a.steps)
                r["pass"] = rep
                report["runs"].append(r)
                print(f"{variant:>10} {tokens:>6} tok: " + (
                    f"{r['tokens_per_s']:>9.1f} tok/s  peak {r.get('peak_gib', float('nan')):6.2f} GiB  "
                    f"loss {r['losses'][0]:.6f} -> {r['losses'][-1]:.6f}  ({r['process_s']} s)"
                    if "losses" in r else r.get("error") or r.get("skipped")), flush=True)
                save()
    if a.repeat > 1:  # means over the passes
        means = {}
        for r in report["runs"]:
            if "tokens_per_s" in r:
                means.setdefault((r["variant"], r["tokens"]), []).append(r)
        report["means"] = [dict(variant=v, tokens=t, passes=len(rs),
                                tokens_per_s=round(sum(r["tokens_per_s"] for r in rs) / len(rs), 1),
                                peak_gib=max(r.get("peak_gib", 0) for r in rs)) for (v, t), rs in means.items()]
    save(partial=False)
    print(json.dumps(report["comparisons"], indent=1))
    print("wrote " + " and ".join(paths))
    failed = [r for r in report["runs"] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
