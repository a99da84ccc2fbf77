"""Paper Figures 3/4 (and Appendix A.3 with ``trust.apply=false``): closeness of each strategy's trust
matrix W to the oracle W, per trust round (L1 distance and top-peer accuracy).

Run: ``trustlora analyze trust COMPARE_DIR [--out DIR]`` or, from Python, ``write_trust(d, out=None)``.
Writes ``trust.{md,csv,json}``, ``trust_W.png`` (final W per strategy beside the oracle, diagonal masked) and
``trust_curves.png`` into ``--out`` or COMPARE_DIR.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from trustlora.analyze.common import (
    AnalysisError,
    _categories,
    _colors,
    _f,
    _first_seed_per_strategy,
    _oracle,
    _pct,
    _save_png,
    _write_outputs,
    cfg_get,
    find_runs,
    w_by_round,
)
from trustlora.analyze.numbers import chance_top_peer, offdiag_normalised, trust_closeness
from trustlora.report import DASH, _heatmap, _user_labels, format_table

ANNOTATE_MAX_USERS = 12


def write_trust(compare_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Trust closeness to the oracle per strategy and round; see the module docstring."""
    compare_dir = Path(compare_dir)
    all_runs = find_runs(compare_dir)
    # Runs of one comparison share the data: an unfinished run (no summary.json) borrows oracle and categories.
    shared = next((r for r in all_runs if _oracle(r) is not None and r.summary.get("user_categories")), None)
    entries = []
    for run in _first_seed_per_strategy(all_runs):
        rounds = w_by_round(run.records)
        if not rounds and run.summary.get("final_W") is not None:
            rounds = [(None, None, np.asarray(run.summary["final_W"], dtype=float))]
        if not rounds:
            continue
        n = rounds[-1][2].shape[0]
        cats = _categories(run, n)
        oracle = _oracle(run)
        if shared is not None and (oracle is None or all(c is None for c in cats)):
            oracle, cats = _oracle(shared), _categories(shared, n)
        curve = []
        for r, step, w in rounds:
            l1, acc = trust_closeness(w, oracle, cats)
            curve.append({"round": r, "step": step, "l1": l1, "top_peer_acc": acc})
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
        f"out). A uniform W scores {_pct(chance)}.",
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
                _f(last["l1"], ".3f"),
                _pct(last["top_peer_acc"]),
                "yes" if e["apply"] else "no",
                e["topology"],
            ]
        )
    md += [
        format_table(["strategy", "seed", "round", "L1 to oracle", "top-peer acc", "applied", "topology"], final_rows),
        "",
        "## Per round",
        "",
    ]
    rows, csv_rows = [], []
    for e in entries:
        for c in e["curve"]:
            rows.append([e["run"].strategy, c["round"], c["step"], _f(c["l1"], ".3f"), _pct(c["top_peer_acc"])])
            csv_rows.append(
                [e["run"].strategy, e["run"].seed, c["round"], c["step"], c["l1"], c["top_peer_acc"], e["apply"]]
            )
    md += [format_table(["strategy", "round", "step", "L1 to oracle", "top-peer acc"], rows), ""]
    md += ["![final W, diagonal masked](trust_W.png)", "", "![closeness per round](trust_curves.png)"]

    out_dir = Path(out) if out is not None else compare_dir
    obj = {
        "compare_dir": str(compare_dir),
        "title": title,
        "chance_top_peer_acc": chance,
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
    header = ["strategy", "seed", "round", "step", "l1_to_oracle", "top_peer_acc", "trust_applied"]
    paths = _write_outputs(out_dir, "trust", md, header, csv_rows, obj)
    suffix = " · trust not applied (A.3)" if not_applied else ""
    paths["png_W"] = _plot_trust_w(out_dir / "trust_W.png", entries, f"{compare_dir.name}{suffix}")
    paths["png"] = _plot_trust_curves(out_dir / "trust_curves.png", entries, chance, f"{compare_dir.name}{suffix}")
    return paths


def _plot_trust_w(path: Path, entries: list[dict], title: str) -> Path:
    panels = [(e["run"].strategy, e["final_W"], e["curve"][-1]) for e in entries]
    oracle = next((e["oracle"] for e in entries if e["oracle"] is not None), None)
    if oracle is not None:
        panels.insert(0, ("oracle W (reference)", oracle, None))
    shown = [offdiag_normalised(m) for _, m, _ in panels]
    finite = np.concatenate([s[np.isfinite(s)] for s in shown]) if shown else np.array([])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    n = shown[0].shape[0]
    labels = _user_labels([DASH if c is None else c for c in entries[0]["categories"]])
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
        sub = name if last is None else f"{name}\nL1 {_f(last['l1'])} · top-peer {_pct(last['top_peer_acc'])}"
        im = _heatmap(ax, np.ma.masked_invalid(m), labels, sub, annotate=False, ticks=n <= 16)
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
    return _save_png(fig, path)


def _plot_trust_curves(path: Path, entries: list[dict], chance: float, title: str) -> Path:
    colors = _colors([e["run"].strategy for e in entries])
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, e in enumerate(entries):  # distinct markers and dashes: strategies often coincide (e.g. L1 = 1)
        name = e["run"].strategy
        xs = [c["round"] if c["round"] is not None else 0 for c in e["curve"]]
        style = {"marker": "osD^vP*X"[k % 8], "ms": 5, "ls": ("-", "--", "-.", ":")[k % 4], "color": colors[name]}
        ax_l.plot(xs, [c["l1"] for c in e["curve"]], label=name, **style)
        ax_a.plot(xs, [c["top_peer_acc"] for c in e["curve"]], label=name, **style)
    if math.isfinite(chance):
        ax_a.axhline(chance, color="grey", ls="--", lw=1.0, label=f"uniform W ({chance:.0%})")
    ax_l.set_title("L1 distance to the oracle W (mean over rows)", fontsize=10)
    ax_l.set_ylabel("L1 (0 = oracle, 2 = disjoint)")
    ax_l.set_ylim(-0.05, max(1.0, *(c["l1"] for e in entries for c in e["curve"] if math.isfinite(c["l1"]))) + 0.05)
    ax_a.set_title("top-peer accuracy (largest off-diagonal weight → same category)", fontsize=10)
    ax_a.set_ylabel("fraction of users")
    ax_a.set_ylim(-0.05, 1.05)
    for ax in (ax_l, ax_a):
        ax.set_xlabel("trust round")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_a.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save_png(fig, path)
