"""Paper Figures 3/4 (and Appendix A.3 with ``trust.apply=false``): closeness of each strategy's trust
matrix W to the oracle W, per trust round (L1 distance, top-peer accuracy, same-category mass), and the
trust quality of the final W per strategy, mean over seeds (same-category mass, top-peer accuracy,
effective peers, off-diagonal L1 to the oracle; see :mod:`trustlora.trust.quality`).

Run: ``trustlora analyze trust COMPARE_DIR [--out DIR]`` or, from Python, ``write_trust(d, out=None)``.
Writes ``trust.{md,csv,json}``, ``trust_quality.csv`` (one row per strategy), ``trust_W.png`` (final W per
strategy beside the oracle, diagonal masked) and ``trust_curves.png`` into ``--out`` or COMPARE_DIR.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from trustlora.analyze.common import AnalysisError
from trustlora.analyze.numbers import chance_top_peer, offdiag_normalised, trust_closeness
from trustlora.cache import atomic_write_text
from trustlora.plots import ANNOTATE_MAX_USERS, heatmap, plt, save_png, strategy_colors
from trustlora.rundir import cfg_get, find_runs, first_seed_per_strategy, oracle_w, user_categories, w_by_round
from trustlora.tables import fmt_float, fmt_percent, format_table, user_labels, write_outputs
from trustlora.trust.quality import METRICS, trust_quality_from

QUALITY_HEADERS = {
    "same_category_mass": "same-category mass",
    "top_peer_accuracy": "top-peer acc",
    "effective_peers": "effective peers",
    "l1_to_oracle_offdiag": "L1 to oracle (off-diag)",
}


def _rounds(run) -> list[tuple]:
    """``(round, step, W)`` per trust round; the summary's final W alone when metrics hold none."""
    rounds = w_by_round(run.records)
    if not rounds and run.summary.get("final_W") is not None:
        rounds = [(None, None, np.asarray(run.summary["final_W"], dtype=float))]
    return rounds


def _reference(run, shared, n: int) -> tuple[np.ndarray | None, list]:
    """Oracle W and dominant categories of a run (borrowed from ``shared`` when the run lacks them)."""
    cats, oracle = user_categories(run.summary, n), oracle_w(run.summary)
    if shared is not None and (oracle is None or all(c is None for c in cats)):
        oracle, cats = oracle_w(shared.summary), user_categories(shared.summary, n)
    return oracle, cats


def strategy_quality(runs: list, shared=None) -> list[dict]:
    """Trust quality of the final W of every run, averaged over the seeds of each strategy (runs in order).

    A run's quality is its ``summary["trust_quality"]`` when recorded, else computed from its final W, oracle
    and categories. Per strategy: ``{"strategy", "seeds", "n_seeds", <metric>: mean over seeds (None if no
    seed defines it), "per_seed": [{"seed", <metric>}]}``.
    """
    groups: dict[str, list[tuple]] = {}
    for run in runs:
        q = run.summary.get("trust_quality")
        if not (isinstance(q, dict) and all(m in q for m in METRICS)):
            rounds = _rounds(run)
            if not rounds:
                continue
            w = rounds[-1][2]
            q = trust_quality_from(w, range(w.shape[0]), *_reference(run, shared, w.shape[0]))
        groups.setdefault(run.strategy, []).append((run.seed, q))
    out = []
    for strategy, seeds in groups.items():
        row: dict = {"strategy": strategy, "seeds": [s for s, _ in seeds], "n_seeds": len(seeds)}
        for m in METRICS:
            vals = [float(q[m]) for _, q in seeds if q.get(m) is not None and math.isfinite(float(q[m]))]
            row[m] = float(np.mean(vals)) if vals else None
        row["per_seed"] = [{"seed": s, **{m: q.get(m) for m in METRICS}} for s, q in seeds]
        out.append(row)
    return out


def write_trust(compare_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Trust closeness to the oracle per strategy and round, and final trust quality; see the module docstring."""
    compare_dir = Path(compare_dir)
    all_runs = find_runs(compare_dir)
    # Runs of one comparison share the data: an unfinished run (no summary.json) borrows oracle and categories.
    shared = next((r for r in all_runs if oracle_w(r.summary) is not None and r.summary.get("user_categories")), None)
    entries = []
    for run in first_seed_per_strategy(all_runs):
        rounds = _rounds(run)
        if not rounds:
            continue
        n = rounds[-1][2].shape[0]
        oracle, cats = _reference(run, shared, n)
        curve = []
        for r, step, w in rounds:
            l1, acc = trust_closeness(w, oracle, cats)
            scm = trust_quality_from(w, range(n), oracle, cats)["same_category_mass"]
            curve.append({"round": r, "step": step, "l1": l1, "top_peer_acc": acc, "scm": _nan(scm)})
        entries.append(
            {
                "run": run,
                "curve": curve,
                "final_W": rounds[-1][2],
                "oracle": oracle,
                "categories": cats,
                "apply": bool(cfg_get(run.config, "trust.apply", True)),
                "topology": str(cfg_get(run.config, "trust.topology", "full")),
            }
        )
    if not entries:
        raise AnalysisError(f"{compare_dir}: no run with trust records (W) inside")

    not_applied = [e["run"].strategy for e in entries if not e["apply"]]
    ring = [e["run"].strategy for e in entries if e["topology"] != "full"]
    title = "Trust closeness to the oracle W (paper Figures 3/4)"
    if not_applied and len(not_applied) == len(entries):
        title = "Trust closeness to the oracle W without aggregation (paper Appendix A.3)"
    md = [f"# {title}", ""]
    if not_applied:
        who = "all runs" if len(not_applied) == len(entries) else "runs of " + ", ".join(not_applied)
        md += [
            f"> **Trust computed but not applied** (`trust.apply: false` in config.yaml for {who}): every user "
            "kept its own locally trained adapter, so W shows whom each strategy *would* trust "
            "(paper Appendix A.3).",
            "",
        ]
    if ring:
        md += [f"> W restricted to the communication graph (`trust.topology` ≠ full) for: {', '.join(ring)}.", ""]
    ref = entries[0]
    chance = chance_top_peer(ref["categories"])
    md += [
        f"Comparison directory: `{compare_dir}`; first seed of each strategy. "
        "**L1**: mean over users of sum_j |W_ij − O_ij| against the oracle O (diagonal kept; 0 = identical, "
        "2 = disjoint). **Top-peer accuracy**: fraction of users whose largest off-diagonal trust goes to a peer "
        "with the same dominant category (ties count fractionally; users without a same-category peer are left "
        f"out). A uniform W scores {fmt_percent(chance)}.",
        "",
        "## Final round",
        "",
    ]
    final_rows = []
    for e in entries:
        last = e["curve"][-1]
        final_rows.append(
            [
                e["run"].strategy,
                e["run"].seed,
                last["round"],
                fmt_float(last["l1"], ".3f"),
                fmt_percent(last["top_peer_acc"]),
                "yes" if e["apply"] else "no",
                e["topology"],
            ]
        )
    md += [
        format_table(["strategy", "seed", "round", "L1 to oracle", "top-peer acc", "applied", "topology"], final_rows),
        "",
    ]
    quality = strategy_quality(all_runs, shared)
    uniform = _uniform_scm(ref)
    md += [
        "## Trust quality (final round, mean over seeds)",
        "",
        format_table(
            ["strategy", "seeds"] + list(QUALITY_HEADERS.values()),
            [
                [
                    q["strategy"],
                    q["n_seeds"],
                    fmt_float(q["same_category_mass"], ".3f"),
                    fmt_percent(q["top_peer_accuracy"]),
                    fmt_float(q["effective_peers"]),
                    fmt_float(q["l1_to_oracle_offdiag"], ".3f"),
                ]
                for q in quality
            ],
        ),
        "",
        "**Same-category mass**: share of a user's off-diagonal trust on peers with its dominant category "
        f"(a uniform W scores {fmt_float(uniform, '.3f')}, the oracle of one-hot data 1). **Top-peer acc**: as above. "
        "**Effective peers**: 1 / Σ_j w_ij², self included (1 = local, N = uniform). **L1 to oracle (off-diag)**: "
        "between the off-diagonal rows of W and of the oracle, each renormalised to sum 1 (0 = same weighting of "
        "peers, 2 = disjoint). Means over users leave out users where a metric is undefined (no same-category "
        "peer; no off-diagonal trust, as in local training), then over seeds.",
        "",
        "## Per round",
        "",
    ]
    rows, csv_rows = [], []
    for e in entries:
        for c in e["curve"]:
            rows.append(
                [
                    e["run"].strategy,
                    c["round"],
                    c["step"],
                    fmt_float(c["l1"], ".3f"),
                    fmt_percent(c["top_peer_acc"]),
                    fmt_float(c["scm"], ".3f"),
                ]
            )
            csv_rows.append(
                [
                    e["run"].strategy,
                    e["run"].seed,
                    c["round"],
                    c["step"],
                    c["l1"],
                    c["top_peer_acc"],
                    e["apply"],
                    c["scm"],
                ]
            )
    md += [format_table(["strategy", "round", "step", "L1 to oracle", "top-peer acc", "same-category mass"], rows), ""]
    md += ["![final W, diagonal masked](trust_W.png)", "", "![closeness per round](trust_curves.png)"]

    out_dir = Path(out) if out is not None else compare_dir
    obj = {
        "compare_dir": str(compare_dir),
        "title": title,
        "chance_top_peer_acc": chance,
        "uniform_same_category_mass": uniform,
        "quality": quality,
        "strategies": [
            {
                "strategy": e["run"].strategy,
                "seed": e["run"].seed,
                "run_dir": str(e["run"].path),
                "apply": e["apply"],
                "topology": e["topology"],
                "categories": e["categories"],
                "final_W": e["final_W"].tolist(),
                "oracle_W": e["oracle"].tolist() if e["oracle"] is not None else None,
                "rounds": e["curve"],
            }
            for e in entries
        ],
    }
    header = [
        "strategy",
        "seed",
        "round",
        "step",
        "l1_to_oracle",
        "top_peer_acc",
        "trust_applied",
        "same_category_mass",
    ]
    paths = write_outputs(out_dir, "trust", md, header, csv_rows, obj)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["strategy", "n_seeds", *METRICS])
    writer.writerows(
        [[q["strategy"], q["n_seeds"], *("" if q[m] is None else repr(q[m]) for m in METRICS)] for q in quality]
    )
    paths["csv_quality"] = atomic_write_text(out_dir / "trust_quality.csv", buf.getvalue())
    suffix = " · trust not applied (A.3)" if not_applied else ""
    paths["png_W"] = _plot_trust_w(out_dir / "trust_W.png", entries, f"{compare_dir.name}{suffix}")
    paths["png"] = _plot_trust_curves(
        out_dir / "trust_curves.png", entries, chance, uniform, f"{compare_dir.name}{suffix}"
    )
    return paths


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _uniform_scm(entry: dict) -> float:
    """Same-category mass of a uniform W for the categories (and oracle) of ``entry``: the chance level."""
    n = entry["final_W"].shape[0]
    q = trust_quality_from(np.full((n, n), 1.0 / n), range(n), entry["oracle"], entry["categories"])
    return _nan(q["same_category_mass"])


def _plot_trust_w(path: Path, entries: list[dict], title: str) -> Path:
    panels = [(e["run"].strategy, e["final_W"], e["curve"][-1]) for e in entries]
    oracle = next((e["oracle"] for e in entries if e["oracle"] is not None), None)
    if oracle is not None:
        panels.insert(0, ("oracle W (reference)", oracle, None))
    shown = [offdiag_normalised(m) for _, m, _ in panels]
    finite = np.concatenate([s[np.isfinite(s)] for s in shown]) if shown else np.array([])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    n = shown[0].shape[0]
    labels = user_labels(entries[0]["categories"])
    nrows = math.ceil(len(panels) / 4)
    ncols = math.ceil(len(panels) / nrows)
    side = max(2.8, 0.38 * n + 1.6)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=((side + 0.6) * ncols + 1.2, (side + 1.3) * nrows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    im = None
    for k, (ax, (name, _, last), m) in enumerate(zip(axes.flat, panels, shown, strict=False)):
        closeness = "" if last is None else f"L1 {fmt_float(last['l1'])} · top-peer {fmt_percent(last['top_peer_acc'])}"
        sub = name if last is None else f"{name}\n{closeness}"
        im = heatmap(ax, np.ma.masked_invalid(m), labels, sub, annotate=False, ticks=n <= 16)
        im.set_cmap(cmap)
        im.set_clim(0.0, vmax)
        if k % ncols:
            ax.set_ylabel("")
        if n <= ANNOTATE_MAX_USERS:
            for i in range(n):
                for j in range(n):
                    if i != j and math.isfinite(m[i, j]):
                        c = "black" if m[i, j] > 0.6 * vmax else "white"
                        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6, color=c)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.colorbar(im, ax=list(axes.flat), shrink=0.8, label="off-diagonal trust (rows renormalised)")
    fig.suptitle(f"Final W per strategy vs oracle, self-weight masked (grey) · {title}", fontsize=11)
    return save_png(fig, path)


def _plot_trust_curves(path: Path, entries: list[dict], chance: float, uniform: float, title: str) -> Path:
    colors = strategy_colors([e["run"].strategy for e in entries])
    fig, (ax_l, ax_a, ax_s) = plt.subplots(1, 3, figsize=(16, 4.2))
    for k, e in enumerate(entries):  # distinct markers and dashes: strategies often coincide (e.g. L1 = 1)
        name = e["run"].strategy
        xs = [c["round"] if c["round"] is not None else 0 for c in e["curve"]]
        style = {"marker": "osD^vP*X"[k % 8], "ms": 5, "ls": ("-", "--", "-.", ":")[k % 4], "color": colors[name]}
        ax_l.plot(xs, [c["l1"] for c in e["curve"]], label=name, **style)
        ax_a.plot(xs, [c["top_peer_acc"] for c in e["curve"]], label=name, **style)
        ax_s.plot(xs, [c["scm"] for c in e["curve"]], label=name, **style)
    if math.isfinite(chance):
        ax_a.axhline(chance, color="grey", ls="--", lw=1.0, label=f"uniform W ({chance:.0%})")
    if math.isfinite(uniform):
        ax_s.axhline(uniform, color="grey", ls="--", lw=1.0, label=f"uniform W ({uniform:.2f})")
    ax_l.set_title("L1 distance to the oracle W (mean over rows)", fontsize=10)
    ax_l.set_ylabel("L1 (0 = oracle, 2 = disjoint)")
    ax_l.set_ylim(-0.05, max(1.0, *(c["l1"] for e in entries for c in e["curve"] if math.isfinite(c["l1"]))) + 0.05)
    ax_a.set_title("top-peer accuracy (largest off-diagonal weight → same category)", fontsize=10)
    ax_a.set_ylabel("fraction of users")
    ax_a.set_ylim(-0.05, 1.05)
    ax_s.set_title("same-category mass (off-diagonal trust on same category)", fontsize=10)
    ax_s.set_ylabel("share of off-diagonal trust")
    ax_s.set_ylim(-0.05, 1.05)
    ax_s.legend(fontsize=8, loc="best")
    for ax in (ax_l, ax_a, ax_s):
        ax.set_xlabel("trust round")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_a.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_png(fig, path)
