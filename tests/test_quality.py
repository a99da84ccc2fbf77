"""Trust quality metrics (trustlora.trust.quality): oracle, uniform, local, permutation, a hand-computed example."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trustlora.trust.oracle import oracle_matrix
from trustlora.trust.quality import METRICS, merge_quality, trust_quality, trust_quality_from

ONE_HOT_4 = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # categories a, a, b, b
W_DESIGNED = [
    [0.70, 0.20, 0.05, 0.05],  # u0 -> u1 (same category)
    [0.10, 0.60, 0.20, 0.10],  # u1 -> u2 (wrong)
    [0.15, 0.10, 0.60, 0.15],  # u2 ties u0 (wrong) / u3 (right)
    [0.05, 0.05, 0.30, 0.60],  # u3 -> u2 (right)
]
# 6 users, categories a a a b b c: u5 has no same-category peer.
CATS_6 = [0, 0, 0, 1, 1, 2]
ONE_HOT_6 = np.eye(3)[CATS_6]


def test_hand_computed_four_users():
    q = trust_quality(np.array(W_DESIGNED), [0, 1, 2, 3], ONE_HOT_4)
    scm = [0.20 / 0.30, 0.10 / 0.40, 0.15 / 0.40, 0.30 / 0.40]
    top = [1.0, 0.0, 0.5, 1.0]
    eff = [1 / 0.535, 1 / 0.42, 1 / 0.415, 1 / 0.455]
    # off-diagonal rows renormalised vs the oracle's (all mass on the one same-category peer)
    l1 = [1 / 3 + 1 / 6 + 1 / 6, 0.75 + 0.5 + 0.25, 0.375 + 0.25 + 0.625, 0.125 + 0.125 + 0.25]
    for name, want in zip(METRICS, (scm, top, eff, l1), strict=True):
        assert q[f"{name}_per_user"] == pytest.approx(want), name
        assert q[name] == pytest.approx(np.mean(want)), name
    assert q["top_peer_accuracy"] == pytest.approx(0.625)


def test_oracle_scores_perfectly():
    for mixture in (ONE_HOT_4, np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])):
        o = oracle_matrix(mixture)
        q = trust_quality(o, range(4), mixture)
        assert q["top_peer_accuracy"] == 1.0 and q["l1_to_oracle_offdiag"] == pytest.approx(0.0, abs=1e-12)
    q = trust_quality(oracle_matrix(ONE_HOT_4), range(4), ONE_HOT_4)
    assert q["same_category_mass"] == 1.0 and q["effective_peers"] == pytest.approx(2.0)
    # mixed D: the oracle also trusts other-category peers a little, so its SCM is below 1
    mixed = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    o = oracle_matrix(mixed)
    q = trust_quality(o, range(4), mixed)
    assert q["same_category_mass_per_user"][0] == pytest.approx(o[0, 1] / (o[0, 1] + o[0, 2] + o[0, 3]))


def test_uniform_gives_the_same_category_share():
    n = len(CATS_6)
    q = trust_quality(np.full((n, n), 1 / n), range(n), ONE_HOT_6)
    want = [2 / 5, 2 / 5, 2 / 5, 1 / 5, 1 / 5, None]  # u5: no same-category peer
    assert q["same_category_mass_per_user"][:5] == pytest.approx(want[:5])
    assert q["same_category_mass_per_user"][5] is None and q["top_peer_accuracy_per_user"][5] is None
    assert q["same_category_mass"] == pytest.approx(np.mean(want[:5]))  # u5 left out of the mean
    assert q["top_peer_accuracy"] == pytest.approx(np.mean(want[:5]))  # ties: chance level
    assert q["effective_peers"] == pytest.approx(n)
    # u5's oracle row has no off-diagonal mass: its L1 is undefined too
    assert q["l1_to_oracle_offdiag_per_user"][5] is None
    assert q["l1_to_oracle_offdiag_per_user"][3] == pytest.approx(2 * (1 - 1 / 5))


def test_local_identity_is_handled():
    q = trust_quality(torch.eye(4, dtype=torch.float64), [0, 1, 2, 3], ONE_HOT_4)
    assert q["effective_peers"] == 1.0 and q["effective_peers_per_user"] == [1.0] * 4
    assert q["same_category_mass"] is None and q["same_category_mass_per_user"] == [None] * 4
    assert q["l1_to_oracle_offdiag"] is None
    assert q["top_peer_accuracy"] == pytest.approx(1 / 3)  # all peers tie at 0: chance
    json.dumps(q, allow_nan=False)  # strict JSON


def test_permuting_users_permutes_results():
    rng = np.random.default_rng(0)
    n = len(CATS_6)
    w = rng.random((n, n))
    w /= w.sum(1, keepdims=True)
    perm = rng.permutation(n)
    q = trust_quality(w, range(n), ONE_HOT_6)
    qp = trust_quality(w[perm][:, perm], range(n), ONE_HOT_6[perm])
    for name in METRICS:
        got, want = qp[f"{name}_per_user"], [q[f"{name}_per_user"][p] for p in perm]
        assert [g is None for g in got] == [v is None for v in want], name
        assert [g for g in got if g is not None] == pytest.approx([v for v in want if v is not None]), name
        if q[name] is not None:
            assert qp[name] == pytest.approx(q[name]), name


def test_subset_of_rows_and_merge_equal_the_whole():
    w = np.array(W_DESIGNED)
    whole = trust_quality(w, range(4), ONE_HOT_4)
    a, b = trust_quality(w[[0, 1]], [0, 1], ONE_HOT_4), trust_quality(w[[2, 3]], [2, 3], ONE_HOT_4)
    assert a["same_category_mass_per_user"] == pytest.approx(whole["same_category_mass_per_user"][:2])
    merged = merge_quality([a, b])
    for name in METRICS:
        assert merged[name] == pytest.approx(whole[name])
    assert merge_quality([a, None]) is None
    with pytest.raises(ValueError):
        trust_quality(w[[0, 1]], [0, 1, 2], ONE_HOT_4)


def test_from_labels_matches_mixture_version():
    w = np.array(W_DESIGNED)
    q = trust_quality_from(w, range(4), oracle_matrix(ONE_HOT_4), ["a", "a", "b", "b"])
    assert q == trust_quality(w, range(4), ONE_HOT_4)
    none = trust_quality_from(w, range(4), None, None)
    assert none["same_category_mass"] is None and none["l1_to_oracle_offdiag"] is None
    assert none["effective_peers"] == pytest.approx(q["effective_peers"])


def test_recorded_per_round_and_in_summary(tiny_overrides, tmp_path):
    from trustlora import api
    from trustlora.config import load_config

    cfg = load_config(None, tiny_overrides + ["strategy=fedavg", f"out={tmp_path / 'run'}"])
    run_dir = api.run(cfg, progress=False, log=lambda *a: None)
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trust = [r for r in recs if r["kind"] == "trust"]
    assert trust and all(r["quality"]["effective_peers"] == pytest.approx(3.0) for r in trust)  # W = 1/3
    summary = json.loads((run_dir / "summary.json").read_text())
    q = summary["trust_quality"]
    assert set(METRICS) <= set(q) and len(q["effective_peers_per_user"]) == 3
    assert q == trust_quality(np.asarray(summary["final_W"]), range(3), np.asarray(summary["mixture"]))
    assert "## Trust quality" in (run_dir / "report.md").read_text()
    # the subsampled per-round curve has a point at the base and at the last round too, beside the full split
    last = max(r["round"] for r in trust)
    for rnd in (0, last):
        kinds = {r["full"] for r in recs if r["kind"] == "eval" and r["split"] == "test" and r["round"] == rnd}
        assert kinds == {True, False}, rnd
