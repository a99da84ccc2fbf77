"""Reports of trustlora runs: one run's report, and a comparison of strategies over seeds.

A run directory written by the training code holds ``metrics.jsonl`` (one JSON record per line, kinds
``eval``, ``train`` and ``trust``) and ``summary.json`` (read by :mod:`trustlora.rundir`).
:func:`write_run_report` turns it into, in the same directory:

* ``report.md`` -- strategy and model, a per-user table (dominant category, base and final test
  perplexity, relative change) with a Mean row, wall time, training tokens/s, the final trust matrix
  W, its distance to the oracle W, its trust quality per user (same-category mass, top peer, effective
  peers, off-diagonal L1 to the oracle; :mod:`trustlora.trust.quality`), and bytes sent per round per
  message kind;
* ``W_final.png`` -- the final learned W beside the oracle W (same 0..1 colour scale);
* ``W_rounds.png`` -- one small heatmap of W per trust round;
* ``curves.png`` -- per-user test perplexity (log scale) and train loss against the step.

:func:`write_comparison` aggregates per-(strategy, seed) results into ``comparison.csv``,
``comparison.md``, ``comparison.json`` and ``comparison.png``; :func:`comparison_row_from_run` makes such a
row from a finished run.

Run from the shell::

    python -m trustlora.report RUN_DIR [RUN_DIR ...]                  # report.md + PNGs in each run dir
    python -m trustlora.report --compare OUT_DIR RUN_DIR [RUN_DIR ...]  # also compare the runs' strategies

or from Python: ``write_run_report(Path("runs/x"))``, ``write_comparison(rows, Path("out"), "title")``.

The tables' text comes from :mod:`trustlora.tables`, the figures from :mod:`trustlora.plots`; ``format_table``,
``load_metrics`` and ``load_summary`` are re-exported here for scripts that import them from this module. Every
file is written atomically (see :mod:`trustlora.cache`).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustlora.cache import atomic_write_json, atomic_write_text
from trustlora.metrics import mean_std, row_l1
from trustlora.plots import plot_comparison, plot_curves, plot_w_final, plot_w_rounds
from trustlora.rundir import (
    as_matrix,
    floats,
    is_number,
    load_metrics,
    load_summary,
    mean_test_ppl,
    n_users,
    oracle_w,
    pick_eval,
    sorted_test_evals,
    step_key,
    user_categories,
)
from trustlora.tables import DASH, fmt_bytes, fmt_duration, fmt_pct, format_table, json_safe, user_labels

__all__ = [
    "format_table",
    "load_metrics",
    "load_summary",
    "write_run_report",
    "write_comparison",
    "comparison_row_from_run",
    "main",
]

RUN_FIGURES = ("W_final.png", "W_rounds.png", "curves.png")


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


def _bytes_per_round(summary: dict, trust: list[dict]) -> tuple[dict[str, float], str]:
    """Bytes per round per message kind: ``summary["bytes_per_round"]``, else the mean over trust records."""
    bpr = summary.get("bytes_per_round")
    if isinstance(bpr, dict) and bpr:
        return {str(k): float(v) for k, v in bpr.items() if is_number(v)}, "summary.json"
    sums: dict[str, list[float]] = {}
    for rec in trust:
        for k, v in (rec.get("bytes") or {}).items():
            if is_number(v):
                sums.setdefault(str(k), []).append(float(v))
    return {k: float(np.mean(v)) for k, v in sums.items()}, "mean over trust records"


QUALITY_COLUMNS = (
    ("same_category_mass", "same-category mass", ".3f"),
    ("top_peer_accuracy", "top peer same category", ".2f"),
    ("effective_peers", "effective peers", ".2f"),
    ("l1_to_oracle_offdiag", "L1 to oracle (off-diag)", ".3f"),
)


def _run_trust_quality(summary: dict, w_final: np.ndarray | None) -> dict | None:
    """``summary["trust_quality"]``, else computed from the final W and ``summary["mixture"]``, else ``None``."""
    q = summary.get("trust_quality")
    if isinstance(q, dict) and q:
        return q
    mix = as_matrix(summary.get("mixture"))
    if w_final is None or mix is None or mix.shape[0] != w_final.shape[1] or w_final.shape[0] != w_final.shape[1]:
        return None
    from trustlora.trust.quality import trust_quality

    return trust_quality(w_final, range(w_final.shape[0]), mix)


def _trust_quality_section(summary: dict, w_final: np.ndarray | None, cats: list[str]) -> list[str]:
    """The "Trust quality" section of report.md: per user and mean (see trustlora.trust.quality)."""
    q = _run_trust_quality(summary, w_final)
    if q is None:
        return []

    def cell(x: Any, fmt: str) -> str:
        return format(float(x), fmt) if is_number(x) and math.isfinite(float(x)) else DASH

    per_user = {k: q.get(f"{k}_per_user") or [] for k, _, _ in QUALITY_COLUMNS}
    n = max(len(v) for v in per_user.values())
    rows: list[list[Any]] = []
    for i in range(n):
        vals = [cell(per_user[k][i] if i < len(per_user[k]) else None, f) for k, _, f in QUALITY_COLUMNS]
        rows.append([f"u{i}", cats[i] if i < len(cats) else DASH, *vals])
    rows.append(["**Mean**", ""] + [cell(q.get(k), f) for k, _, f in QUALITY_COLUMNS])
    headers = ["user", "dominant category"] + [h for _, h, _ in QUALITY_COLUMNS]
    return [
        "## Trust quality (final W)",
        "",
        format_table(headers, rows),
        "",
        "Same-category mass: share of a user's off-diagonal trust on peers with its dominant category (1 = all; "
        "a uniform W gives the share of such peers). Top peer: whether its largest off-diagonal weight goes to "
        "such a peer (ties count fractionally). Effective peers: 1 / Σ_j w_ij², self included (1 = only one "
        "model, N = uniform). L1 to oracle: between the off-diagonal rows of W and of the oracle, each "
        "renormalised (0 = same weighting, 2 = disjoint). — = undefined (no same-category peer, or no "
        "off-diagonal trust as in local training); means leave undefined users out.",
        "",
    ]


def write_run_report(run_dir: Path) -> Path:
    """Write ``report.md``, ``W_final.png``, ``W_rounds.png`` and ``curves.png`` into ``run_dir``.

    Reads ``metrics.jsonl`` and ``summary.json`` (either may be missing, not both). Base/final per-user
    test perplexities come from ``summary.json`` when present, else from the first/last test ``eval``
    record (a ``full`` one preferred). The Mean row uses ``base_mean_test_ppl`` / ``final_mean_test_ppl``
    when given, else the arithmetic mean over users; its relative change is that of the means. A figure
    with nothing to show (no trust records, no evals) is not written, and a stale one from an earlier
    report is removed. Returns the path of ``report.md``.
    """
    run_dir = Path(run_dir)
    metrics_path, summary_path = run_dir / "metrics.jsonl", run_dir / "summary.json"
    if not metrics_path.exists() and not summary_path.exists():
        raise FileNotFoundError(f"{run_dir}: neither metrics.jsonl nor summary.json found")
    records = load_metrics(metrics_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = load_summary(summary_path)

    evals = sorted_test_evals(records)
    train = sorted((r for r in records if r.get("kind") == "train"), key=step_key)
    trust = sorted((r for r in records if r.get("kind") == "trust"), key=step_key)

    base_rec, final_rec = pick_eval(evals, "base"), pick_eval(evals, "final")
    base = floats(summary.get("base_test_ppl")) or (floats(base_rec["ppl"]) if base_rec else None) or []
    final = floats(summary.get("final_test_ppl")) or (floats(final_rec["ppl"]) if final_rec else None) or []
    w_final = as_matrix(trust[-1].get("W")) if trust else None
    oracle = oracle_w(summary, from_mixture=False)  # the report shows the recorded oracle only

    n = n_users(summary, records)
    cats = [c or DASH for c in user_categories(summary, n)]
    labels = user_labels(cats)
    strategy = str(summary.get("strategy") or "unknown strategy")
    model = str(summary.get("model") or "unknown model")

    out: list[str] = [f"# trustlora run: {strategy} on {model}", ""]
    out.append(f"Run directory: `{run_dir.name}` · users: {n} · trust rounds recorded: {len(trust)}")
    if not summary:
        out += ["", "_summary.json is missing (unfinished run?): numbers below come from metrics.jsonl only._"]
    out.append("")

    # Per-user table.
    out += ["## Test perplexity per user", ""]
    rows: list[list[Any]] = []
    for i in range(n):
        b = base[i] if i < len(base) else float("nan")
        f = final[i] if i < len(final) else float("nan")
        rows.append([f"u{i}", cats[i], b if i < len(base) else None, f if i < len(final) else None, fmt_pct(b, f)])
    base_mean, final_mean = mean_test_ppl(summary, records, "base"), mean_test_ppl(summary, records, "final")
    rows.append(["**Mean**", "", base_mean, final_mean, fmt_pct(base_mean, final_mean)])
    headers = ["user", "dominant category", "base test ppl", "final test ppl", "relative change"]
    out += [format_table(headers, rows), ""]
    if final_rec is not None and not summary.get("final_test_ppl"):
        out += [f"_Final = test eval at round {final_rec.get('round')} / step {final_rec.get('step')}._", ""]

    # Cost.
    out += ["## Cost", ""]
    tps = summary.get("train_tokens_per_s")
    cost = [
        ["wall time", fmt_duration(summary.get("wall_time_s"))],
        ["training tokens/s", f"{float(tps):,.1f}" if is_number(tps) else DASH],
        ["precision", summary.get("precision") or DASH],
        ["memory allocator", summary.get("allocator") or DASH],
    ]
    out += [format_table(["", "value"], cost), ""]
    phases = summary.get("phases")
    if isinstance(phases, dict) and is_number((phases.get("total") or {}).get("seconds")):
        total = float(phases["total"]["seconds"]) or 1.0
        prow = []
        for name in ("train", "trust", "eval", "other"):
            ph = phases.get(name) or {}
            sec, gf, mfu = ph.get("seconds"), ph.get("gflops_per_s"), ph.get("mfu")
            prow.append(
                [
                    name,
                    f"{float(sec):.1f}" if is_number(sec) else DASH,
                    f"{100 * float(sec) / total:.0f}%" if is_number(sec) else DASH,
                    f"{float(ph['flops']) / 1e12:.2f}" if is_number(ph.get("flops")) else DASH,
                    f"{float(gf):.1f}" if is_number(gf) else DASH,
                    f"{100 * float(mfu):.0f}%" if is_number(mfu) else DASH,
                ]
            )
        peak = phases["total"].get("gemm_peak_gflops_per_s")
        out += [
            "### Time and model FLOPs by phase",
            "",
            format_table(["phase", "seconds", "share", "TFLOP", "GFLOP/s", "MFU"], prow),
            "",
            f"_MFU: model FLOPs per second over this machine's GEMM peak "
            f"({float(peak):.0f} GFLOP/s in {summary.get('precision')}: the best measured on this CPU, "
            f"trustlora.flops.machine_peak_gflops)._"
            if is_number(peak)
            else "",
            "",
        ]

    bpr, source = _bytes_per_round(summary, trust)
    out += ["### Bytes per round per message kind", ""]
    if bpr:
        brow = [[k, f"{int(round(v)):,}", fmt_bytes(v)] for k, v in bpr.items()]
        out += [format_table(["message kind", "bytes/round", "human"], brow), "", f"_Source: {source}._", ""]
    else:
        out += ["_No byte counts recorded._", ""]

    # Trust matrix.
    out += ["## Trust matrix W (final round)", ""]
    if w_final is not None:
        last = trust[-1]
        out.append(
            f"Rows: user i; columns: weight user i gives to peer j. Round {last.get('round')}, step {last.get('step')}."
        )
        out.append("")
        wl = labels if len(labels) == w_final.shape[0] else [f"u{i}" for i in range(w_final.shape[0])]
        wrows = [[wl[i]] + [f"{v:.2f}" for v in w_final[i]] for i in range(w_final.shape[0])]
        out += [format_table(["W"] + [f"u{j}" for j in range(w_final.shape[1])], wrows), ""]
        if oracle is not None and oracle.shape == w_final.shape:
            l1 = row_l1(w_final, oracle)
            self_w = float(np.mean(np.diag(w_final))) if w_final.shape[0] == w_final.shape[1] else float("nan")
            out += [
                f"Mean row L1 distance to the oracle W: {l1:.3f} (0 = identical, 2 = disjoint). "
                f"Mean self-weight: {self_w:.3f}.",
                "",
            ]
    else:
        out += ["_No trust records (this strategy does not learn W)._", ""]

    out += _trust_quality_section(summary, w_final, cats)

    # Figures.
    figures: list[str] = []
    title = f"{strategy} · {model}"
    if w_final is not None or oracle is not None:
        plot_w_final(run_dir / "W_final.png", w_final, oracle, labels, title)
        figures.append("W_final.png")
    if any(as_matrix(r.get("W")) is not None for r in trust):
        plot_w_rounds(run_dir / "W_rounds.png", trust, labels, f"W per trust round · {title}")
        figures.append("W_rounds.png")
    if evals or train:
        plot_curves(run_dir / "curves.png", evals, train, labels, title)
        figures.append("curves.png")
    for stale in RUN_FIGURES:
        if stale not in figures:
            (run_dir / stale).unlink(missing_ok=True)
    if figures:
        out += ["## Figures", ""]
        out += [f"![{Path(f).stem}]({f})" for f in figures]
        out.append("")

    return atomic_write_text(run_dir / "report.md", "\n".join(out).rstrip() + "\n")


# --------------------------------------------------------------------------------------------------
# Comparison over strategies and seeds
# --------------------------------------------------------------------------------------------------


def _aggregate(rows: list[dict]) -> list[dict]:
    """Per strategy (order of first appearance): mean and sample std over seeds, seeds, mean wall time, mean
    per-user test ppl and mean same-category mass; see :func:`write_comparison`."""
    groups: dict[str, list[dict]] = {}
    for i, r in enumerate(rows):
        if "strategy" not in r or "mean_test_ppl" not in r:
            raise ValueError(f"comparison row {i} lacks 'strategy' or 'mean_test_ppl': {sorted(r)}")
        groups.setdefault(str(r["strategy"]), []).append(r)
    agg = []
    for strategy, rs in groups.items():
        mean, std = mean_std([float(r["mean_test_ppl"]) for r in rs])  # std None for one seed
        walls = [float(r["wall_time_s"]) for r in rs if is_number(r.get("wall_time_s"))]
        per_user = [floats(r.get("test_ppl")) for r in rs]
        scm = [float(r["same_category_mass"]) for r in rs if is_number(r.get("same_category_mass"))]
        scm = [v for v in scm if math.isfinite(v)]
        per_user_mean = None
        if per_user and all(p for p in per_user) and len({len(p) for p in per_user}) == 1:
            per_user_mean = np.mean(np.asarray(per_user, dtype=float), axis=0).tolist()
        agg.append(
            {
                "strategy": strategy,
                "mean_test_ppl": mean,
                "std_test_ppl": std,
                "n_seeds": len(rs),
                "seeds": [r.get("seed") for r in rs],
                "wall_time_s": float(np.mean(walls)) if walls else float("nan"),
                "mean_test_ppl_per_user": per_user_mean,
                "same_category_mass": float(np.mean(scm)) if scm else None,
            }
        )
    return agg


def write_comparison(rows: list[dict], out_dir: Path, title: str) -> dict[str, Path]:
    """Aggregate per-(strategy, seed) rows per strategy and write the comparison files into ``out_dir``.

    Each row: ``{"strategy", "seed", "mean_test_ppl", "test_ppl", "base_mean_test_ppl", "wall_time_s",
    "same_category_mass"}`` (only ``strategy`` and ``mean_test_ppl`` are required). Strategies keep their order
    of first appearance; per strategy: mean over seeds of ``mean_test_ppl``, its sample std (ddof=1; 0.0 with
    a single seed, shown as "—" in markdown), the number of seeds, the mean wall time and the mean over seeds
    of the final W's same-category mass (seeds without one left out; "—" when none has one). The base-model
    perplexity is the mean of the rows' ``base_mean_test_ppl``. The best strategy (lowest mean; all ties)
    is bold in the markdown and orange in the chart.

    Returns ``{"csv": ..., "md": ..., "json": ..., "png": ...}``.
    """
    if not rows:
        raise ValueError("write_comparison needs at least one row")
    out_dir = Path(out_dir)
    agg = _aggregate(rows)
    bases = [float(r["base_mean_test_ppl"]) for r in rows if is_number(r.get("base_mean_test_ppl"))]
    base = float(np.mean(bases)) if bases else float("nan")
    finite = [a["mean_test_ppl"] for a in agg if math.isfinite(a["mean_test_ppl"])]
    best = {a["strategy"] for a in agg if finite and a["mean_test_ppl"] == min(finite)}

    # CSV: header starts exactly with strategy,mean_test_ppl,std_test_ppl (std empty for one seed).
    def std_cell(s: float | None) -> str:
        return "" if s is None else repr(s)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["strategy", "mean_test_ppl", "std_test_ppl", "n_seeds", "wall_time_s", "same_category_mass"])
    for a in agg:
        wall = a["wall_time_s"]
        wall_cell = repr(wall) if math.isfinite(wall) else ""
        scm_cell = repr(a["same_category_mass"]) if a["same_category_mass"] is not None else ""
        writer.writerow(
            [a["strategy"], repr(a["mean_test_ppl"]), std_cell(a["std_test_ppl"]), a["n_seeds"], wall_cell, scm_cell]
        )
    paths = {"csv": atomic_write_text(out_dir / "comparison.csv", buf.getvalue())}

    # Markdown.
    md_rows: list[list[Any]] = []
    if math.isfinite(base):
        md_rows.append(["base model (no training)", f"{base:.2f}", DASH, DASH, DASH, DASH, DASH])
    for a in agg:
        m, s, n = a["mean_test_ppl"], a["std_test_ppl"], a["n_seeds"]
        bold = "**" if a["strategy"] in best else ""
        wall = a["wall_time_s"]
        md_rows.append(
            [
                f"{bold}{a['strategy']}{bold}",
                f"{bold}{m:.2f}{bold}",
                f"± {s:.2f}" if n >= 2 else DASH,
                n,
                fmt_pct(base, m),
                f"{a['same_category_mass']:.3f}" if a["same_category_mass"] is not None else DASH,
                f"{wall:.1f}" if math.isfinite(wall) else DASH,
            ]
        )
    headers = ["strategy", "mean test ppl", "std over seeds", "seeds", "vs base", "SCM (final)", "wall time (s)"]
    md = [f"# {title}", "", format_table(headers, md_rows), ""]
    md.append(
        "Mean test perplexity over users, averaged over seeds (lower is better); std is the sample std over seeds. "
        "SCM: same-category mass of the final W (share of off-diagonal trust on peers of the same dominant "
        "category, mean over users and seeds; see trustlora.trust.quality)."
    )
    if best:
        md.append(f"Best: **{', '.join(sorted(best, key=[a['strategy'] for a in agg].index))}**.")
    md.append("")
    md.append("![comparison](comparison.png)")
    paths["md"] = atomic_write_text(out_dir / "comparison.md", "\n".join(md) + "\n")

    paths["json"] = atomic_write_json(
        out_dir / "comparison.json",
        json_safe({"title": title, "base_mean_test_ppl": base, "best": sorted(best), "strategies": agg, "rows": rows}),
    )
    paths["png"] = plot_comparison(out_dir / "comparison.png", agg, base, best, title)
    return paths


def comparison_row_from_run(run_dir: Path, seed: int | None = None) -> dict:
    """A :func:`write_comparison` row from a finished run's ``summary.json`` (seed from the summary's
    ``seed`` key, else ``seed``, else 0)."""
    summary = load_summary(Path(run_dir) / "summary.json")
    if "final_mean_test_ppl" not in summary:
        raise ValueError(f"{run_dir}: summary.json has no final_mean_test_ppl (unfinished run?)")
    s = summary.get("seed", seed if seed is not None else 0)
    quality = _run_trust_quality(summary, as_matrix(summary.get("final_W"))) or {}
    return {
        "strategy": str(summary.get("strategy", Path(run_dir).name)),
        "seed": s,
        "mean_test_ppl": float(summary["final_mean_test_ppl"]),
        "test_ppl": summary.get("final_test_ppl"),
        "base_mean_test_ppl": summary.get("base_mean_test_ppl"),
        "wall_time_s": summary.get("wall_time_s"),
        "same_category_mass": quality.get("same_category_mass"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trustlora.report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path, help="run directories (each with metrics.jsonl / summary.json)")
    p.add_argument("--compare", type=Path, metavar="OUT_DIR", help="also write comparison.* of the runs into OUT_DIR")
    p.add_argument("--title", default="trustlora: strategy comparison", help="title of the comparison")
    args = p.parse_args(argv)
    for d in args.run_dirs:
        print(write_run_report(d))
    if args.compare:
        rows = [comparison_row_from_run(d, seed=i) for i, d in enumerate(args.run_dirs)]
        for path in write_comparison(rows, args.compare, args.title).values():
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
