"""Strategy 'local': W = I, every user trains alone (lower baseline)."""

from __future__ import annotations

import torch

from trustlora.trust import Strategy


class Local(Strategy):
    name = "local"
    needs: tuple[str, ...] = ()
    exchanges = False

    def trust(self, inp, cfg):
        w = torch.zeros(len(inp.users), inp.n_users, dtype=torch.float64)
        w[torch.arange(len(inp.users)), torch.tensor(inp.users)] = 1.0
        return w, None


from trustlora.trust import register  # noqa: E402

register(Local())
