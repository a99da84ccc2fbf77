"""Stacked multi-user LoRA step vs stepping N separate PEFT adapters one after another.

Measures training tokens/s and peak memory (max RSS) of both on the same model, users, batch and
precision, each variant in its own subprocess (so peak RSS is its own), alternating A/B/A/B over
``--repeats`` rounds to cancel machine noise, and prints the ratio side by side. Results go to JSON.

    python benchmarks/bench_multilora.py                       # SmolLM2, 6 users, bf16, batch 2 x 128
    python benchmarks/bench_multilora.py --users 8 --steps 3 --model tiny-random
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _streams(n: int, vocab: int, length: int = 8192):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (length,), generator=g) for _ in range(n)]


def run_stacked(args) -> dict:
    import torch

    from trustlora.config import LoraConfig, TrainConfig
    from trustlora.model.base import load_base
    from trustlora.model.multilora import MultiLoRA
    from trustlora.train import LocalTrainer

    model, tok = load_base(args.model)
    mm = MultiLoRA(model, args.users, LoraConfig(dropout=args.dropout))
    tcfg = TrainConfig(batch_size=args.batch, seq_len=args.seq, precision=args.precision)
    tr = LocalTrainer(mm, _streams(args.users, len(tok) - 1), tcfg, seed=0)
    tr.step()  # warm-up (allocator, autocast caches)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tr.step()
    dt = time.perf_counter() - t0
    del torch
    return {"seconds_per_step": dt / args.steps}


def run_sequential(args) -> dict:
    """One base model, N named PEFT adapters, each with its own AdamW; users stepped one after another."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from trustlora.model.base import load_base
    from trustlora.train import per_user_loss

    model, tok = load_base(args.model)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    pcfg = PeftLoraConfig(r=4, lora_alpha=32, lora_dropout=args.dropout, target_modules=targets)
    pm = get_peft_model(model, pcfg, adapter_name="u0")
    for u in range(1, args.users):
        pm.add_adapter(f"u{u}", pcfg)
    opts = []
    for u in range(args.users):
        params = [p for n, p in pm.named_parameters() if f".u{u}." in n]
        for p in params:
            p.requires_grad_(True)
        opts.append((params, torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0, foreach=True)))
    streams = _streams(args.users, len(tok) - 1)
    g = torch.Generator().manual_seed(1)
    from trustlora.train import autocast

    def step():
        pm.train()
        for u in range(args.users):
            pm.base_model.set_adapter(f"u{u}")
            params, opt = opts[u]
            for p in params:
                p.requires_grad_(True)
            starts = torch.randint(0, len(streams[u]) - args.seq, (args.batch,), generator=g)
            ids = torch.stack([streams[u][s : s + args.seq] for s in starts])
            with autocast(args.precision):
                logits = pm(input_ids=ids).logits
            nll, cnt = per_user_loss(logits, ids, 1)
            (nll / cnt).sum().backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    return {"seconds_per_step": (time.perf_counter() - t0) / args.steps}


def child(args) -> None:
    res = run_stacked(args) if args.variant == "stacked" else run_sequential(args)
    res["tokens_per_s"] = args.users * args.batch * args.seq / res["seconds_per_step"]
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--users", type=int, default=6)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--out", default="benchmarks/results/multilora.json")
    p.add_argument("--variant", choices=["stacked", "sequential"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        child(args)
        return
    base = [sys.executable, __file__] + [a for a in sys.argv[1:]]
    results: dict[str, list[dict]] = {"stacked": [], "sequential": []}
    for rep in range(args.repeats):
        for variant in ("stacked", "sequential"):
            out = subprocess.run(base + ["--variant", variant], capture_output=True, text=True, check=True).stdout
            res = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            results[variant].append(res)
            print(
                f"  rep {rep} {variant:10s} {res['tokens_per_s']:8.1f} tok/s  peak {res['peak_rss_mb']:7.0f} MB",
                flush=True,
            )
    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in results.items()}
    s, q = med["stacked"], med["sequential"]
    print(
        f"\n{args.model}, {args.users} users, batch {args.batch} x {args.seq}, {args.precision}, "
        f"dropout {args.dropout} (median of {args.repeats})"
    )
    print(f"{'':12s} {'tokens/s':>10s} {'peak RSS MB':>12s}")
    print(f"{'stacked':12s} {s['tokens_per_s']:10.1f} {s['peak_rss_mb']:12.0f}")
    print(f"{'sequential':12s} {q['tokens_per_s']:10.1f} {q['peak_rss_mb']:12.0f}")
    print(f"{'ratio':12s} {s['tokens_per_s'] / q['tokens_per_s']:9.2f}x {s['peak_rss_mb'] / q['peak_rss_mb']:11.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": {k: v for k, v in vars(args).items() if k != "variant"},
                "raw": results,
                "median": med,
                "speedup": s["tokens_per_s"] / q["tokens_per_s"],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
