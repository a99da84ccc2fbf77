"""Base-model loading and the stacked multi-user models (LoRA adapters, or full fine-tuning)."""

from __future__ import annotations

from torch import nn

from trustlora.config import LoraConfig


def build_stack(model: nn.Module, n_users: int, cfg: LoraConfig, **kw) -> nn.Module:
    """``MultiFull`` for ``lora.targets=[full]``, else ``MultiLoRA`` (same interface)."""
    from trustlora.model.multifull import MultiFull, is_full
    from trustlora.model.multilora import MultiLoRA

    cls = MultiFull if is_full(cfg) else MultiLoRA
    return cls(model, n_users, cfg, **kw)
