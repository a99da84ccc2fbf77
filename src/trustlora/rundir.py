"""Reading run directories: the one place that opens ``summary.json``, ``metrics.jsonl`` and ``config.yaml``
of a run and re-derives what a run left out (per-user numbers from the eval records, the oracle W, the
users' dominant categories, W per trust round).

A run directory (written by :func:`trustlora.api.run`) holds ``config.yaml``, ``metrics.jsonl`` (one JSON
record per line, kinds ``eval``, ``train`` and ``trust``) and, once finished, ``summary.json``, whose
``version`` key is :data:`SUMMARY_VERSION` (absent in runs written before it was added; same keys)::

    from trustlora.rundir import find_runs, load_run, mean_test_ppl, oracle_w, user_categories

    run = load_run("runs/x/predictions-seed0")      # Run(path, summary, config, records, strategy, seed)
    mean_test_ppl(run.summary, run.records, "final")  # summary's value, else from the last test eval
    oracle_w(run.summary)                           # [N, N] or None
    runs = find_runs("runs/x")                      # every run of a comparison directory, sorted

Lower level: :func:`load_metrics` / :func:`load_summary` / :func:`read_config` read one file each (a missing
file gives an empty result); :func:`sorted_test_evals`, :func:`pick_eval`, :func:`w_by_round` and
:func:`mean_ppl_series` select and merge records. A path that is not a run directory raises
:class:`RunDirError`, a :class:`trustlora.config.UserError` (one line; the CLI exits 2).

Used by the reports (:mod:`trustlora.report`), the analyses (:mod:`trustlora.analyze`) and the sweep,
robustness and scaling tables. Imports neither matplotlib nor, until it needs the trust registry, torch.
"""

from __future__ import annotations

import json
import numbers
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trustlora.config import UserError
from trustlora.metrics import dominant_categories

__all__ = [
    "SUMMARY_VERSION",
    "RunDirError",
    "Run",
    "is_number",
    "load_metrics",
    "load_summary",
    "read_config",
    "cfg_get",
    "load_run",
    "find_runs",
    "strategy_order",
    "strategy_rank",
    "first_seed_per_strategy",
    "floats",
    "as_matrix",
    "step_key",
    "sorted_test_evals",
    "pick_eval",
    "n_users",
    "user_categories",
    "oracle_w",
    "w_by_round",
    "mean_ppl_series",
    "mean_test_ppl",
]

SUMMARY_VERSION = 1
"""Version of the ``summary.json`` layout, written as its ``version`` key. Bump it when a key changes meaning or
goes away (adding a key does not need a bump); readers treat a summary without ``version`` as version 1."""

_RUN_NAME_RE = re.compile(r"^(?P<strategy>.+)-seed(?P<seed>\d+)$")


class RunDirError(UserError):
    """A path that is not a readable run (or comparison) directory: one line naming it and what is missing."""


def is_number(x: Any) -> bool:
    """A real number of a JSON record (``bool`` is not one)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# --------------------------------------------------------------------------------------------------
# Files
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


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


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


def _is_run_dir(p: Path) -> bool:
    return (p / "summary.json").exists() or (p / "metrics.jsonl").exists()


def _check_dir(p: Path) -> None:
    if not p.exists():
        raise RunDirError(f"{p}: no such directory")
    if not p.is_dir():
        raise RunDirError(f"{p}: not a directory")


def load_run(path: str | Path) -> Run:
    """Read a run directory (``summary.json`` and/or ``metrics.jsonl``, optional ``config.yaml``).

    Strategy and seed come from the summary, else the config, else the directory name ``<strategy>-seed<k>``.
    Raises :class:`RunDirError` for a missing directory, one holding neither file, or an unreadable summary."""
    p = Path(path)
    _check_dir(p)
    if not _is_run_dir(p):
        raise RunDirError(f"{p}: neither summary.json nor metrics.jsonl found (not a run directory)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = load_summary(p / "summary.json")
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise RunDirError(f"{p / 'summary.json'}: unreadable ({e})") from None
    config = read_config(p)
    m = _RUN_NAME_RE.match(p.name)
    strategy = summary.get("strategy") or config.get("strategy") or (m.group("strategy") if m else p.name)
    seed = summary.get("seed", config.get("seed"))
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = int(m.group("seed")) if m else None
    return Run(p, summary, config, load_metrics(p / "metrics.jsonl"), str(strategy), seed)


def strategy_order() -> tuple[str, ...]:
    """The registered trust strategies in display order (paper six, robust baselines, then plug-ins)."""
    from trustlora.trust import names  # the registry (imports torch): only when asked

    return tuple(names())


def strategy_rank(name: str) -> tuple[int, str]:
    """Sort key of a strategy name: :func:`strategy_order` first, other names after it by name."""
    order = strategy_order()
    return (order.index(name), "") if name in order else (len(order), name)


def find_runs(compare_dir: str | Path) -> list[Run]:
    """The run directories inside a comparison directory, sorted by strategy (registry order first) then seed."""
    d = Path(compare_dir)
    _check_dir(d)
    runs = [load_run(p) for p in sorted(d.iterdir()) if p.is_dir() and _is_run_dir(p)]
    if not runs:
        raise RunDirError(f"{d}: no run directories (with summary.json or metrics.jsonl) inside")
    return sorted(runs, key=lambda r: (strategy_rank(r.strategy), r.seed if r.seed is not None else 1 << 30, r.name))


def first_seed_per_strategy(runs: list[Run]) -> list[Run]:
    """The first run of every strategy, in order (of runs sorted by :func:`find_runs`: the lowest seed)."""
    seen: dict[str, Run] = {}
    for r in runs:
        seen.setdefault(r.strategy, r)
    return list(seen.values())


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def floats(xs: Any) -> list[float] | None:
    """A list of floats (``None`` entries as NaN); ``None`` when ``xs`` is missing or not a list of numbers."""
    if xs is None:
        return None
    try:
        return [float("nan") if x is None else float(x) for x in xs]
    except (TypeError, ValueError):
        return None


def as_matrix(x: Any) -> np.ndarray | None:
    """A non-empty 2-D float array, or ``None`` when ``x`` is missing or is not one."""
    if x is None:
        return None
    try:
        m = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        return None
    return m if m.ndim == 2 and m.size else None


def step_key(rec: dict) -> tuple[float, float]:
    """Sort key of a record: ``(step, round)``."""
    return (float(rec.get("step", 0) or 0), float(rec.get("round", 0) or 0))


def sorted_test_evals(records: list[dict]) -> list[dict]:
    """The test ``eval`` records (with per-user ``ppl``), sorted by step."""
    evals = [r for r in records if r.get("kind") == "eval" and r.get("split", "test") == "test" and "ppl" in r]
    return sorted(evals, key=step_key)


def pick_eval(evals: list[dict], which: str) -> dict | None:
    """The base (first step) or final (last step) test eval, preferring a full evaluation at that step."""
    if not evals:
        return None
    if which == "base":
        base = [r for r in evals if r.get("model") == "base"]
        target = step_key(base[0]) if base else step_key(evals[0])
    else:
        target = step_key(evals[-1])
    same = [r for r in evals if step_key(r) == target]
    full = [r for r in same if r.get("full")]
    return (full or same)[-1]


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


# --------------------------------------------------------------------------------------------------
# Derived numbers of a run (each computed here only)
# --------------------------------------------------------------------------------------------------


def mean_test_ppl(summary: dict, records: list[dict], which: str) -> float:
    """Mean test perplexity over users, ``which`` = ``"base"`` or ``"final"``: ``summary[<which>_mean_test_ppl]``,
    else the mean of ``summary[<which>_test_ppl]``, else the mean of the first/last test eval (a full one
    preferred, partial records merged; :func:`mean_ppl_series`), else NaN."""
    if which not in ("base", "final"):
        raise ValueError(f"mean_test_ppl: which must be 'base' or 'final', got {which!r}")
    v = summary.get(f"{which}_mean_test_ppl")
    if is_number(v):
        return float(v)
    per_user = floats(summary.get(f"{which}_test_ppl"))
    if per_user:
        return float(np.mean(np.asarray(per_user, dtype=float)))
    series = mean_ppl_series(records)
    if not series:
        return float("nan")
    return series[0]["mean_ppl"] if which == "base" else series[-1]["mean_ppl"]


def n_users(summary: dict, records: Iterable[dict] = (), config: dict | None = None) -> int:
    """Number of users of a run: ``summary["users"]``, else ``data.users`` of its config, else the longest
    per-user list the run holds (the summary's test perplexities and oracle W, the records' ``ppl`` and ``W``)."""
    for n in (summary.get("users"), cfg_get(config or {}, "data.users")):
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    keys = ("base_test_ppl", "final_test_ppl", "oracle_W")
    lens = [len(summary[k]) for k in keys if isinstance(summary.get(k), list)]
    for r in records:
        lens += [len(r[k]) for k in ("ppl", "W") if isinstance(r.get(k), list)]
    return max(lens, default=0)


def user_categories(summary: dict, n: int) -> list[str | None]:
    """Per-user dominant category names: ``summary["user_categories"]`` (a name, or a list of names joined
    with "+", per user), else the dominant category of the user's ``mixture`` row over ``categories``
    (:func:`trustlora.metrics.dominant_categories`), else ``None``."""
    out: list[str | None] = [None] * n
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
            row = floats(mix[i])
            if row and len(row) == len(cats):
                out[i] = dominant_categories([row], cats)[0]
    return out


def oracle_w(summary: dict, from_mixture: bool = True) -> np.ndarray | None:
    """The oracle trust matrix of a run: ``summary["oracle_W"]``, else (unless ``from_mixture=False``: only what
    the run recorded) computed from ``summary["mixture"]`` by :func:`trustlora.trust.oracle.oracle_matrix`
    (row-normalised D Dᵀ); ``None`` without either."""
    w = as_matrix(summary.get("oracle_W"))
    if w is not None or not from_mixture:
        return w
    mix = as_matrix(summary.get("mixture"))
    if mix is None:
        return None
    from trustlora.trust.oracle import oracle_matrix  # the trust package imports torch: only when needed

    return oracle_matrix(mix)
