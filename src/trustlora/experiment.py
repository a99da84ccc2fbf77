"""Experiment grids: the one loop behind ``trustlora compare``, ``sweep``, ``scale`` and ``robustness``.

A study is a list of *points* ``(name, overrides)`` times a list of seeds. Every (point, seed) is one ordinary
run (:func:`trustlora.api.run`) of ``config`` + the study's overrides + the point's overrides + ``seed=<k>``, in
the run directory ``<out>/<name>-seed<k>/`` (``name`` may hold a ``/``: ``"N6/fedavg"`` -> ``OUT/N6/fedavg-seed0/``).

    from trustlora.config import load_config
    from trustlora.experiment import drop_overrides, run_grid, seeds_of, study_dir

    base = load_config(config, overrides)
    points = [(s, [f"strategy={s}"]) for s in ("local", "fedavg")]
    runs = run_grid(config, drop_overrides(overrides, "out"), points, seeds_of(base), study_dir(base, "compare"))
    for r in runs:                      # in run order; every r.run_dir holds summary.json
        print(r.name, r.seed, r.run_dir)

What :func:`run_grid` guarantees:

- every run's config is loaded and validated before any compute (:func:`check_grid`): a bad point fails in
  seconds, not after hours;
- a run whose directory already holds ``summary.json`` is not run again (:func:`trustlora.api.run_or_reuse`),
  so an interrupted study resumes and a table can grow over several invocations;
- consecutive runs share one :class:`trustlora.api.Workspace` (model, tokenizer, partition, stacked adapters,
  base eval), rebuilt only when a run's data/model key differs (``api._data_key``);
- order: seed by seed (every point of seed 0 first, so a partial study already gives a whole table for one
  seed), or with ``seeds_outer=False`` point by point (every seed of a point before the next point).

Tabulating is the caller's: read each ``run_dir`` (:mod:`trustlora.rundir`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from trustlora.config import Config, load_config, parse_override

Point = tuple[str, Sequence[str]]
"""``(name, overrides)``: the run directory stem (relative to the study directory) and what makes the point."""


class GridRun(NamedTuple):
    """One finished (point, seed) of a grid."""

    name: str
    seed: int
    run_dir: Path


def run_dir_of(out_dir: Path, name: str, seed: int) -> Path:
    """``<out_dir>/<name>-seed<seed>``: where the run of a point and a seed lives."""
    return Path(out_dir) / f"{name}-seed{seed}"


def seeds_of(cfg: Config) -> list[int]:
    """The study's seeds: ``seeds=...`` if given, else ``[seed]``."""
    return list(cfg.seeds) or [cfg.seed]


def study_dir(cfg: Config, prefix: str) -> Path:
    """The study directory: ``out=...`` if given, else ``runs/<prefix>-<time>``."""
    return Path(cfg.out or Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


def drop_overrides(overrides: Iterable[str], *keys: str) -> list[str]:
    """``overrides`` without those setting one of ``keys`` (e.g. ``out``, which the grid sets per run)."""
    return [o for o in overrides if parse_override(o)[0] not in keys]


def _grid(points: Sequence[Point], seeds: Sequence[int], seeds_outer: bool) -> list[tuple[str, Sequence[str], int]]:
    if seeds_outer:
        return [(name, ov, seed) for seed in seeds for name, ov in points]
    return [(name, ov, seed) for name, ov in points for seed in seeds]


def _run_overrides(overrides: Sequence[str], point_overrides: Sequence[str], seed: int) -> list[str]:
    return [*overrides, *point_overrides, f"seed={seed}"]


def check_grid(config: str | None, overrides: Sequence[str], points: Sequence[Point], seeds: Sequence[int]) -> None:
    """Load every run's config (raises :class:`trustlora.config.ConfigError` on the first bad one); no compute."""
    for _, point_overrides, seed in _grid(points, seeds, seeds_outer=True):
        load_config(config, _run_overrides(overrides, point_overrides, seed))


def run_grid(
    config: str | None,
    overrides: Sequence[str],
    points: Sequence[Point],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    seeds_outer: bool = True,
    progress: bool = True,
    log: Callable[..., None] = print,
) -> list[GridRun]:
    """Run (or reuse) every point x seed into ``<out_dir>/<name>-seed<k>/``; returns them in run order.

    ``config``: YAML preset (None: defaults); ``overrides``: common to every run (without ``out``: the grid sets
    it per run); ``points``: ``(name, overrides)`` (two points of one name share one run directory: the second
    reuses the first's run); ``log``: where the "already finished" notices go.
    """
    from trustlora.api import Workspace, run_or_reuse

    check_grid(config, overrides, points, seeds)
    ws: Workspace | None = None
    done = []
    for name, point_overrides, seed in _grid(points, seeds, seeds_outer):
        run_dir = run_dir_of(Path(out_dir), name, seed)
        run_overrides = _run_overrides(overrides, point_overrides, seed)
        ws = run_or_reuse(config, run_overrides, run_dir, ws, progress=progress, log=log)
        done.append(GridRun(name, seed, run_dir))
    return done
