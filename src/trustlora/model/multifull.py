"""N users each fine-tuning ALL weights of one causal LM (the full fine-tuning arm of the placement ablation).

Same interface as :class:`~trustlora.model.multilora.MultiLoRA`, so the trainer, the trust strategies and
the protocol run unchanged; selected with ``lora.targets=[full]``::

    mf = MultiFull(base_model, n_users=4, cfg=LoraConfig(targets=["full"]))
    logits = mf(input_ids)       # [N*B, T] user-major; user u runs the model with ITS weights
    flat = mf.get_flat()         # [N, P] with P = every parameter of the model (fp32)

Each trainable base parameter is held as one stacked ``[N, *shape]`` fp32 tensor; user u's forward is a
``torch.func.functional_call`` with slice u (tied weights stay tied). Users run one after another, so this
costs N full forward/backward passes and ~16 bytes per parameter per user (weights, grads, AdamW state):
meant for a few users of a small model, to compare against the adapters' cost per trainable parameter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from trustlora.cache import atomic_write_bytes, atomic_write_text
from trustlora.config import LoraConfig
from trustlora.model import StackBase


def is_full(cfg: LoraConfig) -> bool:
    return list(cfg.targets) == ["full"]


class MultiFull(StackBase):
    """Stacked copies of every parameter of ``model`` (the model itself stays frozen as the base)."""

    def _build(self) -> None:
        model = self.model
        self.names = [name for name, _ in model.named_parameters()]  # tied weights appear once
        self.stacked = nn.ParameterList(
            nn.Parameter(torch.empty(self.n_users, *p.shape, dtype=torch.float32, device=p.device))
            for _, p in model.named_parameters()
        )
        self.target_names = ["full"]
        self._enabled = True

    @property
    def device(self) -> torch.device:
        return self.stacked[0].device

    def adapter_parameters(self) -> list[nn.Parameter]:
        return list(self.stacked)

    def num_adapter_params(self) -> int:
        return sum(p[0].numel() for p in self.stacked)

    @torch.no_grad()
    def reset_adapters(self, seed: int) -> None:
        """Every user starts from the pretrained weights (``seed`` is unused: there is nothing random)."""
        for p, (_, base) in zip(self.stacked, self.model.named_parameters(), strict=True):
            p.copy_(base.detach().float().unsqueeze(0).expand_as(p))

    @torch.no_grad()
    def get_flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(self.n_users, -1) for p in self.stacked], dim=1).float()

    @torch.no_grad()
    def set_flat(self, flat: torch.Tensor) -> None:
        total = self.num_adapter_params()
        if tuple(flat.shape) != (self.n_users, total):
            raise ValueError(f"flat weights must be [{self.n_users}, {total}], got {list(flat.shape)}")
        off = 0
        for p in self.stacked:
            k = p[0].numel()
            p.copy_(flat[:, off : off + k].reshape(p.shape).to(p.device))
            off += k

    def adapters_enabled(self, on: bool) -> None:
        """Off = every user evaluates the pretrained model."""
        self._enabled = on

    def user_params(self, user: int) -> dict[str, torch.Tensor]:
        return {name: p[user] for name, p in zip(self.names, self.stacked, strict=True)}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids: [N*B, T]`` user-major -> logits ``[N*B, T, V]``."""
        self.positions += input_ids.numel()
        if not self._enabled:
            return self.model(input_ids=input_ids, use_cache=False).logits
        chunks = input_ids.view(self.n_users, -1, input_ids.shape[-1])
        out = []
        for u in range(self.n_users):
            kwargs = {"input_ids": chunks[u], "use_cache": False}
            out.append(functional_call(self.model, self.user_params(u), args=(), kwargs=kwargs).logits)
        return torch.cat(out, dim=0)

    def export(self, user: int, out_dir: str | Path, base_name: str) -> Path:
        """User ``user``'s fine-tuned model as ``model.safetensors`` + ``config.json`` (``from_pretrained``-able)."""
        from safetensors.torch import save

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sd = {name: t.detach().contiguous().clone() for name, t in self.user_params(user).items()}
        atomic_write_bytes(out / "model.safetensors", save(sd, metadata={"format": "pt"}))
        config = json.loads(self.model.config.to_json_string())
        config["trustlora_base_model"] = base_name
        atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
        return out
