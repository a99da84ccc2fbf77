"""Strategy 'weights' (paper 3.2.1): trust from the adapters' parameters.

Default (``trust.scale=auto`` = relative): d_ij = ||m_i - m_j|| over the flattened accumulated changes
m = theta - theta0 (every user's movement from its initial adapter), unit u_i = ||m_i||; see
:mod:`trustlora.trust.normalise`. With shared initialisation the paper's cos(theta_i, theta_j) is ~1 for every
pair (all adapters share the same A), so it cannot discriminate; the movement can.
Paper-style (``scale=none|row_l1|row_mean``): S_ij = cos(theta_i, theta_j); W = softmax(S/tau).
"""

from __future__ import annotations

import torch

from trustlora.trust import Strategy
from trustlora.trust.normalise import normalise, normalise_relative, resolved_scale


def cosine_scores(theta: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """theta [N, P] -> cosine similarity of users ``rows`` to every user: [len(rows), N] float64."""
    t = theta.double()
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return t[rows] @ t.T


def movement_distances(theta: torch.Tensor, theta0: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """theta, theta0 [N, P] -> (||m_i - m_j|| [len(rows), N], ||m_i|| [len(rows)]) with m = theta - theta0."""
    m = theta.double() - theta0.double()
    return torch.cdist(m[rows], m), m[rows].norm(dim=1)


class Weights(Strategy):
    name = "weights"
    needs: tuple[str, ...] = ("theta",)
    exchanges = True
    update_check = True
    """``faults.update_check`` applies (a trust strategy; baselines stay plain)."""
    reference: tuple[str, ...] = ("theta0",)
    """What the relative calibration measures movement from (computed once per run by the protocol)."""

    def needs_reference(self, cfg) -> bool:
        return resolved_scale(cfg, "relative") == "relative"

    def trust(self, inp, cfg):
        if self.needs_reference(cfg):
            if inp.theta0 is None:
                raise ValueError("strategy 'weights' (relative scale) needs theta0, the initial adapters")
            d, unit = movement_distances(inp.theta, inp.theta0, inp.users)
            w, _ = normalise_relative(d, unit, inp.users, cfg, reference="closest", mask=inp.mask)
            return w, d
        s = cosine_scores(inp.theta, inp.users)
        return normalise(s, cfg, higher_is_better=True, mask=inp.mask), s


from trustlora.trust import register  # noqa: E402

register(Weights())
