"""Speed and memory of the stacked multi-user step against this machine's limits, side by side in one run.

For each number of users N it measures, each variant in its own subprocess (peak RSS is its own), alternating the
variants over ``--repeats`` rounds to cancel machine noise:

* ``chunked``   : the stacked step as trustlora runs it (loss and LM head in chunks, users chunked when large);
* ``full``      : the same stacked step from full logits ([N*B*T, V] materialised, the previous path);
* ``peft``      : N PEFT adapters stepped one after another (only at ``--peft-users``);
* ``chunked+mallopt`` / ``chunked+NAME``: the chunked step with glibc's mmap thresholds raised (trustlora.alloc, what
  the CLI does) or with the allocator library given by ``--preload NAME=LIB`` (LD_PRELOAD). Other variants run with
  glibc's defaults (TRUSTLORA_MALLOC=default).

Per variant: training tokens/s and MFU of a training step, tokens/s and MFU of an evaluation pass (forward of
``--eval-batch`` windows per user, no autograd), peak RSS. MFU = model FLOPs/s (trustlora.flops) over the GEMM peak
in the same precision: the best this CPU has shown (``trustlora.flops.machine_peak_gflops``; the measurement of this
run is printed beside it). Results: ``benchmarks/results/speed.json``.

    python benchmarks/bench_speed.py                          # SmolLM2, N = 1, 6, 24, batch 1 x 128, auto precision
    python benchmarks/bench_speed.py --users 64 --variants chunked --repeats 1    # the N = 64 memory check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _streams(n: int, vocab: int, length: int = 4096):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (length,), generator=g) for _ in range(n)]


def _precision(args) -> str:
    from trustlora.train import resolve_precision

    return resolve_precision(args.precision)


def run_stacked(args, chunked: bool) -> dict:
    import torch

    from trustlora.config import LoraConfig, TrainConfig
    from trustlora.flops import forward_flops_per_token, train_flops_per_token
    from trustlora.model.base import load_base
    from trustlora.model.multilora import MultiLoRA
    from trustlora.train import LocalTrainer, evaluate

    prec = _precision(args)
    model, tok = load_base(args.model)
    mm = MultiLoRA(model, args.users, LoraConfig(dropout=args.dropout))
    mm.chunked_head = chunked
    if prec == "bf16":
        mm.keep_lowp_weights()  # as runs do: frozen weights cast to bf16 once
    chunk = "auto" if chunked else args.users
    tcfg = TrainConfig(batch_size=args.batch, seq_len=args.seq, precision=prec, user_chunk=chunk)
    streams = _streams(args.users, len(tok) - 1)
    tr = LocalTrainer(mm, streams, tcfg, seed=0)
    tr.step()  # warm-up (allocator, autocast caches)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tr.step()
    dt = (time.perf_counter() - t0) / args.steps
    eval_tokens = args.eval_batch * args.seq
    evaluate(mm, streams, args.seq, args.eval_batch, prec, eval_tokens, user_chunk=chunk)  # warm-up
    t0 = time.perf_counter()
    evaluate(mm, streams, args.seq, args.eval_batch, prec, eval_tokens, user_chunk=chunk)
    de = time.perf_counter() - t0
    train_tok = args.users * args.batch * args.seq
    eval_tok = args.users * eval_tokens
    del torch
    return {
        "seconds_per_step": dt,
        "tokens_per_s": train_tok / dt,
        "train_gflops_per_s": train_tok * train_flops_per_token(model, args.seq, mm.num_adapter_params()) / dt / 1e9,
        "eval_tokens_per_s": eval_tok / de,
        "eval_gflops_per_s": eval_tok * forward_flops_per_token(model, args.seq) / de / 1e9,
    }


def run_peft(args) -> dict:
    """One base model, N named PEFT adapters, each with its own AdamW; users stepped one after another."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from trustlora.flops import train_flops_per_token
    from trustlora.model.base import load_base
    from trustlora.train import autocast, per_user_loss

    prec = _precision(args)
    model, tok = load_base(args.model)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    pcfg = PeftLoraConfig(r=4, lora_alpha=32, lora_dropout=args.dropout, target_modules=targets)
    pm = get_peft_model(model, pcfg, adapter_name="u0")
    for u in range(1, args.users):
        pm.add_adapter(f"u{u}", pcfg)
    opts = []
    for u in range(args.users):
        params = [p for n, p in pm.named_parameters() if f".u{u}." in n]
        opts.append((params, torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0, foreach=True)))
    streams = _streams(args.users, len(tok) - 1)
    g = torch.Generator().manual_seed(1)

    def step():
        pm.train()
        for u in range(args.users):
            pm.base_model.set_adapter(f"u{u}")
            params, opt = opts[u]
            for p in params:
                p.requires_grad_(True)
            starts = torch.randint(0, len(streams[u]) - args.seq, (args.batch,), generator=g)
            ids = torch.stack([streams[u][s : s + args.seq] for s in starts])
            with autocast(prec):
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
    dt = (time.perf_counter() - t0) / args.steps
    train_tok = args.users * args.batch * args.seq
    adapter = sum(p.numel() for p in opts[0][0])
    return {
        "seconds_per_step": dt,
        "tokens_per_s": train_tok / dt,
        "train_gflops_per_s": train_tok * train_flops_per_token(pm.base_model.model, args.seq, adapter) / dt / 1e9,
    }


def child(args) -> None:
    kind, _, alloc = args.variant.partition("+")
    if alloc == "mallopt":
        from trustlora.alloc import tune_glibc_malloc

        assert tune_glibc_malloc()
    res = run_peft(args) if kind == "peft" else run_stacked(args, chunked=kind == "chunked")
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def _fmt(x, spec: str) -> str:
    return format(x, spec) if isinstance(x, int | float) else "—"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--users", default="1,6,24", help="comma list of N")
    p.add_argument("--peft-users", type=int, default=6, help="N at which the PEFT one-by-one loop also runs")
    p.add_argument("--variants", default="chunked,full,peft")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--out", default="benchmarks/results/speed.json")
    p.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="NAME=LIB",
        help="allocator for variants 'chunked+NAME' (LD_PRELOAD), e.g. tcmalloc=.../libtcmalloc_minimal.so.4 "
        "(tcmalloc: default what trustlora.alloc finds)",
    )
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        args.users = int(args.users)
        child(args)
        return
    from trustlora import cpu
    from trustlora.flops import gemm_peak_gflops, machine_peak_gflops

    prec = _precision(args)
    kinds = ["fp32", "bf16"] if cpu.has_bf16() else ["fp32"]
    best = {k: machine_peak_gflops(k, "cpu", repeats=10) for k in kinds}  # the best this CPU has shown: MFU's base
    peaks = {k: gemm_peak_gflops(k, "cpu", repeats=10) for k in kinds}  # this run's measurement (cached: not rerun)
    peak = best[prec]
    print(
        "GEMM peak (1024^3 and 2048^3, best of 10): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s (best seen here {best[k]:.0f})" for k, v in peaks.items())
    )
    preload = dict(item.split("=", 1) for item in args.preload)
    if "tcmalloc" not in preload:
        from trustlora.alloc import find_tcmalloc

        found = find_tcmalloc()  # what the CLI would preload ($TRUSTLORA_CACHE/alloc, the loader's cache, /usr/lib...)
        if found:
            preload["tcmalloc"] = found
    ns = [int(x) for x in args.users.split(",")]
    variants = args.variants.split(",")
    results: dict[str, dict[str, list[dict]]] = {}
    rest, skip = [], False
    for a in sys.argv[1:]:  # every flag but --users, which each child gets on its own
        if skip or a.startswith("--users"):
            skip = a == "--users"
            continue
        rest.append(a)
    base = [sys.executable, __file__, *rest]
    for n in ns:
        vs = [v for v in variants if v != "peft" or n == args.peft_users]
        results[str(n)] = {v: [] for v in vs}
        for rep in range(args.repeats):
            for v in vs:
                cmd = base + ["--users", str(n), "--variant", v]
                tuned = v.partition("+")[2] == "mallopt"  # glibc defaults unless the variant says
                env = dict(os.environ, TRUSTLORA_MALLOC="tuned" if tuned else "default")
                lib = preload.get(v.partition("+")[2])
                if lib:
                    env["LD_PRELOAD"] = lib
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    res = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
                else:
                    res = json.loads(line[7:])
                results[str(n)][v].append(res)
                print(
                    f"  N={n:<3d} rep {rep} {v:8s} "
                    + (res.get("error") or (f"{res['tokens_per_s']:8.1f} tok/s  peak {res['peak_rss_mb']:7.0f} MB")),
                    flush=True,
                )
    med: dict = {}
    for n, by_v in results.items():
        med[n] = {}
        for v, rs in by_v.items():
            ok = [r for r in rs if "error" not in r]
            med[n][v] = {k: statistics.median(r[k] for r in ok) for k in ok[0]} if ok else {"error": rs[0]["error"]}
    print(
        f"\n{args.model}, batch {args.batch} x {args.seq}, {prec}, dropout {args.dropout}, eval {args.eval_batch} "
        f"windows/user; median of {args.repeats}; MFU against the {prec} GEMM peak {peak:.0f} GFLOP/s"
    )
    head = (
        f"{'N':>3s} {'variant':8s} {'train tok/s':>11s} {'train MFU':>9s} {'eval tok/s':>10s} {'eval MFU':>8s} "
        f"{'peak RSS MB':>11s} {'vs full':>8s}"
    )
    print(head)
    for n, by_v in med.items():
        full_tps = by_v.get("full", {}).get("tokens_per_s")
        for v, m in by_v.items():
            if "error" in m:
                print(f"{n:>3s} {v:8s} error: {m['error'][:80]}")
                continue
            tmfu = m["train_gflops_per_s"] / peak
            emfu = m.get("eval_gflops_per_s", float("nan")) / peak
            ratio = m["tokens_per_s"] / full_tps if full_tps else None
            etps = _fmt(m.get("eval_tokens_per_s"), "10.1f")
            print(
                f"{n:>3s} {v:8s} {m['tokens_per_s']:11.1f} {100 * tmfu:8.0f}% {etps} "
                f"{_fmt(100 * emfu if emfu == emfu else None, '7.0f')}% {m['peak_rss_mb']:11.0f} "
                f"{_fmt(ratio, '7.2f')}x"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "args": {k: v for k, v in vars(args).items() if k != "variant"},
        "precision": prec,
        "gemm_peak_gflops_per_s": peaks,
        "gemm_peak_best_seen_gflops_per_s": best,
        "raw": results,
        "median": med,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
