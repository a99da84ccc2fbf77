"""Aggregation of adapters with a trust matrix (pure tensor math, no I/O).

``mix_updates(before, deltas, W)``: theta_i <- theta_i_before + sum_j W_ij delta_j   (update mode)
``mix_weights(thetas, W)``:        theta_i <- sum_j W_ij theta_j                     (weight mode)
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
    return before + (w.to(deltas.dtype) @ deltas)


def mix_weights(thetas: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij theta_j -> [n, P]."""
    check_trust(w, w.shape[0], thetas.shape[0])
    return w.to(thetas.dtype) @ thetas
