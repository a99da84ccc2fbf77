"""Text of the reports and analyses: markdown tables, number formatting, and the ``<stem>.{md,csv,json}`` files.

    from trustlora.tables import DASH, format_table, fmt_float, write_outputs

    print(format_table(["user", "ppl"], [["u0", 31.25], ["u1", None]]))   # None shows as "—"
    fmt_float(float("nan"))                     # "—": missing or non-finite numbers never print as nan
    fmt_pct(40.0, 30.0)                         # "-25.0%": relative change of final against base
    write_outputs(out_dir, "trust", md_lines, header, rows, obj)   # trust.md, trust.csv, trust.json

:func:`write_table_files` is the older writer of the robustness and scaling tables (CSV cells written with
``str``, JSON ``{"rows": rows}``); :func:`write_outputs` that of the analyses (CSV through :mod:`csv`, empty
cells for missing numbers, strict JSON through :func:`json_safe`). Every file is written atomically
(:mod:`trustlora.cache`). No plotting here (:mod:`trustlora.plots`), no reading of runs (:mod:`trustlora.rundir`).
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustlora.cache import atomic_write_json, atomic_write_text
from trustlora.rundir import is_number

__all__ = [
    "DASH",
    "format_table",
    "write_table_files",
    "write_outputs",
    "json_safe",
    "fmt_float",
    "fmt_percent",
    "fmt_pct",
    "fmt_duration",
    "fmt_bytes",
    "user_labels",
]

DASH = "—"
"""What a table shows for a missing or undefined value."""

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


def _cell_text(x: Any, floatfmt: str) -> str:
    if x is None:
        return DASH
    if is_number(x) and not isinstance(x, numbers.Integral):
        return format(float(x), floatfmt)
    return str(x).replace("|", "\\|").replace("\n", " ")


def _looks_numeric(x: Any) -> bool:
    if is_number(x):
        return True
    return isinstance(x, str) and bool(_NUMBER_RE.match(x.strip().strip("*").strip()))


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
# Numbers as text
# --------------------------------------------------------------------------------------------------


def fmt_float(x: float | None, fmt: str = ".2f") -> str:
    """``x`` formatted with ``fmt``; "—" when it is ``None`` or not finite."""
    return format(x, fmt) if x is not None and math.isfinite(x) else DASH


def fmt_percent(x: float | None) -> str:
    """A share as a percentage with one decimal ("12.5%"); "—" when ``None`` or not finite."""
    return f"{x * 100:.1f}%" if x is not None and math.isfinite(x) else DASH


def fmt_pct(base: float, final: float) -> str:
    """Relative change of ``final`` against ``base`` ("-25.0%"); "—" when undefined."""
    if not (math.isfinite(base) and math.isfinite(final)) or base == 0:
        return DASH
    return f"{(final - base) / base * 100:+.1f}%"


def fmt_duration(s: Any) -> str:
    """Seconds with the h/m/s reading: "3725.4 s (1h 02m 05s)"; "—" when not a finite number."""
    if not is_number(s) or not math.isfinite(float(s)):
        return DASH
    s = float(s)
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    return f"{s:.1f} s ({h}h {m:02d}m {sec:02d}s)"


def fmt_bytes(b: float) -> str:
    """A byte count in B / KiB / MiB / GiB ("512 B", "1.00 MiB")."""
    b = float(b)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.2f} {unit}"
        b /= 1024
    return f"{b:.2f} GiB"  # pragma: no cover


def _short(s: str, width: int = 10) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def user_labels(cats: Sequence[str | None]) -> list[str]:
    """Row/axis labels of users: "u3 (de)" from their dominant categories ("u3" where unknown: None or "—")."""
    return [f"u{i}" if c is None or c == DASH else f"u{i} ({_short(c)})" for i, c in enumerate(cats)]


# --------------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------------


def json_safe(x: Any) -> Any:
    """NaN/inf become null (numpy scalars plain numbers) so the output is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def write_table_files(out: Path, stem: str, md: str, rows: list[dict], keys: list[str]) -> dict[str, Path]:
    """``<out>/<stem>.md`` (``md``), ``.csv`` (``keys`` of every row) and ``.json`` (``{"rows": rows}``), each
    written atomically. Returns the paths by kind."""
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    atomic_write_text(paths["md"], md)
    csv_text = ",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows)
    atomic_write_text(paths["csv"], csv_text)
    atomic_write_json(paths["json"], {"rows": rows})
    return paths


def _csv_cell(x: Any) -> Any:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else ""
    if isinstance(x, list | tuple):
        return " ".join(str(v) for v in x)
    return x


def write_outputs(out_dir: Path, stem: str, md: list[str], header: list[str], rows: list[list], obj: dict) -> dict:
    """``<out_dir>/<stem>.md`` (the lines ``md``), ``.csv`` (``header`` then ``rows``; None and non-finite
    floats empty, lists space-separated) and ``.json`` (``obj``, strict JSON), each written atomically.
    Returns ``{"md": path, "csv": path, "json": path}``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow([_csv_cell(x) for x in r])
    return {
        "md": atomic_write_text(out_dir / f"{stem}.md", "\n".join(md).rstrip() + "\n"),
        "csv": atomic_write_text(out_dir / f"{stem}.csv", buf.getvalue()),
        "json": atomic_write_json(out_dir / f"{stem}.json", json_safe(obj)),
    }
