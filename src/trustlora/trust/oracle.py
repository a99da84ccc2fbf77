"""Strategy 'oracle': W = row-normalise(D D^T) from the known users x categories mixture D."""

from __future__ import annotations

import numpy as np
import torch

from trustlora.trust import Strategy


def oracle_matrix(mixture: np.ndarray) -> np.ndarray:
    """Row-normalised D D^T: user i trusts j in proportion to the overlap of their data mixtures."""
    d = np.asarray(mixture, dtype=np.float64)
    s = d @ d.T
    return s / s.sum(axis=1, keepdims=True)


class Oracle(Strategy):
    name = "oracle"
    needs: tuple[str, ...] = ()
    exchanges = True

    def trust(self, inp, cfg):
        if inp.mixture is None:
            raise ValueError("strategy 'oracle' needs the data mixture matrix")
        full = torch.from_numpy(oracle_matrix(inp.mixture))
        return full[inp.users], None


from trustlora.trust import register  # noqa: E402

register(Oracle())
