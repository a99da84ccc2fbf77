"""Strategy 'median' (robust baseline): every user applies the coordinate-wise median of the updates it accepts.

Global aggregation (Yin et al. 2018): no personalisation; robust to a minority of arbitrary updates. W records
uniform weight over the accepted senders (the median is not a weighted average, so W is only bookkeeping).
"""

from __future__ import annotations

import torch

from trustlora.aggregate import coordinate_median
from trustlora.trust import Strategy


def uniform_rows(accept: torch.Tensor | None, n_rows: int, n_users: int) -> torch.Tensor:
    a = torch.ones(n_rows, n_users, dtype=torch.bool) if accept is None else accept.bool()
    return a.double() / a.double().sum(1, keepdim=True)


class Median(Strategy):
    name = "median"
    needs: tuple[str, ...] = ()
    exchanges = True

    def trust(self, inp, cfg):
        return uniform_rows(inp.mask, len(inp.users), inp.n_users), None

    def aggregate(self, before: torch.Tensor, deltas: torch.Tensor, accept: torch.Tensor, cfg) -> torch.Tensor:
        """before [n, P] + the coordinate-wise median of the accepted deltas [N, P] -> [n, P]."""
        return before + coordinate_median(deltas, accept).to(before.dtype)


from trustlora.trust import register  # noqa: E402

register(Median())
