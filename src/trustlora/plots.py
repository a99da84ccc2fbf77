"""Figures of the reports and analyses: the only module of the package that selects matplotlib's backend.

Importing it selects the non-interactive Agg backend (no display needed) before pyplot is loaded; every other
module gets pyplot from here (``from trustlora.plots import plt, save_png``) and writes its PNGs with
:func:`save_png` (atomically, see :mod:`trustlora.cache`)::

    from trustlora.plots import plot_w_final, plt, save_png

    fig, ax = plt.subplots()
    ax.plot([0, 1], [3.0, 2.5])
    save_png(fig, Path("out/curve.png"))           # closes the figure
    plot_w_final(Path("W_final.png"), w, oracle, ["u0 (de)", "u1 (es)"], "predictions · tiny")

The run report's figures (:func:`plot_w_final`, :func:`plot_w_rounds`, :func:`plot_curves`), the comparison
chart (:func:`plot_comparison`), the W heatmap panel they and the trust analysis share (:func:`heatmap`) and
the fixed colours of strategies (:func:`strategy_colors`) live here; each analysis of :mod:`trustlora.analyze`
draws its own figure with this module's ``plt``.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from trustlora.cache import atomic_write_bytes  # noqa: E402
from trustlora.rundir import as_matrix, floats, step_key, strategy_order  # noqa: E402

__all__ = [
    "plt",
    "save_png",
    "heatmap",
    "strategy_colors",
    "plot_w_final",
    "plot_w_rounds",
    "plot_curves",
    "plot_comparison",
    "ANNOTATE_MAX_USERS",
    "MAX_ROUND_PANELS",
]

ANNOTATE_MAX_USERS = 12  # annotate heatmap cells with their values up to this many users
MAX_ROUND_PANELS = 36  # W_rounds.png shows at most this many rounds (evenly spaced, always the last)


def _mean(xs: Sequence[float] | None) -> float:
    if not xs:
        return float("nan")
    return float(np.mean(np.asarray(xs, dtype=float)))


def strategy_colors(names: Sequence[str], order: Sequence[str] | None = None) -> dict[str, Any]:
    """Fixed tab10 colours for the strategies of ``order`` (by position; default: the registered strategies,
    :func:`trustlora.rundir.strategy_order`), the next colours for any other name."""
    order = strategy_order() if order is None else tuple(order)
    cmap = plt.get_cmap("tab10")
    extra = [n for n in names if n not in order]
    return {n: cmap(order.index(n) if n in order else (len(order) + extra.index(n)) % 10) for n in names}


def save_png(fig: Any, path: Path, tight: bool = True) -> Path:
    """Write ``fig`` as a 120-dpi PNG to ``path`` (atomically; cropped to its content unless ``tight=False``) and
    close it. Returns ``path``."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def heatmap(ax: Any, m: np.ndarray, labels: list[str] | None, title: str, annotate: bool, ticks: bool = True) -> Any:
    """A trust matrix on ``ax`` (0..1 viridis; rows: user i, columns: peer j), with user labels as ticks and,
    with ``annotate``, each value in its cell. Returns the image (for a colour bar)."""
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=10)
    n_rows, n_cols = m.shape
    if ticks:
        ylab = labels if labels and len(labels) == n_rows else [f"u{i}" for i in range(n_rows)]
        xlab = labels if labels and len(labels) == n_cols else [f"u{i}" for i in range(n_cols)]
        ax.set_yticks(range(n_rows), ylab, fontsize=8)
        ax.set_xticks(range(n_cols), xlab, fontsize=8, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_xlabel("peer j (weight given to)", fontsize=8)
        ax.set_ylabel("user i", fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if annotate:
        for i in range(n_rows):
            for j in range(n_cols):
                v = m[i, j]
                if math.isfinite(v):
                    ax.text(
                        j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > 0.5 else "white"
                    )
    return im


def plot_w_final(path: Path, w: np.ndarray | None, oracle: np.ndarray | None, labels: list[str], title: str) -> Path:
    """``W_final.png``: the learned final W beside the oracle W (either may be None, not both), one colour scale."""
    panels = [(m, t) for m, t in ((w, "learned W (final round)"), (oracle, "oracle W")) if m is not None]
    n = max(m.shape[0] for m, _ in panels)
    side = max(3.5, 0.45 * n + 1.8)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(side * len(panels) + 1.4, side + 0.6), squeeze=False, layout="constrained"
    )
    im = None
    for k, (ax, (m, t)) in enumerate(zip(axes[0], panels, strict=True)):
        im = heatmap(ax, m, labels, t, annotate=m.shape[0] <= ANNOTATE_MAX_USERS)
        if k > 0:
            ax.set_ylabel("")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.85, label="trust weight")
    fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


def plot_w_rounds(path: Path, trust: list[dict], labels: list[str], title: str) -> Path:
    """``W_rounds.png``: a small heatmap of W per trust record (at most :data:`MAX_ROUND_PANELS`, evenly spaced)."""
    mats = [(rec, as_matrix(rec.get("W"))) for rec in trust]
    mats = [(rec, m) for rec, m in mats if m is not None]
    total = len(mats)
    if total > MAX_ROUND_PANELS:
        idx = sorted({int(round(i)) for i in np.linspace(0, total - 1, MAX_ROUND_PANELS)})
        mats = [mats[i] for i in idx]
        title += f" (showing {len(mats)} of {total} rounds)"
    k = len(mats)
    ncols = min(k, 6)
    nrows = math.ceil(k / ncols)
    n = mats[0][1].shape[0]
    side = 2.2 if n <= 12 else 2.6
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(side * ncols + 0.8, side * nrows + 0.9), squeeze=False, layout="constrained"
    )
    show_ticks = n <= 12
    im = None
    for ax, (rec, m) in zip(axes.flat, mats, strict=False):
        im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_title(f"round {rec.get('round', '?')} (step {rec.get('step', '?')})", fontsize=8)
        if show_ticks:
            ax.set_xticks(range(m.shape[1]), [f"{j}" for j in range(m.shape[1])], fontsize=6)
            ax.set_yticks(range(m.shape[0]), [f"u{i}" for i in range(m.shape[0])], fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if n <= 4:
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    v = m[i, j]
                    color = "black" if v > 0.5 else "white"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color=color)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    fig.colorbar(im, ax=list(axes.flat), shrink=0.9 if nrows > 1 else 1.0, label="trust weight")
    subtitle = "rows: user i, columns: weight given to peer j"
    if any("(" in lab for lab in labels) and len(labels) <= 16:
        subtitle += "\n" + textwrap.fill("users: " + ", ".join(labels), width=max(50, int(ncols * side * 11)))
    fig.suptitle(f"{title}\n{subtitle}", fontsize=9)
    return save_png(fig, path)


def plot_curves(path: Path, evals: list[dict], train: list[dict], labels: list[str], title: str) -> Path:
    """``curves.png``: per-user test perplexity (log scale; full-split evals ringed) and train loss per step."""
    fig, (ax_p, ax_l) = plt.subplots(1, 2, figsize=(12, 4.5))
    n = max([len(r.get("ppl") or []) for r in evals] + [len(r.get("loss") or []) for r in train] + [len(labels)])
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    colors = [cmap(i % cmap.N) for i in range(n)]
    name = [labels[i] if i < len(labels) else f"u{i}" for i in range(n)]

    if evals:
        # One point per step (a full-test-set evaluation preferred); full evaluations get a ringed marker.
        by_step: dict[float, dict] = {}
        for r in evals:
            step = float(r.get("step", 0))
            if step not in by_step or r.get("full") or not by_step[step].get("full"):
                by_step[step] = r
        steps = sorted(by_step)
        series = [by_step[st] for st in steps]
        ppl = [floats(r["ppl"]) or [] for r in series]
        full_idx = [k for k, r in enumerate(series) if r.get("full")]
        mixed = 0 < len(full_idx) < len(series)
        for i in range(n):
            ys = [p[i] if i < len(p) else float("nan") for p in ppl]
            ax_p.plot(steps, ys, marker="o", ms=2.5, lw=1.3, color=colors[i], label=name[i])
            if mixed:
                fx, fy = [steps[k] for k in full_idx], [ys[k] for k in full_idx]
                ax_p.scatter(fx, fy, marker="o", s=30, color=colors[i], edgecolor="black", lw=0.7, zorder=3)
        ax_p.plot(steps, [_mean(p) for p in ppl], color="black", lw=2.0, ls="--", label="mean over users")
        if mixed:
            ax_p.scatter([], [], marker="o", s=30, color="white", edgecolor="black", label="full test set")
        ax_p.set_yscale("log")
        fmt = FuncFormatter(lambda v, _: f"{v:g}")
        ax_p.yaxis.set_major_formatter(fmt)
        ax_p.yaxis.set_minor_formatter(fmt)
        ax_p.tick_params(axis="y", which="minor", labelsize=7)
        ax_p.legend(fontsize=7, ncol=2 if n > 6 else 1)
    else:
        ax_p.text(0.5, 0.5, "no test evaluations recorded", ha="center", va="center", transform=ax_p.transAxes)
    ax_p.set_title("test perplexity per user", fontsize=10)
    ax_p.set_xlabel("step")
    ax_p.set_ylabel("perplexity (log scale)")
    ax_p.grid(True, which="both", alpha=0.3)

    if train:
        train = sorted(train, key=step_key)
        steps = [float(r.get("step", 0)) for r in train]
        losses = [floats(r.get("loss")) or [] for r in train]
        for i in range(n):
            ys = [lo[i] if i < len(lo) else float("nan") for lo in losses]
            ax_l.plot(steps, ys, lw=0.9, alpha=0.45, color=colors[i])
        ax_l.plot(steps, [_mean(lo) for lo in losses], color="black", lw=2.0, marker="o", ms=3, label="mean over users")
        ax_l.legend(fontsize=7)
    else:
        ax_l.text(0.5, 0.5, "no train records", ha="center", va="center", transform=ax_l.transAxes)
    ax_l.set_title("train loss (mean over the round's local steps)", fontsize=10)
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("loss")
    ax_l.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_png(fig, path)


def plot_comparison(path: Path, agg: list[dict], base: float, best: set[str], title: str) -> Path:
    """``comparison.png``: mean test perplexity per strategy (± std over seeds), the base model dashed, the best
    strategies orange. ``agg``: the per-strategy rows of :func:`trustlora.report.write_comparison`."""
    names = [a["strategy"] for a in agg]
    means = np.asarray([a["mean_test_ppl"] for a in agg], dtype=float)
    stds = np.asarray([np.nan if a["std_test_ppl"] is None else a["std_test_ppl"] for a in agg], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2.5), 4.2))
    colors = ["tab:orange" if s in best else "tab:blue" for s in names]
    x = np.arange(len(names))
    yerr = np.where([a["n_seeds"] >= 2 for a in agg], stds, np.nan)
    ax.bar(x, np.nan_to_num(means), yerr=yerr, capsize=5, color=colors, edgecolor="black", lw=0.6, alpha=0.9)
    for xi, (m, s, a) in enumerate(zip(means, stds, agg, strict=True)):
        if math.isfinite(m):
            label = f"{m:.2f}" + (f"\n±{s:.2f}" if a["n_seeds"] >= 2 else "")
            ax.text(xi, m + (s if math.isfinite(s) else 0.0), label, ha="center", va="bottom", fontsize=8)
    if math.isfinite(base):
        ax.axhline(base, color="black", ls="--", lw=1.2, label=f"base model ({base:.2f})")
        ax.legend(fontsize=8, loc="best", framealpha=0.95)
    ax.set_xticks(x, [f"{n}\n(n={a['n_seeds']})" for n, a in zip(names, agg, strict=True)], fontsize=9)
    ax.set_ylabel("mean test perplexity over users (lower is better)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    top = np.nanmax(np.concatenate([means + np.nan_to_num(stds), [base]])) if means.size else base
    if math.isfinite(top) and top > 0:
        ax.set_ylim(0, top * 1.15)
    fig.tight_layout()
    return save_png(fig, path)
