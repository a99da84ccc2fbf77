"""Paper analyses of finished trustlora runs: tables and figures computed from run directories only.

Every command reads run directories (``metrics.jsonl``, ``summary.json``, ``config.yaml``) or comparison
directories (from ``trustlora compare``: one run directory per ``<strategy>-seed<k>``), prints a markdown
table and writes ``<name>.md``, ``<name>.csv``, ``<name>.json`` and PNG figure(s), each atomically, into
``--out DIR`` or, by default, beside the inputs (see each command)::

    trustlora analyze table4 COMPARE_DIR [COMPARE_DIR ...] [--out DIR]
        Paper Table 4. Rows: strategies (+ the base model); one column per comparison directory,
        labelled "<data.source>-<data.mixture>" from its runs' config.yaml; cells: mean ± sample std
        (ddof=1, "—" with one seed) over seeds of the users' mean test perplexity; best per column in
        bold. Writes table4.{md,csv,json,png} (grouped bar chart) into the common parent of the
        comparison directories.

    trustlora analyze trust COMPARE_DIR [--out DIR]
        Paper Figures 3/4 (and Appendix A.3 when the runs used trust.apply=false). For the first seed
        of every strategy: per trust round, the L1 distance between W and the oracle W averaged over
        rows, and the top-peer accuracy (see :func:`trust_closeness`). Writes trust.{md,csv,json},
        trust_W.png (final W of every strategy beside the oracle, diagonal masked) and
        trust_curves.png (both numbers against the round) into COMPARE_DIR.

    trustlora analyze bytes RUN_DIR [--out DIR]
        Paper Tables 1/5. Bytes one user sends per round for θ, Δθ, dense logits and top-k COO logits
        (the last trust record's ``bytes_equiv``), their ratios to top-k COO, and the bytes the run
        actually sent (``bytes``). Writes bytes.{md,csv,json,png} (log-scale bars) into RUN_DIR.

    trustlora analyze topology FULL_RUN_DIR RING_RUN_DIR [--out DIR]
        Paper Figure 4. Mean test perplexity per evaluated step of both runs, each run's final value and
        the first step at which the other run reaches it. Writes topology.{md,csv,json,png} into the
        common parent of the two run directories.

    trustlora analyze placement RUN_DIR [RUN_DIR ...] [--out DIR]
        Paper Figure 2. For runs differing in lora.targets: trainable parameters per user, base and
        final mean test perplexity, the decrease and the decrease per million trainable parameters.
        Writes placement.{md,csv,json,png} into the common parent of the run directories.

From Python: ``write_table4(dirs)``, ``write_trust(d)``, ``write_bytes(d)``, ``write_topology(full, ring)``,
``write_placement(dirs)`` (each takes ``out=`` and returns ``{"md": path, "csv": ..., "json": ..., "png": ...}``);
the numbers come from small pure functions (:func:`trust_closeness`, :func:`offdiag_normalised`,
:func:`first_step_reaching`, :func:`mean_std`, :func:`message_size_ratios`, :func:`mean_ppl_series`).
User errors (missing directory, no finished run, ...) raise :class:`AnalysisError`, which the CLI
reports in one line with exit code 2.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from trustlora.cache import atomic_write_json, atomic_write_text
from trustlora.config import ConfigError
from trustlora.report import (
    DASH,
    _dominant_categories,
    _fmt_bytes,
    _heatmap,
    _is_number,
    _json_safe,
    _save_png,
    _user_labels,
    format_table,
    load_metrics,
    load_summary,
)

__all__ = [
    "AnalysisError",
    "Run",
    "read_config",
    "cfg_get",
    "load_run",
    "find_runs",
    "w_by_round",
    "mean_std",
    "trust_closeness",
    "chance_top_peer",
    "offdiag_normalised",
    "mean_ppl_series",
    "first_step_reaching",
    "message_size_ratios",
    "write_table4",
    "write_trust",
    "write_bytes",
    "write_topology",
    "write_placement",
]

STRATEGY_ORDER = ("local", "fedavg", "oracle", "weights", "validation", "predictions")
MESSAGE_KINDS = (
    ("theta", "θ: full adapter weights (fp32)"),
    ("delta", "Δθ: adapter update (fp32)"),
    ("dense_logits", "dense logits on X_S (fp32, vocab-sized)"),
    ("topk_coo", "top-k logits on X_S as COO (value + index)"),
)
ANNOTATE_MAX_USERS = 12
_RUN_NAME_RE = re.compile(r"^(?P<strategy>.+)-seed(?P<seed>\d+)$")


class AnalysisError(ConfigError):
    """A user error in an analysis command (missing directory, no finished run, ...): one line, exit 2."""


# --------------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------------


def read_config(run_dir: str | Path) -> dict:
    """``config.yaml`` of a run as a plain dict (``{}`` when missing or unreadable, with a warning if unreadable)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        warnings.warn(f"{path}: unreadable YAML, ignored ({e})", stacklevel=2)
        return {}
    return data if isinstance(data, dict) else {}


def cfg_get(cfg: dict, dotted: str, default: Any = None) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; ``default`` when any level is missing."""
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


@dataclass
class Run:
    """One run directory, read once."""

    path: Path
    summary: dict
    config: dict
    records: list[dict]
    strategy: str
    seed: int | None

    @property
    def name(self) -> str:
        return self.path.name


def load_run(path: str | Path) -> Run:
    """Read a run directory (``summary.json`` and/or ``metrics.jsonl``, optional ``config.yaml``)."""
    p = Path(path)
    if not p.is_dir():
        raise AnalysisError(f"{p}: not a directory")
    if not (p / "summary.json").exists() and not (p / "metrics.jsonl").exists():
        raise AnalysisError(f"{p}: neither summary.json nor metrics.jsonl found (not a run directory)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = load_summary(p / "summary.json")
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise AnalysisError(f"{p / 'summary.json'}: unreadable ({e})") from None
    config = read_config(p)
    m = _RUN_NAME_RE.match(p.name)
    strategy = summary.get("strategy") or config.get("strategy") or (m.group("strategy") if m else p.name)
    seed = summary.get("seed", config.get("seed"))
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = int(m.group("seed")) if m else None
    return Run(p, summary, config, load_metrics(p / "metrics.jsonl"), str(strategy), seed)


def _strategy_rank(name: str) -> tuple[int, str]:
    return (STRATEGY_ORDER.index(name), "") if name in STRATEGY_ORDER else (len(STRATEGY_ORDER), name)


def find_runs(compare_dir: str | Path) -> list[Run]:
    """The run directories inside a comparison directory, sorted by strategy (paper order first) then seed."""
    d = Path(compare_dir)
    if not d.is_dir():
        raise AnalysisError(f"{d}: not a directory")
    runs = [
        load_run(p)
        for p in sorted(d.iterdir())
        if p.is_dir() and ((p / "summary.json").exists() or (p / "metrics.jsonl").exists())
    ]
    if not runs:
        raise AnalysisError(f"{d}: no run directories (with summary.json or metrics.jsonl) inside")
    return sorted(runs, key=lambda r: (_strategy_rank(r.strategy), r.seed if r.seed is not None else 1 << 30, r.name))


def _first_seed_per_strategy(runs: list[Run]) -> list[Run]:
    seen: dict[str, Run] = {}
    for r in runs:  # already sorted by strategy, then seed
        seen.setdefault(r.strategy, r)
    return list(seen.values())


def _n_users(run: Run) -> int:
    n = run.summary.get("users")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    n = cfg_get(run.config, "data.users")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    lens = [len(r["ppl"]) for r in run.records if isinstance(r.get("ppl"), list)]
    lens += [len(r["W"]) for r in run.records if isinstance(r.get("W"), list)]
    return max(lens, default=0)


def _categories(run: Run, n: int) -> list[str | None]:
    return [None if c == DASH else c for c in _dominant_categories(run.summary, n)]


def _oracle(run: Run) -> np.ndarray | None:
    """``summary["oracle_W"]``, else row-normalised D D^T of ``summary["mixture"]`` (as trustlora.trust.oracle)."""
    for key, is_mixture in (("oracle_W", False), ("mixture", True)):
        try:
            m = np.asarray(run.summary.get(key), dtype=float)
        except (TypeError, ValueError):
            continue
        if m.ndim != 2 or not m.size:
            continue
        if not is_mixture:
            return m
        s = m @ m.T
        return s / s.sum(axis=1, keepdims=True)
    return None


def _users_of(rec: dict, rows: list) -> list[int]:
    users = rec.get("users")
    if isinstance(users, list) and len(users) == len(rows) and all(isinstance(u, int) for u in users):
        return users
    return list(range(len(rows)))


def w_by_round(records: list[dict]) -> list[tuple[int, int, np.ndarray]]:
    """``(round, step, W)`` per trust round, in round order. Records holding only some users' rows (their
    ``users`` key) are assembled; a round whose W is still incomplete is left out."""
    rounds: dict[int, dict] = {}
    for rec in records:
        if rec.get("kind") != "trust" or not isinstance(rec.get("W"), list) or not rec["W"]:
            continue
        r = int(rec.get("round", 0) or 0)
        entry = rounds.setdefault(r, {"step": rec.get("step", 0), "rows": {}})
        for u, row in zip(_users_of(rec, rec["W"]), rec["W"], strict=True):
            entry["rows"][u] = row
    out = []
    for r in sorted(rounds):
        rows = rounds[r]["rows"]
        n = max(len(row) for row in rows.values())
        if sorted(rows) != list(range(n)) or any(len(row) != n for row in rows.values()):
            continue
        out.append((r, int(rounds[r]["step"] or 0), np.asarray([rows[i] for i in range(n)], dtype=float)))
    return out


def mean_ppl_series(records: list[dict]) -> list[dict]:
    """Mean test perplexity over users per evaluated step: ``[{"step", "round", "mean_ppl", "full"}]``
    sorted by step. At a step with both a full and a subsampled test eval, the full one is used; eval
    records holding only some users (their ``users`` key) are merged."""
    by_step: dict[float, dict[bool, dict]] = {}
    for rec in records:
        if rec.get("kind") != "eval" or rec.get("split", "test") != "test" or not isinstance(rec.get("ppl"), list):
            continue
        step = float(rec.get("step", 0) or 0)
        full = bool(rec.get("full"))
        slot = by_step.setdefault(step, {}).setdefault(full, {"round": rec.get("round"), "ppl": {}})
        for u, v in zip(_users_of(rec, rec["ppl"]), rec["ppl"], strict=True):
            slot["ppl"][u] = float("nan") if v is None else float(v)
    out = []
    for step in sorted(by_step):
        full = True in by_step[step]
        slot = by_step[step][full]
        vals = list(slot["ppl"].values())
        out.append(
            {
                "step": int(step) if float(step).is_integer() else step,
                "round": slot["round"],
                "mean_ppl": float(np.mean(vals)) if vals else float("nan"),
                "full": full,
            }
        )
    return out


def _mean_test_ppl(run: Run, which: str) -> float:
    """``summary[<which>_mean_test_ppl]`` (which = base | final), else the first/last test eval's mean."""
    v = run.summary.get(f"{which}_mean_test_ppl")
    if _is_number(v):
        return float(v)
    series = mean_ppl_series(run.records)
    if not series:
        return float("nan")
    return series[0]["mean_ppl"] if which == "base" else series[-1]["mean_ppl"]


# --------------------------------------------------------------------------------------------------
# Pure numbers
# --------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1) of ``values``; the std is ``None`` with fewer than two values."""
    v = np.asarray(list(values), dtype=float)
    if not v.size:
        return float("nan"), None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if v.size >= 2 else None


def trust_closeness(w: Any, oracle: Any | None, categories: Sequence[Any] | None) -> tuple[float, float]:
    """How close a trust matrix is to the oracle: ``(l1, top_peer_acc)``.

    ``l1``: L1 distance between the rows of ``w`` and ``oracle`` averaged over rows, diagonals kept
    (``mean_i sum_j |W_ij - O_ij|``; 0 = identical, 2 = disjoint rows); NaN without an oracle of the same shape.

    ``top_peer_acc``: fraction of users whose largest off-diagonal trust goes to a peer of the same
    dominant category (``categories[i]``; ``None`` = unknown). A user whose largest off-diagonal weight is
    shared by several peers (e.g. a uniform or identity row) scores the fraction of those tied peers
    with its category, i.e. the expected accuracy of breaking the tie at random. Users with unknown
    category, or without any same-category peer (they cannot score), are left out; NaN if none is left.
    """
    w = np.asarray(w, dtype=float)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"trust_closeness: W must be square, got shape {w.shape}")
    n = w.shape[0]
    l1 = float("nan")
    if oracle is not None:
        o = np.asarray(oracle, dtype=float)
        if o.shape == w.shape:
            l1 = float(np.mean(np.abs(w - o).sum(axis=1)))
    cats = list(categories) if categories is not None else []
    cats += [None] * (n - len(cats))
    hits = []
    for i in range(n):
        ci = cats[i]
        peers = [j for j in range(n) if j != i]
        if ci is None or not any(cats[j] == ci for j in peers):
            continue
        vals = w[i, peers]
        if not np.isfinite(vals).any():
            continue
        top = np.flatnonzero(np.isclose(vals, np.nanmax(vals), rtol=1e-9, atol=1e-12))
        hits.append(float(np.mean([cats[peers[k]] == ci for k in top])))
    return l1, float(np.mean(hits)) if hits else float("nan")


def chance_top_peer(categories: Sequence[Any] | None) -> float:
    """Top-peer accuracy of a uniform W (all off-diagonal entries tied), i.e. chance level, for ``categories``."""
    n = len(categories) if categories is not None else 0
    if n < 2:
        return float("nan")
    return trust_closeness(np.full((n, n), 1.0 / n), None, categories)[1]


def offdiag_normalised(w: Any) -> np.ndarray:
    """W for display with the self-weight removed: diagonal NaN, every row renormalised over its off-diagonal
    entries (a row with no off-diagonal trust, e.g. of the identity, stays all 0)."""
    m = np.array(w, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"offdiag_normalised: W must be square, got shape {m.shape}")
    np.fill_diagonal(m, np.nan)
    sums = np.nansum(m, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(sums > 0, m / np.where(sums > 0, sums, 1.0), 0.0)
    np.fill_diagonal(out, np.nan)
    return out


def first_step_reaching(steps: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The first step (in increasing step order) whose value is finite and <= ``target``; ``None`` if none is."""
    if not math.isfinite(target):
        return None
    for s, v in sorted(zip(steps, values, strict=True), key=lambda sv: sv[0]):
        if v is not None and math.isfinite(v) and v <= target:
            return s
    return None


def message_size_ratios(bytes_equiv: dict) -> dict[str, float | None]:
    """Ratios of the per-round message sizes: ``dense/topk``, ``theta/topk``, ``delta/topk`` (None when undefined)."""

    def ratio(a: str, b: str) -> float | None:
        x, y = bytes_equiv.get(a), bytes_equiv.get(b)
        return float(x) / float(y) if _is_number(x) and _is_number(y) and float(y) > 0 else None

    return {
        "dense/topk": ratio("dense_logits", "topk_coo"),
        "theta/topk": ratio("theta", "topk_coo"),
        "delta/topk": ratio("delta", "topk_coo"),
    }


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _csv_cell(x: Any) -> Any:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else ""
    if isinstance(x, list | tuple):
        return " ".join(str(v) for v in x)
    return x


def _write_outputs(out_dir: Path, stem: str, md: list[str], header: list[str], rows: list[list], obj: dict) -> dict:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow([_csv_cell(x) for x in r])
    return {
        "md": atomic_write_text(out_dir / f"{stem}.md", "\n".join(md).rstrip() + "\n"),
        "csv": atomic_write_text(out_dir / f"{stem}.csv", buf.getvalue()),
        "json": atomic_write_json(out_dir / f"{stem}.json", _json_safe(obj)),
    }


def _beside(paths: Sequence[Path]) -> Path:
    """Default output directory of a command over several directories: the common parent of their parents."""
    parents = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(parents))


def _f(x: float | None, fmt: str = ".2f") -> str:
    return format(x, fmt) if x is not None and math.isfinite(x) else DASH


def _num(x: Any) -> int | float:
    """An int when the number is integral (byte counts), else a float."""
    return int(x) if float(x).is_integer() else float(x)


def _pct(x: float | None) -> str:
    return f"{x * 100:.1f}%" if x is not None and math.isfinite(x) else DASH


def _dataset_label(cfg: dict) -> str | None:
    source = cfg_get(cfg, "data.source")
    if not source:
        return None
    mix = cfg_get(cfg, "data.mixture", "?")
    return f"{source}-{mix if isinstance(mix, str) else 'custom'}"


def _colors(names: Sequence[str]) -> dict[str, Any]:
    """Fixed colours for the paper strategies, the next tab10 colours for any other."""
    cmap = plt.get_cmap("tab10")
    extra = [n for n in names if n not in STRATEGY_ORDER]
    return {
        n: cmap(STRATEGY_ORDER.index(n) if n in STRATEGY_ORDER else (len(STRATEGY_ORDER) + extra.index(n)) % 10)
        for n in names
    }


# --------------------------------------------------------------------------------------------------
# Table 4
# --------------------------------------------------------------------------------------------------


def write_table4(compare_dirs: Sequence[str | Path], out: str | Path | None = None) -> dict[str, Path]:
    """Paper Table 4 over comparison directories (one column each); see the module docstring."""
    if not compare_dirs:
        raise AnalysisError("table4: give at least one comparison directory")
    columns: list[dict] = []
    for d in compare_dirs:
        runs = [r for r in find_runs(d) if _is_number(r.summary.get("final_mean_test_ppl"))]
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
        bases = [
            float(r.summary["base_mean_test_ppl"]) for r in runs if _is_number(r.summary.get("base_mean_test_ppl"))
        ]
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
    names = sorted({s for c in columns for s in c["strategies"]}, key=_strategy_rank)

    md_rows: list[list[Any]] = [["base model (no training)"] + [_f(c["base_mean_test_ppl"]) for c in columns]]
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
    out_dir = Path(out) if out is not None else _beside([Path(d) for d in compare_dirs])
    header = ["column", "compare_dir", "strategy", "mean_test_ppl", "std_test_ppl", "n_seeds", "seeds", "best"]
    paths = _write_outputs(out_dir, "table4", md, header, csv_rows, {"strategies": names, "columns": columns})
    paths["png"] = _plot_table4(out_dir / "table4.png", columns, names)
    return paths


def _plot_table4(path: Path, columns: list[dict], names: list[str]) -> Path:
    colors = _colors(names)
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
    return _save_png(fig, path)


# --------------------------------------------------------------------------------------------------
# Trust closeness (Figures 3/4, Appendix A.3)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Message sizes (Tables 1/5)
# --------------------------------------------------------------------------------------------------


def write_bytes(run_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Message sizes per user per round of one run; see the module docstring."""
    run = load_run(run_dir)
    trust = [r for r in run.records if r.get("kind") == "trust" and isinstance(r.get("bytes_equiv"), dict)]
    if not trust:
        raise AnalysisError(f"{run.path}: no trust record with bytes_equiv in metrics.jsonl")
    last = max(trust, key=lambda r: (r.get("round", 0) or 0, r.get("step", 0) or 0))
    equiv = {k: _num(v) for k, v in last["bytes_equiv"].items() if _is_number(v)}
    sent = {k: _num(v) for k, v in (last.get("bytes") or {}).items() if _is_number(v)}
    ratios = message_size_ratios(equiv)
    topk = equiv.get("topk_coo")

    rows, csv_rows = [], []
    for kind, what in MESSAGE_KINDS:
        b = equiv.get(kind)
        ratio = b / topk if b is not None and topk else None
        rows.append(
            [
                kind,
                what,
                f"{int(b):,}" if b is not None else None,
                _fmt_bytes(b) if b is not None else None,
                _f(ratio, ".1f"),
            ]
        )
        csv_rows.append(["equivalent", kind, b, ratio])
    md = [
        "# Message size per user per round (paper Tables 1/5)",
        "",
        f"Run `{run.path}` · strategy {run.strategy} · model {run.summary.get('model') or cfg_get(run.config, 'model')}"
        f" · trust round {last.get('round')} (step {last.get('step')}).",
        "",
        format_table(["message", "what one user sends", "bytes/user/round", "human", "× top-k COO"], rows),
        "",
        f"Ratios: dense logits / top-k COO = **{_f(ratios['dense/topk'], ',.1f')}×**, "
        f"θ / top-k COO = **{_f(ratios['theta/topk'], ',.1f')}×**.",
    ]
    k = cfg_get(run.config, "trust.topk")
    implied = []
    if equiv.get("theta"):
        implied.append(f"{int(equiv['theta']) // 4:,} adapter parameters (θ / 4 bytes)")
    if isinstance(k, int) and k > 0 and topk and topk % (8 * k) == 0:
        m = int(topk) // (8 * k)
        implied.append(f"|X_S| = {m:,} reference tokens (top-k COO / (8 bytes × k={k}))")
        if equiv.get("dense_logits") and m and equiv["dense_logits"] % (4 * m) == 0:
            implied.append(f"vocabulary {int(equiv['dense_logits']) // (4 * m):,} (dense / (4 bytes × |X_S|))")
    if implied:
        md += ["", "Implied: " + "; ".join(implied) + "."]
    md += ["", f"## Actually sent by this run ({run.strategy}), per user, round {last.get('round')}", ""]
    if sent:
        srows = [[kk, f"{int(v):,}", _fmt_bytes(v)] for kk, v in sent.items()]
        srows.append(["**total**", f"**{int(sum(sent.values())):,}**", f"**{_fmt_bytes(sum(sent.values()))}**"])
        md.append(format_table(["message kind", "bytes/user/round", "human"], srows))
        csv_rows += [["sent", kk, v, v / topk if topk else None] for kk, v in sent.items()]
    else:
        md.append("_Nothing sent (this strategy exchanges no messages)._")
    md += ["", "![message sizes](bytes.png)"]

    out_dir = Path(out) if out is not None else run.path
    obj = {
        "run_dir": str(run.path),
        "strategy": run.strategy,
        "round": last.get("round"),
        "step": last.get("step"),
        "bytes_equiv": equiv,
        "bytes_sent": sent,
        "ratios": ratios,
    }
    paths = _write_outputs(
        out_dir, "bytes", md, ["source", "kind", "bytes_per_user_per_round", "ratio_to_topk_coo"], csv_rows, obj
    )
    paths["png"] = _plot_bytes(out_dir / "bytes.png", equiv, sent, run.strategy)
    return paths


def _plot_bytes(path: Path, equiv: dict, sent: dict, strategy: str) -> Path:
    names = [k for k, _ in MESSAGE_KINDS if equiv.get(k)]
    vals = [equiv[k] for k in names]
    colors = ["tab:blue"] * len(names)
    if sent and sum(sent.values()) > 0:
        names.append(f"actually sent\n({strategy})")
        vals.append(sum(sent.values()))
        colors.append("tab:orange")
    fig, ax = plt.subplots(figsize=(max(5.5, 1.4 * len(names) + 1.5), 4.4))
    x = np.arange(len(names))
    ax.bar(x, vals, color=colors, edgecolor="black", lw=0.6)
    ax.set_yscale("log")
    topk = equiv.get("topk_coo")
    for xi, v in zip(x, vals, strict=True):
        label = _fmt_bytes(v) + (f"\n{v / topk:,.1f}× top-k" if topk else "")
        ax.text(xi, v * 1.15, label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, fontsize=9)
    ax.set_ylabel("bytes per user per round (log scale)")
    ax.set_ylim(min(vals) / 3, max(vals) * 6)
    ax.set_title("Message size per user per round (Tables 1/5)", fontsize=10)
    ax.grid(True, axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    return _save_png(fig, path)


# --------------------------------------------------------------------------------------------------
# Topology (Figure 4)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# LoRA placement (Figure 2)
# --------------------------------------------------------------------------------------------------


def _targets_label(cfg: dict) -> str | None:
    t = cfg_get(cfg, "lora.targets")
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
        params = int(params) if _is_number(params) else None
        base, final = _mean_test_ppl(run, "base"), _mean_test_ppl(run, "final")
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
                _f(e["base_mean_test_ppl"]),
                _f(e["final_mean_test_ppl"]),
                _f(e["ppl_decrease"]),
                _pct(e["relative_decrease"]),
                _f(e["decrease_per_mparam"]),
            ]
        )
        csv_rows.append(
            [
                e[k]
                for k in (
                    "label",
                    "run_dir",
                    "strategy",
                    "params_per_user",
                    "base_mean_test_ppl",
                    "final_mean_test_ppl",
                    "ppl_decrease",
                    "decrease_per_mparam",
                )
            ]
        )
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
    out_dir = Path(out) if out is not None else _beside([r.path for r in runs])
    header = [
        "label",
        "run_dir",
        "strategy",
        "params_per_user",
        "base_mean_test_ppl",
        "final_mean_test_ppl",
        "ppl_decrease",
        "decrease_per_mparam",
    ]
    paths = _write_outputs(out_dir, "placement", md, header, csv_rows, {"runs": entries})
    paths["png"] = _plot_placement(out_dir / "placement.png", entries)
    return paths


def _plot_placement(path: Path, entries: list[dict]) -> Path:
    fig, (ax_d, ax_p) = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(entries) + 3), 4.2))
    x = np.arange(len(entries))
    labels = [e["label"] for e in entries]
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
            ax.set_ylim(lo * 1.25, hi * 1.3 if hi > 0 else 1.0)
    ax_d.set_xlabel("lora.targets")
    ax_p.set_xlabel("lora.targets")
    fig.suptitle("LoRA placement (Figure 2)", fontsize=11)
    fig.tight_layout()
    return _save_png(fig, path)
