"""Strategy 'krum' (robust baseline, Blanchard et al. 2017): every user applies the mean of the ``trust.krum_select``
accepted updates with the smallest Krum score (sum of squared distances to the N - f - 2 nearest other updates;
f = ``trust.byzantine``, 'auto' = floor((N - 3) / 2), the most Krum tolerates). krum_select = 1 is Krum,
> 1 multi-Krum. Global aggregation: W is uniform over the selected updates (an exact description of the step)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trustlora.aggregate import krum_select
from trustlora.config import expect
from trustlora.trust import Strategy


@dataclass
class KrumOptions:
    """Options of strategy 'krum'."""

    byzantine: int | str = "auto"
    """f, the number of faulty peers to tolerate ('auto' = floor((N - 3) / 2))."""
    krum_select: int = 1
    """Updates averaged (1 = Krum; more = multi-Krum)."""

    def validate(self) -> None:
        expect(
            self.byzantine == "auto" or (isinstance(self.byzantine, int) and self.byzantine >= 0),
            "trust.byzantine",
            "an integer >= 0 or 'auto'",
            self.byzantine,
        )
        expect(
            isinstance(self.krum_select, int) and self.krum_select >= 1,
            "trust.krum_select",
            "an integer >= 1",
            self.krum_select,
        )


def byzantine(cfg, n: int) -> int:
    return max(0, (n - 3) // 2) if cfg.byzantine == "auto" else int(cfg.byzantine)


class Krum(Strategy):
    name = "krum"
    Options = KrumOptions
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
