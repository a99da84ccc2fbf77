"""Receiving-side checks of peers' messages, before any use (pure tensor functions).

    shapes = expected_messages(msgs, MessageSizes(params=P, positions=M, topk=k))   # from the MESSAGES table
    verdict = check_messages(msgs, rows=[0, 1, 2], n_users=N, expected=shapes, own_delta=delta[rows],
                             max_norm_ratio=5.0, vocab=49152, probs=True)
    msgs = sanitize(msgs, verdict.bad_senders)      # rejected senders' tensors replaced by zeros
    W = restrict_to(W, verdict.accept, rows)        # rejected peers weigh 0, rows renormalised

A message kind is a tensor ``[N, ...]`` (one slice per sender); :data:`MESSAGES`, the one table of message kinds
(what a strategy may publish, in the order they are gathered and checked), says what each slice must be. A sender's
slice is rejected for everyone when it has the wrong dtype or shape, a non-finite entry, top-k ids outside the
vocabulary or top-k probabilities outside [0, 1]; its update ``delta`` is rejected by receiver i alone when its norm
exceeds ``max_norm_ratio`` x the norm of i's own update (0 = no bound). Every rejection is an event ``{"sender",
"kind", "reason", "receivers"}``. Self is always accepted (a user's own message never crosses the network), so no row
is ever empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class MessageSizes:
    """What a message slice's shape and dtype follow from."""

    params: int
    """P: adapter parameters per user."""
    positions: int = 0
    """M: real token positions of the windows of the public set X_S."""
    topk: int = 0
    """k: top-k predictions per position (``trust.topk``)."""
    dtype: torch.dtype = torch.float32
    """The flat adapters' dtype (``get_flat``)."""


MESSAGES: dict[str, Callable[[MessageSizes], tuple[tuple[int, ...], torch.dtype]]] = {
    "theta0": lambda s: ((s.params,), s.dtype),
    "theta": lambda s: ((s.params,), s.dtype),
    "delta": lambda s: ((s.params,), s.dtype),
    "topk_values": lambda s: ((s.positions, s.topk), torch.float32),
    "topk_indices": lambda s: ((s.positions, s.topk), torch.int32),
}
"""Message kind -> (shape, dtype) of one sender's slice. ``theta0``: the adapters before any training (the starting
point of relative trust calibration; sent once, not checked); ``theta``: the adapters after the round's local steps;
``delta``: the round's update (theta - the adapters before the round); ``topk_values`` / ``topk_indices``: top-k
next-token predictions on X_S (probabilities or logits, float32) and their token ids (int32). The order of this
table is the order in which kinds are gathered (the same on every process) and checked."""


def expected_messages(
    kinds: Iterable[str],
    sizes: MessageSizes,
    extra: dict[str, Callable[[MessageSizes], tuple[tuple[int, ...], torch.dtype]]] | None = None,
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of one slice of each of ``kinds``, from :data:`MESSAGES` and ``extra`` (a strategy's own kinds,
    its ``messages`` table); an unknown kind fails loudly."""
    table = MESSAGES | (extra or {})
    out = {}
    for kind in kinds:
        if kind not in table:
            raise ValueError(f"unknown message kind '{kind}'; expected one of: {', '.join(table)}")
        out[kind] = table[kind](sizes)
    return out


@dataclass
class Verdict:
    accept: torch.Tensor
    """[n_local, N] bool: whom each local user takes messages from this round."""
    events: list[dict] = field(default_factory=list)

    @property
    def bad_senders(self) -> list[int]:
        """Senders rejected by every receiver for malformed content (their tensors must not be used at all)."""
        return sorted({e["sender"] for e in self.events if e["receivers"] == "all"})


def _reject(accept: torch.Tensor, events: list[dict], sender: int, kind: str, reason: str, receivers) -> None:
    if receivers == "all":
        accept[:, sender] = False
    else:
        for a in receivers:
            accept[a, sender] = False
    events.append(
        {
            "sender": int(sender),
            "kind": kind,
            "reason": reason,
            "receivers": receivers if receivers == "all" else [int(a) for a in receivers],
        }
    )


def check_messages(
    msgs: dict[str, torch.Tensor],
    rows: list[int],
    n_users: int,
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
    own_delta: torch.Tensor | None = None,
    max_norm_ratio: float = 0.0,
    vocab: int | None = None,
    probs: bool = True,
) -> Verdict:
    """Check every sender's slice of every message kind; see the module docstring."""
    accept = torch.ones(len(rows), n_users, dtype=torch.bool)
    events: list[dict] = []
    bad: set[int] = set()
    for kind, t in msgs.items():
        shape, dtype = expected[kind]
        if t.shape[0] != n_users:
            raise ValueError(f"message kind '{kind}': expected one slice per user ({n_users}), got {t.shape[0]}")
        for j in range(n_users):
            if j in bad:
                continue
            x = t[j]
            reason = None
            if x.dtype != dtype:
                reason = f"dtype {x.dtype}, expected {dtype}"
            elif tuple(x.shape) != tuple(shape):
                reason = f"shape {list(x.shape)}, expected {list(shape)}"
            elif x.is_floating_point() and not torch.isfinite(x).all():
                reason = "non-finite values"
            elif kind == "topk_indices" and vocab is not None and ((x < 0) | (x >= vocab)).any():
                reason = f"token ids outside [0, {vocab})"
            elif kind == "topk_values" and probs and ((x < 0) | (x > 1 + 1e-3)).any():
                reason = "probabilities outside [0, 1]"
            if reason is not None:
                bad.add(j)
                _reject(accept, events, j, kind, reason, "all")
    if own_delta is not None and max_norm_ratio > 0 and "delta" in msgs:
        norms = msgs["delta"].double().flatten(1).norm(dim=1)  # [N]
        own = own_delta.double().flatten(1).norm(dim=1)  # [n_local]
        for j in range(n_users):
            if j in bad:
                continue
            over = [a for a in range(len(rows)) if rows[a] != j and norms[j] > max_norm_ratio * own[a].clamp_min(1e-12)]
            if over:
                ratio = float(norms[j] / own[over].clamp_min(1e-12).min())
                _reject(accept, events, j, "delta", f"update norm {ratio:.1f}x the receiver's own", over)
    accept[torch.arange(len(rows)), torch.tensor(rows, dtype=torch.long)] = True
    return Verdict(accept=accept, events=events)


def sanitize(msgs: dict[str, torch.Tensor], bad_senders: list[int]) -> dict[str, torch.Tensor]:
    """Copies of the message tensors with the rejected senders' slices set to zeros (never read: weight 0)."""
    if not bad_senders:
        return msgs
    out = {}
    for kind, t in msgs.items():
        c = t.clone()
        c[bad_senders] = 0
        out[kind] = c
    return out


def restrict_to(w: torch.Tensor, accept: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """W with non-accepted entries set to 0 and every row renormalised; a row left with no weight (all of it was on
    rejected peers) falls back to self alone (``rows[a]``: the global index of row a's user)."""
    out = torch.where(accept, w.double(), torch.zeros_like(w, dtype=torch.float64))
    out = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    sums = out.sum(1, keepdim=True)
    own = torch.zeros_like(out)
    own[torch.arange(len(rows)), torch.tensor(rows, dtype=torch.long)] = 1.0
    return torch.where(sums > 0, out / sums.clamp_min(1e-300), own)


ALIGN_SIGMAS = 4.0
"""``faults.update_check=align``: an update must be aligned with the receiver's own by more than this many standard
deviations of the cosine between two random directions in P dimensions (1/sqrt(P)): a random or empty update is
statistically orthogonal to everything, an honest one is not."""


def aligned_updates(deltas: torch.Tensor, own: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``faults.update_check=align``: [n, N] bool, False where peer j's update is not clearly aligned with receiver i's
    own: cosine(deltas[j], own[i]) <= ALIGN_SIGMAS / sqrt(P) (a flipped, random or empty update). Self is always kept,
    and so is every peer of a receiver whose own update is empty (nothing to compare with). deltas [N, P], own [n, P].
    """
    d, o = deltas.double(), own.double()
    dots = o @ d.T  # [n, N]
    norms = o.norm(dim=1, keepdim=True) * d.norm(dim=1).view(1, -1)
    bound = ALIGN_SIGMAS / max(1, d.shape[1]) ** 0.5
    keep = (dots > bound * norms) & (norms > 0)
    keep |= o.norm(dim=1, keepdim=True) == 0
    keep[torch.arange(len(rows)), torch.tensor(rows, dtype=torch.long)] = True
    return keep


DUPLICATE_COS = 0.99
"""``faults.duplicates=drop``: two updates with a cosine at least this are copies of one another. Honest users train
on their own data with their own dropout and batch order: in clean runs the largest cosine between two users' updates
stayed far below (``max_peer_cos`` in every trust record; README 'Faulty and lying peers')."""


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[len(a), len(b)] cosines of the rows; -1 wherever a row is empty (an empty update is nobody's copy)."""
    a, b = a.float(), b.float()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a @ b.T) / (na.view(-1, 1) * nb.view(1, -1)).clamp_min(1e-30)
    cos[na == 0] = -1.0
    cos[:, nb == 0] = -1.0
    return cos


def duplicate_senders(
    deltas: torch.Tensor, senders: list[int], previous: torch.Tensor | None = None
) -> tuple[list[int], float | None]:
    """``faults.duplicates=drop``: among ``senders`` (global ids; rows of ``deltas`` [N, P]), those whose update is
    a copy (cosine >= :data:`DUPLICATE_COS`) of an update that arrived the round before (``previous`` [N, P], any
    sender: a replay, whose sender is identified) or of another sender's this round (every member of such a group: the
    receiver cannot tell the original from its copies). Also returns the largest cosine between two distinct senders'
    updates this round (None for fewer than two). An update counts once or not at all, and a free rider resending
    someone's update earns nothing with it (FoolsGold's premise: sybils' updates are more alike than honest users')."""
    if not senders:
        return [], None
    d = deltas[senders]
    dup = torch.zeros(len(senders), dtype=torch.bool)
    top = None
    if len(senders) > 1:
        cos = _cosines(d, d)
        cos.fill_diagonal_(-1.0)
        dup |= (cos >= DUPLICATE_COS).any(dim=1)
        top = float(cos.max())
    if previous is not None:
        dup |= (_cosines(d, previous) >= DUPLICATE_COS).any(dim=1)
    return [senders[k] for k in dup.nonzero().view(-1).tolist()], top
