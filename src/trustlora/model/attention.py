"""CPU attention for LLaMA-family models: Hugging Face's eager attention, bitwise, with fewer passes over memory.

HF's eager attention (``eager_attention_forward`` of llama, mistral, qwen2, qwen3, smollm3) copies K and V once per
query head of a group (``repeat_kv``; its backward sums the copies again), multiplies the bf16 scores by the scale,
adds the fp32 mask, and runs an fp32 softmax. :func:`grouped_eager_attention` computes the same products and the same
roundings (bf16 scores scaled in bf16, fp32 mask add and softmax, probabilities cast back to the query's dtype) but
lets the ``groups`` query heads of one K/V head attend through a view, ``[B, kv, groups*T, D] @ [B, kv, D, T]``: no K/V
copies forward, no reductions over the groups backward, and the scale applied in place. Forward + backward of 4 x 9
heads x 128 x 64 (SmolLM2's shape): 2.7 ms vs 4.7-5.1 ms eager on a 2-core Xeon. Outputs are equal bitwise; gradients
with respect to K and V are summed over a group inside one product instead of over copies afterwards, so they equal
eager's up to summation order (fp32: 1e-6 relative; bf16: 1 % relative, within bf16's own 4.6 % from fp32).

Where no gradient is wanted (evaluation, trust passes: no input requires grad), the same mask goes to PyTorch's SDPA
instead (:data:`NO_GRAD_SDPA`), whose CPU flash kernel keeps the scores in cache in fp32 and never rounds them or the
probabilities to bf16: 48 x 9 heads x 128 x 64 (6 users x 8 eval windows) in 4.6 ms vs 12.4 ms grouped eager in bf16,
12.7 vs 17.1 ms in fp32 (2-core Xeon), and closer to a float64 reference (bf16: max error 0.009 vs 0.016). In bf16 on
a CPU without AMX (AVX512-BF16 alone) grouped eager stays, being the faster there (evaluation pass 0.94x). For
training, eager stays: SDPA's CPU backward is ~1.8x slower at these shapes.

:func:`use_grouped_attention` switches a loaded model to it (``load_base`` does, on CPU, for the families above)::

    use_grouped_attention(model)      # True if switched; other models keep their own attention
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trustlora import cpu

NAME = "trustlora_grouped_eager"
NO_GRAD_SDPA: bool | None = None
"""Passes without autograd (no query/key/value requires grad) attend through ``F.scaled_dot_product_attention`` with
the same additive mask; False keeps eager's products there too (benchmarks compare the two). None (the default):
SDPA except for bf16 on a CPU without AMX (:func:`trustlora.cpu.has_amx`), where its bf16 kernel is the slower one
(6 users' evaluation pass 5.58-5.70 s eager vs 5.97-6.08 s SDPA on a 2-core AMD EPYC with AVX512-BF16; with AMX
SDPA took 0.87x, on a Xeon)."""


def _no_grad_sdpa(query: torch.Tensor) -> bool:
    if NO_GRAD_SDPA is not None:
        return NO_GRAD_SDPA
    dev = query.device.type
    # the dtype the products run in: under autocast its dtype (HF's rotary leaves q and k in the fp32 residual's dtype)
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else query.dtype
    return not (dtype == torch.bfloat16 and dev == "cpu" and not cpu.has_amx())


FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3"})
"""Model types whose eager attention is exactly the function reproduced here (no soft-capping, sinks or extra terms;
sliding windows come in through the mask)."""


def grouped_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``query [B, H, T, D]``, ``key``/``value [B, KV, S, D]`` (H = KV x groups), additive ``attention_mask``
    broadcastable to ``[B, H, T, S]`` -> (output ``[B, T, H, D]`` contiguous, probabilities ``[B, H, T, S]``), the
    signature and results of HF's ``eager_attention_forward``; without autograd (:data:`NO_GRAD_SDPA`) the output
    of SDPA under the same mask and no probabilities (None), as HF's SDPA path returns."""
    b, h, t, d = query.shape
    kv, s = key.shape[1], key.shape[2]
    if not (query.requires_grad or key.requires_grad or value.requires_grad) and _no_grad_sdpa(query):
        if dropout == 0.0 or not module.training:
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=h != kv
            )
            return out.transpose(1, 2).contiguous(), None
    q = query.reshape(b, kv, (h // kv) * t, d)  # heads kv*g + j, j < g: the query heads reading K/V head kv
    scores = torch.matmul(q, key.transpose(2, 3)).mul_(scaling).view(b, h, t, s)  # bf16 x scale in bf16, as eager
    if attention_mask is not None:
        scores = torch.add(scores, attention_mask)  # bf16 + fp32 mask -> fp32, as eager
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout > 0.0 and module.training:
        probs = F.dropout(probs, p=dropout, training=True)
    out = torch.matmul(probs.view(b, kv, (h // kv) * t, s), value).view(b, h, t, d)
    return out.transpose(1, 2).contiguous(), probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, grouped_eager_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)  # the masks eager attention gets


def use_grouped_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` (eager attention, a family in :data:`FAMILIES`) to :func:`grouped_eager_attention`. Returns
    whether it did; any other model, or a transformers version without the attention registry, is left as it is."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in FAMILIES or getattr(cfg, "_attn_implementation", None) != "eager":
        return False
    try:
        _register()
    except (ImportError, AttributeError):
        return False
    cfg._attn_implementation = NAME
    return True
