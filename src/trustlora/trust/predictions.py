"""Strategy 'predictions' (paper 3.2.3): top-k sparse predictions on the public set X_S.

Each user shares, per position of X_S, its k largest predicted values and their token ids (COO).
S_ij = mean over positions of the L1 distance between the two sparse vectors (absent entries are 0).

Default (``trust.scale=auto`` = relative): d_ij = S_ij, unit u_i = the same distance between user i's predictions
and the frozen base model's (how far i's training moved its predictions); see :mod:`trustlora.trust.normalise`.
Paper-style: ``scale=none`` = softmax(-S/tau) (the paper's formula), ``scale=row_l1`` = S / sum_j S_ij * 10 first
(the official code; it makes the self-weight a function of N alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trustlora.config import expect
from trustlora.reference import base_topk_predictions
from trustlora.train import topk_predictions
from trustlora.trust import Strategy
from trustlora.trust.normalise import normalise, normalise_relative, resolved_scale


@dataclass
class PredictionsOptions:
    """Options of strategy 'predictions' (``trust.topk``, ``trust.logit_space``)."""

    topk: int = 10
    """Predictions kept per position. Deviation: the official code keeps the top 100 raw logits
    (``trust.topk=100 trust.logit_space=logits``); top-10 probabilities are 10x smaller to send and, being
    probabilities, comparable across models whose logits drift by a constant."""
    logit_space: str = "probs"
    """Compare 'probs' (softmax, then top-k; the default, a deviation from the paper, which describes logits) or raw
    'logits' (the official code)."""

    def validate(self) -> None:
        expect(isinstance(self.topk, int) and self.topk >= 1, "trust.topk", "an integer >= 1", self.topk)
        expect(self.logit_space in ("probs", "logits"), "trust.logit_space", "'probs' or 'logits'", self.logit_space)


def sparse_l1(v_a: torch.Tensor, i_a: torch.Tensor, v_b: torch.Tensor, i_b: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between two sets of sparse vectors.

    v_*, i_*: [M, k] values and indices per position. Returns a scalar (float64):
    mean_m sum_t |a_m[t] - b_m[t]| where a_m, b_m are zero outside their k indices.
    """
    va, vb = v_a.double(), v_b.double()
    match = i_a.unsqueeze(2) == i_b.unsqueeze(1)  # (M, k, k): a's t-th index equals b's s-th index
    # b's value at each of a's indices (0 where absent), and whether each of b's indices is in a
    b_at_a = (match.double() * vb.unsqueeze(1)).sum(2)  # (M, k)
    b_in_a = match.any(1)  # (M, k)
    dist = (va - b_at_a).abs().sum(1) + (vb.abs() * (~b_in_a).double()).sum(1)
    return dist.mean()


def prediction_scores(values: torch.Tensor, indices: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """values/indices [N, M, k] -> distance of users ``rows`` to every user: [len(rows), N] float64."""
    n = values.shape[0]
    out = torch.zeros(len(rows), n, dtype=torch.float64)
    for a, i in enumerate(rows):
        for j in range(n):
            if j != i:
                out[a, j] = sparse_l1(values[i], indices[i], values[j], indices[j])
    return out


class Predictions(Strategy):
    name = "predictions"
    Options = PredictionsOptions
    needs: tuple[str, ...] = ("topk",)
    exchanges = True
    update_check = True
    """``faults.update_check`` applies (a trust strategy; baselines stay plain)."""
    reference: tuple[str, ...] = ("topk_base",)
    """What the relative calibration measures movement from (:meth:`starting_point`, once per run)."""

    cache_start = True
    """:meth:`starting_point` depends only on the frozen model, the data and the settings in its disk-cache key
    (:func:`trustlora.base_eval.start_key`), so runs reuse it."""

    def needs_reference(self, cfg) -> bool:
        return resolved_scale(cfg, "relative") == "relative"

    @staticmethod
    def _args(ctx) -> tuple:
        tr, tc = ctx.cfg.train, ctx.cfg.trust
        return ctx.stack, ctx.data.reference, tc.topk, tc.logit_space, tr.seq_len, ctx.cfg.eval.batch_size

    def publish(self, ctx) -> dict[str, torch.Tensor]:
        """Every hosted user's top-k predictions on X_S (``[n_local, M, k]`` values float32, ids int32), from the
        adapters loaded in its slot (what it claims)."""
        ctx.progress("trust: predictions on X_S")
        tr = ctx.cfg.train
        v, i = topk_predictions(*self._args(ctx), tr.precision, user_chunk=tr.user_chunk)
        return {"topk_values": v, "topk_indices": i}

    def starting_point(self, ctx) -> dict[str, torch.Tensor]:
        """The frozen base model's top-k predictions on X_S ([M, k]: adapters off, one copy of the text)."""
        if not self.needs_reference(ctx.cfg.trust):
            return {}
        v, i = base_topk_predictions(*self._args(ctx), ctx.cfg.train.precision)
        return {"base_topk_values": v, "base_topk_indices": i}

    def trust(self, inp, cfg):
        s = prediction_scores(inp.topk_values, inp.topk_indices, inp.users)
        if self.needs_reference(cfg):
            if inp.base_topk_values is None:
                raise ValueError("strategy 'predictions' (relative scale) needs the base model's predictions on X_S")
            unit = torch.stack(
                [
                    sparse_l1(inp.topk_values[i], inp.topk_indices[i], inp.base_topk_values, inp.base_topk_indices)
                    for i in inp.users
                ]
            )
            w, _ = normalise_relative(s, unit, inp.users, cfg, reference="closest", mask=inp.mask)
            return w, s
        return normalise(s, cfg, higher_is_better=False, auto_scale="row_l1", mask=inp.mask), s


from trustlora.trust import register  # noqa: E402

register(Predictions())
