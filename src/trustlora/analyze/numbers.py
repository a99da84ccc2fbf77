"""Pure numbers behind the paper analyses: mean ± std over seeds, trust closeness to the oracle W,
off-diagonal normalisation of W, the first step reaching a value, and message-size ratios.

No files, no plotting: plain functions of arrays and dicts, used by the ``trustlora analyze`` commands
(see :mod:`trustlora.analyze`) and directly testable, e.g.
``from trustlora.analyze import trust_closeness; trust_closeness(W, oracle, categories)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from trustlora.metrics import mean_std, row_l1  # noqa: F401  (mean_std re-exported: trustlora.analyze.mean_std)
from trustlora.rundir import is_number


def trust_closeness(w: Any, oracle: Any | None, categories: Sequence[Any] | None) -> tuple[float, float]:
    """How close a trust matrix is to the oracle: ``(l1, top_peer_acc)``.

    ``l1``: L1 distance between the rows of ``w`` and ``oracle`` averaged over rows, diagonals kept
    (``mean_i sum_j |W_ij - O_ij|``; 0 = identical, 2 = disjoint rows; :func:`trustlora.metrics.row_l1`); NaN
    without an oracle of the same shape.

    ``top_peer_acc``: fraction of users whose largest off-diagonal trust goes to a peer of the same
    dominant category (``categories[i]``; ``None`` = unknown). A user whose largest off-diagonal weight is
    shared by several peers (e.g. a uniform or identity row) scores the fraction of those tied peers
    with its category, i.e. the expected accuracy of breaking the tie at random. Users with unknown
    category, or without any same-category peer (they cannot score), are left out; NaN if none is left.
    """
    w = np.asarray(w, dtype=float)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"trust_closeness: W must be square, got shape {w.shape}")
    n = w.shape[0]
    l1 = row_l1(w, oracle)
    cats = list(categories) if categories is not None else []
    cats += [None] * (n - len(cats))
    hits = []
    for i in range(n):
        ci = cats[i]
        peers = [j for j in range(n) if j != i]
        if ci is None or not any(cats[j] == ci for j in peers):
            continue
        vals = w[i, peers]
        if not np.isfinite(vals).any():
            continue
        top = np.flatnonzero(np.isclose(vals, np.nanmax(vals), rtol=1e-9, atol=1e-12))
        hits.append(float(np.mean([cats[peers[k]] == ci for k in top])))
    return l1, float(np.mean(hits)) if hits else float("nan")


def chance_top_peer(categories: Sequence[Any] | None) -> float:
    """Top-peer accuracy of a uniform W (all off-diagonal entries tied), i.e. chance level, for ``categories``."""
    n = len(categories) if categories is not None else 0
    if n < 2:
        return float("nan")
    return trust_closeness(np.full((n, n), 1.0 / n), None, categories)[1]


def offdiag_normalised(w: Any) -> np.ndarray:
    """W for display with the self-weight removed: diagonal NaN, every row renormalised over its off-diagonal
    entries (a row with no off-diagonal trust, e.g. of the identity, stays all 0)."""
    m = np.array(w, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"offdiag_normalised: W must be square, got shape {m.shape}")
    np.fill_diagonal(m, np.nan)
    sums = np.nansum(m, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(sums > 0, m / np.where(sums > 0, sums, 1.0), 0.0)
    np.fill_diagonal(out, np.nan)
    return out


def first_step_reaching(
    steps: Sequence[float], values: Sequence[float], target: float | Sequence[float | None]
) -> float | None:
    """The first step (in increasing step order) whose value is finite and <= ``target``; ``None`` if none is.

    ``target`` may be one value per step (e.g. the other run's final value measured the same way as this
    step's value: subsample against subsample, full split against full split); a step whose target is
    ``None`` or not finite cannot reach it."""
    targets = list(target) if isinstance(target, Sequence) else [target] * len(steps)
    if len(targets) != len(steps):
        raise ValueError(f"first_step_reaching: {len(targets)} targets for {len(steps)} steps")
    for s, v, t in sorted(zip(steps, values, targets, strict=True), key=lambda svt: svt[0]):
        if t is None or not math.isfinite(t):
            continue
        if v is not None and math.isfinite(v) and v <= t:
            return s
    return None


def message_size_ratios(bytes_equiv: dict) -> dict[str, float | None]:
    """Ratios of the per-round message sizes: ``dense/topk``, ``theta/topk``, ``delta/topk`` (None when undefined)."""

    def ratio(a: str, b: str) -> float | None:
        x, y = bytes_equiv.get(a), bytes_equiv.get(b)
        return float(x) / float(y) if is_number(x) and is_number(y) and float(y) > 0 else None

    return {
        "dense/topk": ratio("dense_logits", "topk_coo"),
        "theta/topk": ratio("theta", "topk_coo"),
        "delta/topk": ratio("delta", "topk_coo"),
    }
