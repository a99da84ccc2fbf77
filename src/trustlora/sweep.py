"""Hyper-parameter sweeps (paper Figure 5): run a grid of config overrides and tabulate final test ppl.

    trustlora sweep --grid train.lr=0.001,0.002,0.004 --grid lora.dropout=0,0.1 [--config F] [key=value ...]

Every grid point is a normal run in ``<out>/<key=value,...>-seed<k>/`` (finished points are reused, so an
interrupted sweep resumes); ``sweep.{md,csv,json,png}`` hold mean test ppl per point (± std over seeds).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np

from trustlora.cache import atomic_write_json, atomic_write_text
from trustlora.config import ConfigError, load_config, parse_override


def parse_grid(items: list[str]) -> dict[str, list]:
    """['train.lr=0.001,0.002'] -> {'train.lr': [0.001, 0.002]} (values parsed as YAML scalars)."""
    grid: dict[str, list] = {}
    for it in items:
        key, value = parse_override(it)
        values = value if isinstance(value, list) else str(it.split("=", 1)[1]).split(",")
        parsed = [parse_override(f"{key}={v}")[1] if isinstance(v, str) else v for v in values]
        if not parsed:
            raise ConfigError(f"--grid {it}: expected key=v1,v2,...")
        grid[key] = parsed
    return grid


def point_name(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items()).replace("/", "_")


def run_sweep(config: str | None, overrides: list[str], grid_items: list[str], progress: bool = True) -> Path:
    from trustlora import report
    from trustlora.api import Workspace, prepare, run

    grid = parse_grid(grid_items)
    if not grid:
        raise ConfigError("sweep: give at least one --grid key=v1,v2")
    base = load_config(config, overrides)
    seeds = base.seeds or [base.seed]
    out = Path(base.out or Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    rest = [o for o in overrides if parse_override(o)[0] != "out"]
    points = [dict(zip(grid, vals, strict=True)) for vals in itertools.product(*grid.values())]
    for p in points:  # validate every point before spending compute
        load_config(config, rest + [f"{k}={v}" for k, v in p.items()])
    ws: Workspace | None = None
    rows = []
    for p in points:
        ppl = []
        for seed in seeds:
            run_dir = out / f"{point_name(p)}-seed{seed}"
            if not (run_dir / "summary.json").exists():
                cfg = load_config(
                    config, rest + [f"{k}={v}" for k, v in p.items()] + [f"seed={seed}", f"out={run_dir}"]
                )
                ws = prepare(cfg, ws)
                run(cfg, ws=ws, progress=progress)
            ppl.append(json.loads((run_dir / "summary.json").read_text())["final_mean_test_ppl"])
        rows.append(
            {
                **p,
                "mean_test_ppl": float(np.mean(ppl)),
                "std_test_ppl": float(np.std(ppl, ddof=1)) if len(ppl) > 1 else 0.0,
                "n_seeds": len(ppl),
            }
        )
    keys = list(grid)
    header = keys + ["mean_test_ppl", "std_test_ppl", "n_seeds"]
    atomic_write_text(
        out / "sweep.csv", ",".join(header) + "\n" + "".join(",".join(str(r[h]) for h in header) + "\n" for r in rows)
    )
    atomic_write_json(out / "sweep.json", {"grid": grid, "strategy": base.strategy, "seeds": seeds, "rows": rows})
    best = min(r["mean_test_ppl"] for r in rows)
    table = report.format_table(
        header,
        [
            [f"{r[k]:g}" if isinstance(r[k], float) else r[k] for k in keys]  # 0.0005 stays 0.0005
            + [
                f"**{r['mean_test_ppl']:.2f}**" if r["mean_test_ppl"] == best else f"{r['mean_test_ppl']:.2f}",
                f"{r['std_test_ppl']:.2f}" if r["n_seeds"] > 1 else report.DASH,
                r["n_seeds"],
            ]
            for r in rows
        ],
    )
    what = "strategy swept" if "strategy" in grid else base.strategy
    atomic_write_text(out / "sweep.md", f"# Sweep ({what}, seeds {seeds})\n\n{table}\n")
    _plot(out / "sweep.png", rows, keys)
    return out


def _plot(path: Path, rows: list[dict], keys: list[str]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trustlora.cache import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rows) + 2), 3.5))
    labels = ["\n".join(f"{k.split('.')[-1]}={r[k]}" for k in keys) for r in rows]
    ax.bar(
        range(len(rows)),
        [r["mean_test_ppl"] for r in rows],
        yerr=[r["std_test_ppl"] for r in rows],
        color="tab:blue",
        capsize=3,
    )
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("mean test ppl")
    lo = min(r["mean_test_ppl"] for r in rows)
    ax.set_ylim(lo * 0.9, max(r["mean_test_ppl"] for r in rows) * 1.05)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
