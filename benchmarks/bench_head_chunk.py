"""LM-head paths: the head's loss (training: forward + backward) and evaluation pass (nll + top-k), chunked at
several positions per chunk and with trustlora's defaults ("fused": on CPU the flash-attention training loss, fp32
and bf16; fp32 evaluation by vocabulary blocks; bf16 evaluation with grouped head GEMMs and block-max top-k;
trustlora.loss), alternating in one process, ratios to the first chunk size printed side by side. The chunked
variants run one chunk at a time with torch.topk (FUSED_CPU, LOWP_GEMM_GROUP and TOPK_BLOCK off).

The head GEMM ``[rows, d] x [d, V]`` repacks all of W for every call, so taller chunks amortise it; under glibc a
chunk above its 32 MiB mmap ceiling is mapped and page-faulted afresh on every use instead (trustlora.loss). Run it
under each allocator and precision to choose ``trustlora.loss.CHUNK_BYTES`` and where ``FUSED_CPU`` applies:

    python benchmarks/bench_head_chunk.py                                   # glibc (raised thresholds, as the CLI)
    LD_PRELOAD=~/.cache/trustlora/alloc/libtcmalloc_minimal.so.4 python benchmarks/bench_head_chunk.py  # tcmalloc
    # (the library path: python -m trustlora.alloc status)
    python benchmarks/bench_head_chunk.py --precision bf16 --rows 165,512   # where bf16 is native

Shapes default to SmolLM2-135M's head (d = 576, V = 49,152), one training chunk's positions (one user, 4 x 128)
and one evaluation chunk's (3 users x 8 x 128).
Results: ``benchmarks/results/head-chunk-<allocator>-<precision>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="165,256,512,1024", help="positions per chunk to compare (first = reference)")
    ap.add_argument("--positions", type=int, default=512, help="training positions per call (a user: 4 x 128)")
    ap.add_argument(
        "--eval-positions", type=int, default=3072, help="evaluation positions per call (3 users x 8 x 128)"
    )
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import torch

    from trustlora import alloc, loss
    from trustlora.loss import head_scores, linear_cross_entropy

    tuned = alloc.tune_glibc_malloc()
    allocator = alloc.loaded_allocator() + ("-tuned" if tuned else "")
    rows = [int(r) for r in args.rows.split(",")]
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(args.vocab, args.hidden, generator=g) * 0.05
    hidden = torch.randn(args.positions, args.hidden, generator=g)
    labels = torch.randint(0, args.vocab, (args.positions,), generator=g)
    eval_hidden = torch.randn(args.eval_positions, args.hidden, generator=g)
    eval_labels = torch.randint(0, args.vocab, (args.eval_positions,), generator=g)
    bf16 = args.precision == "bf16"
    if bf16:
        weight = weight.bfloat16()  # runs give the head its bf16 copy (MultiLoRA.head_weight)

    def train(r: int) -> None:
        h = hidden.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            linear_cross_entropy(h, weight, None, labels, r).sum().backward()

    def evaluate(r: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            head_scores(eval_hidden, weight, None, eval_labels, (10, "probs"), rows=r)

    plain = loss.PLAIN_HEAD  # one chunk at a time, torch.topk
    current = {k: getattr(loss, k) for k in plain}  # trustlora's defaults

    def using(fn, settings):
        def run(r: int) -> None:
            for k, v in settings.items():
                setattr(loss, k, v)
            fn(r)

        return run

    variants = {}
    for kind, fn in (("train", train), ("eval", evaluate)):
        variants.update({f"{kind} {r}": (using(fn, plain), r) for r in rows})
        variants[f"{kind} fused"] = (using(fn, current), 0)  # the defaults: fused / grouped paths where they apply
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn, r in variants.values():
        fn(r)  # warm-up: buffers, packing, thread pool
    for _ in range(args.repeats):
        for name, (fn, r) in variants.items():
            t = time.perf_counter()
            fn(r)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"allocator {allocator}, {args.precision}, {args.positions} training / {args.eval_positions} evaluation"
        f" positions, head {args.hidden} x {args.vocab}"
    )
    print(f"{'variant':<12} {'median ms':>10} {'min ms':>8} {'vs first':>9}")
    result = {
        "allocator": allocator,
        "precision": args.precision,
        "positions": args.positions,
        "eval_positions": args.eval_positions,
        "rows": {},
    }
    for kind in ("train", "eval"):
        ref = med[f"{kind} {rows[0]}"]
        for k in [n for n in variants if n.startswith(kind)]:
            print(f"{k:<12} {med[k] * 1e3:>10.1f} {min(times[k]) * 1e3:>8.1f} {med[k] / ref:>8.2f}x")
            result["rows"][k] = {"median_s": med[k], "min_s": min(times[k]), "ratio": med[k] / ref}
    out = Path(args.out or Path(__file__).parent / "results" / f"head-chunk-{allocator}-{args.precision}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
