"""RMSNorm with a hand-written backward for LLaMA-family models (CPU): HF's forward, bitwise, and fewer backward passes.

HF's ``LlamaRMSNorm`` (also mistral, qwen2, qwen3, smollm3) computes ``w * (x * rsqrt(mean(x^2) + eps))`` in fp32 and
leaves its backward to autograd, which takes ~9 passes over ``[M, d]`` (the products' backwards, the mean's expand, the
power's). :class:`RMSNormFunction` runs the same forward ops and computes the input gradient in closed form,
``r * (g_w - xh * mean(g_w * xh))`` with ``g_w = grad * w`` and ``xh = x * r``: 4 passes. Gradients equal autograd's to
fp32 rounding (tested); the forward is unchanged bitwise. Under autocast a decoder layer's input and post-attention
norms (:data:`CAST_OUT`) return their product in the autocast dtype, the values the next linears' cast would give,
bitwise (tested). On CPU this saves no memory traffic: ``torch.mul(..., out=bf16)`` of fp32 operands computes into an
fp32 temporary and copies it (profiler: ``empty_like`` + ``copy_``), the passes the linears' cast would take; measured
within noise (bf16 on a 2-core Xeon with AMX, alternating: training step 0.994x, evaluation pass 0.985x).
:func:`use_fast_rmsnorm` switches a loaded model's norms::

    use_fast_rmsnorm(model)     # number of norm modules switched (0 for other families)
"""

from __future__ import annotations

import types

import torch

from trustlora.model.attention import FAMILIES


class RMSNormFunction(torch.autograd.Function):
    """``(x [..., d], weight [d], eps) -> weight * (x_fp32 * rsqrt(mean(x_fp32^2) + eps)).to(x.dtype)`` (HF's)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, cast_out: bool = False) -> torch.Tensor:
        xf = x.to(torch.float32)
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        xh = xf * r
        xc = xh.to(x.dtype)
        ctx.save_for_backward(xh, r, weight, xc if weight.requires_grad else None)
        ctx.x_dtype = x.dtype
        dev = x.device.type
        if cast_out and torch.is_autocast_enabled(dev):
            # the product rounded once into the autocast dtype: the values the next linear's autocast cast gives
            # (on CPU through an fp32 temporary: no fewer passes than that cast)
            out = torch.empty(x.shape, dtype=torch.get_autocast_dtype(dev), device=x.device)
            return torch.mul(weight, xc, out=out)
        return weight * xc

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xh, r, weight, xc = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            g = (grad * weight).to(torch.float32)  # gradient with respect to xh
            dot = (g * xh).sum(-1, keepdim=True)
            gx = torch.addcmul(g, xh, dot, value=-1.0 / xh.shape[-1]).mul_(r).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            gw = (grad * xc).reshape(-1, grad.shape[-1]).sum(0).to(weight.dtype)
        return gx, gw, None, None


def _forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon, False)


def _forward_cast(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon, True)


CAST_OUT = ("input_layernorm", "post_attention_layernorm")
"""Norms whose output only feeds linear layers (a decoder layer's attention and MLP inputs): under autocast they
return the autocast dtype directly (bitwise what the linears' autocast cast would give). Other norms (the final norm
before the head, Qwen3's q/k norms) keep their dtype."""


def use_fast_rmsnorm(model: torch.nn.Module) -> int:
    """Give every HF RMSNorm of ``model`` (a family in ``FAMILIES``) :class:`RMSNormFunction`; returns how many."""
    if getattr(getattr(model, "config", None), "model_type", None) not in FAMILIES:
        return 0
    n = 0
    for name, m in model.named_modules():
        if type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon") and hasattr(m, "weight"):
            cast = name.rsplit(".", 1)[-1] in CAST_OUT
            m.forward = types.MethodType(_forward_cast if cast else _forward, m)
            n += 1
    return n
