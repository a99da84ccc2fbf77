"""Crash-safe per-round checkpoints, for one process or many (torch.distributed).

Layout inside a run directory while it trains::

    checkpoint.json                       {"round": r}: the last round that EVERY process saved (commit point)
    checkpoint/u<first user>-r<r>.pt      one file per process: its users' adapters, optimizer, lr schedule,
                                          RNG states (batch samplers, per-user dropout generators)

After round r every process writes its file, all wait for each other, the process hosting user 0 rewrites
``checkpoint.json``, all wait again, and each deletes its older files. A crash at any moment leaves a
committed round whose files exist in every process's run directory, so rerunning the same command resumes
there (see :func:`resume_round`). Finished runs delete all of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trustlora.cache import atomic_write_bytes, atomic_write_json
from trustlora.config import Config, ConfigError, read_yaml, to_dict

MARKER = "checkpoint.json"


def _file(out: Path, first_user: int, round_: int) -> Path:
    return out / "checkpoint" / f"u{first_user}-r{round_}.pt"


GRID_FIELDS = ("strategies", "seeds")
"""Config fields that steer a comparison (which runs it holds), not the run: a run of a comparison resumes whatever
they say now (a strategy or seed added to the comparison, or reordered, leaves its interrupted runs resumable)."""


def _run_config(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in GRID_FIELDS}


def resume_round(cfg: Config, out: Path) -> int:
    """The round to resume after (0 = fresh start). Refuses to overwrite or mix runs in one directory."""
    if not out.exists():
        return 0
    if (out / "summary.json").exists():
        raise ConfigError(f"out: '{out}' already holds a finished run; choose another out=PATH")
    marker = out / MARKER
    cfg_file = out / "config.yaml"
    same = cfg_file.exists() and _run_config(read_yaml(cfg_file) or {}) == _run_config(to_dict(cfg))
    if not marker.exists():
        if same or not any(out.iterdir()):
            return 0  # empty, or the same run crashed before its first checkpoint: start over
        raise ConfigError(f"out: '{out}' exists and is not empty (no checkpoint to resume); choose another out")
    if not same:
        raise ConfigError(
            f"out: '{out}' holds a checkpoint of a different config; rerun with the same config "
            "to resume, or choose another out"
        )
    return int(json.loads(marker.read_text())["round"])


def save(out: Path, first_user: int, round_: int, state: dict) -> None:
    """This process's state after ``round_`` (streamed to a temp file, then renamed)."""
    atomic_write_bytes(_file(out, first_user, round_), lambda f: torch.save(state, f))


def commit(out: Path, round_: int) -> None:
    """Called by the process hosting user 0 once every process has saved ``round_``."""
    atomic_write_json(out / MARKER, {"round": round_})


def prune(out: Path, first_user: int, keep_round: int) -> None:
    """Delete this process's files older than the committed round."""
    for p in (out / "checkpoint").glob(f"u{first_user}-r*.pt"):
        if int(p.stem.rsplit("-r", 1)[1]) < keep_round:
            p.unlink(missing_ok=True)


def load(out: Path, first_user: int, round_: int) -> dict:
    path = _file(out, first_user, round_)
    if not path.exists():
        raise ConfigError(
            f"out: '{out}' says round {round_} is checkpointed but {path} is missing "
            "(each process resumes from the run directory on its own machine)"
        )
    return torch.load(path, weights_only=False)


def clear(out: Path, first_user: int, main: bool) -> None:
    """Remove this process's checkpoint files (and, on the main process, the marker) after a finished run."""
    for p in (out / "checkpoint").glob(f"u{first_user}-r*.pt"):
        p.unlink(missing_ok=True)
    if main:
        (out / MARKER).unlink(missing_ok=True)
    try:
        (out / "checkpoint").rmdir()
    except OSError:
        pass  # another process still has files there, or it never existed
