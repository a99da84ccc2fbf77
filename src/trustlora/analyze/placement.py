"""Paper Figure 2: LoRA placement ablation. For runs differing in ``lora.targets`` (``attention``, ``mlp``,
``all``, or ``full`` = full fine-tuning): trainable parameters per user, base and final mean test
perplexity, the decrease and the decrease per million trainable parameters.

Run: ``trustlora analyze placement RUN_DIR [RUN_DIR ...] [--out DIR]`` or, from Python,
``write_placement(dirs, out=None)``. Writes ``placement.{md,csv,json,png}`` into ``--out`` or the common
parent of the run directories.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trustlora.analyze.common import AnalysisError, beside
from trustlora.plots import plt, save_png
from trustlora.rundir import cfg_get, is_number, load_run, mean_test_ppl
from trustlora.tables import fmt_float, fmt_percent, format_table, write_outputs

CSV_COLUMNS = (
    "label",
    "run_dir",
    "strategy",
    "params_per_user",
    "base_mean_test_ppl",
    "final_mean_test_ppl",
    "ppl_decrease",
    "decrease_per_mparam",
)
"""Columns of placement.csv: keys of each run's entry."""


def _targets_label(cfg: dict) -> str | None:
    t = cfg_get(cfg, "lora.targets")
    if t == ["full"]:  # no adapters: every user fine-tunes all weights
        return "full fine-tuning"
    if isinstance(t, list) and t:
        return "+".join(str(x) for x in t)
    return str(t) if t else None


def write_placement(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> dict[str, Path]:
    """Perplexity decrease against trainable parameters for runs differing in lora.targets."""
    if not run_dirs:
        raise AnalysisError("placement: give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    entries = []
    for run in runs:
        params = run.summary.get("adapter_params_per_user")
        params = int(params) if is_number(params) else None
        base, final = mean_test_ppl(run.summary, run.records, "base"), mean_test_ppl(run.summary, run.records, "final")
        dec = base - final
        entries.append(
            {
                "label": _targets_label(run.config) or run.name,
                "run_dir": str(run.path),
                "strategy": run.strategy,
                "params_per_user": params,
                "base_mean_test_ppl": base,
                "final_mean_test_ppl": final,
                "ppl_decrease": dec,
                "relative_decrease": dec / base if base else float("nan"),
                "decrease_per_mparam": dec / (params / 1e6) if params else None,
            }
        )
    labels = [e["label"] for e in entries]
    for e in entries:
        if labels.count(e["label"]) > 1:
            e["label"] = f"{e['label']} ({Path(e['run_dir']).name})"
    rows, csv_rows = [], []
    for e in entries:
        rows.append(
            [
                e["label"],
                e["strategy"],
                f"{e['params_per_user']:,}" if e["params_per_user"] is not None else None,
                fmt_float(e["base_mean_test_ppl"]),
                fmt_float(e["final_mean_test_ppl"]),
                fmt_float(e["ppl_decrease"]),
                fmt_percent(e["relative_decrease"]),
                fmt_float(e["decrease_per_mparam"]),
            ]
        )
        csv_rows.append([e[k] for k in CSV_COLUMNS])
    headers = [
        "lora.targets",
        "strategy",
        "trainable params/user",
        "base ppl",
        "final ppl",
        "ppl decrease",
        "relative",
        "decrease per M params",
    ]
    md = [
        "# LoRA placement: perplexity decrease vs trainable parameters (paper Figure 2)",
        "",
        format_table(headers, rows),
        "",
        "Mean test perplexity over users (base model vs final round, full test split); decrease = base − final; "
        "per M params = decrease / (trainable adapter parameters per user / 10⁶). Label: `lora.targets` "
        "from config.yaml.",
        "",
        "![placement](placement.png)",
    ]
    out_dir = Path(out) if out is not None else beside([r.path for r in runs])
    paths = write_outputs(out_dir, "placement", md, list(CSV_COLUMNS), csv_rows, {"runs": entries})
    paths["png"] = _plot_placement(out_dir / "placement.png", entries)
    return paths


def _plot_placement(path: Path, entries: list[dict]) -> Path:
    fig, (ax_d, ax_p) = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(entries) + 3), 4.2))
    x = np.arange(len(entries))
    labels = [e["label"].replace(" (", "\n(") for e in entries]  # run names on their own line
    dec = np.asarray([e["ppl_decrease"] for e in entries], dtype=float)
    per = np.asarray([e["decrease_per_mparam"] if e["decrease_per_mparam"] is not None else np.nan for e in entries])
    ax_d.bar(x, np.nan_to_num(dec), color="tab:blue", edgecolor="black", lw=0.6)
    ax_p.bar(x, np.nan_to_num(per), color="tab:green", edgecolor="black", lw=0.6)
    for xi, e, d, p in zip(x, entries, dec, per, strict=True):
        params = f"{e['params_per_user'] / 1e6:.2f}M params" if e["params_per_user"] else "params ?"
        if math.isfinite(d):
            ax_d.text(xi, d, f"{d:.2f}\n{params}", ha="center", va="bottom" if d >= 0 else "top", fontsize=8)
        if math.isfinite(p):
            ax_p.text(xi, p, f"{p:.2f}", ha="center", va="bottom" if p >= 0 else "top", fontsize=8)
    for ax, t, y in (
        (ax_d, "mean test ppl decrease (base − final)", dec),
        (ax_p, "ppl decrease per million trainable params", per),
    ):
        ax.set_xticks(x, labels, fontsize=9)
        ax.set_title(t, fontsize=10)
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(True, axis="y", alpha=0.3)
        fin = y[np.isfinite(y)]
        if fin.size:
            lo, hi = min(0.0, fin.min()), max(0.0, fin.max())
            pad = 0.2 * (hi - lo) or 1.0  # room for the value labels above/below the bars
            ax.set_ylim(lo - pad if lo < 0 else 0.0, hi + pad)
    ax_d.set_xlabel("lora.targets")
    ax_p.set_xlabel("lora.targets")
    fig.suptitle("LoRA placement (Figure 2)", fontsize=11)
    fig.tight_layout()
    return save_png(fig, path)
