"""Turn trust scores into row-stochastic weights (pure tensor functions).

``normalise(scores, cfg, higher_is_better)``: optional rescaling (``cfg.scale``), then softmax with
temperature, or top-k / threshold sparsification. Every row of the result sums to 1.
"""

from __future__ import annotations

import torch

from trustlora.config import TrustConfig


def rescale(scores: torch.Tensor, how: str) -> torch.Tensor:
    """'none'; 'row_l1': S / sum_j |S_ij| * 10 (the official code); 'row_mean': S / mean_j |S_ij|."""
    s = scores.double()
    if how == "none":
        return s
    denom = s.abs().sum(dim=1, keepdim=True) if how == "row_l1" else s.abs().mean(dim=1, keepdim=True)
    out = s / denom.clamp_min(1e-12)
    return out * 10.0 if how == "row_l1" else out


def softmax_rows(sim: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(sim.double() / temperature, dim=1)


def topk_rows(sim: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Softmax over the k most similar entries of each row; the others get 0."""
    k = min(k, sim.shape[1])
    idx = sim.topk(k, dim=1).indices
    masked = torch.full_like(sim, float("-inf"), dtype=torch.float64)
    masked.scatter_(1, idx, sim.double().gather(1, idx))
    return torch.softmax(masked / temperature, dim=1)


def threshold_rows(sim: torch.Tensor, threshold: float) -> torch.Tensor:
    """Uniform weight on entries whose min-max normalised similarity is >= threshold (the best always kept)."""
    s = sim.double()
    lo, hi = s.min(dim=1, keepdim=True).values, s.max(dim=1, keepdim=True).values
    rel = (s - lo) / (hi - lo).clamp_min(1e-12)
    keep = (rel >= threshold) | (s == hi)
    w = keep.double()
    return w / w.sum(dim=1, keepdim=True)


def normalise(scores: torch.Tensor, cfg: TrustConfig, higher_is_better: bool, auto_scale: str = "none") -> torch.Tensor:
    """Scores [n, N] -> row-stochastic W [n, N] (float64). ``auto_scale`` is used when ``cfg.scale == 'auto'``."""
    s = rescale(scores, auto_scale if cfg.scale == "auto" else cfg.scale)
    sim = s if higher_is_better else -s
    if cfg.normaliser == "softmax":
        return softmax_rows(sim, cfg.temperature)
    if cfg.normaliser == "topk":
        return topk_rows(sim, cfg.top_peers, cfg.temperature)
    return threshold_rows(sim, cfg.threshold)
