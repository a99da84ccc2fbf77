"""Paper Table 4: mean test perplexity per strategy (mean ± std over seeds) across comparison directories.

Run: ``trustlora analyze table4 COMPARE_DIR [COMPARE_DIR ...] [--out DIR]`` or, from Python,
``write_table4(dirs, out=None)``. Writes ``table4.{md,csv,json,png}`` (grouped bar chart) into ``--out`` or
the common parent of the comparison directories.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustlora.analyze.common import AnalysisError, beside
from trustlora.metrics import mean_std
from trustlora.plots import plt, save_png, strategy_colors
from trustlora.rundir import cfg_get, find_runs, is_number, strategy_rank
from trustlora.tables import DASH, fmt_float, format_table, write_outputs


def _dataset_label(cfg: dict) -> str | None:
    source = cfg_get(cfg, "data.source")
    if not source:
        return None
    mix = cfg_get(cfg, "data.mixture", "?")
    return f"{source}-{mix if isinstance(mix, str) else 'custom'}"


def write_table4(compare_dirs: Sequence[str | Path], out: str | Path | None = None) -> dict[str, Path]:
    """Paper Table 4 over comparison directories (one column each); see the module docstring."""
    if not compare_dirs:
        raise AnalysisError("table4: give at least one comparison directory")
    columns: list[dict] = []
    for d in compare_dirs:
        runs = [r for r in find_runs(d) if is_number(r.summary.get("final_mean_test_ppl"))]
        if not runs:
            raise AnalysisError(f"{d}: no finished run (summary.json with final_mean_test_ppl) inside")
        cfg = next((r.config for r in runs if r.config), {})
        strategies: dict[str, dict] = {}
        for r in runs:
            s = strategies.setdefault(r.strategy, {"seeds": [], "values": []})
            s["seeds"].append(r.seed)
            s["values"].append(float(r.summary["final_mean_test_ppl"]))
        for s in strategies.values():
            s["mean"], s["std"] = mean_std(s["values"])
            s["n_seeds"] = len(s["values"])
        finite = {k: s["mean"] for k, s in strategies.items() if math.isfinite(s["mean"])}
        best = sorted(k for k, v in finite.items() if v == min(finite.values())) if finite else []
        bases = [float(r.summary["base_mean_test_ppl"]) for r in runs if is_number(r.summary.get("base_mean_test_ppl"))]
        columns.append(
            {
                "label": _dataset_label(cfg) or Path(d).name,
                "compare_dir": str(d),
                "base_mean_test_ppl": float(np.mean(bases)) if bases else None,
                "strategies": strategies,
                "best": best,
            }
        )
    labels = [c["label"] for c in columns]
    for c in columns:  # disambiguate repeated labels (e.g. two comparisons of the same data)
        if labels.count(c["label"]) > 1:
            c["label"] = f"{c['label']} ({Path(c['compare_dir']).name})"
    names = sorted({s for c in columns for s in c["strategies"]}, key=strategy_rank)

    md_rows: list[list[Any]] = [["base model (no training)"] + [fmt_float(c["base_mean_test_ppl"]) for c in columns]]
    csv_rows: list[list[Any]] = []
    for c in columns:
        csv_rows.append([c["label"], c["compare_dir"], "base", c["base_mean_test_ppl"], None, None, None, False])
    for name in names:
        row: list[Any] = [name]
        for c in columns:
            s = c["strategies"].get(name)
            if s is None:
                row.append(None)
                continue
            b = "**" if name in c["best"] else ""
            std = f"{s['std']:.2f}" if s["std"] is not None else DASH
            row.append(f"{b}{s['mean']:.2f} ± {std}{b}")
            csv_rows.append(
                [c["label"], c["compare_dir"], name, s["mean"], s["std"], s["n_seeds"], s["seeds"], name in c["best"]]
            )
        md_rows.append(row)
    md = ["# Table 4: mean test perplexity per strategy (lower is better)", ""]
    md += [format_table(["strategy"] + [c["label"] for c in columns], md_rows), ""]
    md.append(
        "Cell: mean over seeds of the users' mean test perplexity (final round, full test split) ± its sample "
        "std over seeds (ddof=1; — with a single seed). Bold: lowest mean per column. Column label: "
        "`<data.source>-<data.mixture>` from the runs' config.yaml."
    )
    md.append("")
    md += [
        f"- {c['label']}: `{c['compare_dir']}`, seeds per strategy: "
        + ", ".join(f"{k} {s['n_seeds']}" for k, s in c["strategies"].items())
        for c in columns
    ]
    md += ["", "![table4](table4.png)"]
    out_dir = Path(out) if out is not None else beside([Path(d) for d in compare_dirs])
    header = ["column", "compare_dir", "strategy", "mean_test_ppl", "std_test_ppl", "n_seeds", "seeds", "best"]
    paths = write_outputs(out_dir, "table4", md, header, csv_rows, {"strategies": names, "columns": columns})
    paths["png"] = _plot_table4(out_dir / "table4.png", columns, names)
    return paths


def _plot_table4(path: Path, columns: list[dict], names: list[str]) -> Path:
    colors = strategy_colors(names)
    k = len(names) + 1  # + base model
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + len(columns) * k * 0.55), 4.6))
    x = np.arange(len(columns))
    tops = []
    for b, name in enumerate(["base model"] + names):
        means, stds, best = [], [], []
        for c in columns:
            if b == 0:
                means.append(c["base_mean_test_ppl"] if c["base_mean_test_ppl"] is not None else np.nan)
                stds.append(np.nan)
                best.append(False)
            else:
                s = c["strategies"].get(name)
                means.append(s["mean"] if s else np.nan)
                stds.append(s["std"] if s and s["std"] is not None else np.nan)
                best.append(name in c["best"])
        pos = x - 0.4 + width * (b + 0.5)
        m, sd = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
        ax.bar(
            pos,
            np.nan_to_num(m),
            width * 0.92,
            yerr=sd,
            capsize=3,
            color="lightgrey" if b == 0 else colors[name],
            hatch="//" if b == 0 else None,
            edgecolor=["black" if bb else "dimgrey" for bb in best],
            lw=[2.0 if bb else 0.5 for bb in best],
            label=name,
        )
        for p, v, s, bb in zip(pos, m, sd, best, strict=True):
            if math.isfinite(v):
                top = v + (s if math.isfinite(s) else 0.0)
                tops.append(top)
                ax.text(p, top, f" {v:.1f}" + (" ★" if bb else ""), ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x, [c["label"] for c in columns])
    ax.set_ylabel("mean test perplexity (lower is better)")
    ax.set_title("Table 4: mean test perplexity per strategy (± std over seeds; ★ = best)", fontsize=10)
    if tops:
        ax.set_ylim(0, max(tops) * 1.22)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(k, 4), loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    return save_png(fig, path)
