"""Trust quality: how well rows of a trust matrix W follow the data structure (users x categories mixture D).

Pure functions of arrays (numpy, or torch tensors converted on entry); no I/O. Per user i (a row of W,
global index ``users[k]``), with the oracle O = row-normalise(D Dᵀ) and the dominant category
``cat(i) = argmax_c D[i, c]`` (first category on ties). Peer j ≠ i is a *same-category peer* of i when
``cat(j) == cat(i)`` and ``O[i, j] > 0`` (the data overlap is not empty):

* ``same_category_mass`` (SCM): ``Σ_{j≠i} w_ij [j same-category] / Σ_{j≠i} w_ij`` — the share of i's
  off-diagonal trust that goes to same-category peers. Oracle W of one-hot D → 1; uniform W → (number of
  same-category peers) / (N − 1). Undefined (NaN) for a user without a same-category peer, or without any
  off-diagonal trust (e.g. local training, W = I).
* ``top_peer_accuracy``: whether i's largest off-diagonal weight goes to a same-category peer. When several
  peers tie for the largest weight (uniform W, W = I) it is the fraction of the tied peers that are
  same-category (the expected accuracy of breaking the tie at random, as
  :func:`trustlora.analyze.trust_closeness`). NaN for a user without a same-category peer.
* ``effective_peers``: ``1 / Σ_j w_ij²`` over the whole row, **self included**: 1 for W = I, N for uniform W.
* ``l1_to_oracle_offdiag``: ``Σ_{j≠i} |p_j − q_j|`` where p and q are the off-diagonal parts of the W row
  and of the oracle row, each renormalised to sum to 1 over j ≠ i (0 = same peer weighting, 2 = disjoint).
  NaN when either has no off-diagonal mass (W = I; a user whose data overlaps no one's).

:func:`trust_quality` returns the means over users (NaN-safe: undefined users are left out; ``None`` when
no user is defined) and the per-user lists (``None`` where undefined), ready for JSON::

    from trustlora.trust.quality import trust_quality
    q = trust_quality(W_rows, users, mixture)   # W_rows: [n, N] rows of the users `users`; mixture: [N, C]
    q["same_category_mass"], q["same_category_mass_per_user"]

:func:`trust_quality_from` takes the oracle W and per-user category labels instead of D (for analyses of
finished runs); :func:`merge_quality` joins the results of processes hosting disjoint sets of users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from trustlora.trust.oracle import oracle_matrix

METRICS = ("same_category_mass", "top_peer_accuracy", "effective_peers", "l1_to_oracle_offdiag")


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _rows(w_rows: Any, users: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    w = _array(w_rows)
    if w.ndim == 1:
        w = w[None]
    users = [int(u) for u in users]
    if w.ndim != 2 or w.shape[0] != len(users):
        raise ValueError(f"trust quality: W rows of shape {w.shape} do not match {len(users)} users")
    if any(u < 0 or u >= w.shape[1] for u in users):
        raise ValueError(f"trust quality: user indices {users} out of range for {w.shape[1]} columns")
    return w, users


def same_category_matrix(categories: Sequence[Any], oracle: Any | None = None) -> np.ndarray:
    """[N, N] bool: j is a same-category peer of i (same label, label known, j ≠ i, ``oracle[i, j] > 0``)."""
    n = len(categories)
    same = np.array(
        [[i != j and categories[i] is not None and categories[i] == categories[j] for j in range(n)] for i in range(n)],
        dtype=bool,
    ).reshape(n, n)
    if oracle is not None:
        o = _array(oracle)
        if o.shape != (n, n):
            raise ValueError(f"trust quality: oracle of shape {o.shape} for {n} users")
        same &= o > 0
    return same


def _offdiag(row: np.ndarray, i: int) -> np.ndarray:
    """The row without entry i."""
    return np.delete(row, i)


def same_category_mass(w_rows: Any, users: Sequence[int], same: np.ndarray) -> np.ndarray:
    """[n] share of each row's off-diagonal mass on same-category peers (NaN where undefined; module docstring)."""
    w, users = _rows(w_rows, users)
    out = np.full(len(users), np.nan)
    for k, i in enumerate(users):
        peers, hit = _offdiag(w[k], i), _offdiag(same[i], i)
        total = peers.sum()
        if hit.any() and total > 0:
            out[k] = peers[hit].sum() / total
    return out


def top_peer_accuracy(w_rows: Any, users: Sequence[int], same: np.ndarray) -> np.ndarray:
    """[n] 1 if the largest off-diagonal weight goes to a same-category peer, else 0; ties count fractionally."""
    w, users = _rows(w_rows, users)
    out = np.full(len(users), np.nan)
    for k, i in enumerate(users):
        peers, hit = _offdiag(w[k], i), _offdiag(same[i], i)
        if not hit.any() or not np.isfinite(peers).any():
            continue
        top = np.isclose(peers, np.nanmax(peers), rtol=1e-9, atol=1e-12)
        out[k] = hit[top].mean()
    return out


def effective_peers(w_rows: Any) -> np.ndarray:
    """[n] ``1 / Σ_j w_ij²`` over the whole row, self-weight included (1 = trusts one model, N = uniform)."""
    w = _array(w_rows)
    w = w[None] if w.ndim == 1 else w
    sq = (w**2).sum(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(sq > 0, 1.0 / np.where(sq > 0, sq, 1.0), np.nan)


def l1_to_oracle_offdiag(w_rows: Any, users: Sequence[int], oracle: Any) -> np.ndarray:
    """[n] L1 distance between the off-diagonal parts of each row and of its oracle row, each renormalised
    to sum 1 over j ≠ i; NaN when either has no off-diagonal mass."""
    w, users = _rows(w_rows, users)
    o = _array(oracle)
    if o.ndim != 2 or o.shape[1] != w.shape[1]:
        raise ValueError(f"trust quality: oracle of shape {o.shape} for W rows of shape {w.shape}")
    out = np.full(len(users), np.nan)
    for k, i in enumerate(users):
        p, q = _offdiag(w[k], i), _offdiag(o[i], i)
        if p.sum() > 0 and q.sum() > 0:
            out[k] = np.abs(p / p.sum() - q / q.sum()).sum()
    return out


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def summarise(per_user: dict[str, Sequence[float | None]]) -> dict:
    """``{name: NaN-safe mean or None, name_per_user: [float | None]}`` from per-user values (None/NaN = undefined)."""
    out: dict[str, Any] = {}
    for name in METRICS:
        vals = np.array([np.nan if v is None else float(v) for v in per_user[name]], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        out[name] = float(finite.mean()) if finite.size else None
    for name in METRICS:
        out[f"{name}_per_user"] = [None if v is None else _json_float(float(v)) for v in per_user[name]]
    return out


def trust_quality_from(
    w_rows: Any, users: Sequence[int], oracle: Any | None, categories: Sequence[Any] | None = None
) -> dict:
    """:func:`trust_quality` from the oracle W [N, N] (``None``: l1_to_oracle_offdiag undefined, no overlap
    condition) and per-user category labels (``None`` = unknown: no same-category peer) instead of D."""
    w, users = _rows(w_rows, users)
    n = w.shape[1]
    cats = list(categories) if categories is not None else []
    cats = (cats + [None] * n)[:n]
    same = same_category_matrix(cats, oracle)
    per_user = {
        "same_category_mass": same_category_mass(w, users, same),
        "top_peer_accuracy": top_peer_accuracy(w, users, same),
        "effective_peers": effective_peers(w),
        "l1_to_oracle_offdiag": (
            l1_to_oracle_offdiag(w, users, oracle) if oracle is not None else np.full(len(users), np.nan)
        ),
    }
    return summarise({k: v.tolist() for k, v in per_user.items()})


def trust_quality(w_rows: Any, users: Sequence[int], mixture: Any) -> dict:
    """Trust quality of the W rows [n, N] of users ``users`` (global indices) given the mixture D [N, C].

    Returns ``{metric: mean over users or None, metric + "_per_user": [value or None]}`` for the metrics
    ``same_category_mass``, ``top_peer_accuracy``, ``effective_peers``, ``l1_to_oracle_offdiag`` (module
    docstring). Per-user lists follow the order of ``users``.
    """
    d = _array(mixture)
    if d.ndim != 2:
        raise ValueError(f"trust quality: mixture must be [N, C], got shape {d.shape}")
    return trust_quality_from(w_rows, users, oracle_matrix(d), [int(c) for c in np.argmax(d, axis=1)])


def merge_quality(parts: Sequence[dict | None]) -> dict | None:
    """One result from those of processes hosting disjoint users (in rank order): per-user lists are
    concatenated and the means recomputed. ``None`` if any part is ``None``."""
    if not parts or any(p is None for p in parts):
        return None
    return summarise({name: [v for p in parts for v in p[f"{name}_per_user"]] for name in METRICS})
