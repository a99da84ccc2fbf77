"""Derived numbers of a run or a comparison, each computed by exactly one function here.

    ppl_from_loss(2.3)                                   # perplexity of a mean next-token CE (capped at exp(50))
    mean, std = mean_std([31.2, 30.8])                  # sample std over seeds; None with fewer than two
    dominant_categories(mixture, ["de", "es", "nl"])    # per user: category with the largest share (first on ties)
    row_l1(W, oracle_W)                                 # mean over rows of sum_j |W_ij - O_ij| (0 same, 2 disjoint)

Used by the run (api), the reports, the analyses and the sweep; users' scripts read the results under the names the
run directory gives them (``final_test_ppl``, ``user_categories``, ``std_test_ppl``...). Reading those from a run
directory, and re-deriving what a run left out, is :mod:`trustlora.rundir`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def ppl_from_loss(loss: float) -> float:
    """exp(mean CE), capped at exp(50) so a diverged model reports a large finite number."""
    return math.exp(min(float(loss), 50.0))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1) of ``values``; the std is ``None`` with fewer than two values (one seed has no
    spread to report) and the mean NaN with none."""
    v = np.asarray(list(values), dtype=float)
    if not v.size:
        return float("nan"), None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if v.size >= 2 else None


def dominant_index(mixture) -> list[int | None]:
    """Per row of the mixture D [N, C]: the index of its largest share (first on ties; NaNs ignored; None for a
    row that is empty or all NaN)."""
    out: list[int | None] = []
    for row in mixture:
        r = np.asarray(row, dtype=float)
        out.append(None if not r.size or np.isnan(r).all() else int(np.nanargmax(r)))
    return out


def dominant_categories(mixture, categories: Sequence[str]) -> list[str | None]:
    """Per user: the name of its dominant category (:func:`dominant_index`), None where it has none."""
    return [None if k is None else str(categories[k]) for k in dominant_index(mixture)]


def row_l1(w, oracle) -> float:
    """L1 distance between the rows of ``w`` and ``oracle`` averaged over rows, diagonals kept
    (``mean_i sum_j |W_ij - O_ij|``; 0 = identical, 2 = disjoint rows); NaN without an oracle of the same shape."""
    if oracle is None:
        return float("nan")
    w, o = np.asarray(w, dtype=float), np.asarray(oracle, dtype=float)
    return float(np.mean(np.abs(w - o).sum(axis=1))) if o.shape == w.shape else float("nan")
