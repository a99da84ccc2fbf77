"""Scale in users: run strategies at several numbers of users N with a fixed per-user budget, and tabulate
final mean test ppl and trust quality (same-category mass, SCM) per N.

    trustlora scale --config configs/cpu/multilingual-high.yaml --users 6,12,24 out=runs/scale
    trustlora scale --config configs/cpu/multilingual-high.yaml --users 48 strategies=local,fedavg,predictions \
        out=runs/scale        # adds N=48 to the same table (finished runs are reused, never recomputed)

Runs land in ``OUT/N<n>/<strategy>-seed<k>/``; the table (``scale.md``, ``scale.csv``, ``scale.json``) covers every
finished run found under OUT, so a scaling study can be assembled over several invocations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trustlora.config import ConfigError, load_config
from trustlora.rundir import load_summary

DEFAULT_STRATEGIES = ["local", "fedavg", "oracle", "validation", "predictions"]


def parse_users(text: str) -> list[int]:
    try:
        users = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--users: expected a comma list of integers >= 2, got {text!r}") from None
    if not users or min(users) < 2:
        raise ConfigError(f"--users: expected a comma list of integers >= 2, got {text!r}")
    return users


def run_scaling(config: str | None, overrides: list[str], users: list[int], progress: bool = True) -> Path:
    from trustlora.experiment import check_grid, drop_overrides, run_grid, seeds_of, study_dir

    base = load_config(config, overrides)
    seeds = seeds_of(base)
    out = study_dir(base, "scale")
    rest = drop_overrides(overrides, "out", "data.users")
    strategies = base.strategies or DEFAULT_STRATEGIES
    grids = {n: [(f"N{n}/{s}", [f"data.users={n}", f"strategy={s}"]) for s in strategies] for n in users}
    check_grid(config, rest, [p for points in grids.values() for p in points], seeds)  # every N before any compute
    for n in users:  # N by N (each N its own data: its own Workspace), seed by seed within an N
        run_grid(config, rest, grids[n], seeds, out, progress=progress)
    write_scaling_table(out)
    return out


def _scm(summary: dict) -> float | None:
    q = summary.get("trust_quality") or {}
    v = q.get("same_category_mass")
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def _uniform_share(summary: dict) -> float | None:
    """SCM of a uniform W (FedAvg): mean over users of (#same-category peers) / (N - 1)."""
    cats = summary.get("user_categories") or []
    n = len(cats)
    if n < 2:
        return None
    shares = [(sum(c == cats[i] for c in cats) - 1) / (n - 1) for i in range(n)]
    return float(np.mean(shares))


def collect(out: Path) -> list[dict]:
    """One row per (N, strategy): mean over seeds of final mean test ppl and SCM."""
    rows: dict[tuple[int, str], dict] = {}
    for summ in sorted(out.glob("N*/*-seed*/summary.json")):
        s = load_summary(summ)
        n, strat = int(s["users"]), s["strategy"]
        r = rows.setdefault((n, strat), {"users": n, "strategy": strat, "ppl": [], "scm": [], "uniform": None})
        r["ppl"].append(float(s["final_mean_test_ppl"]))
        scm = _scm(s)
        if scm is not None:
            r["scm"].append(scm)
        r["uniform"] = _uniform_share(s)
    return [
        {
            "users": r["users"],
            "strategy": r["strategy"],
            "seeds": len(r["ppl"]),
            "mean_test_ppl": float(np.mean(r["ppl"])),
            "same_category_mass": float(np.mean(r["scm"])) if r["scm"] else None,
            "uniform_share": r["uniform"],
        }
        for r in sorted(rows.values(), key=lambda r: (r["users"], r["strategy"]))
    ]


def write_scaling_table(out: Path) -> dict[str, Path]:
    from trustlora.tables import DASH, format_table, write_table_files
    from trustlora.trust import names

    rows = collect(out)
    if not rows:
        raise ConfigError(f"{out}: no finished runs under N<n>/<strategy>-seed<k>/")
    strategies = [s for s in names() if any(r["strategy"] == s for r in rows)]
    ns = sorted({r["users"] for r in rows})
    by = {(r["users"], r["strategy"]): r for r in rows}
    header = (
        ["N", "uniform SCM"]
        + [f"{s} ppl" for s in strategies]
        + [f"{s} SCM" for s in strategies if s not in ("local", "fedavg", "oracle")]
    )
    table = []
    for n in ns:
        uni = next((r["uniform_share"] for r in rows if r["users"] == n), None)
        line = [n, DASH if uni is None else f"{uni:.2f}"]
        for s in strategies:
            r = by.get((n, s))
            line.append(DASH if r is None else f"{r['mean_test_ppl']:.2f}")
        for s in strategies:
            if s in ("local", "fedavg", "oracle"):
                continue
            r = by.get((n, s))
            scm = None if r is None else r["same_category_mass"]
            line.append(DASH if scm is None else f"{scm:.2f}")
        table.append(line)
    md = (
        "# Scaling in users\n\nFinal mean test perplexity per strategy and same-category mass (SCM: share of a "
        "user's off-diagonal trust on peers of its own category; oracle 1, FedAvg = the uniform share) per number "
        "of users N (fixed per-user budget).\n\n" + format_table(header, table) + "\n"
    )
    keys = ["users", "strategy", "seeds", "mean_test_ppl", "same_category_mass", "uniform_share"]
    paths = write_table_files(out, "scale", md, rows, keys)
    return paths
