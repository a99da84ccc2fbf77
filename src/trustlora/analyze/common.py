"""Shared helpers of the paper analyses: reading run and comparison directories, formatting numbers,
writing the ``<name>.{md,csv,json}`` outputs and PNG figures, and :class:`AnalysisError`.

Not a command itself; used by every ``trustlora analyze {table4,trust,bytes,topology,placement}`` module
(see :mod:`trustlora.analyze`).
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

from trustlora.cache import atomic_write_json, atomic_write_text  # noqa: E402
from trustlora.config import ConfigError  # noqa: E402
from trustlora.report import (  # noqa: E402
    DASH,
    _dominant_categories,
    _is_number,
    _json_safe,
    load_metrics,
    load_summary,
)
from trustlora.report import _save_png as _save_png  # noqa: E402  (re-exported for the analysis modules)
from trustlora.trust import names  # noqa: E402

STRATEGY_ORDER = tuple(names())  # display order = the registry's (paper six, robust baselines, then plug-ins)
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


def mean_ppl_series(records: list[dict], prefer: str = "full") -> list[dict]:
    """Mean test perplexity over users per evaluated step: ``[{"step", "round", "mean_ppl", "full"}]``
    sorted by step. At a step with both a full and a subsampled test eval, ``prefer`` says which is used
    (``"full"`` or ``"subsample"``: the latter gives per-round curves that compare like with like, the
    subsample of every round, base and last included, when the run recorded one); eval records holding
    only some users (their ``users`` key) are merged."""
    if prefer not in ("full", "subsample"):
        raise ValueError(f"mean_ppl_series: prefer must be 'full' or 'subsample', got {prefer!r}")
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
        kinds = by_step[step]
        full = (True in kinds) if prefer == "full" else (False not in kinds)
        slot = kinds[full]
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


def _colors(names: Sequence[str]) -> dict[str, Any]:
    """Fixed colours for the paper strategies, the next tab10 colours for any other."""
    cmap = plt.get_cmap("tab10")
    extra = [n for n in names if n not in STRATEGY_ORDER]
    return {
        n: cmap(STRATEGY_ORDER.index(n) if n in STRATEGY_ORDER else (len(STRATEGY_ORDER) + extra.index(n)) % 10)
        for n in names
    }
