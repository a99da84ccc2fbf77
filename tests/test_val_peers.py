"""Strategy 'validation' with a peer budget (``trust.val_peers``): who is scored, at what cost, runtime-independent."""

import json

import torch

from trustlora import api
from trustlora.config import load_config
from trustlora.trust.validation import peer_budget


def _points(n: int, p: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed))


def test_budget_keeps_self_the_nearest_half_and_random_others():
    pts = _points(10)
    pts[3] = pts[0] + 1e-3  # user 0's nearest peers: 3, then 7
    pts[7] = pts[0] + 2e-3
    m = peer_budget(pts, list(range(10)), k=4, seed=5)
    assert m.dtype == torch.bool and m.shape == (10, 10)
    assert m.sum(1).tolist() == [5] * 10  # self + 4 peers in every row
    assert bool(m.diagonal().all())
    assert m[0, 3] and m[0, 7]  # ceil(4/2) nearest
    rows = [m[0].nonzero().flatten().tolist() for m in [peer_budget(pts, [0], 4, seed=s) for s in range(20)]]
    drawn = {j for r in rows for j in r} - {0, 3, 7}
    assert len(drawn) >= 5  # the random half moves with the seed: every peer keeps a chance
    assert all({0, 3, 7} <= set(r) for r in rows)


def test_budget_respects_the_graph_and_keeps_all_when_few():
    pts = _points(6)
    allowed = torch.zeros(2, 6, dtype=torch.bool)
    allowed[0, [1, 2]] = True
    allowed[1, [0, 2, 3, 4, 5]] = True
    m = peer_budget(pts, [0, 1], k=3, allowed=allowed, seed=1)
    assert m[0].nonzero().flatten().tolist() == [0, 1, 2]  # only 2 allowed peers: both, and self
    assert int(m[1].sum()) == 4 and bool(m[1, 1])  # self + 3 of its 5 allowed peers
    outside = ~allowed[1]
    outside[1] = False
    assert not bool((m[1] & outside).any())


def test_budget_rows_do_not_depend_on_which_rows_a_process_computes():
    pts = _points(8, seed=2)
    whole = peer_budget(pts, list(range(8)), k=3, seed=9)
    parts = torch.cat([peer_budget(pts, [0, 1, 2], 3, seed=9), peer_budget(pts, [3, 4, 5, 6, 7], 3, seed=9)])
    assert torch.equal(whole, parts)


def _trust_records(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "trust"]


def test_run_with_a_peer_budget_scores_and_trusts_only_the_budget(tiny_overrides, tmp_path):
    over = tiny_overrides + ["strategy=validation", "data.users=4", "faults.update_check=none"]
    cfg = load_config(None, over + ["trust.val_peers=1", f"out={tmp_path / 'k1'}"])
    run = api.run(cfg, progress=False, log=lambda *a: None)
    full = api.run(load_config(None, over + [f"out={tmp_path / 'all'}"]), progress=False, log=lambda *a: None)
    trust = _trust_records(run)
    assert trust
    for r in trust:
        w, s = torch.tensor(r["W"]), r["scores"]
        assert ((w > 0).sum(1) <= 2).all()  # self + one peer
        assert all(sum(x is not None for x in row) == 2 for row in s)  # the others not scored (null)
        for i, row in enumerate(s):
            assert all(w[i, j] == 0 for j, x in enumerate(row) if x is None)
    # one candidate on one user's val tokens: its windows' positions
    per_eval = -(-min(cfg.data.val_tokens, cfg.trust.val_tokens) // cfg.train.seq_len) * cfg.train.seq_len
    saved = sum(r["positions"] for r in _trust_records(full)) - sum(r["positions"] for r in trust)
    assert saved == len(trust) * 4 * (4 - 2) * per_eval  # N (1 + k) = 8 evaluations a round instead of N^2 = 16
