"""Strategy 'fedavg': W = 1/N, one global model (FedAvg baseline)."""

from __future__ import annotations

import torch

from trustlora.trust import Strategy


class FedAvg(Strategy):
    name = "fedavg"
    needs: tuple[str, ...] = ()
    exchanges = True

    def trust(self, inp, cfg):
        return torch.full((len(inp.users), inp.n_users), 1.0 / inp.n_users, dtype=torch.float64), None


from trustlora.trust import register  # noqa: E402

register(FedAvg())
