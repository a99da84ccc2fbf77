"""Robustness to attackers: every attack kind x strategy, against the same runs without attackers.

    trustlora robustness --config configs/cpu/multilingual-high.yaml --attacks nan,scale,sign_flip \
        strategies=fedavg,median,krum,predictions attack.users=0,4 out=runs/robust

Runs land in ``OUT/clean/<strategy>-seed<k>/`` (no attacker: the attacking users behave honestly),
``OUT/absent/<strategy>-seed<k>/`` (the attacking users never take part: what a perfect defence leaves) and
``OUT/<kind>/<strategy>-seed<k>/``; finished runs are reused, so a table can grow over several invocations.
``robustness.{md,csv,json}`` has, per attack x strategy, the honest users' mean final test ppl, its change against
the clean run and against the run without the attacking users (same strategy, same honest users), the trust mass
honest users put on attackers in the final W, and the number of rejected messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trustlora.attacks import KINDS, REFERENCE_KINDS
from trustlora.config import ConfigError, load_config, parse_override
from trustlora.rundir import load_metrics, load_summary

DEFAULT_STRATEGIES = ["fedavg", "median", "trimmed_mean", "krum", "weights", "validation", "predictions", "oracle"]


def parse_attacks(text: str) -> list[str]:
    kinds = [x.strip() for x in text.split(",") if x.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise ConfigError(f"--attacks: expected a comma list of {', '.join(KINDS)}, got {text!r}")
    return kinds


def run_robustness(config: str | None, overrides: list[str], attacks: list[str], progress: bool = True) -> Path:
    from trustlora.experiment import drop_overrides, run_grid, seeds_of, study_dir

    base = load_config(config, drop_overrides(overrides, "attack.kind") + [f"attack.kind={attacks[0]}"])
    if not base.attack.users:
        raise ConfigError("attack.users: expected the attacking users, e.g. attack.users=0,4")
    rest = drop_overrides(overrides, "out", "attack.kind")
    clean = drop_overrides(rest, "attack.users")  # the attacking users behave honestly
    attackers = [o for o in rest if parse_override(o)[0] == "attack.users"]
    points = []
    for strat in base.strategies or DEFAULT_STRATEGIES:
        points.append((f"clean/{strat}", [f"strategy={strat}"]))
        for kind in ("absent", *attacks):  # absent: the attacking users never take part
            points.append((f"{kind}/{strat}", [*attackers, f"strategy={strat}", f"attack.kind={kind}"]))
    out = study_dir(base, "robust")
    run_grid(config, clean, points, seeds_of(base), out, progress=progress)
    write_robustness_table(out)
    return out


def join_tables(paths: list[str], overrides: list[str]) -> Path:
    """``--join``: the rows of finished ``robustness.json`` files (later files win per cell) plus the runs already in
    ``out=DIR`` (they win over the files), written as one table in DIR. ``key=value`` items among ``paths`` (argparse
    puts trailing overrides there) count as overrides."""
    overrides = [*overrides, *(p for p in paths if "=" in p)]
    paths = [p for p in paths if "=" not in p]
    parsed = [parse_override(o) for o in overrides]
    out = [v for k, v in parsed if k == "out"]
    if not out or len(out) < len(parsed):
        raise ConfigError("robustness --join: expected only out=DIR beside the files (the joined table's directory)")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"robustness --join: {missing[0]}: no such file (expected a robustness.json)")
    dest = Path(str(out[-1]))
    rows = merge_rows(load_rows([Path(p) for p in paths]), collect(dest) if dest.is_dir() else [])
    dest.mkdir(parents=True, exist_ok=True)
    write_robustness_table(dest, rows)
    return dest


def collect(out: Path) -> list[dict]:
    """One row per (attack, strategy, seed) with a finished attacked run and its clean counterpart."""
    rows = []
    for summ in sorted(out.glob("*/*-seed*/summary.json")):
        kind = summ.parent.parent.name
        if kind in ("clean", *REFERENCE_KINDS):
            continue
        s = load_summary(summ)
        atk = s.get("attack") or {}
        honest = atk.get("honest_users") or []
        row = {
            "attack": kind,
            "strategy": s["strategy"],
            "seed": s["seed"],
            "honest_mean_test_ppl": atk.get("honest_mean_test_ppl"),
            "clean_honest_mean_test_ppl": None,
            "change": None,
            "absent_honest_mean_test_ppl": None,
            "change_vs_absent": None,
            "trust_mass_on_attackers": atk.get("trust_mass_on_attackers"),
            "rejected_messages": atk.get("rejected_messages"),
            **dropped_updates(summ.parent / "metrics.jsonl", atk.get("users") or []),
        }
        for ref, key, change in (
            ("clean", "clean_honest_mean_test_ppl", "change"),
            ("absent", "absent_honest_mean_test_ppl", "change_vs_absent"),
        ):
            path = out / ref / summ.parent.name / "summary.json"
            if path.is_file() and honest:
                c = load_summary(path)
                row[key] = float(np.mean([c["final_test_ppl"][i] for i in honest]))
                if row["honest_mean_test_ppl"] is not None:
                    row[change] = row["honest_mean_test_ppl"] / row[key] - 1.0
        rows.append(row)
    return rows


def merge_rows(*tables: list[dict]) -> list[dict]:
    """One row per (attack, strategy, seed): a later table's row replaces an earlier one's (a cell rerun)."""
    return list({(r["attack"], r["strategy"], r["seed"]): r for rows in tables for r in rows}.values())


def load_rows(paths: list[Path]) -> list[dict]:
    """Rows of several ``robustness.json`` files, merged by :func:`merge_rows` (later files win)."""
    tables = []
    for p in paths:
        try:
            tables.append(merge_rows(json.loads(Path(p).read_text())["rows"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{p}: expected a robustness.json: a 'rows' list of rows with attack, strategy, seed "
                f"({type(e).__name__})"
            ) from None
    return merge_rows(*tables)


def dropped_updates(metrics: Path, attackers: list[int]) -> dict[str, int | None]:
    """Updates honest receivers dropped by ``faults.update_check`` / ``faults.duplicates`` over the run (the
    ``harmful`` pairs of the trust records): from attackers (the defence working) and from honest peers (its cost).
    None where the run's records carry no such field (runs of versions before the check)."""
    recs = [r for r in load_metrics(metrics) if r.get("kind") == "trust"] if metrics.is_file() else []
    if not recs or any("harmful" not in r for r in recs):
        return {"dropped_from_attackers": None, "dropped_from_honest": None}
    bad = set(attackers)
    pairs = [(i, j) for r in recs for i, j in r["harmful"] if i not in bad]
    return {
        "dropped_from_attackers": sum(j in bad for _, j in pairs),
        "dropped_from_honest": sum(j not in bad for _, j in pairs),
    }


def _num(x, spec: str) -> str:
    from trustlora.tables import DASH

    return DASH if x is None else format(x, spec)


def _pct(x, spec: str = ".1f", sign: str = "+", unit: str = "%") -> str:
    """A fraction as a percentage ('—' for None)."""
    from trustlora.tables import DASH

    return DASH if x is None else f"{100 * x:{sign}{spec}}{unit}"


SUMMARY_ORDER = ["fedavg", "weights", "validation", "predictions", "oracle", "median", "trimmed_mean", "krum"]
"""Column order of the summary: the plain average, the trust strategies, the oracle, the robust aggregators."""


def summary_lines(rows: list[dict]) -> list[str]:
    """The compact attack x strategy table: ``vs w/o attackers / trust on attackers`` per cell (seeds averaged),
    '—' where a cell has no run, and a last row with each strategy's honest ppl clean / w/o attackers."""
    from trustlora.tables import DASH

    seen = {r["strategy"] for r in rows}
    strats = [s for s in SUMMARY_ORDER if s in seen] + sorted(seen - set(SUMMARY_ORDER))
    kinds = [k for k in KINDS if any(r["attack"] == k for r in rows)]

    def mean(vals):
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    def cell(kind, strat):
        sel = [r for r in rows if r["attack"] == kind and r["strategy"] == strat]
        ch, tm = mean([r["change_vs_absent"] for r in sel]), mean([r["trust_mass_on_attackers"] for r in sel])
        if ch is None and tm is None:
            return DASH
        return f"{_pct(ch, unit=' %')} / {_pct(tm, sign='', unit=' %')}"

    def refs(strat):
        sel = [r for r in rows if r["strategy"] == strat]
        c = mean([r["clean_honest_mean_test_ppl"] for r in sel])
        a = mean([r["absent_honest_mean_test_ppl"] for r in sel])
        return f"{_num(c, '.2f')} / {_num(a, '.2f')}"

    lines = ["| attack | " + " | ".join(strats) + " |", "|---|" + "---:|" * len(strats)]
    lines += [f"| {k} | " + " | ".join(cell(k, s) for s in strats) + " |" for k in kinds]
    lines.append("| honest ppl clean / w/o attackers | " + " | ".join(refs(s) for s in strats) + " |")
    return lines


def write_robustness_table(out: Path, rows: list[dict] | None = None) -> dict[str, Path]:
    """``robustness.{md,csv,json}`` in ``out`` from its runs (or from ``rows``, e.g. tables of several
    directories joined: :func:`load_rows`)."""
    from trustlora.tables import DASH, format_table, write_table_files
    from trustlora.trust import names

    rows = collect(out) if rows is None else [dict(r) for r in rows]
    if not rows:
        raise ConfigError(f"{out}: no finished attacked runs under <attack>/<strategy>-seed<k>/")
    order = {s: k for k, s in enumerate(names())}
    kinds = [k for k in KINDS if any(r["attack"] == k for r in rows)]
    rows.sort(key=lambda r: (kinds.index(r["attack"]), order.get(r["strategy"], 99), r["seed"]))

    table = [
        [
            r["attack"],
            r["strategy"],
            _num(r["honest_mean_test_ppl"], ".2f"),
            _num(r["clean_honest_mean_test_ppl"], ".2f"),
            _pct(r["change"]),
            _num(r["absent_honest_mean_test_ppl"], ".2f"),
            _pct(r["change_vs_absent"]),
            _pct(r["trust_mass_on_attackers"], sign=""),
            _num(r["rejected_messages"], "d"),
            DASH
            if r["dropped_from_attackers"] is None
            else f"{r['dropped_from_attackers']} / {r['dropped_from_honest']}",
        ]
        for r in rows
    ]
    header = [
        "attack",
        "strategy",
        "honest ppl",
        "clean ppl",
        "vs clean",
        "w/o attackers ppl",
        "vs w/o",
        "trust on attackers",
        "rejected msgs",
        "dropped updates (atk / honest)",
    ]
    md = (
        "# Robustness to attackers\n\nHonest users' mean final test perplexity under each attack; the same users' "
        "mean in the run where the attacking users behave honestly (clean) and in the run where they never take part "
        "(w/o attackers: what a perfect defence leaves); same strategy, data and seed. Trust on attackers: the trust "
        "mass honest users give to attackers in the final W (global aggregators: their bookkeeping W). Dropped "
        "updates: [receiver, sender] pairs honest receivers left out over the run by the update and duplicate "
        "checks (from attackers: the defence working; from honest peers: its cost).\n\n"
        + format_table(header, table)
        + "\n\n## Summary\n\nPer cell: honest mean test ppl vs the run without the attackers / trust on attackers.\n\n"
        + "\n".join(summary_lines(rows))
        + "\n"
    )
    paths = write_table_files(out, "robustness", md, rows, list(rows[0]))
    return paths
