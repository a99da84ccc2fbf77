"""Base-model loading and the stacked multi-user models (LoRA adapters, or full fine-tuning).

Both stacks implement :class:`UserStack`, the interface the trainer, the round and the run loop use; an optional
part (user chunking and the chunked LM head) is present only where the stack supports it (``MultiLoRA``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from trustlora.config import LoraConfig


@runtime_checkable
class UserStack(Protocol):
    """N users' trainable parameters on one frozen base model, run as one user-major batch ``[N*B, T]``."""

    n_users: int
    """Users (slots) hosted here."""

    @property
    def device(self) -> torch.device: ...

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every trainable tensor, each ``[N, ...]`` (slot-major), in a fixed order."""
        ...

    def num_adapter_params(self) -> int:
        """Trainable parameters per user."""
        ...

    def reset_adapters(self, seed: int) -> None:
        """Fresh per-user parameters for model seed ``seed``."""
        ...

    def get_flat(self) -> torch.Tensor:
        """``[N, P]`` fp32: every user's parameters as one vector (what the round exchanges)."""
        ...

    def set_flat(self, flat: torch.Tensor) -> None:
        """Inverse of :meth:`get_flat`."""
        ...

    def adapters_enabled(self, on: bool) -> None:
        """Off: the frozen base model alone (base-model evaluation)."""
        ...

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[N*B, T]`` user-major ids -> logits ``[N*B, T, V]``."""
        ...

    def export(self, user: int, out_dir: str | Path, base_name: str) -> Path:
        """Write user ``user``'s trained parameters where a user can load them (PEFT adapter, or a full model)."""
        ...

    # optional (MultiLoRA): ``slots(start, stop)`` (user chunking), ``lm_head`` / ``hidden(ids)`` /
    # ``head_weight(dtype)`` (loss in chunks without full logits), ``dropout_state()`` / ``load_dropout_state()``.


class StackBase(nn.Module):
    """What both stacks set up alike: the frozen base ``model``, the hosted slots' global user ids and the run's
    number of users (``user_ids`` default ``0..n_users-1``; ``n_total`` default their max + 1); then the subclass'
    ``_build()`` (its trainable tensors) and ``reset_adapters(seed)``."""

    def __init__(
        self,
        model: nn.Module,
        n_users: int,
        cfg: LoraConfig,
        seed: int = 0,
        user_ids: list[int] | None = None,
        n_total: int | None = None,
    ):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.n_users = n_users  # slots hosted here
        self.user_ids = user_ids if user_ids is not None else list(range(n_users))  # their global ids
        self.n_total = n_total if n_total is not None else max(self.user_ids) + 1  # users in the whole run
        for p in model.parameters():
            p.requires_grad_(False)
        self.positions = 0  # token positions run through the model so far (all slots; for FLOP accounting)
        self._build()
        self.reset_adapters(seed)

    def _build(self) -> None:
        """Create the stack's trainable tensors (called once, from ``__init__``)."""
        raise NotImplementedError

    def reset_adapters(self, seed: int = 0) -> None:
        raise NotImplementedError


def build_stack(model: nn.Module, n_users: int, cfg: LoraConfig, **kw) -> UserStack:
    """``MultiFull`` for ``lora.targets=[full]``, else ``MultiLoRA`` (same :class:`UserStack` interface)."""
    from trustlora.model.multifull import MultiFull, is_full
    from trustlora.model.multilora import MultiLoRA

    cls = MultiFull if is_full(cfg) else MultiLoRA
    return cls(model, n_users, cfg, **kw)
