"""Hyper-parameter sweeps (paper Figure 5): run a grid of config overrides and tabulate final val and test ppl.

    trustlora sweep --grid train.lr=0.001,0.002,0.004 --grid lora.dropout=0,0.1 [--config F] [key=value ...]

Every grid point is a normal run in ``<out>/<key=value,...>-seed<k>/`` (finished points are reused, so an
interrupted sweep resumes); ``sweep.{md,csv,json,png}`` hold mean val and test ppl per point (± std over
seeds). The best point is chosen on the **val** split (mean over users and seeds of ``final_val_ppl``),
never on test: the test ppl of the chosen point is the honest estimate. Points without val ppl are not
eligible; with none, no point is marked.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from pathlib import Path

import numpy as np

from trustlora.cache import atomic_write_json, atomic_write_text
from trustlora.config import ConfigError, load_config, parse_override
from trustlora.metrics import mean_std
from trustlora.rundir import load_summary


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


def mean_val_ppl(summary: dict) -> float | None:
    """Mean over users of a run's final val ppl (``final_mean_val_ppl``, else the mean of ``final_val_ppl``)."""
    v = summary.get("final_mean_val_ppl")
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    per_user = summary.get("final_val_ppl")
    if isinstance(per_user, list) and per_user and all(isinstance(x, int | float) for x in per_user):
        return float(np.mean(per_user))
    return None


def point_row(point: dict, summaries: list[dict]) -> dict:
    """One table row: the point's keys, mean ± std over seeds of the mean val ppl (None if a seed lacks it)
    and of the mean test ppl, and the number of seeds."""
    test = [float(s["final_mean_test_ppl"]) for s in summaries]
    val = [mean_val_ppl(s) for s in summaries]
    m_val, s_val = mean_std(val) if val and all(v is not None for v in val) else (None, None)
    m_test, s_test = mean_std(test)
    return {
        **point,
        "mean_val_ppl": m_val,
        "std_val_ppl": s_val,
        "mean_test_ppl": m_test,
        "std_test_ppl": s_test,
        "n_seeds": len(summaries),
    }


def best_index(rows: list[dict]) -> int | None:
    """Index of the row with the lowest finite ``mean_val_ppl`` (first on ties); None if no row has one.
    Test perplexity is never looked at."""
    vals = [(r["mean_val_ppl"], k) for k, r in enumerate(rows) if r.get("mean_val_ppl") is not None]
    vals = [(v, k) for v, k in vals if math.isfinite(v)]
    return min(vals)[1] if vals else None


def run_sweep(config: str | None, overrides: list[str], grid_items: list[str], progress: bool = True) -> Path:
    from trustlora.experiment import drop_overrides, run_grid, seeds_of, study_dir

    grid = parse_grid(grid_items)
    if not grid:
        raise ConfigError("sweep: give at least one --grid key=v1,v2")
    base = load_config(config, overrides)
    seeds = seeds_of(base)
    out = study_dir(base, "sweep")
    points = [dict(zip(grid, vals, strict=True)) for vals in itertools.product(*grid.values())]
    named = [(point_name(p), [f"{k}={v}" for k, v in p.items()]) for p in points]
    rest = drop_overrides(overrides, "out")
    runs = run_grid(config, rest, named, seeds, out, seeds_outer=False, progress=progress, log=lambda *a: None)
    summaries = [load_summary(r.run_dir / "summary.json") for r in runs]  # point by point, every seed of a point
    rows = [point_row(p, summaries[k * len(seeds) : (k + 1) * len(seeds)]) for k, p in enumerate(points)]
    keys = list(grid)
    best = best_index(rows)
    for k, r in enumerate(rows):
        r["best"] = k == best
    header = keys + ["mean_val_ppl", "std_val_ppl", "mean_test_ppl", "std_test_ppl", "n_seeds", "best"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if r[h] is None else r[h] for h in header] for r in rows])
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    atomic_write_json(
        out / "sweep.json",
        {
            "grid": grid,
            "strategy": base.strategy,
            "seeds": seeds,
            "selection": "lowest mean val ppl",
            "best": None if best is None else {k: rows[best][k] for k in keys},
            "rows": rows,
        },
    )
    what = "strategy swept" if "strategy" in grid else base.strategy
    atomic_write_text(out / "sweep.md", f"# Sweep ({what}, seeds {seeds})\n\n{_markdown(rows, keys, best)}\n")
    _plot(out / "sweep.png", rows, keys, best)
    return out


def _markdown(rows: list[dict], keys: list[str], best: int | None) -> str:
    from trustlora.tables import DASH, format_table

    def ppl(r: dict, split: str, bold: bool) -> tuple[str, str]:
        m, s = r[f"mean_{split}_ppl"], r[f"std_{split}_ppl"]
        if m is None:
            return DASH, DASH
        cell = f"{m:.2f}"
        return (f"**{cell}**" if bold else cell), (f"{s:.2f}" if r["n_seeds"] > 1 else DASH)

    body = []
    for k, r in enumerate(rows):
        row = [f"{r[key]:g}" if isinstance(r[key], float) else r[key] for key in keys]  # 0.0005 stays 0.0005
        body.append(row + [*ppl(r, "val", k == best), *ppl(r, "test", k == best), r["n_seeds"]])
    header = keys + ["mean val ppl", "std val", "mean test ppl", "std test", "n_seeds"]
    text = format_table(header, body)
    if best is None:
        return text + "\n\nNo val perplexity recorded: no best point is chosen (never on test)."
    point = ", ".join(f"{k}={rows[best][k]}" for k in keys)
    return (
        f"{text}\n\nBest point (bold), chosen on the lowest mean **val** ppl over users and seeds: {point}; "
        f"its test ppl {rows[best]['mean_test_ppl']:.2f} is the estimate to report (test never chose it)."
    )


def _plot(path: Path, rows: list[dict], keys: list[str], best: int | None) -> None:
    from trustlora.plots import plt, save_png

    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows) + 2), 3.5))
    labels = ["\n".join(f"{k.split('.')[-1]}={r[k]}" for k in keys) for r in rows]
    x = np.arange(len(rows))
    val = [np.nan if r["mean_val_ppl"] is None else r["mean_val_ppl"] for r in rows]
    ax.bar(x - 0.2, val, 0.4, yerr=[r["std_val_ppl"] or 0.0 for r in rows], color="tab:green", capsize=3, label="val")
    ax.bar(x + 0.2, [r["mean_test_ppl"] for r in rows], 0.4, yerr=[r["std_test_ppl"] or 0.0 for r in rows],
           color="tab:blue", capsize=3, label="test")  # fmt: skip
    if best is not None:
        ax.axvspan(best - 0.5, best + 0.5, color="tab:orange", alpha=0.2, label="best (on val)")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("mean ppl")
    ax.legend(fontsize=7)
    finite = [v for v in val + [r["mean_test_ppl"] for r in rows] if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, max(finite) * 1.05)
    fig.tight_layout()
    save_png(fig, path, tight=False)
