"""Shared helpers of the paper analyses: :class:`AnalysisError` and the default output directory (:func:`beside`).

Not a command itself; used by every ``trustlora analyze {table4,trust,bytes,topology,placement}`` module
(see :mod:`trustlora.analyze`). Reading runs is :mod:`trustlora.rundir`, the tables' text and output files
:mod:`trustlora.tables`, the figures :mod:`trustlora.plots`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from trustlora.config import ConfigError


class AnalysisError(ConfigError):
    """A user error in an analysis command (no finished run, no trust record, ...): one line, exit 2. A missing
    or unreadable run directory raises :class:`trustlora.rundir.RunDirError`, a :class:`trustlora.config.UserError`
    too."""


def beside(paths: Sequence[Path]) -> Path:
    """Default output directory of a command over several directories: the common parent of their parents."""
    parents = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(parents))
