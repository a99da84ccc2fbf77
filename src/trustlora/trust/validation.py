"""Strategy 'validation' (paper 3.2.2): S_ij = mean CE of user j's model on user i's val split.

Default (``trust.scale=auto`` = relative, ``trust.val_reference=self``): d_ij = S_ij, reference = S_ii (user i's
own model), unit u_i = CE gain of the best model on i's val split over the frozen base model (min_j S_ij vs the
base's CE on the same tokens). So z_ij = max(0, S_ij - S_ii) / u_i: every peer at least as good as i's own model on
i's val split shares the top weight with self (FedFomo's criterion: a peer helps if it beats my model on my data),
a worse one loses weight by the share of i's achievable improvement it gives up (see
:mod:`trustlora.trust.normalise`). Why self and not the best model: on a few hundred val tokens the best of N
models wins by noise and model-to-model variation as much as by relevance; measured on LibreOffice fr/it/de (9
users), i's own model is on average 0.1 of the gain behind the best, as are same-language peers, while other
languages are 0.5-0.7 behind. With ``val_reference=best`` (the previous default) the best model took most of the
row (2 effective peers against the oracle's 3). ``val_reference=best``: z_ij = (S_ij - min_k S_ik) / u_i, self
competing like any peer.
Paper-style (``scale=none``): W = softmax(-S/tau); the official code uses perplexity: ``trust.val_metric=ppl``.
"""

from __future__ import annotations

import torch

from trustlora.trust.normalise import normalise, normalise_relative, resolved_scale


def validation_scores(val_losses: torch.Tensor, metric: str) -> torch.Tensor:
    """[n, N] mean CE -> scores (lower is better): CE itself or exp(CE)."""
    s = val_losses.double()
    return s.exp() if metric == "ppl" else s


def validation_gain(
    val_losses: torch.Tensor, base_losses: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Unit of the relative scale: base CE minus the best (allowed, ``mask``) model's CE on each user's val tokens,
    [n]."""
    s = val_losses.double()
    if mask is not None:
        s = torch.where(mask.bool(), s, torch.full_like(s, float("inf")))
    return base_losses.double() - s.min(dim=1).values


class Validation:
    name = "validation"
    needs: tuple[str, ...] = ("theta", "val_cross")
    exchanges = True
    reference: tuple[str, ...] = ("val_base",)
    """What the relative calibration measures movement from (computed once per run by the protocol)."""

    def needs_reference(self, cfg) -> bool:
        return resolved_scale(cfg, "relative") == "relative"

    def trust(self, inp, cfg):
        s = validation_scores(inp.val_losses, cfg.val_metric)
        if self.needs_reference(cfg):
            if inp.val_base_losses is None:
                raise ValueError("strategy 'validation' (relative scale) needs the base model's val losses")
            base = validation_scores(inp.val_base_losses.view(-1, 1), cfg.val_metric).view(-1)
            mask = inp.mask
            if mask is not None:  # self is always allowed
                mask = mask.bool().clone()
                mask[torch.arange(len(inp.users)), torch.tensor(inp.users)] = True
            unit = validation_gain(s, base, mask)
            w, _ = normalise_relative(s, unit, inp.users, cfg, reference=cfg.val_reference, mask=inp.mask)
            return w, s
        return normalise(s, cfg, higher_is_better=False, mask=inp.mask), s


from trustlora.trust import register  # noqa: E402

register(Validation())
