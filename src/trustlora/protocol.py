"""Algorithm 1, written once: local steps, messages, trust, aggregation, evaluation, per round.

The protocol only talks to the outside through a :class:`~trustlora.comm.Communicator` (all-gathers)
and a ``record`` callback (metrics records as dicts), so the in-process simulation and a multi-process
runtime run the very same code::

    proto = Rounds(mm, trainer, data, cfg, comm, mixture, record=print)
    proto.evaluate_base()
    for r in range(1, len(proto.schedule) + 1):
        proto.run_round(r)

One round (:meth:`Rounds.run_round`): the local steps, then :meth:`Rounds.exchange`, which is three steps so that a
transport that is not a collective (a relay server, a message queue) can drive the same code::

    out = proto.publish(before, after, r)      # local only: Outbox(messages={kind: [n_local, ...]}, own_delta)
    gathered = proto.gather(out)               # the only network step: one comm.all_gather per kind -> [N, ...]
    w, scores, faults = proto.consume(gathered, out, before, after, r)   # checks, trust, update check, aggregation

``publish`` builds the kinds the strategy declares (``strategy.publishes(cfg)``, read through
:func:`~trustlora.trust.published_kinds`) for the users hosted here: the exchange itself ('theta', 'delta') here,
every other kind by the strategy's own ``publish(ctx)`` (:class:`LocalContext`), simulated attackers' lies included
(:mod:`trustlora.attacks`), plus the starting point 'theta0' once where the relative calibration needs it.
``gather`` sends them in the order of :data:`trustlora.guard.MESSAGES`, the one table of message kinds and of each
slice's shape and dtype. ``consume`` takes every user's messages (each kind stacked on the user axis, in user order,
however they travelled), checks them (:func:`trustlora.guard.check_messages`), lets the strategy run its local
passes over them (``strategy.prepare(inputs, ctx)``, e.g. scoring peers' models on the user's val split; its
once-per-run ``starting_point(ctx)`` before), computes this process's trust rows (``strategy.trust``, pure), applies
``faults.update_check`` and sets the aggregated adapters. Then the round's evaluation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trustlora import base_eval
from trustlora.aggregate import mix_updates, mix_weights, neighbour_mask
from trustlora.attacks import UPDATE_KINDS, fake_topk, poison_updates, round_rng
from trustlora.comm import Communicator
from trustlora.config import Config
from trustlora.guard import (
    MESSAGES,
    MessageSizes,
    aligned_updates,
    check_messages,
    duplicate_senders,
    expected_messages,
    restrict_to,
    sanitize,
)
from trustlora.model.multilora import MultiLoRA
from trustlora.tables import json_safe
from trustlora.train import LocalTrainer, cross_losses, evaluate, evaluate_prefix_and_full, windows
from trustlora.trust import EXCHANGE_KINDS, TrustInputs, custom_messages, get, needs_of, own_kinds, published_kinds
from trustlora.trust.quality import trust_quality

UPDATE_CHECK_UNCHECKED = 0.05
"""``faults.update_check``: share of a row's peer weight that may stay unchecked (its lightest peers): the check's
cost follows the peers a user actually trusts, and unchecked peers together hold at most 5 % of the row."""


def round_schedule(steps: int, warmup: int, period: int) -> list[int]:
    """Local steps of each round: the warm-up first (if any), then ``period`` steps until ``steps``."""
    out = [warmup] if warmup > 0 else []
    rest = steps - warmup
    while rest > 0:
        out.append(min(period, rest))
        rest -= out[-1]
    return out


@dataclass
class LocalData:
    """Token streams of the users hosted here (index = local slot) and the shared reference set."""

    train: list[torch.Tensor]
    val: list[torch.Tensor]
    test: list[torch.Tensor]
    reference: torch.Tensor


@dataclass
class Outbox:
    """One round's messages from the users hosted here (:meth:`Rounds.publish`), and the local state that
    :meth:`Rounds.consume` needs besides what arrives."""

    messages: dict[str, torch.Tensor]
    """Message kind -> ``[n_local, ...]`` (one row per hosted user, in ``comm.local_users`` order), in
    :data:`~trustlora.guard.MESSAGES` order, then the strategy's own kinds: what a transport sends; attackers' rows
    are their lies."""
    own_delta: torch.Tensor
    """``[n_local, P]``: the hosted users' honest updates (after - before), the receiving-side norm bound's and
    ``faults.update_check=align``'s reference."""


@dataclass
class LocalContext:
    """What a strategy's ``publish(ctx)``, ``starting_point(ctx)`` and ``prepare(inputs, ctx)`` may use: this
    process's stacked users, their data and the config, and the local passes the round runner offers."""

    stack: MultiLoRA
    """The hosted users' stacked adapters on the frozen base (in ``publish``: loaded with what each user claims after
    the round; in ``prepare``: their honest adapters after the local steps)."""
    data: LocalData
    cfg: Config
    users: list[int]
    """Global ids of the hosted users (row order of every message)."""
    before: torch.Tensor | None = None
    """[n_local, P] adapters before the round (None in ``starting_point``)."""
    after: torch.Tensor | None = None
    """[n_local, P] adapters the users publish after the round (None in ``starting_point``)."""
    round: int = 0
    progress: Callable[[str], None] = lambda msg: None
    """Progress line for a long local pass (``progress("trust: ...")``)."""
    val_cross: Callable[..., torch.Tensor] | None = None
    """``val_cross(thetas [N, P], before=None) -> [n_local, N]`` float64: mean CE on each local user's first
    ``trust.val_tokens`` val tokens of every user's candidate, model ``thetas[j]`` or, with ``before`` ([n_local, P]),
    ``before[i] + thetas[j]`` (:meth:`Rounds._val_cross`); the slots hold what they held before, afterwards."""
    val_loss: Callable[[torch.Tensor], torch.Tensor] | None = None
    """``val_loss(flat [n_local, P]) -> [n_local]`` float64: mean CE of these adapters (slot i on user i) on the same
    val tokens; the slots hold what they held before, afterwards."""


PublishContext = LocalContext
"""The context of ``publish(ctx)`` (an alias: one context for every hook of a strategy)."""


class Rounds:
    """Algorithm 1's rounds for the users this process hosts: local steps, exchange, trust, aggregation, evaluation
    (named so as not to shadow ``typing.Protocol``)."""

    def __init__(
        self,
        mm: MultiLoRA,
        trainer: LocalTrainer,
        data: LocalData,
        cfg: Config,
        comm: Communicator,
        mixture: np.ndarray,
        record: Callable[[dict], None],
        progress: Callable[[str], None] | None = None,
    ):
        self.mm, self.trainer, self.data, self.cfg, self.comm = mm, trainer, data, cfg, comm
        self.mixture = mixture
        self.record = record
        self.progress = progress or (lambda msg: None)
        self.strategy = get(cfg.strategy)
        self.schedule = round_schedule(cfg.train.steps, cfg.train.warmup, cfg.train.period)
        self.users = comm.local_users
        # the starting point, for relative trust calibration (theta0 is the adapters before any training: the
        # protocol is built after reset_adapters and before a checkpoint is restored)
        attackers = set(cfg.attack.users) if cfg.attack.kind != "none" else set()
        self.attack_slots = [a for a, u in enumerate(self.users) if u in attackers]  # local slots that lie
        self.honest_slots = [a for a, u in enumerate(self.users) if u not in attackers]
        head = mm.model.get_output_embeddings()
        self.vocab: int = head.weight.shape[0]  # output vocabulary (top-k id checks, fabricated top-k, Table 5 sizes)
        self.needs_reference = getattr(self.strategy, "needs_reference", lambda c: False)(cfg.trust)
        self.theta0_local = mm.get_flat().detach().clone() if self.needs_reference else None
        self._reference: dict[str, torch.Tensor] = {}  # 'theta0': every user's starting point (a message, once)
        self._start: dict[str, torch.Tensor] | None = None  # the strategy's starting_point(ctx), once per run
        self.start_key: str | None = None  # disk-cache key of that starting point (api sets it; None: not cached)
        self.start_cached: bool | None = None  # whether it came from the disk cache (None: not needed yet)
        self._positions: int | None = None  # real token positions of X_S's windows (top-k message shapes)
        # previous round's updates: what this process's slots published (attack 'copy' resends one) and what arrived
        # (faults.duplicates: a replay of one of them is nobody's new work); in checkpoints (state_dict)
        self._published_delta: torch.Tensor | None = None
        self._received_delta: torch.Tensor | None = None

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        """What the next round reads from this one besides the adapters and the trainer: the updates that arrived
        (``faults.duplicates``' replay test) and those this process's attackers published (attack 'copy'). Saved in
        every checkpoint, so the first round after a resume checks exactly what the uninterrupted run checks."""
        return {"received_delta": self._received_delta, "published_delta": self._published_delta}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (a checkpoint without it, from an older version, leaves both empty)."""
        self._received_delta = state.get("received_delta")
        self._published_delta = state.get("published_delta")

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(
        self, round_: int, step: int, full: bool, base: bool = False, with_sub: str = ""
    ) -> dict[str, list[float]]:
        """Per-user val and test perplexity; subsampled to ``eval.during_tokens`` unless ``full``.

        ``with_sub`` ('before' / 'after', with ``full``): also record the subsample, computed from the same pass over
        the windows when it is their prefix (:func:`~trustlora.train.evaluate_prefix_and_full`); its records come
        before / after the full ones (the order of two separate calls)."""
        ev, tr = self.cfg.eval, self.cfg.train
        max_tokens = 0 if full else ev.during_tokens
        out, subs, fulls = {}, [], []
        for split in ("val", "test"):
            self.progress(f"eval {split}{' (base model)' if base else ''}")
            streams = getattr(self.data, split)
            t0, pos0 = time.perf_counter(), self.mm.positions
            args = (self.mm, streams, tr.seq_len, ev.batch_size, tr.precision)
            both = None
            if with_sub and full:
                both = evaluate_prefix_and_full(*args, ev.during_tokens, base=base, user_chunk=tr.user_chunk)
            if both is None:
                loss, ppl = evaluate(*args, max_tokens, base=base, user_chunk=tr.user_chunk)
                fulls.append(self._eval_record(round_, step, split, full, base, loss, ppl, t0, pos0))
            else:
                (sl, sp), (loss, ppl) = both
                rec = self._eval_record(round_, step, split, True, base, loss, ppl, t0, pos0)
                share = min(1.0, ev.during_tokens / max(1, max(len(x) for x in streams)))
                sub = dict(rec, full=False, loss=sl, ppl=sp, seconds=rec["seconds"] * share)
                sub["positions"] = int(round(rec["positions"] * share))
                rec["seconds"] -= sub["seconds"]
                rec["positions"] -= sub["positions"]
                fulls.append(rec)
                subs.append(sub)
            out[split] = ppl
        if with_sub and full and len(subs) < 2:  # the subsample is not a prefix: its own pass
            if with_sub == "before":
                self.evaluate(round_, step, full=False, base=base)
                subs = []
            else:
                for rec in fulls:
                    self.record(rec)
                self.evaluate(round_, step, full=False, base=base)
                return out
        order = subs + fulls if with_sub == "before" else fulls + subs
        for rec in order:
            self.record(rec)
        return out

    def _eval_record(self, round_, step, split, full, base, loss, ppl, t0, pos0) -> dict:
        rec = {
            "seconds": time.perf_counter() - t0,
            "positions": self.mm.positions - pos0,
            "kind": "eval",
            "round": round_,
            "step": step,
            "split": split,
            "full": full,
            "users": self.users,
            "loss": loss,
            "ppl": ppl,
        }
        if base:
            rec["model"] = "base"
        return rec

    def evaluate_base(self) -> dict[str, list[float]]:
        """Base model on the full splits, then (for the subsampled per-round curves) on the subsample."""
        return self.evaluate(0, 0, full=True, base=True, with_sub="after" if self.cfg.eval.during_tokens else "")

    # ---- messages and trust -------------------------------------------------------------------
    def _val_cross(
        self, thetas: torch.Tensor, before: torch.Tensor | None = None, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[n_local, N] CE on each local user's val split of every user's candidate: model ``thetas[j]`` or, with
        ``before`` ([n_local, P], the local users' models before the round), ``before[i] + thetas[j]`` (``thetas``
        being the published updates: what update mode would mix in). ``allowed`` ([n_local, N] bool): only those
        pairs are scored (the others are NaN), so a row that may not take a peer (topology, a rejected or absent
        sender, a peer budget) costs no evaluation of it.

        Candidates are loaded into this process's slots chunk by chunk (one chunk of models in simulation).
        """
        n_local, n = len(self.users), self.comm.n_users
        own = self.mm.get_flat()
        out = torch.full((n_local, n), float("nan"), dtype=torch.float64)
        moved = False  # the slots hold candidates, not the users' own adapters
        # models already in the slots (simulation: every user's own, unless a slot published something else: a
        # simulated attacker's lie, a sanitised message) are scored as loaded
        as_loaded = before is None and thetas.dtype == own.dtype and torch.equal(thetas[self.users].to(own.device), own)
        for i in range(n_local):
            js = list(range(n)) if allowed is None else allowed[i].nonzero().flatten().tolist()
            for start in range(0, len(js), n_local):
                chunk = js[start : start + n_local]
                if as_loaded and chunk == self.users:
                    if moved:
                        self.mm.set_flat(own)
                        moved = False
                    out[i, chunk] = self._val_scores(i)
                    continue
                slots = thetas[chunk].to(own.device)
                cands = slots if before is None else before[i : i + 1].to(own.device) + slots
                out[i, chunk] = self._val_scores(i, cands, active=len(chunk))[: len(chunk)]
                moved = True
        if moved:
            self.mm.set_flat(own)
        return out

    def _val_scores(self, i: int, cands: torch.Tensor | None = None, active: int | None = None) -> torch.Tensor:
        """CE on local user i's first ``trust.val_tokens`` val tokens of each candidate adapter: ``cands`` [k, P]
        (k <= the slots hosted here; padded with copies of the last, which only run when ``active`` is None) loaded
        into the slots, or the adapters loaded now (None). Returns [k] (all slots for None)."""
        tr = self.cfg.train
        if cands is not None:
            k = cands.shape[0]
            if k < len(self.users):
                cands = torch.cat([cands, cands[-1:].expand(len(self.users) - k, -1)])
            self.mm.set_flat(cands)
        losses = cross_losses(
            self.mm,
            self.data.val[i],
            tr.seq_len,
            self.cfg.eval.batch_size,
            tr.precision,
            self.cfg.trust.val_tokens,
            user_chunk=tr.user_chunk,
            active=active,
        )
        return losses if cands is None else losses[:k]

    def _val_loss(self, flat: torch.Tensor) -> torch.Tensor:
        """[n_local] float64: mean CE of adapters ``flat`` ([n_local, P], slot i on user i) on each local user's first
        ``trust.val_tokens`` val tokens; the slots' adapters are restored afterwards."""
        tr = self.cfg.train
        own = self.mm.get_flat()
        self.mm.set_flat(flat)
        loss, _ = evaluate(
            self.mm,
            self.data.val,
            tr.seq_len,
            self.cfg.eval.batch_size,
            tr.precision,
            self.cfg.trust.val_tokens,
            user_chunk=tr.user_chunk,
        )
        self.mm.set_flat(own)
        return torch.tensor(loss, dtype=torch.float64)

    def context(self, before: torch.Tensor | None = None, after: torch.Tensor | None = None, r: int = 0):
        """The :class:`LocalContext` a strategy's hooks get this round (``before`` / ``after``: [n_local, P])."""
        return LocalContext(
            self.mm,
            self.data,
            self.cfg,
            list(self.users),
            before,
            after,
            r,
            self.progress,
            val_cross=self._val_cross,
            val_loss=self._val_loss,
        )

    def _delta_checks(
        self, deltas: torch.Tensor, own_delta: torch.Tensor, present: torch.Tensor, verdict
    ) -> tuple[torch.Tensor, list[int], float | None]:
        """The checks that read only the updates: ``faults.update_check=align`` and ``faults.duplicates=drop``.

        Returns ([n_local, N] bool keep, senders dropped as copies, the largest cosine between two senders' updates
        this round (recorded whatever the settings)). Remembers this round's updates for next round's replay test."""
        n = self.comm.n_users
        keep = torch.ones(len(self.users), n, dtype=torch.bool)
        if self.cfg.faults.update_check == "align":
            keep = aligned_updates(deltas, own_delta, self.users)
        senders = [j for j in range(n) if bool(verdict.accept[:, j].any()) and bool(present[j])]
        drop = self.cfg.faults.duplicates == "drop"
        copies, max_peer_cos = duplicate_senders(deltas, senders, self._received_delta if drop else None)
        self._received_delta = deltas.clone() if drop else None
        if not drop:
            return keep, [], max_peer_cos
        keep[:, copies] = False  # copies of one update: none of them counts (the original is not knowable)
        keep[torch.arange(len(self.users)), torch.tensor(self.users)] = True  # a receiver keeps its own
        return keep, copies, max_peer_cos

    def _dropped(self, keep: torch.Tensor, accept: torch.Tensor, alone: list[int]) -> list[list[int]]:
        """Settle a check's ``keep`` [n_local, N] in place: rows that do not aggregate (``alone``) are not checked and
        senders already out (``~accept``: rejected, absent, off the graph, dropped by an earlier check) are not news.
        Returns the [receiver, sender] pairs it drops (the trust record's ``harmful``)."""
        keep[alone] = True
        keep |= ~accept.to(keep.device)
        return [[self.users[a], j] for a, j in (~keep).nonzero().tolist()]

    def _update_check(self, before: torch.Tensor, deltas: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """[n_local, N] bool: False where peer j's update does not lower local user i's val loss.

        Candidates ``before[i] + deltas[j]`` are scored for the peers holding row i's weight, heaviest first, until
        the unchecked peers hold at most :data:`UPDATE_CHECK_UNCHECKED` of it (the rest are kept unchecked), against
        ``before[i]`` itself, on the first ``trust.val_tokens`` tokens of i's val split; in chunks of this process's
        slots (``faults.update_check=loss``).
        """
        n_local, n = len(self.users), self.comm.n_users
        own = self.mm.get_flat()
        keep = torch.ones(n_local, n, dtype=torch.bool)
        for a, i in enumerate(self.users):
            row = w[a].double().clone()
            row[i] = 0.0
            mass = float(row.sum())
            peers: list[int] = []
            left = mass
            for j in torch.argsort(row, descending=True).tolist():
                if left <= UPDATE_CHECK_UNCHECKED * mass or row[j] <= 0:
                    break
                peers.append(j)
                left -= float(row[j])
            if not peers:
                continue
            cands = [before[a]] + [before[a] + deltas[j].to(before.device) for j in peers]
            losses: list[float] = []
            for s in range(0, len(cands), n_local):
                part = torch.stack(cands[s : s + n_local]).to(own.dtype)
                losses += self._val_scores(a, part, active=part.shape[0]).tolist()
            for j, loss in zip(peers, losses[1:], strict=True):
                keep[a, j] = loss < losses[0]
        self.mm.set_flat(own)
        return keep

    def _starting_point(self, inp: TrustInputs) -> None:
        """Fill the reference the relative calibration measures movement from; computed once, then cached.

        theta0 of every user (message 'theta0', published in the first round after a (re)start and cached by
        :meth:`consume` before this is called), and whatever the strategy's ``starting_point(ctx)`` computes on this
        process (the frozen base model's CE on each local user's trust val tokens, its top-k predictions on X_S).
        """
        if self._start is None:
            hook = getattr(self.strategy, "starting_point", None)
            key = self.start_key if getattr(self.strategy, "cache_start", False) else None
            cached = base_eval.load_start(key) if key else None
            self.start_cached = cached is not None
            if cached is not None:
                self._start = cached  # from an earlier run with the same model, data and settings (no compute)
            else:
                self._start = dict(hook(self.context())) if hook is not None else {}
                if key and self._start:
                    base_eval.save_start(key, self._start)
            unknown = sorted(k for k in self._start if not hasattr(inp, k) or k == "extra")
            if unknown:
                raise ValueError(f"strategy '{self.strategy.name}': starting_point() returned unknown fields {unknown}")
        inp.theta0 = self._reference.get("theta0")
        for name, value in self._start.items():
            setattr(inp, name, value)

    def present(self, r: int) -> torch.Tensor:
        """[N] bool: who takes part in round r (``faults.dropout_prob``: each user misses a round independently,
        seeded by (seed, round) so every process draws the same; ``attack.kind=absent``: the listed users miss every
        round)."""
        p = self.cfg.faults.dropout_prob
        present = torch.ones(self.comm.n_users, dtype=torch.bool)
        if p > 0:
            rng = np.random.default_rng([abs(self.cfg.seed), int(self.cfg.seed < 0), r, 0x0FA17])
            present = torch.from_numpy(rng.random(self.comm.n_users) >= p)
        if self.cfg.attack.kind == "absent":
            present[list(self.cfg.attack.users)] = False
        return present

    @contextlib.contextmanager
    def _claimed(self, claimed: torch.Tensor, after: torch.Tensor, lying: bool):
        """While inside, the slots hold the adapters the users claim (``claimed``) when some lie; ``after`` after."""
        if not lying:
            yield
            return
        self.mm.set_flat(claimed)
        try:
            yield
        finally:
            self.mm.set_flat(after)

    def publish(self, before: torch.Tensor, after: torch.Tensor, r: int = 0) -> Outbox:
        """This process's messages of round r (local only: nothing is sent): the kinds the strategy publishes
        (:func:`~trustlora.trust.published_kinds`), one row per hosted user, simulated attackers' lies included; plus
        'theta0' once, when the relative calibration has not got the starting point yet. The exchange ('theta',
        'delta') is built here; every other kind by the strategy's ``publish(ctx)``
        (:func:`~trustlora.trust.own_kinds`), with the slots holding what each user claims."""
        kinds = published_kinds(self.strategy, self.cfg.trust)
        unknown = [k for k in kinds if k not in MESSAGES]
        if unknown:
            raise ValueError(f"strategy '{self.strategy.name}' publishes unknown message kinds {unknown}")
        atk = self.cfg.attack
        lying = bool(self.attack_slots) and atk.kind in UPDATE_KINDS
        g = round_rng(self.cfg.seed, r) if self.attack_slots else None
        own_delta = after - before
        pub_delta = own_delta  # what each hosted user publishes (attackers: a consistent lie)
        if lying:
            prev = self._published_delta
            pub_delta = poison_updates(atk.kind, pub_delta, self.attack_slots, self.honest_slots, g, prev)
        self._published_delta = pub_delta.detach().clone() if lying and atk.kind == "copy" else None
        pub_after = before + pub_delta if lying else after
        local: dict[str, torch.Tensor] = {}
        if self.needs_reference and "theta0" in getattr(self.strategy, "reference", ()):
            if "theta0" not in self._reference:
                local["theta0"] = self.theta0_local
        exchange = {"theta": pub_after, "delta": pub_delta}
        local.update({k: exchange[k] for k in kinds if k in EXCHANGE_KINDS})
        wanted = own_kinds(self.strategy, self.cfg.trust)
        if wanted:  # the strategy's kinds (top-k on X_S, its own messages): attackers' come from the model they claim
            with self._claimed(pub_after, after, lying):
                own = self.strategy.publish(self.context(before, pub_after, r))
            if set(own) != set(wanted):
                raise ValueError(
                    f"strategy '{self.strategy.name}': publish() returned kinds {sorted(own)}, it publishes {wanted}"
                )
            local.update({k: own[k] for k in wanted})
        if atk.kind == "fake_topk" and self.attack_slots and "topk_values" in wanted:
            v, i = own["topk_values"], own["topk_indices"]
            v, i = fake_topk(v, i, self.attack_slots, self.vocab, self.cfg.trust.logit_space == "probs", g)
            local.update({k: t for k, t in (("topk_values", v), ("topk_indices", i)) if k in local})
        custom = sorted(custom_messages(self.strategy))
        order = [k for k in MESSAGES if k in local] + custom
        return Outbox(messages={k: local[k] for k in order}, own_delta=own_delta)

    def gather(self, outbox: Outbox) -> dict[str, torch.Tensor]:
        """Every user's messages: one all-gather per kind, in the outbox's order (:data:`~trustlora.guard.MESSAGES`
        order, then the strategy's own kinds sorted: the same on every process); kind -> ``[N, ...]``. The only call
        that crosses the network (bytes counted per kind by the communicator)."""
        return {k: self.comm.all_gather(t, k) for k, t in outbox.messages.items()}

    def consume(
        self, gathered: dict[str, torch.Tensor], outbox: Outbox, before: torch.Tensor, after: torch.Tensor, r: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """Check what arrived (``gathered``: kind -> ``[N, ...]``, every kind of ``outbox``), compute this process's
        trust rows, apply ``faults.update_check``, aggregate (the new adapters are set on the model).

        Returns (W rows, scores, faults: {"rejected": [events], "absent": [users], "harmful": [[receiver, sender]],
        "duplicates": [senders], "max_peer_cos": float | None}).
        Every message is checked at the receiving side before any use (:mod:`trustlora.guard`): a rejected or absent
        sender weighs 0 in the rows (renormalised) and its tensors are replaced by zeros; an absent user keeps its
        locally trained adapter.
        """
        strat, tc, n = self.strategy, self.cfg.trust, self.comm.n_users
        if set(gathered) != set(outbox.messages):
            raise ValueError(
                f"gathered message kinds {sorted(gathered)} differ from those published {sorted(outbox.messages)}"
            )
        msgs = {k: gathered[k] for k in outbox.messages}  # the outbox's order: the order of the checks
        if "theta0" in msgs:  # the starting point: cached for the whole run, not a message of this round
            self._reference["theta0"] = msgs.pop("theta0").cpu()
        if "theta" in msgs:
            msgs["theta"] = msgs["theta"].cpu()
        needs = needs_of(strat, tc)
        inp = TrustInputs(users=self.users, n_users=n, mixture=self.mixture)
        present = self.present(r)
        if self.needs_reference:
            self._starting_point(inp)
        applying = tc.apply and strat.exchanges
        own_delta = outbox.own_delta
        verdict = check_messages(
            msgs,
            self.users,
            n,
            expected_messages(msgs, self._shapes_of(after), custom_messages(strat)),
            own_delta=own_delta.cpu(),
            max_norm_ratio=self.cfg.faults.max_norm_ratio,
            vocab=self.vocab,
            probs=tc.logit_space == "probs",
        )
        absent = [j for j in range(n) if not present[j]]
        msgs = sanitize(msgs, sorted(set(verdict.bad_senders) | set(absent)))
        accept = verdict.accept & present.view(1, -1)
        if tc.topology != "full":  # scores outside the graph are dropped before normalising
            accept &= neighbour_mask(n, tc.topology)[self.users]
        accept[torch.arange(len(self.users)), torch.tensor(self.users)] = True
        # missed the round, or an attacker: keeps its own locally trained model (row = itself)
        alone = [a for a, u in enumerate(self.users) if not present[u] or a in self.attack_slots]
        check = self.cfg.faults.update_check
        checked = (
            getattr(strat, "update_check", False)
            and applying
            and tc.mode == "update"
            and getattr(strat, "aggregate", None) is None
        )
        harmful: list[list[int]] = []
        duplicates: list[int] = []
        max_peer_cos = None
        if checked:  # checks of the updates alone (align, duplicates): before trust, so dropped peers move no score
            keep, duplicates, max_peer_cos = self._delta_checks(msgs["delta"].cpu(), own_delta.cpu(), present, verdict)
            harmful = self._dropped(keep, accept, alone)
            accept &= keep
        if not bool(accept.all()):
            inp.mask = accept
        inp.theta = msgs.get("theta")
        inp.topk_values, inp.topk_indices = msgs.get("topk_values"), msgs.get("topk_indices")
        if "delta" in needs:
            inp.extra["delta"] = msgs["delta"].cpu()
        for kind in custom_messages(strat):  # the strategy's own kinds, checked like any message
            inp.extra[kind] = msgs[kind].cpu()
        prepare = getattr(strat, "prepare", None)
        if prepare is not None:  # the strategy's local passes over what arrived (validation: peers scored on val)
            prepare(inp, self.context(before, after, r))
        w, scores = strat.trust(inp, tc)
        w = restrict_to(w, accept, self.users)
        if checked and check == "loss":  # needs W (heaviest peers first): after trust
            self.progress("trust: checking updates on val")
            keep = self._update_check(before, msgs["delta"], w)
            harmful += self._dropped(keep, accept, alone)
            w = restrict_to(w, keep, self.users)
        for a in alone:
            w[a] = 0.0
            w[a, self.users[a]] = 1.0
        faults = {
            "rejected": verdict.events,
            "absent": absent,
            "harmful": harmful,
            "duplicates": duplicates,
            "max_peer_cos": max_peer_cos,
        }
        if not applying:
            return w, scores, faults  # trust recorded, every user keeps its own locally trained adapter
        robust = getattr(strat, "aggregate", None)
        if robust is not None:  # not a weighted average (median, trimmed mean): the strategy aggregates itself
            own_acc = accept.to(after.device)
            if tc.mode == "update":
                new = robust(before, msgs["delta"], own_acc, tc)
            else:
                new = robust(torch.zeros_like(before), msgs["theta"].to(after.device), own_acc, tc)
        elif tc.mode == "update":
            new = mix_updates(before, msgs["delta"], w)
        else:
            new = mix_weights(msgs["theta"].to(after.device), w)
        if alone:  # their own message may have been replaced (absent, or a lie): they keep what they trained
            new[alone] = after[alone].to(new.dtype)
        self.mm.set_flat(new.to(after.dtype))
        return w, scores, faults

    def exchange(
        self, before: torch.Tensor, after: torch.Tensor, r: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """One round's messages, trust and aggregation through this process's communicator:
        :meth:`publish`, :meth:`gather`, :meth:`consume`. Returns (W rows, scores, faults)."""
        out = self.publish(before, after, r)
        return self.consume(self.gather(out), out, before, after, r)

    def _shapes_of(self, after: torch.Tensor) -> MessageSizes:
        """What the expected shapes of messages follow from (:data:`~trustlora.guard.MESSAGES`)."""
        if self._positions is None:  # real token positions of X_S's windows (those top-k predictions cover)
            self._positions = int(windows(self.data.reference, self.cfg.train.seq_len)[1].sum())
        return MessageSizes(
            params=after.shape[1], positions=self._positions, topk=self.cfg.trust.topk, dtype=after.dtype
        )

    def message_sizes(self, after: torch.Tensor) -> dict[str, int]:
        """Bytes one user would send per round for each message kind (paper Table 5), whatever the strategy."""
        p = after.shape[1] * 4  # fp32 adapter
        m = len(self.data.reference)
        k = self.cfg.trust.topk
        return {"theta": p, "delta": p, "dense_logits": m * self.vocab * 4, "topk_coo": m * k * (4 + 4)}

    # ---- one round ----------------------------------------------------------------------------
    def run_round(self, r: int, step_callback: Callable[[], None] | None = None) -> int:
        """Round r (1-based): local steps, exchange, evaluation. Returns the global step after it."""
        k = self.schedule[r - 1]
        step0 = sum(self.schedule[: r - 1])
        before = self.mm.get_flat()
        losses = []
        t0, pos0 = time.perf_counter(), self.mm.positions
        for _ in range(k):
            losses.append(self.trainer.step())
            if step_callback is not None:
                step_callback()
        step = step0 + k
        self.record(
            {
                "kind": "train",
                "round": r,
                "step": step,
                "users": self.users,
                "loss": torch.stack(losses).mean(0).tolist(),
                "seconds": time.perf_counter() - t0,
                "positions": self.mm.positions - pos0,
            }
        )
        after = self.mm.get_flat()
        self.comm.reset_bytes()
        t1, pos1 = time.perf_counter(), self.mm.positions
        had_start = self._start is not None
        w, scores, faults = self.exchange(before, after, r)
        start = {} if had_start or self._start is None else {"start_cached": self.start_cached}
        self.record(
            {
                **start,  # the round that got the strategy's starting point: from the disk cache or computed
                "kind": "trust",
                "round": r,
                "step": step,
                "seconds": time.perf_counter() - t1,  # messages, trust scores, aggregation
                "positions": self.mm.positions - pos1,  # forward positions of the trust step (val / X_S passes)
                "users": self.users,
                "W": w.tolist(),
                # how well these rows follow the data structure (trustlora.trust.quality); api merges ranks
                "quality": None if self.mixture is None else trust_quality(w, self.users, self.mixture),
                # pairs not scored (NaN: outside the graph, a peer budget) are written as null
                "scores": None if scores is None else json_safe(scores.tolist()),
                "bytes": self.comm.sent_bytes(),
                "rejected": faults["rejected"],  # messages dropped by the receiving-side checks (trustlora.guard)
                "absent": faults["absent"],  # users who missed this round (faults.dropout_prob)
                "harmful": faults["harmful"],  # [receiver, sender]: updates dropped by faults.update_check / duplicates
                "duplicates": faults["duplicates"],  # senders whose updates were copies of one another (dropped)
                "max_peer_cos": faults["max_peer_cos"],  # largest cosine between two senders' updates (copy margin)
                "bytes_equiv": self.message_sizes(after),
            }
        )
        last = r == len(self.schedule)
        # the per-round (subsampled) curves get a last point too, from the final full pass
        self.evaluate(r, step, full=last, with_sub="before" if last and self.cfg.eval.during_tokens else "")
        return step
