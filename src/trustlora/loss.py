"""Next-token cross-entropy (and top-k) through a linear LM head, in chunks of positions.

    labels = next_token_labels(input_ids, mask)                  # [R, T] with -100 where nothing is predicted
    nll = linear_cross_entropy(hidden, weight, bias, labels)     # hidden [M, d], labels [M] -> nll [M] fp32
    nll, (v, i) = head_scores(hidden, weight, bias, labels, topk=(10, "probs"))   # no autograd: eval passes

No ``[M, V]`` logits tensor is ever held. With a frozen head (training adapters) the forward computes each row's nll
and its gradient with respect to the hidden state up to the incoming per-row scale, ``softmax(h W^T) @ W - W[label]``
(as fused linear-cross-entropy kernels do); the backward only multiplies by ``grad_nll``. When the head itself needs
a gradient the forward keeps the hidden states and the backward recomputes one chunk of logits at a time.

Paths, by precision and device:

* CPU, no head bias, fp32, or bf16 on a CPU with AMX (bf16 autocast with the head's bf16 copy): the training loss is
  one call of PyTorch's CPU flash-attention kernel, the hidden states as queries and the head's rows as keys and
  values (scale 1): it returns ``softmax(h W^T) @ W`` and the log-sum-exp, block by block in cache, holding no logits
  at all. Measured against 165-position chunks (``benchmarks/bench_head_chunk.py``, alternating in one process):
  forward + backward 0.61-0.68x (2-core AMD EPYC, fp32), 0.77-0.79x (2-core Xeon with AMX, bf16): a
  ``[165, d] x [d, V]`` GEMM repacks all of W for every 165 rows.
* bf16 training loss on a CPU without AMX (AVX512-BF16 alone, where the flash kernel's bf16 products are slow:
  :data:`FLASH_BF16`): one head GEMM each way over about ``LOWP_GEMM_GROUP`` chunks of positions, each chunk's fp32
  softmax written back over its bf16 logits as the input-gradient GEMM's operand; 512 positions 172 ms against 380 ms
  through the kernel (2-core AMD EPYC).
* fp32 evaluation on CPU: vocabulary blocks of ``HEAD_COLS`` columns over up to ``CHUNK_BYTES`` of logits (~3,968
  positions), merging log-sum-exp, the label's logit and the top-k block by block; 0.68-0.72x (EPYC): tall, narrow
  GEMMs run near the machine's peak. A block's top-k is searched only in the rows whose block maximum beats their
  running k-th value (:func:`_merge_topk`; SmolLM2's top-k overhead on real text 202 -> 72 ms per 3,072 positions).
* otherwise (bf16 evaluation, GPUs, a head bias): chunks of ``CHUNK_BYTES`` of fp32 logits over the whole vocabulary.
  Under bf16 autocast the head matmuls run in bf16 and log-softmax in fp32, as in the unfused path (logits.float()
  then F.cross_entropy). On CPU in bf16 one head GEMM covers ``LOWP_GEMM_GROUP`` chunks and the top-k goes by
  block maxima (:func:`_topk`): evaluation with top-k 0.70-0.71x (Xeon, AMX). A chunk stays under glibc's 32 MiB
  mmap ceiling, so its buffers are reused from the heap instead of being mapped and page-faulted (zeroed by the
  kernel) afresh on every chunk (a 64 MiB chunk's log-softmax took 20 ms, a 16 MiB one 0.9 ms, on a 2-core EPYC).
  Log-sum-exp comes from the fused log-softmax kernel and the backward from the fused softmax kernel.

With SmolLM2's 49,152-token vocabulary, 6 users x 4 x 128 positions of logits are 600 MB per fp32 copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trustlora import cpu

CHUNK_BYTES = 31 << 20
"""fp32 logits per chunk (31 MiB: 165 positions of a 49,152-token vocabulary; under glibc's 32 MiB mmap ceiling)."""


def chunk_rows(vocab: int) -> int:
    return max(32, CHUNK_BYTES // (4 * max(1, vocab)))


def next_token_labels(input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[R, T]`` ids -> labels ``[R, T]``: the next token, -100 at the last position and wherever the current or
    the next token is padding (HF's shift with -100 padding)."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    if mask is not None:
        valid_next = torch.zeros_like(mask, dtype=torch.bool)
        valid_next[:, :-1] = mask[:, 1:].bool() & mask[:, :-1].bool()
        labels = labels.masked_fill(~valid_next, -100)
    return labels


def _up(logits: torch.Tensor) -> torch.Tensor:
    """Logits for log-softmax: fp32 (float64 kept, for reference checks)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _chunk_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits [m, V], labels [m] -> (nll [m] with 0 at ignored rows, log-sum-exp [m])."""
    logp = torch.log_softmax(logits, dim=-1)  # one fused pass; lse = logit - log-prob of any token
    lse = logits[:, 0] - logp[:, 0]
    tgt = logp.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1)
    return torch.where(labels >= 0, -tgt, torch.zeros_like(lse)), lse


def _softmax_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits [m, V], labels [m] (-100 allowed) -> (softmax [m, V], -log softmax at the label [m]).

    One fused softmax pass instead of log-softmax then exp (two passes of exp over the chunk); the nll is -log of the
    label's probability (absolute error ~1e-7), or, for a label whose probability underflowed (below 1e-30), taken from
    log-softmax of that row."""
    g = torch.softmax(logits, dim=-1)
    idx = labels.clamp_min(0).unsqueeze(1)
    p = g.gather(1, idx).squeeze(1)
    nll = -torch.log(p)
    tiny = p < 1e-30
    if bool(tiny.any()):
        r = tiny.nonzero().squeeze(1)
        nll[r] = -torch.log_softmax(logits[r], dim=-1).gather(1, idx[r]).squeeze(1)
    return g, nll


def _zero_rows(t: torch.Tensor, valid: torch.Tensor) -> None:
    """Zero the rows of ``t`` that predict nothing (few: the last position of a window, padding), by index: a boolean
    row mask is a masked_fill over the whole tensor (2 ms a 165 x 49152 chunk)."""
    if not bool(valid.all()):
        t.index_fill_(0, (~valid).nonzero().squeeze(1), 0.0)


def _topk_values(v: torch.Tensor, lse: torch.Tensor, space: str) -> torch.Tensor:
    """Top-k logits ``[m, k]`` as probabilities (``space='probs'``: exp(v - lse)) or as they are."""
    return torch.exp(v - lse.unsqueeze(1)) if space == "probs" else v


FUSED_CPU = True
"""Fused head paths on CPU (measured there, ``benchmarks/bench_head_chunk.py``): the training loss through the CPU
flash-attention kernel (fp32, and bf16 under bf16 autocast or with a bf16 head), the fp32 evaluation pass by
vocabulary blocks. GPUs keep the chunked paths."""
HEAD_COLS = 2048
"""Vocabulary columns per block of the blocked evaluation pass."""
LOWP_GEMM_GROUP = 3
"""bf16 on CPU, chunked evaluation: the head GEMM runs over this many chunks of positions at once (bf16 logits,
~48 MiB for SmolLM2), and log-softmax over one chunk at a time. A ``[m, d] x [d, V]`` bf16 GEMM costs a fixed ~7.5 ms
(repacking W) plus ~20 us a row on a 2-core Xeon with AMX: 165 rows 10.4 ms, 495 rows ~17 ms. Eval head with top-k
over 3,072 positions, groups of 1 / 2 / 3 chunks: tcmalloc 472 / 421 / 363 ms, glibc with the CLI's raised thresholds
447 / 394 / 339 ms, untuned glibc 446 / 410 / 445 ms (there the 48 MiB buffer is mapped afresh each time: no gain,
no loss)."""
TOPK_BLOCK = 256
"""Top-k over a vocabulary on CPU by block maxima (:func:`_topk`); 0 = plain ``torch.topk``."""
FLASH_BF16: bool | None = None
"""bf16 training loss through the flash kernel: None = where the CPU has AMX (:func:`trustlora.cpu.has_amx`). With
AVX512-BF16 alone the kernel's bf16 products run at ~40 % of the GEMM peak: the head's loss for 512 positions took
380 ms against 177 ms by grouped GEMMs (2-core AMD EPYC, ``bench_head_chunk.py --precision bf16``); on a Xeon with
AMX the kernel took 0.77x the chunked path's time."""
PLAIN_HEAD = {"FUSED_CPU": False, "LOWP_GEMM_GROUP": 1, "TOPK_BLOCK": 0}
"""The settings above that turn the CPU fast paths off (one chunk at a time, ``torch.topk``): what the benchmarks
(``bench_head_chunk.py``, ``bench_head_model.py``) compare the defaults against."""


try:
    _FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
except (AttributeError, RuntimeError):  # older torch
    _FLASH = None


def _fused_dtype(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.dtype | None:
    """The dtype of the fused CPU paths for these operands, or None (chunked paths): fp32 when hidden states and
    head are fp32 outside autocast; bf16 when the head is bf16 and either bf16 autocast is on or the hidden states
    are bf16 (what the head's F.linear would compute in). No head bias; not on GPUs."""
    if not FUSED_CPU or _FLASH is None or hidden.device.type != "cpu" or bias is not None:
        return None
    cast = torch.is_autocast_enabled("cpu")
    if hidden.dtype == weight.dtype == torch.float32 and not cast:
        return torch.float32
    lowp = cast and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if weight.dtype == torch.bfloat16 and (lowp or hidden.dtype == torch.bfloat16) and _flash_lowp():
        return torch.bfloat16
    return None


def _flash_lowp() -> bool:
    """Whether bf16 goes through the flash kernel (:data:`FLASH_BF16`; None: where the CPU has AMX)."""
    return cpu.has_amx() if FLASH_BF16 is None else FLASH_BF16


def _flash_nll_grad(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU, fp32 or bf16 head: (nll [M] fp32, d nll / d hidden [M, d] in hidden's dtype) of ``hidden @ W^T`` in one
    fused pass, no logits held.

    The gradient is ``softmax(h W^T) @ W - W[label]``: attention with the hidden states as queries and the head's
    rows as keys and values (scale 1), which the CPU flash-attention kernel computes block by block with its
    log-sum-exp (fp32 accumulation; in bf16 the probabilities are rounded to bf16 for the second product, as the
    chunked path rounds its ``softmax - onehot``); nll = lse - h . W[label]. Rows labelled -100 get nll 0 and
    gradient 0."""
    m, d = hidden.shape
    w = weight.view(1, 1, *weight.shape)
    h = hidden.to(weight.dtype)  # what autocast would give the head's linear
    with torch.autocast("cpu", enabled=False):
        soft_w, lse = _FLASH(h.reshape(1, 1, m, d), w, w, 0.0, False, scale=1.0)
    valid = labels >= 0
    w_lab = weight[labels.clamp_min(0)].float()  # .float() is the tensor itself in fp32
    dot = (h.float() * w_lab).sum(1)
    grad = soft_w.reshape(m, d).float().sub_(w_lab)
    nll = torch.where(valid, lse.reshape(m) - dot, torch.zeros((), dtype=torch.float32))
    grad = grad.to(hidden.dtype)
    _zero_rows(grad, valid)
    return nll, grad


def _topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(x, k, dim=1)`` (values sorted, descending) by block maxima on CPU: the k largest of a row lie in
    the k blocks of :data:`TOPK_BLOCK` columns with the largest maxima (a block without any of them has its maximum
    below the k-th largest), so one max pass, a top-k over the block maxima and one over k blocks replace a top-k
    over the whole row (bf16 [165, 49152]: 3.0 vs 5.7 ms). Same values; among tied values the ids may differ, as
    they may between top-k implementations."""
    m, v = x.shape
    b = TOPK_BLOCK
    nb = v // b if b else 0
    if x.device.type != "cpu" or nb < 4 * k or x.stride(1) != 1:
        return torch.topk(x, k, dim=1)
    body = x.as_strided((m, nb, b), (x.stride(0), b, 1))  # a view of the first nb * b columns, no copy
    best = torch.topk(body.amax(2), k, dim=1).indices  # [m, k]
    cand = body.gather(1, best.unsqueeze(2).expand(m, k, b)).reshape(m, k * b)
    cols = (best.unsqueeze(2) * b + torch.arange(b, device=x.device)).reshape(m, k * b)
    if nb * b < v:  # the ragged tail is always a candidate
        cand = torch.cat([cand, x[:, nb * b :]], dim=1)
        cols = torch.cat([cols, torch.arange(nb * b, v, device=x.device).expand(m, -1)], dim=1)
    vals, j = torch.topk(cand, k, dim=1)
    return vals, cols.gather(1, j)


def _merge_topk(
    logits: torch.Tensor,
    mx: torch.Tensor,
    offset: int,
    k: int,
    top_v: torch.Tensor | None,
    top_i: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-k (values ``[m, k]`` descending, column ids) of a row block after one more vocabulary block
    ``logits`` ``[m, c]`` (columns ``offset...``; ``mx``: its row maxima). Only rows whose block maximum beats their
    current k-th value can change, so only those are searched (most common tokens have low ids: in a language
    model's later blocks few rows qualify). Same values as one top-k over the whole row; among tied values the ids
    may differ."""
    c = logits.shape[1]
    if top_v is None:
        v, i = torch.topk(logits, min(k, c), dim=1)
        return v, i.add_(offset)
    if top_v.shape[1] < k:  # the blocks so far were narrower than k: every row merges
        rows = torch.arange(logits.shape[0], device=logits.device)
    else:
        rows = ((mx > top_v[:, -1]) | mx.isnan()).nonzero().squeeze(1)  # NaN ranks above all, as in torch.topk
    if rows.numel() == 0:
        return top_v, top_i  # type: ignore[return-value]
    part = logits if rows.numel() == logits.shape[0] else logits.index_select(0, rows)
    v, i = torch.topk(part, min(k, c), dim=1)
    cur_v, cur_i = top_v.index_select(0, rows), top_i.index_select(0, rows)  # type: ignore[union-attr]
    v, j = torch.topk(torch.cat([cur_v, v], dim=1), min(k, cur_v.shape[1] + v.shape[1]), dim=1)
    i = torch.cat([cur_i, i.add_(offset)], dim=1).gather(1, j)
    if v.shape[1] != top_v.shape[1]:  # a wider running set: every row took part
        return v, i
    top_v.index_copy_(0, rows, v)
    top_i.index_copy_(0, rows, i)  # type: ignore[union-attr]
    return top_v, top_i  # type: ignore[return-value]


def _blocked_scores(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, topk: tuple[int, str] | None, cols: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """fp32 CPU evaluation pass by vocabulary blocks: tall ``[rows, d] x [d, cols]`` GEMMs (up to ``CHUNK_BYTES`` of
    logits: 3,968 rows at 2,048 columns) with a running log-sum-exp, label logit and top-k, instead of 165-row
    chunks over the whole vocabulary (whose GEMMs repack all of W each call). Returns what :func:`head_scores`
    returns."""
    big_v = weight.shape[0]
    cols = max(1, min(cols, big_v))
    rows = max(1, CHUNK_BYTES // (4 * cols))
    buf = torch.empty(min(rows, hidden.shape[0]) * cols, dtype=torch.float32)
    nll = torch.empty(hidden.shape[0], dtype=torch.float32)
    vals, idxs = [], []
    for s in range(0, hidden.shape[0], rows):
        h, lab = hidden[s : s + rows], labels[s : s + rows]
        m = h.shape[0]
        lse = tgt = top_v = top_i = None
        for b in range(0, big_v, cols):
            w_b = weight[b : b + cols]
            c = w_b.shape[0]
            logits = torch.mm(h, w_b.T, out=buf[: m * c].view(m, c))
            mx = logits.amax(dim=1)
            at = lab - b
            here = (at >= 0) & (at < c)
            got = logits.gather(1, at.clamp(0, c - 1).unsqueeze(1)).squeeze(1)
            tgt = torch.where(here, got, torch.zeros_like(got) if tgt is None else tgt)
            if topk is not None:
                top_v, top_i = _merge_topk(logits, mx, b, topk[0], top_v, top_i)
            # torch.logsumexp's own steps (max, an infinite max taken as 0, exp of the difference, sum, log, + max),
            # the block's max reused and the buffer overwritten in place (its logits are not read again): bitwise equal
            mx.masked_fill_(mx.abs() == float("inf"), 0.0)
            lse_b = logits.sub_(mx.unsqueeze(1)).exp_().sum(dim=1).log_().add_(mx)
            lse = lse_b if lse is None else torch.logaddexp(lse, lse_b)
        nll[s : s + m] = torch.where(lab >= 0, lse - tgt, torch.zeros_like(lse))
        if topk is not None:
            vals.append(_topk_values(top_v, lse, topk[1]))
            idxs.append(top_i)
    return nll, (torch.cat(vals), torch.cat(idxs)) if topk is not None else None


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, rows):
        dev = hidden.device.type
        ctx.autocast = (dev, *_autocast_state(dev))
        # the usual case (frozen head, gradient wanted only for the hidden states): d nll_m / d hidden_m is known in
        # the forward up to the incoming per-row scalar, so it is computed here and the backward only scales it
        # (no recomputed logits: one head matmul and one softmax pass fewer per chunk)
        early = ctx.needs_input_grad[0] and not any(ctx.needs_input_grad[1:3])
        fused = early and _fused_dtype(hidden, weight, bias) is not None
        if fused:  # CPU, fp32 or bf16: all rows in one flash-attention pass over the head's rows
            nll, grad_rows = _flash_nll_grad(hidden, weight, labels)
        else:
            dtype = torch.promote_types(hidden.dtype, torch.float32)
            nll = torch.empty(hidden.shape[0], dtype=dtype, device=hidden.device)
            grad_rows = torch.empty_like(hidden) if early else None
        # bf16 on CPU: one head GEMM each way over about LOWP_GEMM_GROUP chunks, in groups of equal size (a
        # [m, d] x [d, V] GEMM repacks all of W: 512 rows as 495 + 17 cost 1.12x one GEMM of 512); each chunk's
        # softmax - onehot overwrites its bf16 logits, which the input-gradient GEMM then reads
        m_all = hidden.shape[0]
        lowp = weight.dtype == torch.bfloat16 or torch.is_autocast_enabled(dev)
        grouped = early and dev == "cpu" and lowp and LOWP_GEMM_GROUP > 1
        group = max(1, -(-m_all // max(1, round(m_all / (rows * LOWP_GEMM_GROUP))))) if grouped else rows
        for g0 in range(0, 0 if fused else m_all, group):
            raw_g = F.linear(hidden[g0 : g0 + group], weight, bias)
            for c in range(0, raw_g.shape[0], rows):
                raw = raw_g[c : c + rows]
                s, e = g0 + c, g0 + c + raw.shape[0]
                logits, lab = _up(raw), labels[s:e]
                if not early:
                    nll[s:e] = _chunk_nll(logits, lab)[0]
                    continue
                valid = lab >= 0
                g, nll_c = _softmax_nll(logits, lab)
                nll[s:e] = torch.where(valid, nll_c, torch.zeros_like(nll_c))
                g[valid, lab[valid]] -= 1.0
                _zero_rows(g, valid)
                if not grouped:
                    grad_rows[s:e] = torch.matmul(g.to(weight.dtype), weight).to(hidden.dtype)
                else:
                    raw.copy_(g)  # its logits are read no more
            if grouped:
                grad_rows[g0 : g0 + group] = torch.matmul(raw_g, weight).to(hidden.dtype)
        ctx.rows = rows
        ctx.early = early
        if early:
            ctx.save_for_backward(grad_rows)
        else:
            ctx.save_for_backward(hidden, weight, bias, labels)
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        if ctx.early:
            (grad_rows,) = ctx.saved_tensors
            return (grad_rows * grad_nll.unsqueeze(1)).to(grad_rows.dtype), None, None, None, None
        hidden, weight, bias, labels = ctx.saved_tensors
        dev, enabled, dtype = ctx.autocast
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32)) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.promote_types(bias.dtype, torch.float32)) if need_b else None
        rows = ctx.rows
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            for s in range(0, hidden.shape[0], rows):
                h, lab = hidden[s : s + rows], labels[s : s + rows]
                logits = _up(F.linear(h, weight, bias))
                # d nll / d logits = softmax - onehot(label), zero at ignored rows; times the incoming gradient
                g = torch.softmax(logits, dim=-1)
                valid = lab >= 0
                g[valid, lab[valid]] -= 1.0
                g *= (grad_nll[s : s + rows] * valid).unsqueeze(1)
                if need_h:
                    grad_h[s : s + rows] = torch.matmul(g.to(weight.dtype), weight).to(
                        hidden.dtype
                    )  # bf16 under autocast
                if need_w:
                    grad_w += torch.matmul(g.T.to(h.dtype), h).to(grad_w.dtype)
                if need_b:
                    grad_b += g.sum(0)
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor, rows: int = 0
) -> torch.Tensor:
    """Per-row next-token CE of ``F.linear(hidden, weight, bias)`` without materialising the logits.

    hidden ``[M, d]``, weight ``[V, d]``, labels ``[M]`` (-100 = ignored, nll 0). Returns nll ``[M]`` fp32,
    differentiable in hidden (and weight/bias when they require grad). ``rows``: positions per chunk (0 = auto).
    """
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, rows or chunk_rows(weight.shape[0]))


@torch.no_grad()
def head_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    topk: tuple[int, str] | None = None,
    rows: int = 0,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Evaluation pass of the head, chunk by chunk: (nll ``[M]`` fp32, top-k (values ``[M, k]`` fp32, ids ``[M, k]``)
    of probabilities (``space='probs'``) or raw logits, or None). ``rows`` sizes the chunks of the chunked path only;
    fp32 on CPU goes by vocabulary blocks (:func:`_blocked_scores`)."""
    if _fused_dtype(hidden, weight, bias) == torch.float32:
        return _blocked_scores(hidden, weight, labels, topk, HEAD_COLS)
    rows = rows or chunk_rows(weight.shape[0])
    lowp = weight.dtype == torch.bfloat16 or torch.is_autocast_enabled(hidden.device.type)
    group = rows * LOWP_GEMM_GROUP if lowp and hidden.device.type == "cpu" else rows
    nll = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    vals, idxs = [], []
    for g in range(0, hidden.shape[0], group):
        raw_g = F.linear(hidden[g : g + group], weight, bias)  # bf16 on CPU: one GEMM over several chunks
        for c in range(0, raw_g.shape[0], rows):
            s, raw = g + c, raw_g[c : c + rows]
            logits = _up(raw)
            nll[s : s + rows], lse = _chunk_nll(logits, labels[s : s + rows])
            if topk is not None:
                k, space = topk
                # on the head's own output (bf16 under autocast: the same values, upcast exactly, and 1.4x faster)
                v, i = _topk(raw if raw.dtype == torch.bfloat16 else logits, k)
                v = v.float() if v.dtype == torch.bfloat16 else v
                vals.append(_topk_values(v, lse, space))
                idxs.append(i)
    return nll, (torch.cat(vals), torch.cat(idxs)) if topk is not None else None
