"""Aggregation of adapters with a trust matrix (pure tensor math, no I/O).

``mix_updates(before, deltas, W)``: theta_i <- theta_i_before + sum_j W_ij delta_j   (update mode)
``mix_weights(thetas, W)``:        theta_i <- sum_j W_ij theta_j                     (weight mode)
``restrict(W, neighbour_mask(N, "ring"))``: W limited to a communication graph, rows renormalised.
Shapes: before [n, P] (this process's users), deltas/thetas [N, P] (everyone), W [n, N] row-stochastic.
"""

from __future__ import annotations

import torch


def check_trust(w: torch.Tensor, n_rows: int, n_users: int, atol: float = 1e-6) -> None:
    """Raise ValueError unless W is [n_rows, n_users], finite, non-negative and row-stochastic."""
    if tuple(w.shape) != (n_rows, n_users):
        raise ValueError(f"trust matrix must be [{n_rows}, {n_users}], got {list(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("trust matrix has non-finite entries")
    if (w < -atol).any():
        raise ValueError("trust matrix has negative entries")
    if not torch.allclose(w.sum(1), torch.ones(n_rows, dtype=w.dtype), atol=atol):
        raise ValueError(f"trust rows must sum to 1, got {w.sum(1).tolist()}")


def mix_updates(before: torch.Tensor, deltas: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """theta_i_before + sum_j w_ij delta_j  -> [n, P] (in before's dtype)."""
    check_trust(w, before.shape[0], deltas.shape[0])
    return before + (w.to(device=deltas.device, dtype=deltas.dtype) @ deltas)


def mix_weights(thetas: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij theta_j -> [n, P]."""
    check_trust(w, w.shape[0], thetas.shape[0])
    return w.to(device=thetas.device, dtype=thetas.dtype) @ thetas


def neighbour_mask(n_users: int, topology: str) -> torch.Tensor:
    """[N, N] bool: who user i may receive from. 'full' = everyone; 'ring' = i-1, i, i+1 (mod N)."""
    if topology == "full":
        return torch.ones(n_users, n_users, dtype=torch.bool)
    if topology == "ring":
        idx = torch.arange(n_users)
        m = torch.zeros(n_users, n_users, dtype=torch.bool)
        for off in (-1, 0, 1):
            m[idx, (idx + off) % n_users] = True
        return m
    raise ValueError(f"unknown topology {topology!r}")


def restrict(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero W outside the graph and renormalise each row over the neighbours (self always kept)."""
    out = w * mask.to(w.dtype)
    sums = out.sum(1, keepdim=True)
    if (sums <= 0).any():
        raise ValueError("a user has no trusted neighbour left after restricting W to the graph")
    return out / sums


# ---- robust global aggregation (baselines for faulty peers; every receiver uses the senders it accepts) ----------


def coordinate_median(deltas: torch.Tensor, accept: torch.Tensor) -> torch.Tensor:
    """Per receiver a, the coordinate-wise median of the accepted updates: deltas [N, P], accept [n, N] -> [n, P]."""
    out = []
    for row in accept:
        out.append(deltas[row.to(deltas.device)].median(dim=0).values)  # lower median for an even count
    return torch.stack(out)


def trimmed_mean(deltas: torch.Tensor, accept: torch.Tensor, trim: float) -> torch.Tensor:
    """Coordinate-wise mean after dropping the ``floor(trim * m)`` largest and smallest of the m accepted values."""
    out = []
    for row in accept:
        d = deltas[row.to(deltas.device)]
        m = d.shape[0]
        k = min(int(trim * m), (m - 1) // 2)
        s = d.sort(dim=0).values
        out.append(s[k : m - k].mean(dim=0))
    return torch.stack(out)


def krum_select(deltas: torch.Tensor, candidates: list[int], f: int, m: int) -> list[int]:
    """(Multi-)Krum: the ``m`` candidates whose summed squared distance to their ``len - f - 2`` nearest other
    candidates is smallest (Blanchard et al. 2017); with fewer than ``f + 3`` candidates, the closest-to-all."""
    x = deltas[candidates].double()
    d2 = torch.cdist(x, x).pow(2)
    c = len(candidates)
    nn = max(1, c - f - 2)
    scores = []
    for a in range(c):
        others = torch.cat([d2[a, :a], d2[a, a + 1 :]])
        scores.append(float(others.sort().values[: min(nn, len(others))].sum()) if len(others) else 0.0)
    order = sorted(range(c), key=lambda a: (scores[a], candidates[a]))
    return [candidates[a] for a in order[: max(1, min(m, c))]]
