"""Strategy 'validation' (paper 3.2.2): S_ij = mean CE of user j's model on user i's val split; W = softmax(-S/tau).

The official code uses perplexity instead of CE: ``trust.val_metric=ppl``.
"""

from __future__ import annotations

import torch

from trustlora.trust.normalise import normalise


def validation_scores(val_losses: torch.Tensor, metric: str) -> torch.Tensor:
    """[n, N] mean CE -> scores (lower is better): CE itself or exp(CE)."""
    s = val_losses.double()
    return s.exp() if metric == "ppl" else s


class Validation:
    name = "validation"
    needs: tuple[str, ...] = ("theta", "val_cross")
    exchanges = True

    def trust(self, inp, cfg):
        s = validation_scores(inp.val_losses, cfg.val_metric)
        return normalise(s, cfg, higher_is_better=False), s


from trustlora.trust import register  # noqa: E402

register(Validation())
