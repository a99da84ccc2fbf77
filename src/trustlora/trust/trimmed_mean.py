"""Strategy 'trimmed_mean' (robust baseline): coordinate-wise mean of the accepted updates after dropping the
``trust.trim`` fraction of largest and of smallest values per coordinate (Yin et al. 2018). Global aggregation;
W records uniform weight over the accepted senders (bookkeeping only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trustlora.aggregate import trimmed_mean
from trustlora.config import expect
from trustlora.trust import Strategy
from trustlora.trust.median import uniform_rows


@dataclass
class TrimmedMeanOptions:
    """Options of strategy 'trimmed_mean'."""

    trim: float = 0.2
    """Fraction of the largest and of the smallest values dropped per coordinate."""

    def validate(self) -> None:
        expect(0 <= self.trim < 0.5, "trust.trim", "a fraction in [0, 0.5)", self.trim)


class TrimmedMean(Strategy):
    name = "trimmed_mean"
    Options = TrimmedMeanOptions
    needs: tuple[str, ...] = ()
    exchanges = True

    def trust(self, inp, cfg):
        return uniform_rows(inp.mask, len(inp.users), inp.n_users), None

    def aggregate(self, before: torch.Tensor, deltas: torch.Tensor, accept: torch.Tensor, cfg) -> torch.Tensor:
        return before + trimmed_mean(deltas, accept, cfg.trim).to(before.dtype)


from trustlora.trust import register  # noqa: E402

register(TrimmedMean())
