"""--fused_lora: each plain LoRA layer (see _fusable; anything else runs PEFT's forward) as one autograd function: the
up-projection added into the base output in place (`addmm_(x A^T, B^T, alpha=scaling)`), the input gradient `g W +
scaling (g B) A` in one buffer, not PEFT's three full-width tensors (~0.8 GB of traffic per layer and pass at 16k)."""
from __future__ import annotations

import types

import torch
from torch import nn


def _dense_weight(base: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    # not PEFT's dequantize_module_weight: on a CPU it replaces base.weight with a new Params4bit at every call
    weight = base.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:  # bitsandbytes Params4bit: (out, in) after dequantizing
        import bitsandbytes.functional as bnbf

        weight = bnbf.dequantize_4bit(weight.data, quant_state)
    return weight.to(dtype)


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, A, B, base, scaling, dtype):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(dtype)
        weight, bias = _dense_weight(base, dtype), base.bias
        out = torch.addmm(bias.to(dtype), x2, weight.t()) if bias is not None else x2 @ weight.t()
        del weight
        xa = x2 @ A.to(dtype).t()
        out.addmm_(xa, B.to(dtype).t(), alpha=scaling)
        # x itself when no copy was made: a tensor saved by q, k and v alike is one tensor to the offload hooks
        ctx.save_for_backward(x2 if x2.data_ptr() != x.data_ptr() else x, xa, A, B)
        ctx.base, ctx.scaling, ctx.dtype, ctx.x_shape, ctx.x_dtype = base, scaling, dtype, shape, x.dtype
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, xa, A, B = ctx.saved_tensors
        dtype, scaling = ctx.dtype, ctx.scaling
        x2 = x2.reshape(-1, x2.shape[-1])
        g2 = grad.reshape(-1, grad.shape[-1]).to(dtype)
        a, b = A.to(dtype), B.to(dtype)
        gb = g2 @ b  # (tokens, r): the gradient reaching x A^T, before scaling
        grad_x = grad_A = grad_B = None
        if ctx.needs_input_grad[0]:
            grad_x = g2 @ _dense_weight(ctx.base, dtype)
            grad_x.addmm_(gb, a, alpha=scaling)
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_A = (gb.t() @ x2).mul_(scaling).to(A.dtype)
        if ctx.needs_input_grad[2]:
            grad_B = (g2.t() @ xa).mul_(scaling).to(B.dtype)
        return grad_x, grad_A, grad_B, None, None, None


def _compute_dtype(x: torch.Tensor, base: nn.Module) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    quant_state = getattr(base.weight, "quant_state", None)
    return getattr(base, "compute_dtype", None) or (quant_state.dtype if quant_state is not None else x.dtype)


def _fused_forward(self, x, *args, **kwargs):
    adapters = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1 or adapters[0] not in self.lora_A:
        return self._unfused_forward(x, *args, **kwargs)
    name = adapters[0]
    A, B = self.lora_A[name].weight, self.lora_B[name].weight
    base = self.get_base_layer()
    with torch.autocast(x.device.type, enabled=False):
        return _LoraLinear.apply(x, A, B, base, self.scaling[name], _compute_dtype(x, base))


def _fusable(layer) -> bool:
    from peft.tuners.lora import LoraLayer

    if not isinstance(layer, LoraLayer) or len(layer.lora_A) != 1:
        return False
    name = next(iter(layer.lora_A))
    base = layer.get_base_layer()
    plain = type(base) is nn.Linear or type(base).__name__ == "Linear4bit"
    return (plain and not base.weight.requires_grad and isinstance(layer.lora_dropout[name], nn.Identity)
            and not layer.use_dora.get(name, False) and not getattr(layer, "lora_bias", {}).get(name, False)
            and not getattr(layer, "lora_variant", {}).get(name) and layer.lora_B[name].bias is None
            and type(layer.lora_A[name]) is nn.Linear and type(layer.lora_B[name]) is nn.Linear)


def fuse_lora_layers(model) -> int:
    """Routes every fusable LoRA layer's forward through _LoraLinear; returns how many."""
    count = 0
    for module in model.modules():
        if _fusable(module) and not hasattr(module, "_unfused_forward"):
            module._unfused_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
