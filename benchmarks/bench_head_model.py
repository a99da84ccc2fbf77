"""CPU fast paths inside the real model: a training step, an evaluation pass and an X_S top-k pass with a fast path
off ("before") and on (the defaults, "after"), alternating in one process, medians and ratios printed side by side.

``--compare head`` (default): the LM-head settings of trustlora.loss (before: the plain chunked head, FUSED_CPU,
LOWP_GEMM_GROUP and TOPK_BLOCK off). ``--compare attention``: attention in passes without autograd (before: grouped
eager, trustlora.model.attention.NO_GRAD_SDPA off; after: the default, SDPA under the same mask except in bf16 on a CPU
without AMX; the training step is the control).
``--compare lora``: the adapters' ``x @ A`` (before: ``bmm``, trustlora.model.multilora.SKINNY_DOWN off; after: the
transposed products of ``lora_down``; fp32 on CPU only). ``--compare bf16-flash``: the bf16 training loss on CPU
(before: through the flash kernel, trustlora.loss.FLASH_BF16 on; after: the default, which chooses by the CPU:
grouped head GEMMs where it lacks AMX).

    python benchmarks/bench_head_model.py                      # SmolLM2, 6 users, batch 4 x 128, auto precision
    LD_PRELOAD=~/.cache/trustlora/alloc/libtcmalloc_minimal.so.4 python benchmarks/bench_head_model.py --precision bf16
    python benchmarks/bench_head_model.py --compare attention
    python benchmarks/bench_head_model.py --compare lora --precision fp32
    python benchmarks/bench_head_model.py --compare bf16-flash --precision bf16

Results: ``benchmarks/results/head-model-<allocator>-<precision>.json`` (``attention-model-...`` for attention,
``lora-model-...`` for lora, ``bf16-flash-model-...``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--reference-tokens", type=int, default=1024, help="X_S tokens (data.reference_tokens)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", default="head", choices=["head", "attention", "lora", "bf16-flash"])
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import torch

    from trustlora import alloc, loss
    from trustlora.config import LoraConfig, TrainConfig
    from trustlora.model import attention, multilora
    from trustlora.model.base import load_base
    from trustlora.model.multilora import MultiLoRA
    from trustlora.train import LocalTrainer, evaluate, resolve_precision, topk_predictions

    tuned = alloc.tune_glibc_malloc()
    allocator = alloc.loaded_allocator() + ("-tuned" if tuned else "")
    prec = resolve_precision(args.precision)
    n = args.users
    model, tok = load_base(args.model)
    mm = MultiLoRA(model, n, LoraConfig(dropout=0.1))
    if prec == "bf16":
        mm.keep_lowp_weights()
    g = torch.Generator().manual_seed(0)
    streams = [torch.randint(0, len(tok) - 1, (8192,), generator=g) for _ in range(n)]
    tcfg = TrainConfig(batch_size=args.batch, seq_len=args.seq, precision=prec, user_chunk="auto")
    trainer = LocalTrainer(mm, streams, tcfg, seed=0)
    xs = torch.randint(0, len(tok) - 1, (args.reference_tokens,), generator=g)  # the shared public set X_S

    def topk_pass() -> None:  # strategy predictions' trust pass: every user's top-10 on X_S
        topk_predictions(mm, xs, 10, "probs", args.seq, args.eval_batch, prec)

    phases = {
        "train step": trainer.step,
        "eval pass": lambda: evaluate(
            mm, streams, args.seq, args.eval_batch, prec, args.eval_batch * args.seq, user_chunk="auto"
        ),
        "X_S top-k pass": topk_pass,
    }
    plain, stem = {
        "head": ([(loss, loss.PLAIN_HEAD)], "head-model"),
        "attention": ([(attention, {"NO_GRAD_SDPA": False})], "attention-model"),
        "lora": ([(multilora, {"SKINNY_DOWN": False})], "lora-model"),
        "bf16-flash": ([(loss, {"FLASH_BF16": True})], "bf16-flash-model"),
    }[args.compare]
    settings = {"before": plain, "after": [(m, {k: getattr(m, k) for k in st}) for m, st in plain]}
    times: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.repeats + 1):  # the first round warms up
        for name, sts in settings.items():
            for module, st in sts:
                for k, v in st.items():
                    setattr(module, k, v)
            for phase, fn in phases.items():
                t = time.perf_counter()
                fn()
                if rep:
                    times.setdefault((phase, name), []).append(time.perf_counter() - t)
    print(f"{args.model}, {n} users, batch {args.batch} x {args.seq}, {prec}, allocator {allocator}, {args.compare}")
    print(f"{'phase':<16} {'before s':>9} {'after s':>9} {'after/before':>13}")
    result = {"allocator": allocator, "precision": prec, "compare": args.compare, "args": vars(args), "phases": {}}
    for phase in phases:
        b, a = (statistics.median(times[(phase, k)]) for k in ("before", "after"))
        print(f"{phase:<16} {b:>9.3f} {a:>9.3f} {a / b:>12.2f}x")
        result["phases"][phase] = {"before_s": b, "after_s": a, "ratio": a / b}
    out = Path(args.out or Path(__file__).parent / "results" / f"{stem}-{allocator}-{prec}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
