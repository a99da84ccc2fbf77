"""The chunked linear cross-entropy (trustlora.loss) equals the full-logits path: loss, gradients, top-k."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from trustlora import loss
from trustlora.config import LoraConfig
from trustlora.loss import head_scores, linear_cross_entropy, next_token_labels
from trustlora.model.base import tiny_random_model
from trustlora.model.multilora import MultiLoRA
from trustlora.train import autocast, per_user_loss, stacked_loss, topk_of

N, B, T = 3, 2, 16


def _mm():
    mm = MultiLoRA(copy.deepcopy(tiny_random_model(seed=0)), N, LoraConfig(dropout=0.0), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in mm.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    ids = torch.randint(0, 256, (N * B, T), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # padding in one window
    return mm, ids, mask


@pytest.mark.parametrize("rows", [1, 7, 10_000])
def test_linear_ce_matches_cross_entropy_and_grads(rows):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(23, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(31, 8, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(31, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 31, (23,), generator=g)
    labels[[3, 11]] = -100
    ref = F.cross_entropy(F.linear(h, w, b), labels, reduction="none", ignore_index=-100)
    out = linear_cross_entropy(h, w, b, labels, rows=rows)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(23, generator=g, dtype=torch.float64)
    gr = torch.autograd.grad((ref * upstream).sum(), (h, w, b))
    go = torch.autograd.grad((out.double() * upstream).sum(), (h, w, b))
    for a, e in zip(go, gr, strict=True):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[labels == -100], torch.zeros(2, dtype=out.dtype))


@pytest.mark.parametrize("rows", [1, 7, 10_000])
def test_linear_ce_frozen_head_gradient_from_forward(rows):
    """Frozen head (only hidden needs a gradient): the gradient computed in the forward, scaled in the backward,
    equals autograd through the full logits, for any upstream gradient and any chunking."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(23, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(31, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 31, (23,), generator=g)
    labels[[0, 22]] = -100
    ref = F.cross_entropy(F.linear(h, w), labels, reduction="none", ignore_index=-100)
    out = linear_cross_entropy(h, w, None, labels, rows=rows)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    for seed in (0, 1):
        upstream = torch.randn(23, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        (gr,) = torch.autograd.grad((ref * upstream).sum(), h, retain_graph=True)
        (go,) = torch.autograd.grad((out.double() * upstream).sum(), h, retain_graph=True)
        torch.testing.assert_close(go, gr, rtol=1e-6, atol=1e-6)
    assert torch.equal(out[labels == -100], torch.zeros(2, dtype=out.dtype))


def test_head_scores_topk_matches_softmax_topk():
    g = torch.Generator().manual_seed(3)
    h, w = torch.randn(19, 8, generator=g), torch.randn(40, 8, generator=g)
    labels = torch.randint(0, 40, (19,), generator=g)
    for space in ("probs", "logits"):
        nll, (v, i) = head_scores(h, w, None, labels, topk=(5, space), rows=4)
        rv, ri = topk_of(F.linear(h, w), 5, space)
        torch.testing.assert_close(v, rv)
        assert torch.equal(i, ri)
        torch.testing.assert_close(nll, F.cross_entropy(F.linear(h, w), labels, reduction="none"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stacked_loss_equals_full_logits_path(precision):
    """Per-user loss and every adapter gradient through the model: chunked head vs full logits."""
    mm, ids, mask = _mm()
    assert mm.lm_head is not None
    with autocast(precision):
        ref_nll, ref_count = per_user_loss(mm(ids), ids, N, mask)
    gref = torch.autograd.grad(ref_nll.sum(), mm.adapter_parameters())
    with autocast(precision):
        nll, count, _ = stacked_loss(mm, ids, N, mask)
    got = torch.autograd.grad(nll.sum(), mm.adapter_parameters())
    assert torch.equal(count, ref_count)
    tol = {"rtol": 1e-4, "atol": 1e-4} if precision == "fp32" else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(nll, ref_nll, **tol)
    for a, e in zip(got, gref, strict=True):
        if precision == "fp32":
            torch.testing.assert_close(a, e, **tol)
        else:  # bf16 on CPU: the fused head (fp32 logits inside) rounds elsewhere than bf16 logits; ~1 % apart
            assert ((a - e).norm() / e.norm()).item() < 3e-2


def test_stacked_loss_no_grad_topk_matches_logits():
    mm, ids, mask = _mm()
    with torch.no_grad():
        logits = mm(ids)
        nll, count, (v, i) = stacked_loss(mm, ids, N, mask, topk=(4, "probs"))
    ref_nll, ref_count = per_user_loss(logits, ids, N, mask)
    rv, ri = topk_of(logits, 4, "probs")
    torch.testing.assert_close(nll, ref_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, rv, rtol=1e-5, atol=1e-6)
    assert (i == ri).float().mean() > 0.99  # ties may order differently
    assert torch.equal(count, ref_count)


def test_labels_mask_padding():
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert next_token_labels(ids, mask).tolist() == [[6, 7, -100, -100]]


def test_user_chunks_cover_slots():
    from trustlora.train import auto_chunk_positions, user_chunks

    mm, _, _ = _mm()
    assert user_chunks(mm, 2, 100) == [(0, 2), (2, 3)]
    assert user_chunks(mm, 10, 100) == [(0, 3)]
    big = auto_chunk_positions(mm)  # one user's positions fill a chunk
    assert user_chunks(mm, "auto", big) == [(0, 1), (1, 2), (2, 3)]
    assert user_chunks(mm, "auto", big // 2) == [(0, 2), (2, 3)]
    assert user_chunks(mm, "auto", 16) == [(0, 3)]
    assert user_chunks(mm, "auto", big, training=False) == [(0, 3)]  # no backward: 8x the positions


@pytest.mark.parametrize("chunk", [1, 2])
def test_user_chunked_training_and_eval_equal_one_stacked_pass(chunk):
    """Training steps with dropout 0.1 and every evaluation pass give the same numbers chunked or stacked."""
    from trustlora.config import TrainConfig
    from trustlora.train import LocalTrainer, cross_losses, evaluate, topk_predictions

    streams = [torch.randint(0, 256, (400,), generator=torch.Generator().manual_seed(10 + u)) for u in range(N)]

    def run(user_chunk):
        mm = MultiLoRA(copy.deepcopy(tiny_random_model(seed=0)), N, LoraConfig(dropout=0.1), seed=0)
        cfg = TrainConfig(batch_size=2, seq_len=16, lr=0.01, precision="fp32", user_chunk=user_chunk)
        tr = LocalTrainer(mm, streams, cfg, seed=0)
        losses = [tr.step() for _ in range(3)]
        ev = evaluate(mm, streams, 16, 4, "fp32", 64, user_chunk=user_chunk)[0]
        cl = cross_losses(mm, streams[0], 16, 4, "fp32", 64, user_chunk=user_chunk)
        tk = topk_predictions(mm, streams[1][:48], 3, "probs", 16, 4, "fp32", user_chunk=user_chunk)
        return mm.get_flat(), torch.stack(losses), torch.tensor(ev), cl, tk

    ref, got = run(N), run(chunk)
    for a, e in zip(got[:4], ref[:4], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[4][0], ref[4][0], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[4][1], ref[4][1])


def test_bf16_frozen_linears_give_identical_results_under_autocast():
    """Pre-cast bf16 copies of the frozen weights change no number of a bf16-autocast step, and none outside it."""
    ids = torch.randint(0, 256, (N * B, T), generator=torch.Generator().manual_seed(2))

    def step(keep: bool, drop: bool = False):
        mm, _, _ = _mm()
        if keep:
            assert mm.keep_lowp_weights(drop_full=drop) > 0
        with autocast("bf16"):
            nll, _, _ = stacked_loss(mm, ids, N)
        grads = torch.autograd.grad(nll.sum(), mm.adapter_parameters())
        with torch.no_grad(), autocast("bf16"):
            ev, _, tk = stacked_loss(mm, ids, N, topk=(3, "probs"))
        with torch.no_grad():
            fp32 = mm(ids)  # outside autocast: the fp32 weights, as before
        return nll, grads, ev, tk, fp32

    a, b, c = step(False), step(True), step(True, drop=True)
    for other in (b, c):  # under autocast: bit-identical, with or without the fp32 weights kept
        assert torch.equal(a[0], other[0]) and torch.equal(a[2], other[2]) and torch.equal(a[3][1], other[3][1])
        for x, y in zip(a[1], other[1], strict=True):
            assert torch.equal(x, y)
    assert torch.equal(a[4], b[4])  # outside autocast: the fp32 weights, unchanged
    torch.testing.assert_close(c[4], a[4], rtol=0.05, atol=0.05)  # fp32 dropped: bf16 weights upcast
    assert not torch.equal(c[4], a[4])


def test_frozen_head_nll_of_an_underflowing_label_probability_is_exact():
    """fp32: a label whose softmax probability underflows (logit 300 below the rest) still gets its true nll and a
    finite gradient (the forward's softmax pass falls back to log-softmax for that row)."""
    w = torch.zeros(31, 2)
    w[5, 0] = -300.0
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([5, 6])
    out = linear_cross_entropy(h, w, None, labels)
    ref = F.cross_entropy(F.linear(h.double(), w.double()), labels, reduction="none")
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-5)
    assert 300 < out[0].item() < 305
    out.sum().backward()
    assert torch.isfinite(h.grad).all()


@pytest.mark.parametrize("space", ["probs", "logits"])
def test_fused_cpu_fp32_head_paths_equal_the_chunked_ones(monkeypatch, space):
    """fp32 on CPU the training loss goes through the flash-attention kernel and evaluation by vocabulary blocks
    (trustlora.loss._fused_dtype); both give the chunked paths' nll, gradient and top-k, with ignored rows, a vocabulary
    that is no multiple of the block and rows split over several blocks of logits."""
    g = torch.Generator().manual_seed(3)
    v, d, m = 1000, 24, 50
    w, h = torch.randn(v, d, generator=g) * 0.5, torch.randn(m, d, generator=g)
    lab = torch.randint(0, v, (m,), generator=g)
    lab[[0, 17, 49]] = -100
    gout = torch.rand(m, generator=g)
    monkeypatch.setattr(loss, "HEAD_COLS", 96)  # 11 blocks, the last one 40 wide
    monkeypatch.setattr(loss, "CHUNK_BYTES", 4 * 96 * 16)  # 16 rows of logits per block: 4 row groups
    outs = {}
    for fused in (False, True):
        monkeypatch.setattr(loss, "FUSED_CPU", fused)
        assert loss._fused_dtype(h, w, None) == (torch.float32 if fused else None)
        x = h.clone().requires_grad_()
        nll = linear_cross_entropy(x, w, None, lab, rows=7)
        (nll * gout).sum().backward()
        outs[fused] = (nll.detach(), x.grad, *head_scores(h, w, None, lab, (5, space), rows=7))
    ref = F.cross_entropy(h @ w.T, lab, reduction="none", ignore_index=-100)
    torch.testing.assert_close(outs[True][0], ref)
    for a, b in zip(outs[False][:3], outs[True][:3], strict=True):
        torch.testing.assert_close(a, b)
    (v0, i0), (v1, i1) = outs[False][3], outs[True][3]
    assert torch.equal(i0, i1)
    torch.testing.assert_close(v0, v1)
    assert torch.equal(outs[True][1][[0, 17, 49]], torch.zeros(3, d))  # ignored rows: no gradient
    assert loss._fused_dtype(h, w, torch.zeros(v)) is None  # a head bias keeps the chunked path
    assert loss._fused_dtype(h, w.bfloat16(), None) is None  # fp32 states, bf16 head, no autocast: chunked
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss._fused_dtype(h, w, None) is None  # an fp32 head under autocast: chunked (casts per call)


def test_fused_cpu_bf16_training_loss_matches_float64(monkeypatch):
    """bf16 (autocast, a bf16 head) on CPU the training loss goes through the flash-attention kernel in bf16: nll and
    gradient agree with a float64 computation from the same bf16-rounded operands at least as closely as the chunked
    bf16 path does, and ignored rows get no gradient."""
    g = torch.Generator().manual_seed(5)
    v, d, m = 3000, 32, 40
    w = (torch.randn(v, d, generator=g) * 0.5).bfloat16()
    h = torch.randn(m, d, generator=g)
    lab = torch.randint(0, v, (m,), generator=g)
    lab[[3, 39]] = -100
    gout = torch.rand(m, generator=g)
    h64, w64 = h.bfloat16().double(), w.double()
    logits = h64 @ w64.T
    ok = lab >= 0
    ref_nll = torch.where(ok, torch.logsumexp(logits, 1) - logits.gather(1, lab.clamp_min(0)[:, None])[:, 0], 0.0)
    p = torch.softmax(logits, 1)
    ref_g = (p @ w64 - w64[lab.clamp_min(0)]) * (gout * ok).unsqueeze(1).double()
    errs = {}
    monkeypatch.setattr(loss, "FLASH_BF16", True)  # the kernel even where the CPU would not choose it (no AMX)
    for fused in (False, True):
        monkeypatch.setattr(loss, "FUSED_CPU", fused)
        x = h.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert loss._fused_dtype(x, w, None) == (torch.bfloat16 if fused else None)
            nll = linear_cross_entropy(x, w, None, lab, rows=7)
        (nll * gout).sum().backward()
        assert nll.dtype == torch.float32 and x.grad.dtype == torch.float32
        errs[fused] = ((nll.double() - ref_nll).abs().max(), (x.grad.double() - ref_g).norm() / ref_g.norm())
        assert torch.equal(x.grad[[3, 39]], torch.zeros(2, d))
    assert errs[True][0] < 1e-4 and errs[True][1] < 1e-2  # fp32 accumulation; bf16-rounded probabilities
    assert errs[True][0] <= errs[False][0] and errs[True][1] <= 2 * errs[False][1]


@pytest.mark.parametrize("m", [40, 61])
def test_grouped_bf16_training_loss_equals_one_chunk_at_a_time(monkeypatch, m):
    """bf16 training loss on CPU without the flash kernel (a CPU without AMX): one head GEMM each way over groups of
    about LOWP_GEMM_GROUP chunks (equal groups; a ragged last chunk inside a group) gives the nll and the hidden-state
    gradient of the chunk-by-chunk path, ignored rows included."""
    monkeypatch.setattr(loss, "FLASH_BF16", None)
    monkeypatch.setattr(loss.cpu, "has_amx", lambda: False)
    g = torch.Generator().manual_seed(9)
    v, d = 3000, 32
    w = (torch.randn(v, d, generator=g) * 0.5).bfloat16()
    h = torch.randn(m, d, generator=g)
    lab = torch.randint(0, v, (m,), generator=g)
    lab[[3, m - 1]] = -100
    gout = torch.rand(m, generator=g)
    outs = []
    for group in (1, 3):
        monkeypatch.setattr(loss, "LOWP_GEMM_GROUP", group)
        x = h.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert loss._fused_dtype(x, w, None) is None  # no AMX: not the flash kernel
            nll = linear_cross_entropy(x, w, None, lab, rows=7)
        (nll * gout).sum().backward()
        outs.append((nll, x.grad))
    (n1, g1), (n3, g3) = outs
    torch.testing.assert_close(n3, n1, rtol=0, atol=1e-6)
    torch.testing.assert_close(g3, g1, rtol=1e-3, atol=1e-6)
    assert torch.equal(g3[[3, m - 1]], torch.zeros(2, d)) and torch.equal(n3[[3, m - 1]], torch.zeros(2))
    logits = h.bfloat16().double() @ w.double().T  # and both are the loss
    ref = torch.logsumexp(logits, 1) - logits.gather(1, lab.clamp_min(0)[:, None])[:, 0]
    ok = lab >= 0
    assert (n3[ok].double() - ref[ok]).abs().max() < 0.05


@pytest.mark.parametrize("vocab", [5120, 5200])
def test_block_max_topk_and_grouped_bf16_head_equal_the_plain_ones(monkeypatch, vocab):
    """bf16 evaluation on CPU: the head GEMM over LOWP_GEMM_GROUP chunks at once and top-k by block maxima
    (trustlora.loss._topk) give what one chunk at a time with torch.topk gives: same nll and top-k values, and ids
    that hold those values (fp32 logits without ties: the same ids), with a ragged last chunk and a vocabulary that
    is or is not a multiple of the block."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(37, vocab, generator=g)
    x[5, 17] = 50.0  # several of the top-k in one block
    x[5, 18:22] = 40.0 + torch.arange(4.0)
    x[6, -1] = 60.0  # the largest in the ragged tail
    monkeypatch.setattr(loss, "TOPK_BLOCK", 64)
    val, idx = loss._topk(x, 10)
    ref = torch.topk(x, 10, dim=1)
    assert torch.equal(val, ref.values) and torch.equal(idx, ref.indices)
    assert idx[5, :5].tolist() == [17, 21, 20, 19, 18] and idx[6, 0].item() == vocab - 1
    d, m = 16, 61
    w = (torch.randn(vocab, d, generator=g) * 0.5).bfloat16()
    h = torch.randn(m, d, generator=g)
    lab = torch.randint(0, vocab, (m,), generator=g)
    lab[[0, 60]] = -100
    outs = []
    for group, block in ((1, 0), (3, 64)):
        monkeypatch.setattr(loss, "LOWP_GEMM_GROUP", group)
        monkeypatch.setattr(loss, "TOPK_BLOCK", block)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(head_scores(h, w, None, lab, (10, "logits"), rows=8))
    (n0, (v0, i0)), (n1, (v1, i1)) = outs
    assert torch.equal(n0, n1) and torch.equal(v0, v1)
    # bf16 logits tie often, so ids may differ between top-k implementations: each id must hold its value, once
    raw = F.linear(h.bfloat16(), w).float()
    assert torch.equal(raw.gather(1, i1), v1)
    assert all(len(set(r)) == 10 for r in i1.tolist())


@pytest.mark.parametrize("cols", [3, 16, 96])
def test_blocked_topk_searches_only_rows_a_block_can_change(monkeypatch, cols):
    """fp32 blocked evaluation (trustlora.loss._merge_topk): the running top-k of a row is searched again in a
    vocabulary block only where the block's maximum beats the row's k-th value; the result is torch.topk over the
    whole row (values and ids, no ties here), with blocks narrower than k, with rows whose top-k lies in the first
    blocks (later blocks skipped) and rows whose top-k is spread; nll equals the plain log-sum-exp's."""
    g = torch.Generator().manual_seed(11)
    v, d, m, k = 400, 16, 30, 5
    w, h = torch.randn(v, d, generator=g), torch.randn(m, d, generator=g)
    w[:20] += 3 * h[:10].mean(0)  # rows 0-9: their top-k among the first ids, as common tokens in a real vocabulary
    lab = torch.randint(0, v, (m,), generator=g)
    searched = []  # rows searched per block (a block's search: a top-k over its own width; merges are wider)
    real = torch.topk
    widths = {cols, v % cols} - {0}

    def counting(x, kk, *a, **kw):
        if x.shape[1] in widths and kk == min(k, x.shape[1]):
            searched.append(x.shape[0])
        return real(x, kk, *a, **kw)

    monkeypatch.setattr(loss.torch, "topk", counting)
    nll, (vals, ids) = loss._blocked_scores(h, w, lab, (k, "logits"), cols)
    monkeypatch.setattr(loss.torch, "topk", real)
    logits = h @ w.T
    ref_v, ref_i = torch.topk(logits, k, dim=1)
    torch.testing.assert_close(vals, ref_v)
    assert torch.equal(ids, ref_i)
    torch.testing.assert_close(nll, torch.logsumexp(logits, 1) - logits.gather(1, lab.unsqueeze(1)).squeeze(1))
    blocks = math.ceil(v / cols)
    assert searched[0] == m and len(searched) <= blocks  # the first block searches every row
    assert sum(searched) < m * blocks  # some (row, block) pairs were skipped


def test_blocked_head_keeps_torch_semantics_for_non_finite_logits(monkeypatch):
    """A diverged or lying peer's model can produce infinite or NaN logits: the fp32 blocked evaluation (in-place
    log-sum-exp, row-gated top-k) keeps torch.logsumexp's and torch.topk's semantics there (an overflowing row's nll
    is inf, not NaN; NaN rows stay NaN; the top-k values of the whole row)."""
    g = torch.Generator().manual_seed(4)
    w, h = torch.randn(300, 8, generator=g), torch.randn(12, 8, generator=g)
    lab = torch.randint(0, 300, (12,), generator=g)
    h[3], h[5, 0], h[7] = float("inf"), float("-inf"), float("nan")
    w[250] = 3e38  # logits that overflow to +-inf in a late block
    w[280, 1], h[9, 1] = float("inf"), 0.0  # row 9: one NaN logit (0 * inf), in the last block only
    monkeypatch.setattr(loss, "HEAD_COLS", 64)
    monkeypatch.setattr(loss, "FUSED_CPU", True)
    nll, (vals, _) = head_scores(h, w, None, lab, (5, "logits"))
    logits = h @ w.T
    ref = torch.logsumexp(logits, 1) - logits.gather(1, lab.unsqueeze(1)).squeeze(1)
    assert torch.isinf(ref).any() and torch.isnan(ref).any()
    torch.testing.assert_close(nll, ref, equal_nan=True)
    torch.testing.assert_close(vals, torch.topk(logits, 5, dim=1).values, equal_nan=True)
