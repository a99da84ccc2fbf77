"""Strategy 'validation' (paper 3.2.2): S_ij = mean CE of user j's model on user i's val split.

Default (``trust.scale=auto`` = relative): d_ij = S_ij, unit u_i = CE gain of the best model on i's val split
over the frozen base model (min_j S_ij vs the base's CE on the same tokens), so a peer's z is the share of
user i's achievable improvement lost by taking j's model instead of the best one (see
:mod:`trustlora.trust.normalise`). Self competes like any peer: a peer whose model is better on i's own val
split gets more weight than i's own model.
Paper-style (``scale=none``): W = softmax(-S/tau); the official code uses perplexity: ``trust.val_metric=ppl``.
"""

from __future__ import annotations

import torch

from trustlora.trust.normalise import normalise, normalise_relative, resolved_scale


def validation_scores(val_losses: torch.Tensor, metric: str) -> torch.Tensor:
    """[n, N] mean CE -> scores (lower is better): CE itself or exp(CE)."""
    s = val_losses.double()
    return s.exp() if metric == "ppl" else s


def validation_gain(val_losses: torch.Tensor, base_losses: torch.Tensor) -> torch.Tensor:
    """Unit of the relative scale: base CE minus the best model's CE on each user's val tokens, [n]."""
    return base_losses.double() - val_losses.double().min(dim=1).values


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
            w, _ = normalise_relative(s, validation_gain(s, base), inp.users, cfg, self_is_best=False, mask=inp.mask)
            return w, s
        return normalise(s, cfg, higher_is_better=False, mask=inp.mask), s


from trustlora.trust import register  # noqa: E402

register(Validation())
