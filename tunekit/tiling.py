"""--tiled_mlp_tokens N: each decoder layer's MLP runs over at most N tokens at a time, forward and backward, so its
(tokens x intermediate_size) activations, a layer's largest at long sequences, never exist whole; the cost is one more
MLP forward per step.  An MLP is a module whose class name ends in "MLP" and that has a `down_proj`: it acts on each
token alone, so the sequence can be cut anywhere.  The trainable parameters are inputs of the autograd Function (one
gradient per step for DDP and hooks), and the forward's RNG and autocast state are replayed in the backward (LoRA
dropout draws the same masks).
Kept over DeepSpeed 0.19.8's TiledMLP, slower at the same peak (bench/offload_tiling.py, one 64k sequence, 8k chunks:
16 layers on an H100 6,551 against 6,209 tokens/s; 4 on an H200 23,908 against 22,896), whose backward replays neither
the forward's autocast nor its RNG (LoRA dropout)."""
from __future__ import annotations

import types

import torch
from torch.autograd.function import once_differentiable


def _chunks(x2d: torch.Tensor, n: int):
    return [(s, x2d[s:s + n]) for s in range(0, x2d.shape[0], n)]


def _run_chunked(forward, x: torch.Tensor, n: int) -> torch.Tensor:
    """forward over at most n tokens of x flattened to (tokens, hidden), written into one tensor (a list + cat would
    hold the output twice)."""
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
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[3:]) if need]
        flat, g = x.detach().reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        gx = torch.empty_like(flat) if need_x else None
        gp = [None] * len(ctx.params)
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
                    inputs = ([part] if need_x else []) + [ctx.params[i] for i in wanted]
                    grads = torch.autograd.grad(y, inputs, g[s:s + part.shape[0]], allow_unused=True)
                    if need_x:
                        gx[s:s + part.shape[0]] = grads[0]
                    for i, d in zip(wanted, grads[int(need_x):]):
                        if d is not None:
                            gp[i] = d if gp[i] is None else gp[i].add_(d)
        return (None, None, gx.view_as(x) if need_x else None, *gp)


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
    """Patches every MLP's forward in place, before or after PEFT; returns how many.  Applying again changes the chunk
    size and tiles a forward replaced since (Liger rebinds each MLP's forward: training.AfterSetup re-applies)."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    found = mlp_modules(model)
    for mlp in found:
        if getattr(mlp.forward, "__func__", None) is not _tiled_forward:  # not yet, or replaced since (Liger's
            mlp._untiled_forward = mlp.forward  # instance patch binds its own forward): tile whatever runs now
            mlp.forward = types.MethodType(_tiled_forward, mlp)
        mlp._tiled_mlp_tokens = chunk_tokens
    return len(found)
