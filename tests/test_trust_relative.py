"""Relative trust calibration (the default): invariances and behaviour on constructed scores."""

import numpy as np
import pytest
import torch

from trustlora.aggregate import check_trust, neighbour_mask
from trustlora.config import ConfigError, TrustConfig, load_config
from trustlora.trust import TrustInputs, get
from trustlora.trust.normalise import RELATIVE_TEMPERATURE, normalise, normalise_relative, relative_z

CFG = TrustConfig()


def _clusters(n, c, near=1.0, far=2.0, noise=0.05, seed=0):
    """Symmetric distances between n users in c interleaved clusters (user i in cluster i mod c)."""
    g = np.random.default_rng(seed)
    cl = np.arange(n) % c
    d = np.where(cl[:, None] == cl[None, :], near, far) + noise * g.random((n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return torch.tensor(d), cl


def _scm(w, cl):
    n = len(cl)
    off = w.clone()
    off[torch.arange(n), torch.arange(n)] = 0
    same = torch.tensor(cl[:, None] == cl[None, :])
    return float(((off * same).sum(1) / off.sum(1)).mean())


def test_relative_is_invariant_to_score_scale_and_shift_of_units():
    d, _ = _clusters(8, 4)
    unit = torch.full((8,), 1.0, dtype=torch.float64)
    rows = list(range(8))
    w1, _ = normalise_relative(d, unit, rows, CFG)
    w2, _ = normalise_relative(d * 37.5, unit * 37.5, rows, CFG)
    torch.testing.assert_close(w1, w2)
    check_trust(w1, 8, 8)


@pytest.mark.parametrize("n", [6, 12, 24, 48])
def test_relative_trust_does_not_decay_with_n(n):
    d, cl = _clusters(n, 3)
    w, _ = normalise_relative(d, torch.ones(n, dtype=torch.float64), list(range(n)), CFG)
    assert _scm(w, cl) > 0.99
    # self gets the weight of the best peer, so with k same-cluster peers it is ~1/(k+1) whatever N
    k = n // 3 - 1
    assert abs(float(w[0, 0]) - 1 / (k + 1)) < 0.1


def test_relative_is_flat_when_peers_are_indistinguishable_and_sharp_when_far():
    n = 9
    d, cl = _clusters(n, 3, near=1.0, far=1.0, noise=0.0)
    w, _ = normalise_relative(d, torch.ones(n, dtype=torch.float64), list(range(n)), CFG)
    torch.testing.assert_close(w, torch.full((n, n), 1 / n, dtype=torch.float64))  # = FedAvg
    d, cl = _clusters(n, 3, near=1.0, far=1.0 + 3 * RELATIVE_TEMPERATURE, noise=0.0)
    w, _ = normalise_relative(d, torch.ones(n, dtype=torch.float64), list(range(n)), CFG)
    # a peer 3 tau (in units of the user's movement) farther than the closest one gets e^-3 of its weight
    np.testing.assert_allclose(float(w[0, 1] / w[0, 3]), np.exp(-3.0), rtol=1e-9)


def test_relative_z_reference_is_closest_peer_and_self_options():
    d = torch.tensor([[0.0, 2.0, 3.0], [2.0, 0.0, 5.0]], dtype=torch.float64)
    z = relative_z(d, torch.tensor([1.0, 2.0]), [0, 1], reference="closest")
    np.testing.assert_allclose(z.numpy(), [[0.0, 0.0, 1.0], [0.0, 0.0, 1.5]])
    # validation: self is a measurement; a peer with a lower loss than self outranks it
    s = torch.tensor([[2.0, 1.5, 3.0]], dtype=torch.float64)
    z = relative_z(s, torch.tensor([1.0]), [0], reference="best")
    np.testing.assert_allclose(z.numpy(), [[0.5, 0.0, 1.5]])
    # validation default: the own model is the reference; a better peer shares the top weight, a worse one pays
    z = relative_z(s, torch.tensor([1.0]), [0], reference="self")
    np.testing.assert_allclose(z.numpy(), [[0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="reference"):
        relative_z(s, torch.tensor([1.0]), [0], reference="nearest")


def test_validation_self_reference_keeps_equally_good_peers_together():
    """Three same-category models within noise of each other keep near-equal weight whichever is best on val;
    other-category models (half the gain behind) get almost none."""
    from trustlora.config import TrustConfig
    from trustlora.trust import TrustInputs, get

    cats = [0, 1, 2, 0, 1, 2]
    # CE of model j on user 0's val: own 2.10, same-category peer 2.05 (best, by noise), others 2.30; base 2.50
    row = torch.tensor([[2.10, 2.30, 2.30, 2.05, 2.31, 2.29]], dtype=torch.float64)
    inp = TrustInputs(users=[0], n_users=6, val_losses=row, val_base_losses=torch.tensor([2.50], dtype=torch.float64))
    w, _ = get("validation").trust(inp, TrustConfig(val_reference="self", temperature=0.1))
    same = w[0, [0, 3]]
    assert torch.allclose(same[0], same[1])  # the better peer does not outrank self
    assert float(same.sum()) > 0.9 and all(float(w[0, j]) < 0.05 for j in range(6) if cats[j] != 0)
    w_best, _ = get("validation").trust(inp, TrustConfig(val_reference="best", temperature=0.1))
    assert float(w_best[0, 3]) > 1.5 * float(w_best[0, 0])  # 'best': the lucky peer takes more than self


def test_mask_is_applied_before_normalising():
    n = 6
    d, _ = _clusters(n, 2, seed=1)
    mask = neighbour_mask(n, "ring")
    w, _ = normalise_relative(d, torch.ones(n, dtype=torch.float64), list(range(n)), CFG, mask=mask)
    assert torch.all(w[~mask] == 0)
    check_trust(w, n, n)
    d2 = d.clone()
    d2[0, 3] = 0.001  # a non-neighbour that looks like a perfect peer must not move user 0's row
    w2, _ = normalise_relative(d2, torch.ones(n, dtype=torch.float64), list(range(n)), CFG, mask=mask)
    torch.testing.assert_close(w2[0], w[0])
    # the paper-style path does the same
    p1 = normalise(d, TrustConfig(scale="row_l1"), higher_is_better=False, mask=mask)
    p2 = normalise(d2, TrustConfig(scale="row_l1"), higher_is_better=False, mask=mask)
    torch.testing.assert_close(p1[0], p2[0])
    assert torch.all(p1[~mask] == 0)


def _movement_inputs(n=6, c=3, p=200, seed=0):
    """Shared theta0 (as with same_init), per-cluster drift direction + per-user noise."""
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(1, p, generator=g).expand(n, p) * 10
    dirs = torch.randn(c, p, generator=g)
    move = torch.stack([dirs[i % c] + 0.3 * torch.randn(p, generator=g) for i in range(n)])
    return TrustInputs(users=list(range(n)), n_users=n, theta=theta0 + 0.05 * move, theta0=theta0.clone())


def test_weights_relative_discriminates_where_paper_cosine_cannot():
    inp = _movement_inputs()
    cl = np.arange(6) % 3
    w_rel, _ = get("weights").trust(inp, TrustConfig())
    w_cos, _ = get("weights").trust(inp, TrustConfig(scale="none"))
    assert _scm(w_rel, cl) > 0.9
    assert _scm(w_cos, cl) < 0.25  # cos(theta_i, theta_j) ~ 1 for all pairs: uniform share is 0.2


def test_validation_relative_uses_gain_over_base():
    # user 0's val: own model and peer 1 gain 1 nat over base, peers 2..3 gain only 0.1
    losses = torch.tensor([[4.0, 4.02, 4.9, 4.9]], dtype=torch.float64)
    inp = TrustInputs(users=[0], n_users=4, val_losses=losses, val_base_losses=torch.tensor([5.0], dtype=torch.float64))
    cfg = TrustConfig(temperature=0.1)
    w, _ = get("validation").trust(inp, cfg)
    assert float(w[0, :2].sum()) > 0.99
    # the same CE gaps with a 10x larger gain over base count 10x less
    inp.val_base_losses = torch.tensor([14.0], dtype=torch.float64)
    w2, _ = get("validation").trust(inp, cfg)
    assert float(w2[0, 2]) > float(w[0, 2]) * 100
    # temperature auto = validation's own default (0.3): a peer 0.3 of the gain behind the best gets 1/e of it
    from trustlora.trust.validation import VALIDATION_TEMPERATURE

    inp = TrustInputs(
        users=[0],
        n_users=2,
        val_losses=torch.tensor([[4.0, 4.3]], dtype=torch.float64),
        val_base_losses=torch.tensor([5.0], dtype=torch.float64),
    )
    w3, _ = get("validation").trust(inp, TrustConfig())
    assert VALIDATION_TEMPERATURE == 0.3
    np.testing.assert_allclose(float(w3[0, 1] / w3[0, 0]), np.exp(-1.0), rtol=1e-9)


def test_temperature_auto_and_validation():
    assert load_config(None, []).trust.temperature == "auto"
    assert load_config(None, ["trust.temperature=0.5"]).trust.temperature == 0.5
    with pytest.raises(ConfigError, match="trust.temperature"):
        load_config(None, ["trust.temperature=-1"])
    with pytest.raises(ConfigError, match="trust.temperature"):
        load_config(None, ["trust.temperature=hot"])
    with pytest.raises(ConfigError, match="trust.scale"):
        load_config(None, ["trust.scale=banana"])
