"""Strategy 'krum' (robust baseline, Blanchard et al. 2017): every user applies the mean of the ``trust.krum_select``
accepted updates with the smallest Krum score (sum of squared distances to the N - f - 2 nearest other updates;
f = ``trust.byzantine``, 'auto' = floor((N - 3) / 2), the most Krum tolerates). krum_select = 1 is Krum,
> 1 multi-Krum. Global aggregation: W is uniform over the selected updates (an exact description of the step)."""

from __future__ import annotations

import torch

from trustlora.aggregate import krum_select
from trustlora.trust import Strategy


def byzantine(cfg, n: int) -> int:
    return max(0, (n - 3) // 2) if cfg.byzantine == "auto" else int(cfg.byzantine)


class Krum(Strategy):
    name = "krum"
    needs: tuple[str, ...] = ("delta",)
    exchanges = True

    def trust(self, inp, cfg):
        n = inp.n_users
        deltas = inp.extra["delta"]
        accept = inp.mask if inp.mask is not None else torch.ones(len(inp.users), n, dtype=torch.bool)
        w = torch.zeros(len(inp.users), n, dtype=torch.float64)
        for a in range(len(inp.users)):
            cand = [j for j in range(n) if bool(accept[a, j])]
            chosen = krum_select(deltas, cand, byzantine(cfg, len(cand)), cfg.krum_select)
            w[a, chosen] = 1.0 / len(chosen)
        return w, None


from trustlora.trust import register  # noqa: E402

register(Krum())
