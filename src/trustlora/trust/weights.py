"""Strategy 'weights' (paper 3.2.1): S_ij = cos(theta_i, theta_j) over the flattened adapters; W = softmax(S/tau)."""

from __future__ import annotations

import torch

from trustlora.trust.normalise import normalise


def cosine_scores(theta: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """theta [N, P] -> cosine similarity of users ``rows`` to every user: [len(rows), N] float64."""
    t = theta.double()
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return t[rows] @ t.T


class Weights:
    name = "weights"
    needs: tuple[str, ...] = ("theta",)
    exchanges = True

    def trust(self, inp, cfg):
        s = cosine_scores(inp.theta, inp.users)
        return normalise(s, cfg, higher_is_better=True), s


from trustlora.trust import register  # noqa: E402

register(Weights())
