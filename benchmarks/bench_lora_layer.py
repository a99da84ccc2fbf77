"""The adapters' skinny products in one real decoder layer: ``x @ A`` through ``bmm`` vs through trustlora's transposed
products (trustlora.model.multilora.SKINNY_DOWN), alternating in one process, medians and ratios side by side.

A whole pass hides a few-percent change in this machine's noise (``bench_head_model.py --compare lora`` read 0.87-1.07x
in two runs), so this measures one SmolLM2 decoder layer (6 users' adapters) two ways: wall time of the layer, and
the torch profiler's self time of the matmul-family ops (bmm, baddbmm, copies and transposes), which is where the
change acts. Shapes: an evaluation pass (3 users x 8 x 128, no autograd) and a training step's chunk (1 user x 4 x
128, forward + backward), in fp32 (the precision the change applies to):

    python benchmarks/bench_lora_layer.py
    LD_PRELOAD=~/.cache/trustlora/alloc/libtcmalloc_minimal.so.4 python benchmarks/bench_lora_layer.py --repeats 8

Results: ``benchmarks/results/lora-layer-<allocator>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

FAMILY = ("aten::bmm", "aten::baddbmm_", "aten::baddbmm", "aten::transpose", "aten::contiguous", "aten::copy_")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layer", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--calls", type=int, default=3, help="layer calls per measurement")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    from trustlora import alloc
    from trustlora.config import LoraConfig
    from trustlora.model import multilora
    from trustlora.model.base import load_base
    from trustlora.model.multilora import MultiLoRA

    tuned = alloc.tune_glibc_malloc()
    allocator = alloc.loaded_allocator() + ("-tuned" if tuned else "")
    model, _ = load_base(args.model)
    mm = MultiLoRA(model, 6, LoraConfig(dropout=0.1))
    with torch.no_grad():
        for p in mm.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)  # B != 0: the adapters' products are all live
    layer = model.model.layers[args.layer]
    rotary = model.model.rotary_emb
    width = model.config.hidden_size

    def run(users: int, windows: int, train: bool) -> None:
        x = torch.randn(users * windows, 128, width, requires_grad=train)
        pe = rotary(x, torch.arange(128).unsqueeze(0))
        mm.train(train)
        with mm.slots(0, users), torch.set_grad_enabled(train):
            out = layer(x, position_embeddings=pe, attention_mask=None)
            out = out[0] if isinstance(out, tuple) else out
            if train:
                out.sum().backward()

    shapes = {"eval (3 users x 8 x 128)": (3, 8, False), "train (1 user x 4 x 128)": (1, 4, True)}
    wall: dict[tuple[str, bool], list[float]] = {}
    fam: dict[tuple[str, bool], list[float]] = {}
    for rep in range(args.repeats + 1):  # the first round warms up
        for flag in (False, True):
            multilora.SKINNY_DOWN = flag
            for name, shape in shapes.items():
                t = time.perf_counter()
                for _ in range(args.calls):
                    run(*shape)
                dt = (time.perf_counter() - t) / args.calls
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(args.calls):
                        run(*shape)
                f = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in FAMILY) / args.calls / 1e6
                if rep:
                    wall.setdefault((name, flag), []).append(dt)
                    fam.setdefault((name, flag), []).append(f)
    multilora.SKINNY_DOWN = True
    print(f"{args.model}, layer {args.layer}, 6 users' adapters, fp32, allocator {allocator}")
    print(f"{'shape':<26} {'':>14} {'bmm ms':>9} {'skinny ms':>10} {'ratio':>7}")
    result = {"allocator": allocator, "args": vars(args), "shapes": {}}
    for name in shapes:
        row = {}
        for what, d in (("layer wall", wall), ("matmul family", fam)):
            b, a = (statistics.median(d[(name, f)]) for f in (False, True))
            print(f"{name:<26} {what:>14} {b * 1e3:>9.1f} {a * 1e3:>10.1f} {a / b:>6.2f}x")
            row[what] = {"bmm_s": b, "skinny_s": a, "ratio": a / b}
        result["shapes"][name] = row
    out = Path(args.out or Path(__file__).parent / "results" / f"lora-layer-{allocator}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
