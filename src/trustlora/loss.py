"""Next-token cross-entropy (and top-k) through a linear LM head, in chunks of positions.

    labels = next_token_labels(input_ids, mask)                  # [R, T] with -100 where nothing is predicted
    nll = linear_cross_entropy(hidden, weight, bias, labels)     # hidden [M, d], labels [M] -> nll [M] fp32
    nll, (v, i) = head_scores(hidden, weight, bias, labels, topk=(10, "probs"))   # no autograd: eval passes

No ``[M, V]`` logits tensor is ever held. With a frozen head (training adapters) the forward computes, chunk by chunk,
each row's nll and its gradient with respect to the hidden state up to the incoming per-row scale, ``(softmax -
onehot) @ W`` (as fused linear-cross-entropy kernels do); the backward only multiplies by ``grad_nll``. When the head
itself needs a gradient the forward keeps the hidden states and the backward recomputes one chunk of logits at a
time. Either way the memory of the loss is one chunk (``CHUNK_BYTES`` or ``BIG_CHUNK_BYTES`` of fp32 logits)
instead of several copies of all logits (with SmolLM2's 49,152 token vocabulary, 6 users x 4 x 128 positions are
600 MB per fp32 copy). Under bf16
autocast the head matmuls run in bf16 and log-softmax in fp32, as in the unfused path (logits.float() then
F.cross_entropy).

Speed: under glibc a chunk stays under its 32 MiB mmap ceiling, so its buffers are reused from the heap instead of
being mapped and page-faulted (zeroed by the kernel) afresh on every chunk (a 64 MiB chunk's log-softmax took 20 ms,
a 16 MiB one 0.9 ms, on a 2-core EPYC, bf16). With tcmalloc (what the ``trustlora`` command preloads when found,
:mod:`trustlora.alloc`) or on a GPU chunks are 3x larger: the head GEMM repacks W on every call, and fewer, taller
calls amortise it (``BIG_CHUNK_BYTES``). Log-sum-exp comes from the fused log-softmax kernel and the backward from
the fused softmax kernel (``torch.logsumexp`` and ``exp(x - lse)`` are separate passes over the chunk).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

CHUNK_BYTES = 31 << 20
"""fp32 logits per chunk under glibc malloc (31 MiB: 165 positions of a 49,152-token vocabulary; under glibc's
32 MiB mmap ceiling, so a chunk's buffers are reused instead of mapped and page-faulted afresh)."""
BIG_CHUNK_BYTES = 96 << 20
"""fp32 logits per chunk where big buffers are reused anyway (tcmalloc or jemalloc loaded, or a GPU): 512 positions
of a 49,152-token vocabulary. The head GEMM ``[rows, d] x [d, V]`` repacks all of W for every call, so more rows per
call amortise it: on a 2-core AMD EPYC without native bf16 (fp32, tcmalloc), 512-position chunks took 0.73x the
time of 165-position ones for a training loss forward + backward and 0.73-0.80x for an evaluation pass (alternating
in one process, 20 repeats); 682 or 1,024 gave no more (``benchmarks/bench_head_chunk.py``)."""


@functools.cache
def _reuses_big_buffers() -> bool:
    from trustlora.alloc import loaded_allocator

    return loaded_allocator() != "glibc"


def chunk_rows(vocab: int, device: torch.device | str = "cpu") -> int:
    """Positions per head chunk for a ``vocab``-token head on ``device``: ``BIG_CHUNK_BYTES`` of fp32 logits on a
    GPU or where the process's allocator keeps freed big buffers, else ``CHUNK_BYTES`` (glibc)."""
    big = torch.device(device).type != "cpu" or _reuses_big_buffers()
    return max(32, (BIG_CHUNK_BYTES if big else CHUNK_BYTES) // (4 * max(1, vocab)))


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


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, rows):
        dev = hidden.device.type
        ctx.autocast = (dev, *_autocast_state(dev))
        nll = torch.empty(hidden.shape[0], dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        # the usual case (frozen head, gradient wanted only for the hidden states): d nll_m / d hidden_m is known in
        # the forward up to the incoming per-row scalar, so it is computed here and the backward only scales it
        # (no recomputed logits: one head matmul and one softmax pass fewer per chunk)
        early = ctx.needs_input_grad[0] and not any(ctx.needs_input_grad[1:3])
        grad_rows = torch.empty_like(hidden) if early else None
        for s in range(0, hidden.shape[0], rows):
            logits = _up(F.linear(hidden[s : s + rows], weight, bias))
            lab = labels[s : s + rows]
            if not early:
                nll[s : s + rows] = _chunk_nll(logits, lab)[0]
                continue
            valid = lab >= 0
            g, nll_c = _softmax_nll(logits, lab)
            nll[s : s + rows] = torch.where(valid, nll_c, torch.zeros_like(nll_c))
            g[valid, lab[valid]] -= 1.0
            if not bool(valid.all()):  # rows that predict nothing (few: the last position of a window, padding);
                # zeroed by index: a boolean row mask is a masked_fill over the whole chunk (2 ms a chunk)
                g.index_fill_(0, (~valid).nonzero().squeeze(1), 0.0)
            grad_rows[s : s + rows] = torch.matmul(g.to(weight.dtype), weight).to(hidden.dtype)
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
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, rows or chunk_rows(weight.shape[0], hidden.device))


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
    of probabilities (``space='probs'``) or raw logits, or None)."""
    rows = rows or chunk_rows(weight.shape[0], hidden.device)
    nll = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    vals, idxs = [], []
    for s in range(0, hidden.shape[0], rows):
        raw = F.linear(hidden[s : s + rows], weight, bias)
        logits = _up(raw)
        nll[s : s + rows], lse = _chunk_nll(logits, labels[s : s + rows])
        if topk is not None:
            k, space = topk
            # on the head's own output (bf16 under autocast: the same values, upcast exactly, and 1.4x faster)
            v, i = torch.topk(raw if raw.dtype == torch.bfloat16 else logits, k, dim=-1)
            v = v.float() if v.dtype == torch.bfloat16 else v
            vals.append(torch.exp(v - lse.unsqueeze(1)) if space == "probs" else v)
            idxs.append(i)
    return nll, (torch.cat(vals), torch.cat(idxs)) if topk is not None else None
