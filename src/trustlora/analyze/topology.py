"""Paper Figure 4: fully connected vs ring topology, mean test perplexity per evaluated step of two runs,
each run's final value and the first step at which the other run reaches it, like with like: per-round
curves on the test subsample of every round (the last included), finals on the full test split.

Run: ``trustlora analyze topology FULL_RUN_DIR RING_RUN_DIR [--out DIR]`` or, from Python,
``write_topology(full, ring, out=None)``. Writes ``topology.{md,csv,json,png}`` into ``--out`` or the common
parent of the two run directories.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trustlora.analyze.common import AnalysisError, beside
from trustlora.analyze.numbers import first_step_reaching
from trustlora.plots import plt, save_png
from trustlora.rundir import cfg_get, load_run, mean_ppl_series, mean_test_ppl
from trustlora.tables import fmt_float, format_table, write_outputs


def like_for_like_targets(series: list[dict], other_series: list[dict], other_final_full: float) -> list[float]:
    """Per point of ``series``, the other run's final value measured the same way: its last subsampled mean
    for a subsampled point, its full-split final for a full-split point. When the other run has no subsampled
    eval at its last step (runs recorded before it was added), subsampled points fall back to the full-split
    final (see :func:`_mixed`)."""
    last = other_series[-1] if other_series else None
    sub = last["mean_ppl"] if last is not None and not last["full"] else None
    return [other_final_full if p["full"] or sub is None else sub for p in series]


def _mixed(series: list[dict], other_series: list[dict]) -> bool:
    """True when some subsampled point of ``series`` had to be compared with a full-split final."""
    return any(not p["full"] for p in series) and bool(other_series) and other_series[-1]["full"]


def write_topology(full_dir: str | Path, ring_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Full vs ring topology: mean test perplexity per step and when each reaches the other's final value.

    Like with like: the per-round curves use the subsampled test evals of every step (base and last round
    included; a step with only a full-split eval uses that, marked in the ``eval`` column), the finals are
    the full-split evals of both runs, and a run reaches the other's final when a subsampled value is <= the
    other's last subsampled value (a full-split value: <= the other's full-split final).
    """
    runs = [load_run(full_dir), load_run(ring_dir)]
    roles = ["full", "ring"]
    series = [mean_ppl_series(r.records, prefer="subsample") for r in runs]
    for r, s in zip(runs, series, strict=True):
        if not s:
            raise AnalysisError(f"{r.path}: no test eval records in metrics.jsonl")
    finals = [mean_test_ppl(r.summary, r.records, "final") for r in runs]  # full split
    finals_sub = [None if s[-1]["full"] else s[-1]["mean_ppl"] for s in series]  # last per-round (subsample)
    targets = [like_for_like_targets(series[k], series[1 - k], finals[1 - k]) for k in range(2)]
    reached = [
        first_step_reaching([p["step"] for p in series[k]], [p["mean_ppl"] for p in series[k]], targets[k])
        for k in range(2)
    ]  # reached[k]: first step at which run k reaches the OTHER run's final value (like for like)
    mixed = [_mixed(series[k], series[1 - k]) for k in range(2)]

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
                fmt_float(finals[k]),
                fmt_float(finals_sub[k]),
                (f"step {reached[k]}" if reached[k] is not None else "not reached") + (" (approx.)" * mixed[k]),
            ]
        )
    headers = [
        "run",
        "strategy",
        "final mean test ppl (full split)",
        "last per-round value (subsample)",
        "first step reaching the other's final",
    ]
    md += [
        format_table(headers, summary_rows),
        "",
        f"- Full run's final mean test ppl {fmt_float(finals[0])} "
        f"(full split; {fmt_float(finals_sub[0])} on the subsample): "
        "the ring run first reaches ≤ it at " + (f"step {reached[1]}." if reached[1] is not None else "— not reached."),
        f"- Ring run's final mean test ppl {fmt_float(finals[1])} "
        f"(full split; {fmt_float(finals_sub[1])} on the subsample): "
        "the full run first reaches ≤ it at " + (f"step {reached[0]}." if reached[0] is not None else "— not reached."),
        "",
    ]
    during = {cfg_get(r.config, "eval.during_tokens") for r in runs} - {None}
    tok = f" ({', '.join(str(t) for t in sorted(during))} tokens per user, eval.during_tokens)" if during else ""
    md += [
        "Like with like. Finals: the full test split of both runs (summary.json `final_mean_test_ppl`). Per-round "
        f"curves: the evaluation on a subsample of each user's test split{tok} at every step, the base and the last "
        "round included; a step evaluated only on the full split uses it (the `eval` column says which). A run "
        "reaches the other's final when a subsampled value is ≤ the other's last subsampled value (a full-split "
        "value: ≤ the other's full-split final).",
        "",
    ]
    if any(mixed):
        md += [
            "> A run has no subsampled evaluation at its last round (recorded before it was added): subsampled "
            "values were compared with its full-split final, so steps marked (approx.) compare a subsample with "
            "the full split.",
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
        kinds = sorted({("full" if p["full"] else "subsample") for p in (a, b) if p is not None})
        means = [fmt_float(p["mean_ppl"]) if p else None for p in (a, b)]
        rows.append([step, rnd, *means, "/".join(kinds)])
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

    out_dir = Path(out) if out is not None else beside([r.path for r in runs])
    obj = {
        role: {
            "run_dir": str(run.path),
            "strategy": run.strategy,
            "final_mean_test_ppl": finals[k],
            "final_subsample_mean_test_ppl": finals_sub[k],
            "first_step_reaching_other_final": reached[k],
            "reaching_compares_subsample_with_full_split": mixed[k],
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
    paths = write_outputs(out_dir, "topology", md, header, csv_rows, obj)
    paths["png"] = _plot_topology(out_dir / "topology.png", runs, roles, series, finals, reached, targets)
    return paths


def _plot_topology(path: Path, runs, roles, series, finals, reached, targets) -> Path:
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
        if ys and math.isfinite(ys[-1]):  # the curve's last value: what the other run's curve is compared with
            ax.axhline(ys[-1], color=colors[k], ls="--", lw=0.9, alpha=0.8)
        if math.isfinite(finals[k]) and xs:
            ax.scatter([xs[-1]], [finals[k]], marker="*", s=90, color=colors[k], edgecolor="black", lw=0.6, zorder=4)
        if reached[k] is not None:
            ax.axvline(reached[k], color=colors[k], ls=":", lw=1.2)
            ax.annotate(
                f"{roles[k]} reaches {roles[1 - k]}'s final\nat step {reached[k]}",
                (reached[k], targets[k][xs.index(reached[k])]),
                xytext=(6, 14 + 26 * k),
                textcoords="offset points",
                fontsize=7,
                color=colors[k],
            )
    ax.scatter([], [], color="grey", s=36, edgecolor="black", lw=0.6, label="full test split")
    ax.scatter([], [], facecolor="white", edgecolor="grey", s=24, lw=1.2, label="test subsample")
    ax.plot([], [], color="grey", ls="--", lw=0.9, label="last per-round value")
    ax.scatter([], [], marker="*", s=90, color="grey", edgecolor="black", lw=0.6, label="final, full test split")
    ax.set_xlabel("step")
    ax.set_ylabel("mean test perplexity over users")
    ax.set_title("Full vs ring topology (Figure 4)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
