"""Simulated attackers: users whose published messages lie (``attack.users=[0,4] attack.kind=NAME``).

    poisoned = poison_updates(kind, delta, attacker_rows, rng)           # [n_local, P] what attackers publish
    v, i = fake_topk(values, indices, attacker_rows, vocab, rng)          # fabricated predictions on X_S

Kinds (each seeded by (seed, round), recorded in the run directory):

* ``noise``: a random update with the norm of the attacker's honest one;   ``scale``: the honest update x10;
* ``sign_flip``: minus the honest update;   ``zero``: a free rider sending nothing (a zero update);
* ``copy``: a free rider resending the update an honest peer published in the previous round (the first honest user
  it hosts; in an exchange where everyone sends at once, last round's updates are the only ones a free rider has
  seen); in its first round, with nothing to copy yet, it sends nothing (a zero update). ``copy_now``: the same
  within the round (a copy of the peer's current update: possible only where a free rider can wait for the others'
  messages, e.g. behind a relay);
* ``nan``: an update full of NaN;   ``garbage_data``: trains on its own tokens shuffled (data poisoning; every
  message is the honest output of that model);
* ``fake_topk``: fabricated top-k predictions on X_S (random token ids, random probabilities) together with a
  random update of the honest norm: trust bought with made-up evidence.

Reference (not an attack): ``absent``: the listed users never take part; honest users collaborate among themselves.

Attackers publish a consistent lie: their theta message is before + poisoned update, and their predictions on X_S
come from that model (except ``fake_topk``, which fabricates them). They never aggregate (they keep their own
locally trained adapter) and are left out of the honest users' mean perplexity.
"""

from __future__ import annotations

import numpy as np
import torch

KINDS = ("noise", "scale", "sign_flip", "zero", "copy", "copy_now", "nan", "garbage_data", "fake_topk")
REFERENCE_KINDS = ("absent",)
"""Not an attack: ``absent`` = the listed users never take part (every round absent, nothing sent): what a perfect
defence would leave, the reference that separates the harm of an attack from the loss of those users' help."""
UPDATE_KINDS = ("noise", "scale", "sign_flip", "zero", "copy", "copy_now", "nan", "fake_topk")
"""Kinds that replace the attacker's update (garbage_data poisons the training data instead)."""


def round_rng(seed: int, round_: int) -> torch.Generator:
    ss = np.random.SeedSequence([abs(int(seed)), int(seed < 0), int(round_), 0xA77AC])
    return torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))


def poison_updates(
    kind: str,
    delta: torch.Tensor,
    attackers: list[int],
    honest: list[int],
    g: torch.Generator,
    previous: torch.Tensor | None = None,
):
    """delta [n_local, P] -> what every local slot publishes; rows ``attackers`` (local slot indices) lie.
    ``previous`` [n_local, P]: what the slots published the round before (None in a first round; ``copy``)."""
    out = delta.clone()
    for a in attackers:
        d = delta[a]
        if kind in ("noise", "fake_topk"):
            r = torch.randn(d.shape, generator=g, dtype=torch.float32).to(d)
            out[a] = r * (d.norm() / r.norm().clamp_min(1e-12))
        elif kind == "scale":
            out[a] = d * 10.0
        elif kind == "sign_flip":
            out[a] = -d
        elif kind == "zero":
            out[a] = 0.0
        elif kind == "copy_now":
            out[a] = delta[honest[0]] if honest else d
        elif kind == "copy":
            out[a] = previous[honest[0]].to(d) if honest and previous is not None else 0.0
        elif kind == "nan":
            out[a] = float("nan")
    return out


def fake_topk(
    values: torch.Tensor, indices: torch.Tensor, attackers: list[int], vocab: int, probs: bool, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """values/indices [n_local, M, k] -> copies with the attackers' rows fabricated."""
    v, i = values.clone(), indices.clone()
    _, m, k = values.shape
    for a in attackers:
        i[a] = torch.randint(0, vocab, (m, k), generator=g, dtype=torch.int64).to(i.dtype)
        r = torch.rand(m, k, generator=g)
        if probs:
            r = r / r.sum(1, keepdim=True)
        v[a] = torch.sort(r, dim=1, descending=True).values.to(v.dtype)
    return v, i


def shuffle_tokens(stream: torch.Tensor, seed: int, user: int) -> torch.Tensor:
    """``garbage_data``: the user's train tokens in a random order (same multiset, no language left)."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([abs(seed), user, 0x6A7B]).generate_state(1)[0]))
    return stream[torch.randperm(len(stream), generator=g)]
