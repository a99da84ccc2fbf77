"""Paper Figure 4: fully connected vs ring topology, mean test perplexity per evaluated step of two runs,
each run's final value and the first step at which the other run reaches it.

Run: ``trustlora analyze topology FULL_RUN_DIR RING_RUN_DIR [--out DIR]`` or, from Python,
``write_topology(full, ring, out=None)``. Writes ``topology.{md,csv,json,png}`` into ``--out`` or the common
parent of the two run directories.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from trustlora.analyze.common import (
    AnalysisError,
    _beside,
    _f,
    _mean_test_ppl,
    _save_png,
    _write_outputs,
    cfg_get,
    load_run,
    mean_ppl_series,
)
from trustlora.analyze.numbers import first_step_reaching
from trustlora.report import format_table


def write_topology(full_dir: str | Path, ring_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Full vs ring topology: mean test perplexity per step and when each reaches the other's final value."""
    runs = [load_run(full_dir), load_run(ring_dir)]
    roles = ["full", "ring"]
    series = [mean_ppl_series(r.records) for r in runs]
    for r, s in zip(runs, series, strict=True):
        if not s:
            raise AnalysisError(f"{r.path}: no test eval records in metrics.jsonl")
    finals = [_mean_test_ppl(r, "final") for r in runs]
    reached = [
        first_step_reaching([p["step"] for p in series[k]], [p["mean_ppl"] for p in series[k]], finals[1 - k])
        for k in range(2)
    ]  # reached[k]: first step at which run k reaches the OTHER run's final value

    md = ["# Full vs ring topology: mean test perplexity (paper Figure 4)", ""]
    summary_rows = []
    for k, (role, run) in enumerate(zip(roles, runs, strict=True)):
        topo = cfg_get(run.config, "trust.topology")
        if topo is not None and topo != role:
            md += [
                f"> Note: `{run.path}` was given as the {role} run but its config says `trust.topology: {topo}`.",
                "",
            ]
        summary_rows.append(
            [
                f"{role} (`{run.name}`)",
                run.strategy,
                _f(finals[k]),
                f"step {reached[k]}" if reached[k] is not None else "not reached",
            ]
        )
    md += [
        format_table(["run", "strategy", "final mean test ppl", "first step reaching the other's final"], summary_rows),
        "",
        f"- Full run's final mean test ppl {_f(finals[0])}: the ring run first reaches ≤ it at "
        + (f"step {reached[1]}." if reached[1] is not None else "— not reached."),
        f"- Ring run's final mean test ppl {_f(finals[1])}: the full run first reaches ≤ it at "
        + (f"step {reached[0]}." if reached[0] is not None else "— not reached."),
        "",
    ]
    during = {cfg_get(r.config, "eval.during_tokens") for r in runs} - {None}
    tok = f" ({', '.join(str(t) for t in sorted(during))} tokens per user, eval.during_tokens)" if during else ""
    md += [
        "Final values: summary.json `final_mean_test_ppl` (full test split). Per-round evaluations between the base "
        f"(step 0) and the final round are on a subsample of each user's test split{tok}, so the step at which a "
        "value is reached is approximate; the `eval` column says which steps used the full split.",
        "",
    ]
    by_step: dict[Any, list[dict | None]] = {}
    for k, s in enumerate(series):
        for p in s:
            by_step.setdefault(p["step"], [None, None])[k] = p
    rows, csv_rows = [], []
    for step in sorted(by_step):
        a, b = by_step[step]
        rnd = (a or b)["round"]
        kinds = {("full" if p["full"] else "subsample") for p in (a, b) if p is not None}
        rows.append([step, rnd, _f(a["mean_ppl"]) if a else None, _f(b["mean_ppl"]) if b else None, "/".join(kinds)])
        csv_rows.append(
            [
                step,
                rnd,
                a["mean_ppl"] if a else None,
                b["mean_ppl"] if b else None,
                a["full"] if a else None,
                b["full"] if b else None,
            ]
        )
    md += [format_table(["step", "round", "full: mean test ppl", "ring: mean test ppl", "eval"], rows), ""]
    md += ["![mean test ppl per step](topology.png)"]

    out_dir = Path(out) if out is not None else _beside([r.path for r in runs])
    obj = {
        role: {
            "run_dir": str(run.path),
            "strategy": run.strategy,
            "final_mean_test_ppl": finals[k],
            "first_step_reaching_other_final": reached[k],
            "series": series[k],
        }
        for k, (role, run) in enumerate(zip(roles, runs, strict=True))
    }
    header = [
        "step",
        "round",
        "full_mean_test_ppl",
        "ring_mean_test_ppl",
        "full_eval_full_split",
        "ring_eval_full_split",
    ]
    paths = _write_outputs(out_dir, "topology", md, header, csv_rows, obj)
    paths["png"] = _plot_topology(out_dir / "topology.png", runs, roles, series, finals, reached)
    return paths


def _plot_topology(path: Path, runs, roles, series, finals, reached) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    colors = ["tab:blue", "tab:orange"]
    for k in range(2):
        s = series[k]
        xs, ys = [p["step"] for p in s], [p["mean_ppl"] for p in s]
        ax.plot(xs, ys, color=colors[k], lw=1.6, label=f"{roles[k]} ({runs[k].strategy})")
        full = [p["full"] for p in s]
        ax.scatter(
            [x for x, f in zip(xs, full, strict=True) if f],
            [y for y, f in zip(ys, full, strict=True) if f],
            color=colors[k],
            s=36,
            zorder=3,
            edgecolor="black",
            lw=0.6,
        )
        ax.scatter(
            [x for x, f in zip(xs, full, strict=True) if not f],
            [y for y, f in zip(ys, full, strict=True) if not f],
            facecolor="white",
            edgecolor=colors[k],
            s=24,
            zorder=3,
            lw=1.2,
        )
        if math.isfinite(finals[k]):
            ax.axhline(finals[k], color=colors[k], ls="--", lw=0.9, alpha=0.8)
        if reached[k] is not None:
            ax.axvline(reached[k], color=colors[k], ls=":", lw=1.2)
            ax.annotate(
                f"{roles[k]} reaches {roles[1 - k]}'s final\nat step {reached[k]}",
                (reached[k], finals[1 - k]),
                xytext=(6, 14 + 26 * k),
                textcoords="offset points",
                fontsize=7,
                color=colors[k],
            )
    ax.scatter([], [], color="grey", s=36, edgecolor="black", lw=0.6, label="full test split")
    ax.scatter([], [], facecolor="white", edgecolor="grey", s=24, lw=1.2, label="test subsample")
    ax.plot([], [], color="grey", ls="--", lw=0.9, label="final value")
    ax.set_xlabel("step")
    ax.set_ylabel("mean test perplexity over users")
    ax.set_title("Full vs ring topology (Figure 4)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_png(fig, path)
