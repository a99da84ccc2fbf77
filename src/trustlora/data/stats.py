"""Statistics of users' data: token-multiset overlap between splits.

::

    from trustlora.data.stats import jaccard_table
    J = jaccard_table([u.train for u in partition.users])   # [N, N], J[i, i] == 0.5

``J[i, j] = |D_i ∩ D_j| / (|D_i| + |D_j|)`` where ``D_i`` is the multiset of token ids of split i and the
intersection keeps the smaller count of every token (so 0 <= J <= 0.5, with 0.5 for identical multisets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def token_counts(splits: Sequence[torch.Tensor | np.ndarray]) -> np.ndarray:
    """[N, V'] token counts per split over the V' distinct token ids present in any split."""
    arrays = [np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s).reshape(-1) for s in splits]
    if not arrays:
        return np.zeros((0, 0), dtype=np.int64)
    lengths = [len(a) for a in arrays]
    allt = np.concatenate(arrays) if sum(lengths) else np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(allt, return_inverse=True)
    vocab = int(inverse.max()) + 1 if inverse.size else 0
    counts = np.zeros((len(arrays), vocab), dtype=np.int64)
    start = 0
    for i, n in enumerate(lengths):
        counts[i] = np.bincount(inverse[start : start + n], minlength=vocab)
        start += n
    return counts


def jaccard_table(splits: Sequence[torch.Tensor | np.ndarray]) -> np.ndarray:
    """[N, N] float64 table of ``sum_t min(c_i(t), c_j(t)) / (|D_i| + |D_j|)`` (0 where both are empty)."""
    counts = token_counts(splits)
    n = counts.shape[0]
    sizes = counts.sum(axis=1)
    out = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        for j in range(i, n):
            denom = sizes[i] + sizes[j]
            if denom:
                out[i, j] = out[j, i] = np.minimum(counts[i], counts[j]).sum() / denom
    return out
