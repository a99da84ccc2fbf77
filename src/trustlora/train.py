"""Local optimisation and evaluation for the users hosted by one process (no communication, no trust).

:class:`LocalTrainer` owns the stacked model's optimizer and the users' batch samplers::

    tr = LocalTrainer(mm, train_streams, cfg.train, seed=cfg.seed)
    losses = tr.step()                          # one AdamW (+ lr schedule) step for every user: tensor [N]
    state = tr.state_dict()                     # optimizer, schedule, batch and dropout RNGs (checkpoints)
    loss, ppl = evaluate(mm, test_streams, seq_len=128, batch_size=8, precision="bf16")
    S_row = cross_losses(mm, val_stream_i, ...)  # CE of every slot's adapter on one user's text: [N]
    values, idx = topk_predictions(mm, ref_stream, k=10, ...)  # [N, M, k] sparse top-k predictions
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from trustlora import cpu
from trustlora.config import TrainConfig
from trustlora.loss import head_scores, linear_cross_entropy, next_token_labels
from trustlora.metrics import ppl_from_loss
from trustlora.model.multilora import MultiLoRA


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """Map 'auto' to 'bf16' where bf16 is fast (CUDA with bf16 support, CPUs with AVX512-BF16/AMX), else 'fp32'."""
    if precision != "auto":
        return precision
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if dev.type == "cpu":
        return "bf16" if cpu.has_bf16() else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device | str = "cpu"):
    """bf16 autocast on the model's device type (or a no-op for fp32); 'auto' picks per :func:`resolve_precision`."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def per_user_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, n_users: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token CE summed per user, from full logits (models without a plain head; reference path of tests).

    logits ``[N*B, T, V]``, input_ids ``[N*B, T]``, mask ``[N*B, T]`` (1 = real token).
    Labels are shifted with -100 padding (as HF does; slicing logits would copy them).
    Returns ``(nll_sum [N], token_count [N])``.
    """
    labels = next_token_labels(input_ids, mask)
    v = logits.shape[-1]
    nll = F.cross_entropy(logits.reshape(-1, v).float(), labels.reshape(-1), reduction="none", ignore_index=-100)
    nll = nll.reshape(n_users, -1)  # (N, B*T)
    count = (labels != -100).reshape(n_users, -1).sum(1)
    return nll.sum(1), count


def stacked_loss(
    mm, input_ids: torch.Tensor, n_users: int, mask: torch.Tensor | None = None, topk: tuple[int, str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Forward of a user-major batch ``[N*B, T]`` -> (nll_sum ``[N]``, token_count ``[N]``, top-k or None).

    With a plain linear LM head the CE (and the top-k ``(values, ids)`` ``[N*B, T, k]``, for ``topk=(k, space)``) are
    computed in chunks of positions from the hidden states (:mod:`trustlora.loss`; differentiable when grad is
    on); otherwise from the full logits. Call inside the precision's autocast.
    """
    head = getattr(mm, "lm_head", None)
    if head is None:
        logits = mm(input_ids)
        nll, count = per_user_loss(logits, input_ids, n_users, mask)
        return nll, count, topk_of(logits, *topk) if topk is not None else None
    labels = next_token_labels(input_ids, mask)
    h = mm.hidden(input_ids)
    flat_h, flat_l = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
    weight, dev = head.weight, h.device.type
    if torch.is_autocast_enabled(dev) and not weight.requires_grad and hasattr(mm, "head_weight"):
        weight = mm.head_weight(torch.get_autocast_dtype(dev))  # cast once, not per chunk (same numbers)
    tk = None
    if topk is not None or not torch.is_grad_enabled():
        nll, tk = head_scores(flat_h, weight, head.bias, flat_l, topk)
        if tk is not None:
            tk = (tk[0].view(*h.shape[:2], -1), tk[1].view(*h.shape[:2], -1))
    else:
        nll = linear_cross_entropy(flat_h, weight, head.bias, flat_l)
    count = (labels != -100).reshape(n_users, -1).sum(1)
    return nll.reshape(n_users, -1).sum(1), count, tk


AUTO_ACTIVATION_BYTES = 3 << 29
"""``train.user_chunk=auto``: activation memory a training forward may keep for its backward (1.5 GiB); users are
chunked so that one chunk's estimated activations (:func:`activation_bytes_per_position`) fit. Evaluation and trust
passes keep no activations for a backward: they take :data:`EVAL_CHUNK_FACTOR` times as many positions."""
EVAL_CHUNK_FACTOR = 8


def activation_bytes_per_position(model, seq_len: int = 128) -> int:
    """Bytes a bf16 training forward keeps per token position for the backward, estimated from the model's shape:
    per layer ~36 bytes x d_model (norm inputs and outputs in fp32, bf16 linear inputs, dropout masks), 16 x d_ff
    (MLP activations and masks) and 12 x heads x seq_len (attention probabilities in fp32 and bf16, scores).
    SmolLM2-135M at seq_len 128: 1.78 MB estimated; measured (peak RSS of training steps over 512 / 1,024 / 3,072
    positions) 1.9 MB per position from 512 to 1,024 and 1.4 MB from 1,024 to 3,072."""
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 1) or 1
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1) or 1
    ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1) or 1
    return int(layers * (36 * d + 16 * ff + 12 * heads * seq_len))


def auto_chunk_positions(mm, seq_len: int = 128, training: bool = True, precision: str = "bf16") -> int:
    """Token positions per forward under ``train.user_chunk=auto`` (see :data:`AUTO_ACTIVATION_BYTES`); fp32
    activations take twice the bytes of bf16 ones."""
    per = activation_bytes_per_position(getattr(mm, "model", None), seq_len)
    per *= 2 if precision == "fp32" else 1
    return max(1, AUTO_ACTIVATION_BYTES // per) * (1 if training else EVAL_CHUNK_FACTOR)


def user_chunks(
    mm,
    setting: int | str,
    positions_per_user: int,
    seq_len: int = 128,
    training: bool = True,
    precision: str = "bf16",
) -> list[tuple[int, int]]:
    """Slot ranges ``[(start, stop), ...]`` covering all of ``mm``'s slots, ``setting`` users each (or 'auto': as
    many as fit in :func:`auto_chunk_positions`). One range when the model cannot run a subset of slots."""
    n = mm.n_users
    if not hasattr(mm, "slots"):
        return [(0, n)]
    if isinstance(setting, int):
        c = setting
    else:
        prec = resolve_precision(precision, mm.device) if hasattr(mm, "device") else precision
        c = max(1, auto_chunk_positions(mm, seq_len, training, prec) // max(1, positions_per_user))
    c = max(1, min(int(c), n))
    return [(s, min(s + c, n)) for s in range(0, n, c)]


def _slots(mm, start: int, stop: int):
    return mm.slots(start, stop) if (start, stop) != (0, mm.n_users) else contextlib.nullcontext()


def windows(stream: torch.Tensor, seq_len: int, max_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into non-overlapping windows (last one padded). Returns ``(ids, mask)`` ``[W, T]``."""
    if max_tokens:
        stream = stream[:max_tokens]
    n = max(1, math.ceil(len(stream) / seq_len))
    ids = torch.zeros(n * seq_len, dtype=torch.long)
    mask = torch.zeros(n * seq_len, dtype=torch.long)
    ids[: len(stream)] = stream
    mask[: len(stream)] = 1
    return ids.view(n, seq_len), mask.view(n, seq_len)


@torch.no_grad()
def _stacked_eval(
    mm: MultiLoRA,
    per_slot: list[tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    precision: str,
    on_batch=None,
    topk: tuple[int, str] | None = None,
    user_chunk: int | str = "auto",
    active: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run each slot's windows through its own adapter; returns (nll_sum [N], count [N]).

    With ``topk=(k, space)``, ``on_batch(values, ids, mask)`` receives every batch's top-k ``[N*b, T, k]``.
    ``active``: only the first ``active`` slots run (the others' sums and counts stay 0).
    """
    n = mm.n_users
    assert len(per_slot) == n
    active = n if active is None else max(1, min(int(active), n))
    was_training = mm.training
    mm.eval()
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.long)
    n_win = max(ids.shape[0] for ids, _ in per_slot)
    seq_len = per_slot[0][0].shape[1]
    for start in range(0, n_win, batch_size):
        b = min(batch_size, n_win - start)
        ids = torch.zeros(n, b, seq_len, dtype=torch.long)
        mask = torch.zeros(n, b, seq_len, dtype=torch.long)
        for u, (w_ids, w_mask) in enumerate(per_slot):
            part = w_ids[start : start + b]
            ids[u, : len(part)] = part
            mask[u, : len(part)] = w_mask[start : start + b]
        dev = mm.device
        ids, mask = ids.view(n * b, seq_len).to(dev), mask.view(n * b, seq_len).to(dev)
        tks = []
        for u0, u1 in user_chunks(mm, user_chunk, b * seq_len, seq_len, training=False, precision=precision):
            if u0 >= active:
                break
            u1 = min(u1, active)
            rows = slice(u0 * b, u1 * b)
            with _slots(mm, u0, u1), autocast(precision, dev):
                s, c, tk = stacked_loss(mm, ids[rows], u1 - u0, mask[rows], topk)
            total[u0:u1] += s.double().cpu()
            count[u0:u1] += c.cpu()
            tks.append(tk)
        if on_batch is not None:
            on_batch(torch.cat([t[0] for t in tks]), torch.cat([t[1] for t in tks]), mask)
    mm.train(was_training)
    return total, count


def evaluate(
    mm: MultiLoRA,
    streams: list[torch.Tensor],
    seq_len: int,
    batch_size: int,
    precision: str,
    max_tokens: int = 0,
    base: bool = False,
    user_chunk: int | str = "auto",
) -> tuple[list[float], list[float]]:
    """Per-user mean next-token loss and perplexity of slot u's adapter on ``streams[u]``.

    Deterministic: the first ``max_tokens`` tokens (0 = all) in fixed windows. ``base=True`` turns every
    adapter off (the frozen pretrained model).
    """
    per_slot = [windows(s, seq_len, max_tokens) for s in streams]
    mm.adapters_enabled(not base)
    try:
        total, count = _stacked_eval(mm, per_slot, batch_size, precision, user_chunk=user_chunk)
    finally:
        mm.adapters_enabled(True)
    loss = (total / count.clamp_min(1).double()).tolist()
    return loss, [ppl_from_loss(x) for x in loss]


def evaluate_prefix_and_full(
    mm: MultiLoRA,
    streams: list[torch.Tensor],
    seq_len: int,
    batch_size: int,
    precision: str,
    prefix_tokens: int,
    base: bool = False,
    user_chunk: int | str = "auto",
) -> tuple[tuple[list[float], list[float]], tuple[list[float], list[float]]] | None:
    """``(evaluate(..., prefix_tokens), evaluate(..., 0))`` from one pass over the windows: the subsample's windows
    are the first windows of the full split when ``prefix_tokens`` is a whole number of windows (else None: the
    caller runs both). Returns ((loss, ppl) of the prefix, (loss, ppl) of the full split), per user."""
    if prefix_tokens % seq_len and any(len(s) > prefix_tokens for s in streams):
        return None
    full = [windows(s, seq_len) for s in streams]
    k = [math.ceil(min(len(s), prefix_tokens) / seq_len) for s in streams]
    pre = [(w[:kk], m[:kk]) for (w, m), kk in zip(full, k, strict=True)]
    rest = [(w[kk:], m[kk:]) for (w, m), kk in zip(full, k, strict=True)]
    mm.adapters_enabled(not base)
    try:
        t1, c1 = _stacked_eval(mm, pre, batch_size, precision, user_chunk=user_chunk)
        t2, c2 = _stacked_eval(mm, rest, batch_size, precision, user_chunk=user_chunk)
    finally:
        mm.adapters_enabled(True)
    out = []
    for total, count in ((t1, c1), (t1 + t2, c1 + c2)):
        loss = (total / count.clamp_min(1).double()).tolist()
        out.append((loss, [ppl_from_loss(x) for x in loss]))
    return out[0], out[1]


def cross_losses(
    mm: MultiLoRA,
    stream: torch.Tensor,
    seq_len: int,
    batch_size: int,
    precision: str,
    max_tokens: int,
    user_chunk: int | str = "auto",
    active: int | None = None,
) -> torch.Tensor:
    """Mean CE of every slot's adapter on the same text (one user's val split): ``[N]`` float64.

    One stacked pass per batch: the text is placed in all N slots, so N models are scored at once (``active``: only
    the first ``active`` slots; the others' entries are NaN).
    """
    w = windows(stream, seq_len, max_tokens)
    total, count = _stacked_eval(mm, [w] * mm.n_users, batch_size, precision, user_chunk=user_chunk, active=active)
    if active is not None and active < mm.n_users:
        total[active:] = float("nan")
    return total / count.clamp_min(1).double()


def topk_of(logits: torch.Tensor, k: int, space: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the last axis in fp32: of probabilities (``space='probs'``, softmax first) or of raw logits."""
    x = logits.float()
    if space == "probs":
        x = torch.softmax(x, dim=-1)
    return torch.topk(x, k, dim=-1)


def topk_predictions(
    mm: MultiLoRA,
    stream: torch.Tensor,
    k: int,
    space: str,
    seq_len: int,
    batch_size: int,
    precision: str,
    user_chunk: int | str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every slot's top-k next-token predictions on the shared reference text.

    Returns ``values [N, M, k]`` (float32; probabilities or raw logits) and ``indices [N, M, k]`` (int32)
    over the M real token positions of the reference windows.
    """
    w_ids, w_mask = windows(stream, seq_len)
    n = mm.n_users
    vals, idxs = [], []

    def keep(v: torch.Tensor, i: torch.Tensor, mask: torch.Tensor) -> None:
        b = v.shape[0] // n  # v, i: (N*b, T, k)
        m = mask.view(n, b * seq_len)[0].bool()  # same windows in every slot
        vals.append(v.view(n, b * seq_len, k)[:, m].cpu())
        idxs.append(i.view(n, b * seq_len, k)[:, m].to(torch.int32).cpu())

    _stacked_eval(
        mm, [(w_ids, w_mask)] * n, batch_size, precision, on_batch=keep, topk=(k, space), user_chunk=user_chunk
    )
    return torch.cat(vals, dim=1), torch.cat(idxs, dim=1)


def lr_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The ``train.schedule`` of ``opt``, stepped once per optimizer step (None = constant lr).

    'onecycle' is set as the official code sets it: OneCycleLR over ``train.steps`` with cosine phases,
    ``pct_start = train.lr_warmup``, ``div_factor=100`` (start at lr/100), ``final_div_factor=0.05`` (end at
    lr/5) and ``cycle_momentum=False`` (``train.betas`` stay fixed).
    """
    if cfg.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=cfg.lr,
        total_steps=cfg.steps,
        pct_start=cfg.lr_warmup,
        anneal_strategy="cos",
        cycle_momentum=False,
        div_factor=1e2,
        final_div_factor=0.05,
    )


class LocalTrainer:
    """AdamW over the stacked adapters with per-user batches, per-user gradient clipping and an lr schedule.

    AdamW is elementwise, so one optimizer over ``[N, ...]`` tensors equals N per-user optimizers.
    """

    def __init__(
        self,
        mm: MultiLoRA,
        train_streams: list[torch.Tensor],
        cfg: TrainConfig,
        seed: int,
        user_ids: list[int] | None = None,
    ):
        self.mm = mm
        self.cfg = cfg
        self.streams = train_streams
        self.n = mm.n_users
        ids = user_ids if user_ids is not None else list(range(self.n))
        for u, s in zip(ids, train_streams, strict=True):
            if len(s) < cfg.seq_len + 1:
                raise ValueError(
                    f"user {u}: train split has {len(s)} tokens, fewer than one training sequence "
                    f"(train.seq_len={cfg.seq_len} + 1); raise data.train_tokens or lower train.seq_len"
                )
        self.rngs = [np.random.default_rng([seed, u]) for u in ids]
        betas = (float(cfg.betas[0]), float(cfg.betas[1]))
        self.opt = torch.optim.AdamW(
            mm.adapter_parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, foreach=True
        )
        self.sched = lr_scheduler(self.opt, cfg)

    def sample_batch(self) -> torch.Tensor:
        """``[N*B, T]`` user-major batch of random windows from each user's train stream."""
        t, b = self.cfg.seq_len, self.cfg.batch_size
        rows = []
        for s, rng in zip(self.streams, self.rngs, strict=True):
            starts = rng.integers(0, len(s) - t + 1, size=b)
            rows += [s[i : i + t] for i in starts]
        return torch.stack(rows).to(self.mm.device)

    def clip_per_user(self) -> torch.Tensor:
        """Clip each user's gradient to ``grad_clip`` separately (0 = never); returns the pre-clip norms ``[N]``."""
        params = [p for p in self.mm.adapter_parameters() if p.grad is not None]
        sq = torch.zeros(self.n, device=self.mm.device)
        for p in params:
            sq += p.grad.float().pow(2).reshape(self.n, -1).sum(1)
        norms = sq.sqrt()
        if self.cfg.grad_clip > 0:
            coef = (self.cfg.grad_clip / (norms + 1e-6)).clamp(max=1.0)
            for p in params:
                p.grad.mul_(coef.view(-1, *([1] * (p.grad.dim() - 1))).to(p.grad.dtype))
        return norms

    def step(self) -> torch.Tensor:
        """One optimizer step for every user; returns each user's mean train loss ``[N]``."""
        self.mm.train()
        acc, b = self.cfg.grad_accum, self.cfg.batch_size
        total = torch.zeros(self.n)
        chunks = user_chunks(
            self.mm, self.cfg.user_chunk, b * self.cfg.seq_len, self.cfg.seq_len, precision=self.cfg.precision
        )
        for _ in range(acc):
            ids = self.sample_batch()
            for u0, u1 in chunks:  # users' losses are independent: chunked backward = one stacked backward
                with _slots(self.mm, u0, u1), autocast(self.cfg.precision, self.mm.device):
                    nll, count, _ = stacked_loss(self.mm, ids[u0 * b : u1 * b], u1 - u0)
                loss = nll / count / acc  # (n,) each user's own mean: its gradient is the user's alone
                loss.sum().backward()
                total[u0:u1] += loss.detach().float().cpu()
        self.clip_per_user()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return total

    def state_dict(self) -> dict:
        """Optimizer, lr schedule, batch samplers' and the model's dropout generators' states (checkpoints)."""
        dropout = getattr(self.mm, "dropout_state", None)
        return {
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict() if self.sched is not None else None,
            "rngs": [r.bit_generator.state for r in self.rngs],
            "dropout": dropout() if dropout is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`: training continues bit-identically."""
        self.opt.load_state_dict(state["opt"])
        if self.sched is not None and state.get("sched") is not None:
            self.sched.load_state_dict(state["sched"])
        for r, s in zip(self.rngs, state["rngs"], strict=True):
            r.bit_generator.state = s
        if state.get("dropout") is not None:
            self.mm.load_dropout_state(state["dropout"])
