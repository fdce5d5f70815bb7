"""--tiled_mlp_tokens N: every decoder layer's MLP runs over at most N tokens at a time, in the forward and in the
backward, so its (tokens x intermediate_size) activations never exist whole: at long sequences they are the largest
tensors of a layer (intermediate_size is 2.7-5.4x hidden_size, and gate, up, act and their product all live at once).

The cost is one more MLP forward per step (the backward recomputes each chunk), a third with gradient checkpointing.
The idea is Arctic Long Sequence Training's / DeepSpeed's `TiledMLP` (Unsloth has the same); this one is smaller:
the trainable parameters are inputs of the autograd Function, so their gradients come back through autograd once
per step (DDP and gradient hooks see one gradient, not one per chunk), and the RNG and autocast state of the
forward are replayed in the backward, so LoRA dropout draws the same masks in both.

An MLP is any module whose class name ends in "MLP" and that has a `down_proj` (LlamaMLP, Qwen2MLP, GlmMLP with
its fused gate_up_proj, ...): it must act on each token alone, which is what lets the sequence be cut anywhere.
Kept over DeepSpeed 0.19.8's TiledMLP: on an H200 (bench/offload_tiling.py, 8B shape cut to 4 layers, one 64k
sequence, 8k chunks) ours ran 23,908 tokens/s, DeepSpeed's 22,896 (0.96x), both at 16.01 GiB; its backward also
recomputes outside the forward's autocast, so its bf16 losses drift further from the untiled MLP's.
"""
from __future__ import annotations

import types

import torch
from torch.autograd.function import once_differentiable


def _chunks(x2d: torch.Tensor, n: int):
    return [(s, x2d[s:s + n]) for s in range(0, x2d.shape[0], n)]


def _run_chunked(forward, x: torch.Tensor, n: int) -> torch.Tensor:
    """forward over at most n tokens at a time; the output is written into one tensor (no list + cat, which would
    hold the output twice).  Padding-free batches are (1, tokens, hidden), padded ones (batch, seq, hidden): both are
    flattened to (tokens, hidden), since the MLP does not mix tokens."""
    flat, out = x.reshape(-1, x.shape[-1]), None
    for s, part in _chunks(flat, n):
        y = forward(part)
        if out is None:
            out = y.new_empty(flat.shape[0], y.shape[-1])
        out[s:s + y.shape[0]] = y
    return out.reshape(*x.shape[:-1], out.shape[-1])


class TiledMLPFunction(torch.autograd.Function):
    """forward: the chunks without a graph, only the input saved.  backward: per chunk, the MLP again with a graph,
    its gradients taken at once, so at most one chunk's graph exists at a time."""

    @staticmethod
    def forward(ctx, mlp, n, x, *params):
        dev = x.device.type
        ctx.mlp, ctx.n, ctx.params = mlp, n, params
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(x.device) if x.is_cuda else None)
        ctx.save_for_backward(x)  # the one tensor kept (and what --offload_activations_async may move)
        return _run_chunked(mlp._untiled_forward, x, n)  # autograd.Function.forward already runs without grad

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        need_x = ctx.needs_input_grad[2]
        wanted = [p for p, need in zip(ctx.params, ctx.needs_input_grad[3:]) if need]
        flat, g = x.detach().reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        gx = torch.empty_like(flat) if need_x else None
        gp = [None] * len(wanted)
        dev, on, dtype = ctx.autocast
        cpu_rng, cuda_rng = ctx.rng
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.set_rng_state(cpu_rng)  # same dropout masks as the forward: chunks replay in the same order
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, x.device)
            with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=on):
                for s, part in _chunks(flat, ctx.n):
                    part = part.detach().requires_grad_(need_x)
                    y = ctx.mlp._untiled_forward(part)
                    inputs = ([part] if need_x else []) + wanted
                    grads = torch.autograd.grad(y, inputs, g[s:s + part.shape[0]], allow_unused=True)
                    if need_x:
                        gx[s:s + part.shape[0]], grads = grads[0], grads[1:]
                    for i, d in enumerate(grads):
                        if d is not None:
                            gp[i] = d if gp[i] is None else gp[i].add_(d)
        it = iter(gp)
        param_grads = [next(it) if need else None for need in ctx.needs_input_grad[3:]]
        return (None, None, gx.view_as(x) if need_x else None, *param_grads)


def _tiled_forward(self, x):
    n = self._tiled_mlp_tokens
    if x.shape[:-1].numel() <= n:
        return self._untiled_forward(x)  # short input: nothing to save, no recompute
    if not torch.is_grad_enabled():
        return _run_chunked(self._untiled_forward, x, n)  # evaluation, generation: chunks, no graph
    params = [p for p in self.parameters() if p.requires_grad]  # LoRA A/B (and DoRA); frozen/4-bit base: none
    return TiledMLPFunction.apply(self, n, x, *params)


def mlp_modules(model) -> list:
    return [m for m in model.modules() if type(m).__name__.endswith("MLP") and hasattr(m, "down_proj")]


def apply_tiled_mlp(model, chunk_tokens: int) -> int:
    """Patches every MLP's forward in place (before or after PEFT: the LoRA layers are looked up at call time);
    returns how many.  Applying again changes the chunk size, and tiles again a forward replaced in between: the
    Trainer applies Liger's kernels to the model instance (--use_liger_kernel), which rebinds every MLP's forward to
    LigerSwiGLUMLP's, so training.TileAgain applies the tiling once more when training begins."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    found = mlp_modules(model)
    for mlp in found:
        if getattr(mlp.forward, "__func__", None) is not _tiled_forward:  # not yet, or replaced since (Liger's
            mlp._untiled_forward = mlp.forward  # instance patch binds its own forward): tile whatever runs now
            mlp.forward = types.MethodType(_tiled_forward, mlp)
        mlp._tiled_mlp_tokens = chunk_tokens
    return len(found)
