"""Trust strategies and aggregation: numpy references and invariants."""

import numpy as np
import pytest
import torch

from trustlora.aggregate import check_trust, mix_updates, mix_weights
from trustlora.config import ConfigError, TrustConfig
from trustlora.trust import TrustInputs, get, names
from trustlora.trust.normalise import normalise, rescale
from trustlora.trust.oracle import oracle_matrix
from trustlora.trust.predictions import prediction_scores, sparse_l1
from trustlora.trust.weights import cosine_scores

N = 5


def _inputs(seed=0, k=4, m=7, v=20):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(N, 30, generator=g)
    vals = torch.rand(N, m, k, generator=g)
    idx = torch.stack([torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(m)]) for _ in range(N)])
    val_losses = torch.rand(N, N, generator=g, dtype=torch.float64) * 3 + 1
    mix = np.eye(N)[:, [0, 0, 1, 1, 2]].T if False else np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0.5, 0.5]])
    return TrustInputs(
        users=list(range(N)),
        n_users=N,
        mixture=mix,
        theta=theta,
        val_losses=val_losses,
        topk_values=vals,
        topk_indices=idx.to(torch.int32),
        theta0=torch.zeros(N, 30),
        val_base_losses=torch.full((N,), 5.0, dtype=torch.float64),
        base_topk_values=torch.rand(m, k, generator=g),
        base_topk_indices=torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(m)]).to(torch.int32),
    )


def _dense(vals, idx, v=20):
    d = np.zeros((vals.shape[0], v))
    for m in range(vals.shape[0]):
        d[m, idx[m].numpy()] = vals[m].numpy()
    return d


def test_registry_lists_six_and_rejects_unknown():
    assert names() == [
        "local",
        "fedavg",
        "oracle",
        "weights",
        "validation",
        "predictions",
        "median",
        "trimmed_mean",
        "krum",
    ]
    with pytest.raises(ConfigError, match="unknown strategy 'nope'.*local, fedavg"):
        get("nope")


@pytest.mark.parametrize("name", ["local", "fedavg", "oracle", "weights", "validation", "predictions"])
def test_rows_are_stochastic_and_permutation_equivariant(name):
    inp = _inputs()
    w, _ = get(name).trust(inp, TrustConfig())
    check_trust(w, N, N)
    perm = torch.tensor([3, 0, 4, 1, 2])
    pinp = TrustInputs(
        users=list(range(N)),
        n_users=N,
        mixture=inp.mixture[perm.numpy()],
        theta=inp.theta[perm],
        val_losses=inp.val_losses[perm][:, perm],
        topk_values=inp.topk_values[perm],
        topk_indices=inp.topk_indices[perm],
        theta0=inp.theta0[perm],
        val_base_losses=inp.val_base_losses[perm],
        base_topk_values=inp.base_topk_values,
        base_topk_indices=inp.base_topk_indices,
    )
    wp, _ = get(name).trust(pinp, TrustConfig())
    torch.testing.assert_close(wp, w[perm][:, perm])


def test_local_fedavg_oracle_exact():
    inp = _inputs()
    w, _ = get("local").trust(inp, TrustConfig())
    torch.testing.assert_close(w, torch.eye(N, dtype=torch.float64))
    w, _ = get("fedavg").trust(inp, TrustConfig())
    torch.testing.assert_close(w, torch.full((N, N), 1 / N, dtype=torch.float64))
    w, _ = get("oracle").trust(inp, TrustConfig())
    d = inp.mixture
    ref = d @ d.T / (d @ d.T).sum(1, keepdims=True)
    np.testing.assert_allclose(w.numpy(), ref)
    # users 0 and 1 share a category: equal weight 1/2 on each other and 0 on users 2, 3
    np.testing.assert_allclose(oracle_matrix(np.array([[1, 0], [1, 0], [0, 1]]))[0], [0.5, 0.5, 0])


def test_weights_matches_numpy_cosine_softmax():
    inp = _inputs()
    t = inp.theta.double().numpy()
    cos = (t @ t.T) / np.outer(np.linalg.norm(t, axis=1), np.linalg.norm(t, axis=1))
    tau = 0.3
    ref = np.exp(cos / tau) / np.exp(cos / tau).sum(1, keepdims=True)
    w, s = get("weights").trust(inp, TrustConfig(temperature=tau, scale="none"))
    np.testing.assert_allclose(s.numpy(), cos, atol=1e-12)
    np.testing.assert_allclose(w.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(cosine_scores(inp.theta, [2]).numpy(), cos[2:3], atol=1e-12)


def test_validation_softmax_of_negative_loss_and_ppl_option():
    inp = _inputs()
    s = inp.val_losses.numpy()
    ref = np.exp(-s) / np.exp(-s).sum(1, keepdims=True)
    w, _ = get("validation").trust(inp, TrustConfig(scale="none"))
    np.testing.assert_allclose(w.numpy(), ref, atol=1e-12)
    w2, s2 = get("validation").trust(inp, TrustConfig(val_metric="ppl", temperature=5.0, scale="none"))
    np.testing.assert_allclose(s2.numpy(), np.exp(s))
    ref2 = np.exp(-np.exp(s) / 5) / np.exp(-np.exp(s) / 5).sum(1, keepdims=True)
    np.testing.assert_allclose(w2.numpy(), ref2, atol=1e-12)
    # the lowest loss peer gets the most trust
    assert int(w.argmax(1)[0]) == int(np.argmin(s[0]))


def test_sparse_l1_matches_dense_reference():
    inp = _inputs()
    for i, j in [(0, 1), (2, 4), (3, 3)]:
        a = _dense(inp.topk_values[i], inp.topk_indices[i])
        b = _dense(inp.topk_values[j], inp.topk_indices[j])
        ref = np.abs(a - b).sum(1).mean()
        got = sparse_l1(inp.topk_values[i], inp.topk_indices[i], inp.topk_values[j], inp.topk_indices[j])
        assert abs(float(got) - ref) < 1e-9
    s = prediction_scores(inp.topk_values, inp.topk_indices, list(range(N)))
    assert torch.all(s.diagonal() == 0) and torch.allclose(s, s.T)
    w, _ = get("predictions").trust(inp, TrustConfig(scale="none"))
    ref = np.exp(-s.numpy()) / np.exp(-s.numpy()).sum(1, keepdims=True)
    np.testing.assert_allclose(w.numpy(), ref, atol=1e-12)
    # scale='row_l1': rows rescaled to sum 10 first, as the official code does
    w, _ = get("predictions").trust(inp, TrustConfig(scale="row_l1"))
    sc = s.numpy() / s.numpy().sum(1, keepdims=True) * 10
    np.testing.assert_allclose(w.numpy(), np.exp(-sc) / np.exp(-sc).sum(1, keepdims=True), atol=1e-12)


def test_normalisers_topk_threshold_and_rescale():
    s = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 0.0, 1.0]], dtype=torch.float64)
    w = normalise(s, TrustConfig(normaliser="topk", top_peers=2), higher_is_better=False)
    assert torch.all(w[0, 2:] == 0) and torch.all(w[1, :2] == 0)
    np.testing.assert_allclose(w[0, :2].numpy(), np.exp([0, -1]) / np.exp([0, -1]).sum())
    w = normalise(s, TrustConfig(normaliser="threshold", threshold=0.6), higher_is_better=True)
    np.testing.assert_allclose(w.numpy(), [[0, 0, 0.5, 0.5], [0.5, 0.5, 0, 0]])
    r = rescale(s, "row_l1")
    np.testing.assert_allclose(r.sum(1).numpy(), [10.0, 10.0])
    np.testing.assert_allclose(rescale(s, "row_mean").mean(1).numpy(), [1.0, 1.0])


def test_partial_rows_for_a_subset_of_users():
    inp = _inputs()
    full, _ = get("weights").trust(inp, TrustConfig())
    sub = TrustInputs(users=[1, 3], n_users=N, theta=inp.theta, theta0=inp.theta0)
    part, _ = get("weights").trust(sub, TrustConfig())
    torch.testing.assert_close(part, full[[1, 3]])
    loc, _ = get("local").trust(sub, TrustConfig())
    assert loc[0, 1] == 1 and loc[1, 3] == 1 and loc.sum() == 2


def test_aggregation_update_and_weight_modes():
    g = torch.Generator().manual_seed(0)
    before = torch.randn(N, 8, generator=g)
    after = before + torch.randn(N, 8, generator=g)
    w = torch.softmax(torch.randn(N, N, generator=g, dtype=torch.float64), 1)
    new = mix_updates(before, after - before, w)
    ref = before.numpy() + w.numpy() @ (after - before).numpy()
    np.testing.assert_allclose(new.numpy(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mix_updates(before, after - before, torch.eye(N, dtype=torch.float64)), after)
    torch.testing.assert_close(mix_weights(after, w), (w.float() @ after))
    with pytest.raises(ValueError, match="sum to 1"):
        mix_updates(before, after - before, w * 2)
    with pytest.raises(ValueError, match="must be"):
        check_trust(w[:2], N, N)


def test_ring_topology_restricts_and_renormalises():
    from trustlora.aggregate import neighbour_mask, restrict

    m = neighbour_mask(5, "ring")
    assert m.sum(1).tolist() == [3] * 5 and bool(m[0, 4]) and bool(m[0, 1]) and not bool(m[0, 2])
    assert bool(neighbour_mask(4, "full").all())
    w = torch.full((5, 5), 0.2, dtype=torch.float64)
    r = restrict(w, m)
    check_trust(r, 5, 5)
    np.testing.assert_allclose(r[0].numpy(), [1 / 3, 1 / 3, 0, 0, 1 / 3])
    with pytest.raises(ValueError, match="no trusted neighbour"):
        restrict(torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64), torch.eye(2, dtype=torch.bool))
