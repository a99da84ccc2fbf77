"""Turn trust scores into row-stochastic weights (pure tensor functions).

Two families of calibration (``trust.scale``):

* **relative** (the default, ``scale=auto`` for weights / validation / predictions): every strategy
  hands over a *distance-like* score d_ij (lower = more alike) plus, per user i, a *unit* u_i = how far
  user i's own training moved it from the shared starting point, measured with the same score (its
  predictions' L1 distance to the base model's, the CE gain of its model over the base model on its val
  split, the norm of its accumulated adapter change). Then

      z_ij = max(0, d_ij - ref_i) / u_i        ref_i = the closest peer's distance (self counts as the closest
                                               peer), or, for validation, the user's own model's CE
      w_ij = exp(-z_ij / tau) / sum_k exp(-z_ik / tau)

  z is a fraction of the user's own movement: it does not change when all scores are rescaled (corpus,
  number of steps, vocabulary, metric units) and one peer's z does not depend on how many other peers
  exist (N). Peers that are as close as the closest peer share the top weight with self; a peer whose
  extra distance equals tau x the user's own movement gets 1/e of it. When peers are not distinguishable
  (all d_ij about equal) W tends to uniform, i.e. FedAvg; when they are (other language), they get ~0.
* **paper-style**: a rescaling of the raw score (``none`` = the paper's formula softmax(+-S / tau),
  ``row_l1`` = the official code's S / sum_j S_ij * 10, ``row_mean``), then the normaliser.

Normalisers (``trust.normaliser``): softmax with temperature, top-k (softmax over the best k, others 0),
threshold (uniform over entries whose min-max normalised similarity is >= threshold). Every row of the
result sums to 1. An optional boolean ``mask`` [n, N] (communication graph, e.g. a ring) removes
non-neighbours *before* the reference and the normalisation are computed, so they cannot move a row.
"""

from __future__ import annotations

import torch

from trustlora.config import TrustConfig

RELATIVE_TEMPERATURE = 0.1
"""Default tau of the relative calibration (a fraction of a user's own movement); see README 'Trust'."""
PAPER_TEMPERATURE = 1.0
"""Default tau of the paper-style calibrations (the paper's softmax temperature)."""


def resolved_scale(cfg: TrustConfig, auto_scale: str) -> str:
    return auto_scale if cfg.scale == "auto" else cfg.scale


def resolved_temperature(cfg: TrustConfig, scale: str, relative_default: float = RELATIVE_TEMPERATURE) -> float:
    """``trust.temperature=auto`` -> the calibration's default tau (``relative_default``: the strategy's own
    default for the relative scale, where each strategy's distance has its own contrast)."""
    if cfg.temperature != "auto":
        return float(cfg.temperature)
    return relative_default if scale == "relative" else PAPER_TEMPERATURE


def rescale(scores: torch.Tensor, how: str) -> torch.Tensor:
    """'none'; 'row_l1': S / sum_j |S_ij| * 10 (the official code); 'row_mean': S / mean_j |S_ij|."""
    s = scores.double()
    if how == "none":
        return s
    denom = s.abs().sum(dim=1, keepdim=True) if how == "row_l1" else s.abs().mean(dim=1, keepdim=True)
    out = s / denom.clamp_min(1e-12)
    return out * 10.0 if how == "row_l1" else out


REFERENCES = ("closest", "self", "best")


def relative_z(
    dist: torch.Tensor,
    unit: torch.Tensor,
    rows: list[int],
    reference: str = "closest",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distances [n, N] -> z [n, N] >= 0: excess over the row's reference, in units of the user's movement.

    ``rows[a]`` is the global index of row a's user. ``reference`` (what z = 0 means; self always gets z = 0
    except with 'best'):

    * 'closest': the closest *peer* (for scores where self-distance is trivially 0: predictions, weights);
    * 'self': the user's own score, when it is a real measurement (validation: model i's own CE on i's val
      split); a peer at least as good as the user's own model gets the top weight, like self (FedFomo's
      criterion: a peer helps if it does better than me on my data);
    * 'best': the best score in the row, self included (self competes like any peer).

    Non-neighbours (``mask`` False) get z = +inf.
    """
    if reference not in REFERENCES:
        raise ValueError(f"relative_z: reference must be one of {REFERENCES}, got {reference!r}")
    d = dist.double().clone()
    n, big_n = d.shape
    own = torch.zeros(n, big_n, dtype=torch.bool)
    own[torch.arange(n), torch.tensor(rows, dtype=torch.long)] = True
    allowed = torch.ones(n, big_n, dtype=torch.bool) if mask is None else mask.bool().clone()
    allowed |= own
    own_score = d.gather(1, torch.tensor(rows).view(-1, 1))
    if reference == "self":
        ref = own_score
    else:
        peers = allowed & ~own if reference == "closest" else allowed
        ref = torch.where(peers, d, torch.full_like(d, float("inf"))).min(dim=1, keepdim=True).values
        ref = torch.where(torch.isinf(ref), own_score, ref)  # no peer at all
    d = torch.where(allowed, d, ref.expand_as(d))  # non-neighbours' scores (maybe NaN) never enter the arithmetic
    u = unit.double().abs().view(-1, 1).clamp_min(1e-12)
    z = ((d - ref) / u).clamp_min(0.0)
    if reference != "best":
        z[own] = 0.0
    return torch.where(allowed, z, torch.full_like(z, float("inf")))


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
    """Uniform weight on entries whose min-max normalised similarity is >= threshold (the best always kept).

    Entries at -inf (non-neighbours) never count and never set the minimum.
    """
    s = sim.double()
    finite = torch.isfinite(s)
    lo = torch.where(finite, s, torch.full_like(s, float("inf"))).min(dim=1, keepdim=True).values
    hi = s.max(dim=1, keepdim=True).values
    rel = torch.where(finite, (s - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(s))
    keep = ((rel >= threshold) & finite) | (s == hi)
    w = keep.double()
    return w / w.sum(dim=1, keepdim=True)


def _apply_normaliser(sim: torch.Tensor, cfg: TrustConfig, temperature: float) -> torch.Tensor:
    if cfg.normaliser == "softmax":
        return softmax_rows(sim, temperature)
    if cfg.normaliser == "topk":
        return topk_rows(sim, cfg.top_peers, temperature)
    return threshold_rows(sim, cfg.threshold)


def normalise(
    scores: torch.Tensor,
    cfg: TrustConfig,
    higher_is_better: bool,
    auto_scale: str = "none",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paper-style: scores [n, N] -> row-stochastic W [n, N] (float64).

    ``auto_scale`` is used when ``cfg.scale == 'auto'``; ``mask`` (bool [n, N]) drops non-neighbours first.
    """
    how = resolved_scale(cfg, auto_scale)
    if how == "relative":
        raise ValueError("normalise: scale 'relative' needs distances and units; use normalise_relative")
    if mask is not None:  # drop non-neighbours before rescaling so they cannot move the row
        scores = torch.where(mask.bool(), scores.double(), torch.zeros_like(scores, dtype=torch.float64))
    s = rescale(scores, how)
    sim = s if higher_is_better else -s
    if mask is not None:
        sim = torch.where(mask.bool(), sim, torch.full_like(sim, float("-inf")))
    return _apply_normaliser(sim, cfg, resolved_temperature(cfg, how))


def normalise_relative(
    dist: torch.Tensor,
    unit: torch.Tensor,
    rows: list[int],
    cfg: TrustConfig,
    reference: str = "closest",
    mask: torch.Tensor | None = None,
    default_temperature: float = RELATIVE_TEMPERATURE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative calibration: distances [n, N] and units [n] -> (W [n, N] float64, z [n, N]).

    ``reference``: see :func:`relative_z`. ``default_temperature``: the tau that ``trust.temperature=auto`` means
    for the calling strategy."""
    z = relative_z(dist, unit, rows, reference=reference, mask=mask)
    return _apply_normaliser(-z, cfg, resolved_temperature(cfg, "relative", default_temperature)), z
