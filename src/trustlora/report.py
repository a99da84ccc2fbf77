"""Reports and figures for trustlora runs: one run's report, and a comparison of strategies over seeds.

A run directory written by the training code holds ``metrics.jsonl`` (one JSON record per line, kinds
``eval``, ``train`` and ``trust``) and ``summary.json``. :func:`write_run_report` turns it into, in the
same directory:

* ``report.md`` -- strategy and model, a per-user table (dominant category, base and final test
  perplexity, relative change) with a Mean row, wall time, training tokens/s, the final trust matrix
  W, its distance to the oracle W, its trust quality per user (same-category mass, top peer, effective
  peers, off-diagonal L1 to the oracle; :mod:`trustlora.trust.quality`), and bytes sent per round per
  message kind;
* ``W_final.png`` -- the final learned W beside the oracle W (same 0..1 colour scale);
* ``W_rounds.png`` -- one small heatmap of W per trust round;
* ``curves.png`` -- per-user test perplexity (log scale) and train loss against the step.

:func:`write_comparison` aggregates per-(strategy, seed) results into ``comparison.csv``,
``comparison.md``, ``comparison.json`` and ``comparison.png``. :func:`format_table` is the small
markdown-table helper both use.

Run from the shell::

    python -m trustlora.report RUN_DIR [RUN_DIR ...]                  # report.md + PNGs in each run dir
    python -m trustlora.report --compare OUT_DIR RUN_DIR [RUN_DIR ...]  # also compare the runs' strategies

or from Python: ``write_run_report(Path("runs/x"))``, ``write_comparison(rows, Path("out"), "title")``.

This is the only module of the project that imports matplotlib; it uses the non-interactive Agg
backend. Every file is written atomically (see :mod:`trustlora.cache`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import numbers
import re
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from trustlora.cache import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from trustlora.metrics import dominant_categories, mean_std  # noqa: E402

__all__ = [
    "format_table",
    "load_metrics",
    "load_summary",
    "write_run_report",
    "write_comparison",
    "comparison_row_from_run",
    "main",
]

DASH = "—"
RUN_FIGURES = ("W_final.png", "W_rounds.png", "curves.png")
ANNOTATE_MAX_USERS = 12  # annotate heatmap cells with their values up to this many users
MAX_ROUND_PANELS = 36  # W_rounds.png shows at most this many rounds (evenly spaced, always the last)

# A string cell counts as a number (right-aligned) if, stripped of markdown bold, it looks like
# "12", "-3.5", "1,024", "1e-3", "+4.2%", "12.3 ± 0.4", "± 0.4", "nan" or "inf".
_NUMBER_RE = re.compile(
    r"^(?:±\s*)?[+-]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*%?(?:\s*±\s*(?:\d[\d,]*(?:\.\d*)?|\.\d+)"
    r"(?:[eE][+-]?\d+)?\s*%?)?$|^[+-]?(?:nan|inf|infinity)$",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------------------------------
# Markdown table
# --------------------------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _cell_text(x: Any, floatfmt: str) -> str:
    if x is None:
        return DASH
    if _is_number(x) and not isinstance(x, numbers.Integral):
        return format(float(x), floatfmt)
    return str(x).replace("|", "\\|").replace("\n", " ")


def _looks_numeric(x: Any) -> bool:
    if _is_number(x):
        return True
    return isinstance(x, str) and bool(_NUMBER_RE.match(x.strip().strip("*").strip()))


def write_table_files(out: Path, stem: str, md: str, rows: list[dict], keys: list[str]) -> dict[str, Path]:
    """``<out>/<stem>.md`` (``md``), ``.csv`` (``keys`` of every row) and ``.json`` (``{"rows": rows}``), each
    written atomically. Returns the paths by kind."""
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    atomic_write_text(paths["md"], md)
    csv_text = ",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows)
    atomic_write_text(paths["csv"], csv_text)
    atomic_write_json(paths["json"], {"rows": rows})
    return paths


def format_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]], floatfmt: str = ".2f") -> str:
    """A markdown table (no trailing newline).

    Cells may be strings or numbers; floats are formatted with ``floatfmt``, ``None`` shows as "—",
    and ``|`` is escaped. A column is right-aligned when all its non-"—" cells are numbers or strings
    that look like numbers ("12.3", "-4.0%", "**7.1**", "3.2 ± 0.1"); other columns are left-aligned.
    Rows shorter than the header are padded with empty cells; longer rows raise ``ValueError``.
    """
    ncol = len(headers)
    if ncol == 0:
        raise ValueError("format_table needs at least one header")
    body: list[list[Any]] = []
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) > ncol:
            raise ValueError(f"row {i} has {len(row)} cells but there are {ncol} headers")
        body.append(row + [""] * (ncol - len(row)))

    right = []
    for j in range(ncol):
        cells = [r[j] for r in body if r[j] is not None and r[j] != "" and r[j] != DASH]
        right.append(bool(cells) and all(_looks_numeric(c) for c in cells))

    head = [_cell_text(h, floatfmt) for h in headers]
    text = [[_cell_text(c, floatfmt) for c in r] for r in body]
    widths = [max([3, len(head[j])] + [len(r[j]) for r in text]) for j in range(ncol)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if right[j] else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    sep = "| " + " | ".join("-" * (w - 1) + ":" if right[j] else "-" * w for j, w in enumerate(widths)) + " |"
    return "\n".join([line(head), sep] + [line(r) for r in text])


# --------------------------------------------------------------------------------------------------
# Reading a run
# --------------------------------------------------------------------------------------------------


def load_metrics(path: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` file; blank lines are skipped, undecodable lines warn and are skipped
    (a run killed mid-write can leave a truncated last line). A missing file gives ``[]``."""
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            warnings.warn(f"{path}:{lineno}: skipping undecodable line ({e})", stacklevel=2)
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def load_summary(path: str | Path) -> dict:
    """``summary.json`` as a dict; ``{}`` (with a warning) when it is missing, e.g. for an unfinished run."""
    path = Path(path)
    if not path.exists():
        warnings.warn(f"{path} is missing: reporting from metrics only", stacklevel=2)
        return {}
    obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _floats(xs: Any) -> list[float] | None:
    if xs is None:
        return None
    try:
        return [float("nan") if x is None else float(x) for x in xs]
    except (TypeError, ValueError):
        return None


def _step_key(rec: dict) -> tuple[float, float]:
    return (float(rec.get("step", 0) or 0), float(rec.get("round", 0) or 0))


def _test_evals(records: list[dict]) -> list[dict]:
    evals = [r for r in records if r.get("kind") == "eval" and r.get("split", "test") == "test" and "ppl" in r]
    return sorted(evals, key=_step_key)


def _pick_eval(evals: list[dict], which: str) -> dict | None:
    """The base (first step) or final (last step) test eval, preferring a full evaluation at that step."""
    if not evals:
        return None
    if which == "base":
        base = [r for r in evals if r.get("model") == "base"]
        target = _step_key(base[0]) if base else _step_key(evals[0])
    else:
        target = _step_key(evals[-1])
    same = [r for r in evals if _step_key(r) == target]
    full = [r for r in same if r.get("full")]
    return (full or same)[-1]


def _mean(xs: Sequence[float] | None) -> float:
    if not xs:
        return float("nan")
    return float(np.mean(np.asarray(xs, dtype=float)))


def _dominant_categories(summary: dict, n: int) -> list[str]:
    """Per-user dominant category names: ``user_categories`` (a name or a list of names per user),
    else the argmax of ``mixture`` over ``categories``, else "—"."""
    out = [DASH] * n
    uc = summary.get("user_categories")
    cats = summary.get("categories")
    mix = summary.get("mixture")
    for i in range(n):
        entry = uc[i] if isinstance(uc, list) and i < len(uc) else None
        if isinstance(entry, str) and entry:
            out[i] = entry
        elif isinstance(entry, list) and entry:
            out[i] = "+".join(str(e) for e in entry)
        elif isinstance(mix, list) and i < len(mix) and isinstance(cats, list):
            row = _floats(mix[i])
            if row and len(row) == len(cats):
                out[i] = dominant_categories([row], cats)[0] or DASH
    return out


def _short(s: str, width: int = 10) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def _user_labels(cats: list[str]) -> list[str]:
    return [f"u{i}" if c == DASH else f"u{i} ({_short(c)})" for i, c in enumerate(cats)]


def _as_matrix(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    try:
        m = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        return None
    return m if m.ndim == 2 and m.size else None


def _fmt_pct(base: float, final: float) -> str:
    if not (math.isfinite(base) and math.isfinite(final)) or base == 0:
        return DASH
    return f"{(final - base) / base * 100:+.1f}%"


def _fmt_duration(s: Any) -> str:
    if not _is_number(s) or not math.isfinite(float(s)):
        return DASH
    s = float(s)
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    return f"{s:.1f} s ({h}h {m:02d}m {sec:02d}s)"


def _fmt_bytes(b: float) -> str:
    b = float(b)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.2f} {unit}"
        b /= 1024
    return f"{b:.2f} GiB"  # pragma: no cover


def _bytes_per_round(summary: dict, trust: list[dict]) -> tuple[dict[str, float], str]:
    """Bytes per round per message kind: ``summary["bytes_per_round"]``, else the mean over trust records."""
    bpr = summary.get("bytes_per_round")
    if isinstance(bpr, dict) and bpr:
        return {str(k): float(v) for k, v in bpr.items() if _is_number(v)}, "summary.json"
    sums: dict[str, list[float]] = {}
    for rec in trust:
        for k, v in (rec.get("bytes") or {}).items():
            if _is_number(v):
                sums.setdefault(str(k), []).append(float(v))
    return {k: float(np.mean(v)) for k, v in sums.items()}, "mean over trust records"


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _save_png(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _heatmap(ax: Any, m: np.ndarray, labels: list[str] | None, title: str, annotate: bool, ticks: bool = True) -> Any:
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


def _plot_w_final(path: Path, w: np.ndarray | None, oracle: np.ndarray | None, labels: list[str], title: str) -> Path:
    panels = [(m, t) for m, t in ((w, "learned W (final round)"), (oracle, "oracle W")) if m is not None]
    n = max(m.shape[0] for m, _ in panels)
    side = max(3.5, 0.45 * n + 1.8)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(side * len(panels) + 1.4, side + 0.6), squeeze=False, layout="constrained"
    )
    im = None
    for k, (ax, (m, t)) in enumerate(zip(axes[0], panels, strict=True)):
        im = _heatmap(ax, m, labels, t, annotate=m.shape[0] <= ANNOTATE_MAX_USERS)
        if k > 0:
            ax.set_ylabel("")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.85, label="trust weight")
    fig.suptitle(title, fontsize=11)
    return _save_png(fig, path)


def _plot_w_rounds(path: Path, trust: list[dict], labels: list[str], title: str) -> Path:
    mats = [(rec, _as_matrix(rec.get("W"))) for rec in trust]
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
    return _save_png(fig, path)


def _plot_curves(path: Path, evals: list[dict], train: list[dict], labels: list[str], title: str) -> Path:
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
        ppl = [_floats(r["ppl"]) or [] for r in series]
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
        train = sorted(train, key=_step_key)
        steps = [float(r.get("step", 0)) for r in train]
        losses = [_floats(r.get("loss")) or [] for r in train]
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
    return _save_png(fig, path)


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


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
    mix = _as_matrix(summary.get("mixture"))
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
        return format(float(x), fmt) if _is_number(x) and math.isfinite(float(x)) else DASH

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

    evals = _test_evals(records)
    train = sorted((r for r in records if r.get("kind") == "train"), key=_step_key)
    trust = sorted((r for r in records if r.get("kind") == "trust"), key=_step_key)

    base_rec, final_rec = _pick_eval(evals, "base"), _pick_eval(evals, "final")
    base = _floats(summary.get("base_test_ppl")) or (_floats(base_rec["ppl"]) if base_rec else None) or []
    final = _floats(summary.get("final_test_ppl")) or (_floats(final_rec["ppl"]) if final_rec else None) or []
    w_final = _as_matrix(trust[-1].get("W")) if trust else None
    oracle = _as_matrix(summary.get("oracle_W"))

    n_users = summary.get("users")
    if not isinstance(n_users, int) or isinstance(n_users, bool):
        n_users = max([len(base), len(final)] + [m.shape[0] for m in (w_final, oracle) if m is not None])
    cats = _dominant_categories(summary, n_users)
    labels = _user_labels(cats)
    strategy = str(summary.get("strategy") or "unknown strategy")
    model = str(summary.get("model") or "unknown model")

    out: list[str] = [f"# trustlora run: {strategy} on {model}", ""]
    out.append(f"Run directory: `{run_dir.name}` · users: {n_users} · trust rounds recorded: {len(trust)}")
    if not summary:
        out += ["", "_summary.json is missing (unfinished run?): numbers below come from metrics.jsonl only._"]
    out.append("")

    # Per-user table.
    out += ["## Test perplexity per user", ""]
    rows: list[list[Any]] = []
    for i in range(n_users):
        b = base[i] if i < len(base) else float("nan")
        f = final[i] if i < len(final) else float("nan")
        rows.append([f"u{i}", cats[i], b if i < len(base) else None, f if i < len(final) else None, _fmt_pct(b, f)])
    base_mean = summary.get("base_mean_test_ppl")
    final_mean = summary.get("final_mean_test_ppl")
    base_mean = float(base_mean) if _is_number(base_mean) else _mean(base)
    final_mean = float(final_mean) if _is_number(final_mean) else _mean(final)
    rows.append(["**Mean**", "", base_mean, final_mean, _fmt_pct(base_mean, final_mean)])
    headers = ["user", "dominant category", "base test ppl", "final test ppl", "relative change"]
    out += [format_table(headers, rows), ""]
    if final_rec is not None and not summary.get("final_test_ppl"):
        out += [f"_Final = test eval at round {final_rec.get('round')} / step {final_rec.get('step')}._", ""]

    # Cost.
    out += ["## Cost", ""]
    tps = summary.get("train_tokens_per_s")
    cost = [
        ["wall time", _fmt_duration(summary.get("wall_time_s"))],
        ["training tokens/s", f"{float(tps):,.1f}" if _is_number(tps) else DASH],
        ["precision", summary.get("precision") or DASH],
    ]
    out += [format_table(["", "value"], cost), ""]
    phases = summary.get("phases")
    if isinstance(phases, dict) and _is_number((phases.get("total") or {}).get("seconds")):
        total = float(phases["total"]["seconds"]) or 1.0
        prow = []
        for name in ("train", "trust", "eval", "other"):
            ph = phases.get(name) or {}
            sec, gf, mfu = ph.get("seconds"), ph.get("gflops_per_s"), ph.get("mfu")
            prow.append(
                [
                    name,
                    f"{float(sec):.1f}" if _is_number(sec) else DASH,
                    f"{100 * float(sec) / total:.0f}%" if _is_number(sec) else DASH,
                    f"{float(ph['flops']) / 1e12:.2f}" if _is_number(ph.get("flops")) else DASH,
                    f"{float(gf):.1f}" if _is_number(gf) else DASH,
                    f"{100 * float(mfu):.0f}%" if _is_number(mfu) else DASH,
                ]
            )
        peak = phases["total"].get("gemm_peak_gflops_per_s")
        out += [
            "### Time and model FLOPs by phase",
            "",
            format_table(["phase", "seconds", "share", "TFLOP", "GFLOP/s", "MFU"], prow),
            "",
            f"_MFU: model FLOPs per second over this machine's measured GEMM peak "
            f"({float(peak):.0f} GFLOP/s in {summary.get('precision')}; trustlora.flops)._"
            if _is_number(peak)
            else "",
            "",
        ]

    bpr, source = _bytes_per_round(summary, trust)
    out += ["### Bytes per round per message kind", ""]
    if bpr:
        brow = [[k, f"{int(round(v)):,}", _fmt_bytes(v)] for k, v in bpr.items()]
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
            l1 = float(np.mean(np.abs(w_final - oracle).sum(axis=1)))
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
        _plot_w_final(run_dir / "W_final.png", w_final, oracle, labels, title)
        figures.append("W_final.png")
    if any(_as_matrix(r.get("W")) is not None for r in trust):
        _plot_w_rounds(run_dir / "W_rounds.png", trust, labels, f"W per trust round · {title}")
        figures.append("W_rounds.png")
    if evals or train:
        _plot_curves(run_dir / "curves.png", evals, train, labels, title)
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


def _json_safe(x: Any) -> Any:
    """NaN/inf become null so the output is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def _aggregate(rows: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for i, r in enumerate(rows):
        if "strategy" not in r or "mean_test_ppl" not in r:
            raise ValueError(f"comparison row {i} lacks 'strategy' or 'mean_test_ppl': {sorted(r)}")
        groups.setdefault(str(r["strategy"]), []).append(r)
    agg = []
    for strategy, rs in groups.items():
        vals = np.asarray([float(r["mean_test_ppl"]) for r in rs], dtype=float)
        walls = [float(r["wall_time_s"]) for r in rs if _is_number(r.get("wall_time_s"))]
        per_user = [_floats(r.get("test_ppl")) for r in rs]
        scm = [float(r["same_category_mass"]) for r in rs if _is_number(r.get("same_category_mass"))]
        scm = [v for v in scm if math.isfinite(v)]
        per_user_mean = None
        if per_user and all(p for p in per_user) and len({len(p) for p in per_user}) == 1:
            per_user_mean = np.mean(np.asarray(per_user, dtype=float), axis=0).tolist()
        agg.append(
            {
                "strategy": strategy,
                "mean_test_ppl": float(np.mean(vals)),
                "std_test_ppl": mean_std(vals)[1],  # None for one seed
                "n_seeds": len(rs),
                "seeds": [r.get("seed") for r in rs],
                "wall_time_s": float(np.mean(walls)) if walls else float("nan"),
                "mean_test_ppl_per_user": per_user_mean,
                "same_category_mass": float(np.mean(scm)) if scm else None,
            }
        )
    return agg


def _plot_comparison(path: Path, agg: list[dict], base: float, best: set[str], title: str) -> Path:
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
    return _save_png(fig, path)


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
    bases = [float(r["base_mean_test_ppl"]) for r in rows if _is_number(r.get("base_mean_test_ppl"))]
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
                _fmt_pct(base, m),
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
        _json_safe({"title": title, "base_mean_test_ppl": base, "best": sorted(best), "strategies": agg, "rows": rows}),
    )
    paths["png"] = _plot_comparison(out_dir / "comparison.png", agg, base, best, title)
    return paths


def comparison_row_from_run(run_dir: Path, seed: int | None = None) -> dict:
    """A :func:`write_comparison` row from a finished run's ``summary.json`` (seed from the summary's
    ``seed`` key, else ``seed``, else 0)."""
    summary = load_summary(Path(run_dir) / "summary.json")
    if "final_mean_test_ppl" not in summary:
        raise ValueError(f"{run_dir}: summary.json has no final_mean_test_ppl (unfinished run?)")
    s = summary.get("seed", seed if seed is not None else 0)
    quality = _run_trust_quality(summary, _as_matrix(summary.get("final_W"))) or {}
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
