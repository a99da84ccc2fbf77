"""Model FLOPs of a run's phases and the machine's GEMM peak, for model FLOP utilisation (MFU).

    fwd = forward_flops_per_token(model, seq_len=128)      # 2 x matmul params + attention scores, per token
    peak = gemm_peak_gflops("bf16", "cpu")                 # best of a few 1024^3 and 2048^3 matmuls, that precision
    peak = machine_peak_gflops("bf16", "cpu")              # the best this machine ever gave (cached on disk)
    mfu = achieved_gflops / peak

Conventions (the usual ones for a frozen base with adapters): a forward costs 2 FLOPs per weight of every
matmul (every ``nn.Linear`` and the LM head; embeddings are lookups) plus 4 x layers x seq_len x d_model for the
attention scores and their weighted sum; a training step costs 2 forwards (forward + input-gradient backward;
the frozen weights get no gradient) plus 6 x adapter params (the adapters' forward and both gradients).
Evaluation and trust passes are forwards. These are *model* FLOPs: the chunked loss recomputes the LM head in
backward, which is extra work the MFU does not credit.
"""

from __future__ import annotations

import functools
import time

import torch
from torch import nn

from trustlora import cpu
from trustlora.cache import atomic_write_json, cache_dir, read_json
from trustlora.model.multilora import is_conv1d


def matmul_params(model: nn.Module) -> int:
    """Weights of every linear layer reached in a forward (tied LM head counted once, as a matmul)."""
    seen: set[int] = set()
    total = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if (isinstance(m, nn.Linear) or is_conv1d(m)) and w is not None and id(w) not in seen:  # Conv1D: GPT-2
            seen.add(id(w))
            total += w.numel()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) not in seen:
        total += head.weight.numel()
    return total


def forward_flops_per_token(model: nn.Module, seq_len: int) -> float:
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 0) or 0
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0) or 0
    return 2.0 * matmul_params(model) + 4.0 * layers * seq_len * d


def train_flops_per_token(model: nn.Module, seq_len: int, adapter_params: int) -> float:
    return 2.0 * forward_flops_per_token(model, seq_len) + 6.0 * adapter_params


@functools.cache
def gemm_peak_gflops(
    precision: str, device: str = "cpu", sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5
) -> float:
    """GFLOP/s of the best of ``repeats`` ``n x n @ n x n`` matmuls in ``precision`` ('fp32' or 'bf16') on ``device``,
    over the ``sizes`` n (cached per process; ~0.5 s on a 2-core CPU). Two sizes because oneDNN runs a 1024^3 bf16
    matmul on one thread of a 2-core Xeon with AMX (~1,100 GFLOP/s with 1 or 2 threads) but 2048^3 on both (~1,900):
    a 1024-only peak made every MFU read ~1.7x too high there."""
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    dev = torch.device(device)
    peak = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=dev).to(dt)
        b = torch.randn(n, n, device=dev).to(dt)
        torch.matmul(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            torch.matmul(a, b)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        peak = max(peak, 2.0 * n**3 / best / 1e9)
    return peak


def machine_key(precision: str, device: str = "cpu") -> str:
    """What a GEMM peak depends on: the processor (CPU model name, or the GPU's), threads, torch version, precision."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu.model_name()
    return f"{name} | {torch.get_num_threads()} threads | torch {torch.__version__} | {precision}"


def machine_peak_gflops(precision: str, device: str = "cpu", repeats: int = 10) -> float:
    """GEMM peak for MFU: the larger of a measurement now (best of ``repeats``) and the best one recorded for this
    :func:`machine_key` in ``$TRUSTLORA_CACHE/gemm_peak.json``, which it updates. On a shared machine one measurement
    can fall in a busy moment (a default run's end-of-run peak once read 437 GFLOP/s where the same CPU gives ~1,050):
    an MFU against it would read high."""
    now = gemm_peak_gflops(precision, device, repeats=repeats)
    path = cache_dir() / "gemm_peak.json"
    seen = read_json(path)
    key = machine_key(precision, device)
    recorded = float(seen.get(key) or 0.0)
    best = max(now, recorded)
    if best > recorded:
        seen[key] = best
        try:
            atomic_write_json(path, seen)
        except OSError:
            pass
    return best


def phase_costs(records: list[dict], fwd_per_token: float, train_per_token: float, wall_s: float, peak: float) -> dict:
    """Seconds, model FLOPs, GFLOP/s and MFU per phase from a run's metrics records.

    Phases: 'train' (local steps), 'trust' (messages, trust scores, aggregation: its forwards are the val / X_S
    passes), 'eval' (held-out evaluation, base model included) and 'other' (wall time left: checkpoints, export,
    bookkeeping). Records without ``seconds`` (runs of older versions) count as 0, as do replayed base-model
    evaluations (:func:`trustlora.base_eval.replayed`).
    """
    out: dict = {}
    for phase, kind, per_token in (
        ("train", "train", train_per_token),
        ("trust", "trust", fwd_per_token),
        ("eval", "eval", fwd_per_token),
    ):
        recs = [r for r in records if r.get("kind") == kind]
        sec = float(sum(r.get("seconds") or 0.0 for r in recs))
        flops = float(sum(r.get("positions") or 0 for r in recs)) * per_token
        gf = flops / sec / 1e9 if sec > 0 else None
        out[phase] = {"seconds": sec, "flops": flops, "gflops_per_s": gf, "mfu": gf / peak if gf and peak else None}
    out["other"] = {"seconds": max(0.0, wall_s - sum(v["seconds"] for v in out.values()))}
    total_flops = sum(v.get("flops", 0.0) for v in out.values())
    out["total"] = {"seconds": wall_s, "flops": total_flops, "gemm_peak_gflops_per_s": peak}
    return out
