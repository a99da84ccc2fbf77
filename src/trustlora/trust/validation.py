"""Strategy 'validation' (paper 3.2.2): S_ij = mean CE of user j's model on user i's val split.

Default (``trust.scale=auto`` = relative, ``trust.val_reference=best``, tau = 0.3): d_ij = S_ij, unit u_i = CE gain of
the best model on i's val split over the frozen base model (min_j S_ij vs the base's CE on the same tokens), so
z_ij = (S_ij - min_k S_ik) / u_i is the share of user i's achievable improvement lost by taking j's model instead of
the best one; self competes like any peer (see :mod:`trustlora.trust.normalise`).
Why tau = 0.3 here (0.1 for the other strategies): CE on a few hundred val tokens separates models of the same
category by 0.1 of the gain (measured on LibreOffice fr/it/de, 9 users: same-language peers 0.07-0.13 behind the best,
own model 0.1, other languages 0.5-0.7), so tau = 0.1 put most of a row on one lucky model (2 effective peers). Chosen
on val ppl over two corpora (docs/results/relative-v2/validation-tau/): tau 0.1 / 0.3 / 1.0 with the best model as
reference: multilingual 23.67 / 22.47 / 23.07, news 33.09 / 31.88 / 31.87; with the user's own model as reference
(``val_reference=self``: every peer at least as good as my model shares the top weight, FedFomo's criterion) at
tau 0.1 / 0.3: multilingual 22.64 / 22.72, news 32.30 / 31.87. 'self' at tau 0.1 is the most oracle-like W (SCM 0.73,
3.3 effective peers against the oracle's 3) but 0.8-1.3 % worse on val ppl, so it is an option, not the default.
Paper-style (``scale=none``): W = softmax(-S/tau); the official code uses perplexity: ``trust.val_metric=ppl``.

``trust.val_candidate=update`` scores what update mode mixes in instead of the published model: S_ij = CE on i's val
split of (i's model before the round + j's published update), unit u_i = CE of i's model before the round minus the
best candidate's (the best gain on offer this round). A peer whose model is good but whose update is a lie (a flipped
or random update) then scores as what it would do to the receiver.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trustlora.config import expect
from trustlora.train import evaluate
from trustlora.trust import Strategy
from trustlora.trust.normalise import normalise, normalise_relative, resolved_scale


@dataclass
class ValidationOptions:
    """Options of strategy 'validation' (``trust.val_tokens``, ``trust.val_metric``, ...)."""

    val_tokens: int = 512
    """Tokens of each user's val split scored by every peer model (N^2 evaluations; also what
    ``faults.update_check=loss`` scores on)."""
    val_metric: str = "loss"
    """'loss' (mean CE, default) or 'ppl' (perplexity, official code)."""
    val_reference: str = "best"
    """Relative scale: what z = 0 is. 'best' (default): the best model in the row (self competes like any peer);
    'self': the user's own model's CE, so every peer at least as good as it shares the top weight (more oracle-like
    W, slightly worse val ppl in our measurements; see the module docstring)."""
    val_candidate: str = "model"
    """What a peer's score measures. 'model': peer j's published model theta_j (the paper); 'update': the receiver's
    own model before the round plus j's published update (what update mode actually mixes in), the unit being the
    best such candidate's gain over the receiver's model before the round; 'auto' = 'update' in update mode, 'model'
    in weight mode. 'model' trusts a peer whose model is good but whose update is a lie (sign_flip, noise) unless
    ``faults.update_check`` drops it; see README 'Faulty and lying peers'."""
    val_peers: int | str = "all"
    """Peers each user scores a round besides its own model: 'all' (the paper: N^2 evaluations a round) or k >= 1
    (N * (k + 1): the cost grows with N, not N^2). The k are the ceil(k/2) nearest in adapter space (||theta_i -
    theta_j||, or the updates' distance when scoring updates: free, the models are exchanged anyway; with
    ``lora.same_init`` it is the distance ``weights`` trusts by) and k - ceil(k/2) drawn at random from the rest
    (seeded by run seed, round and user, so every peer keeps a chance); the others weigh 0 in that round's row
    (docs/results/val-tokens/RUN.md)."""

    def validate(self) -> None:
        expect(
            isinstance(self.val_tokens, int) and self.val_tokens >= 2,
            "trust.val_tokens",
            "an integer >= 2",
            self.val_tokens,
        )
        expect(
            self.val_peers == "all" or (isinstance(self.val_peers, int) and self.val_peers >= 1),
            "trust.val_peers",
            "'all' or an integer >= 1",
            self.val_peers,
        )
        expect(self.val_metric in ("loss", "ppl"), "trust.val_metric", "'loss' or 'ppl'", self.val_metric)
        expect(self.val_reference in ("self", "best"), "trust.val_reference", "'self' or 'best'", self.val_reference)
        expect(
            self.val_candidate in ("auto", "model", "update"),
            "trust.val_candidate",
            "'auto', 'model' or 'update'",
            self.val_candidate,
        )


def validation_scores(val_losses: torch.Tensor, metric: str) -> torch.Tensor:
    """[n, N] mean CE -> scores (lower is better): CE itself or exp(CE)."""
    s = val_losses.double()
    return s.exp() if metric == "ppl" else s


def validation_gain(
    val_losses: torch.Tensor, base_losses: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Unit of the relative scale: base CE minus the best (allowed, ``mask``) model's CE on each user's val tokens,
    [n]."""
    s = val_losses.double()
    if mask is not None:
        s = torch.where(mask.bool(), s, torch.full_like(s, float("inf")))
    return base_losses.double() - s.min(dim=1).values


def peer_budget(
    points: torch.Tensor, rows: list[int], k: int, allowed: torch.Tensor | None = None, seed: int = 0
) -> torch.Tensor:
    """Which candidates each row scores: ``[n, N]`` bool, self plus at most ``k`` allowed peers (all of them when
    fewer): the ``ceil(k / 2)`` nearest to the row's own point in ``points`` ([N, P]: adapters or updates,
    Euclidean) and the rest drawn uniformly from the other allowed peers. Each row draws from its own generator
    (``seed`` and the row's user), so a row does not depend on which other rows a process computes."""
    n, big_n = len(rows), points.shape[0]
    ok = torch.ones(n, big_n, dtype=torch.bool) if allowed is None else allowed.bool()
    out = torch.zeros(n, big_n, dtype=torch.bool)
    pts = points.double()
    for a, u in enumerate(rows):
        out[a, u] = True
        peers = [j for j in range(big_n) if j != u and bool(ok[a, j])]
        if len(peers) <= k:
            out[a, peers] = True
            continue
        near = (pts[peers] - pts[u]).norm(dim=1).argsort()[: (k + 1) // 2].tolist()
        rest = [p for q, p in enumerate(peers) if q not in near]
        g = torch.Generator().manual_seed(1_000_003 * seed + u)
        drawn = torch.randperm(len(rest), generator=g)[: k - len(near)].tolist()
        out[a, [peers[q] for q in near] + [rest[q] for q in drawn]] = True
    return out


VALIDATION_TEMPERATURE = 0.3
"""Default tau of the relative scale for this strategy (chosen on val ppl, two corpora; see the module docstring)."""


def candidate(cfg) -> str:
    """``trust.val_candidate`` resolved: 'update' (auto in update mode, when updates are applied) or 'model'."""
    if cfg.val_candidate != "auto":
        return cfg.val_candidate
    return "update" if cfg.mode == "update" and cfg.apply else "model"


class Validation(Strategy):
    name = "validation"
    Options = ValidationOptions
    needs: tuple[str, ...] = ("theta", "val_cross")
    exchanges = True
    update_check = True
    """``faults.update_check`` applies (a trust strategy; baselines stay plain)."""
    reference: tuple[str, ...] = ("val_base",)
    """What the relative calibration measures movement from (:meth:`starting_point`, once per run)."""

    def needs_for(self, cfg) -> tuple[str, ...]:
        """Messages consumed under ``cfg``: peers' models, or their updates (``trust.val_candidate=update``)."""
        return ("delta", "val_cross") if candidate(cfg) == "update" else self.needs

    cache_start = True
    """:meth:`starting_point` depends only on the frozen model, the data and the settings in its disk-cache key
    (:func:`trustlora.base_eval.start_key`), so runs reuse it."""

    def needs_reference(self, cfg) -> bool:
        return resolved_scale(cfg, "relative") == "relative"

    def starting_point(self, ctx) -> dict[str, torch.Tensor]:
        """The frozen base model's CE on each local user's first ``trust.val_tokens`` val tokens ([n_local])."""
        if not self.needs_reference(ctx.cfg.trust):
            return {}
        tr, ev, tokens = ctx.cfg.train, ctx.cfg.eval, ctx.cfg.trust.val_tokens
        loss, _ = evaluate(ctx.stack, ctx.data.val, tr.seq_len, ev.batch_size, tr.precision, tokens, base=True)
        return {"val_base_losses": torch.tensor(loss, dtype=torch.float64)}

    def prepare(self, inp, ctx) -> None:
        """S's inputs: every allowed peer's candidate scored on each local user's val tokens (``inp.val_losses``;
        with ``trust.val_peers=k`` only the budget's, the others masked out of the row); scoring updates,
        also the user's own model before the round (``inp.val_before_losses``, the unit's reference)."""
        tc = ctx.cfg.trust
        update = candidate(tc) == "update"  # candidates = my model before the round + each peer's update
        points = inp.extra["delta"] if update else inp.theta
        scored = inp.mask
        if tc.val_peers != "all":
            seed = 7_919 * ctx.cfg.seed + ctx.round  # a new draw every round, the same on every runtime
            scored = peer_budget(points, inp.users, int(tc.val_peers), inp.mask, seed)
        if update:
            ctx.progress("trust: peers' updates on val")
            inp.val_losses = ctx.val_cross(points, before=ctx.before, allowed=scored)
            inp.val_before_losses = ctx.val_loss(ctx.before)
        else:
            ctx.progress("trust: peers on val")
            inp.val_losses = ctx.val_cross(points, allowed=scored)
        inp.mask = scored

    def trust(self, inp, cfg):
        s = validation_scores(inp.val_losses, cfg.val_metric)
        if self.needs_reference(cfg):
            # the unit's reference: the frozen base model (scoring models: gain over the base), or the user's own
            # model before the round (scoring updates: the best update's gain this round)
            start = inp.val_before_losses if candidate(cfg) == "update" else inp.val_base_losses
            if start is None:
                raise ValueError("strategy 'validation' (relative scale) needs the reference val losses")
            base = validation_scores(start.view(-1, 1), cfg.val_metric).view(-1)
            mask = inp.mask
            if mask is not None:  # self is always allowed
                mask = mask.bool().clone()
                mask[torch.arange(len(inp.users)), torch.tensor(inp.users)] = True
            unit = validation_gain(s, base, mask)
            w, _ = normalise_relative(
                s,
                unit,
                inp.users,
                cfg,
                reference=cfg.val_reference,
                mask=inp.mask,
                default_temperature=VALIDATION_TEMPERATURE,
            )
            return w, s
        return normalise(s, cfg, higher_is_better=False, mask=inp.mask), s


from trustlora.trust import register  # noqa: E402

register(Validation())
