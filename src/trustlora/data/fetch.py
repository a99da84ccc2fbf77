"""The download/cache layer of every data source (:mod:`~trustlora.data.sources`' ``parlspeech``,
:mod:`~trustlora.data.bbc`, :mod:`~trustlora.data.libreoffice`, :mod:`~trustlora.data.codewiki`): where the
cache lives, registry downloads of wheels (``pip download``) and Debian packages (``apt-get download``),
hash checks, atomic extraction, and reading ``.deb`` archives without dpkg. Nothing is ever installed.

* :func:`downloads_dir` / :func:`source_dir`: ``<cache>/downloads`` (every download, shared by the sources)
  and ``<cache>/data/<source>`` (what a source extracted, with a ``hashes.json`` record).
* :class:`Wheel` / :class:`Deb`: a registry artifact; :func:`get_artifact` returns its file in the downloads
  folder, fetching it if needed, hash-checked against its pinned sha256, else the recorded one.
* :func:`staged`: a temp folder whose files are renamed into place only when the block succeeds, so neither
  a failed download nor a failed extraction leaves anything half-written.
* :class:`Store`: ``<cache>/data/<source>/<category>.jsonl`` (one JSON string per line) plus ``hashes.json``
  recording the sha256 of every download (with its requirement or package and version) and of every
  ``.jsonl``: a later load reads the ``.jsonl`` files whose hash matches and does not touch the archives,
  a changed download is refused. :func:`cached_documents` builds only the categories not cached.

A source built on this layer looks like::

    from trustlora.data import fetch
    from trustlora.data.sources import register, wanted_categories

    @register("mysource", default_categories=["a", "b"])
    def _mysource(cfg):
        store = fetch.Store("mysource")
        wanted = wanted_categories(cfg, "mysource", ("a", "b", "c"))
        return fetch.cached_documents(store, wanted, lambda missing: build(store, missing))

where ``build`` gets its archive with ``store.fetch(fetch.Wheel(...))`` or ``store.fetch(fetch.Deb(...))``
(reading a ``.deb`` with :func:`deb_files`) and returns ``{category: [documents]}``. Errors are one-line
:class:`DataSourceError` messages naming the source; a download that fails (offline, unknown package,
tool missing) is a :class:`DownloadError` naming the package and the command to run by hand.

This module imports nothing else of :mod:`trustlora.data`, so every source module can import it first.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustlora.cache import atomic_write_json, cache_dir, read_json, sha256_file
from trustlora.config import ConfigError

log = logging.getLogger(__name__)


class DataSourceError(ConfigError):
    """A source's data could not be obtained or verified (download failed, hash mismatch, bad archive).

    A subclass of :class:`ConfigError` (a :class:`~trustlora.config.UserError`) so front ends report it as
    the one-line message it is.
    """


class DownloadError(DataSourceError):
    """A registry artifact could not be downloaded (offline, unknown package, ``apt-get`` missing): one line
    naming the source, the package and what to do."""


# --------------------------------------------------------------------------------------------------
# cache folders, records, atomic extraction


def downloads_dir() -> Path:
    """``<cache>/downloads``: every downloaded wheel and ``.deb`` (created)."""
    return cache_dir("downloads")


def source_dir(source: str) -> Path:
    """``<cache>/data/<source>``: the files extracted for ``source`` and their ``hashes.json`` (created)."""
    return cache_dir("data", source)


@contextmanager
def staged(dest: Path, prefix: str = ".extract-") -> Iterator[Path]:
    """A fresh temp folder inside ``dest`` to write into. When the block ends without an error, every file
    left in it (hidden ones excepted) is renamed into ``dest``, each rename atomic; on an error nothing is
    moved. The temp folder is removed either way, so ``dest`` never holds a half-written file."""
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=prefix))
    try:
        yield tmp
        for p in sorted(tmp.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                os.replace(p, dest / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_hash(source: str, path: Path, expected: str | None, record_path: Path) -> str:
    """sha256 of ``path``; DataSourceError when ``expected`` is given and differs."""
    digest = sha256_file(path)
    if expected and digest != expected:
        raise DataSourceError(
            f"{source}: '{path}' has sha256 {digest}, expected {expected} (recorded in {record_path}); "
            "delete the file and run again to re-download it"
        )
    return digest


# --------------------------------------------------------------------------------------------------
# registry artifacts: pip (wheels) and apt-get (Debian packages)

_PIP_DOWNLOAD = ("-m", "pip", "download", "--no-deps", "--only-binary=:all:")


@dataclass(frozen=True)
class Wheel:
    """A wheel of ``requirement`` from PyPI, file name matching ``pattern``, optionally pinned to ``sha256``."""

    requirement: str
    pattern: str
    sha256: str | None = None
    tool = "pip"
    newest = False  # of several cached files matching ``pattern``, use the first (sorted)

    @property
    def name(self) -> str:
        return self.requirement

    def command(self, dest: Path) -> tuple[list[str], Path | None]:
        """(command, cwd) saving the wheel into ``dest``."""
        cmd = [sys.executable, *_PIP_DOWNLOAD, "--disable-pip-version-check", "-d", str(dest), self.requirement]
        return cmd, None

    def failure(self, source: str, err: str, downloads: Path) -> str:
        hand = shlex.join([sys.executable, *_PIP_DOWNLOAD, "-d", str(downloads), self.requirement])
        return (
            f"{source}: could not download {self.requirement} with pip ({err or 'no wheel saved'}); check the "
            f"network and the package index, then run again, or run by hand: {hand}"
        )

    def entry(self, path: Path, digest: str) -> dict[str, str]:
        return {"file": path.name, "requirement": self.requirement, "sha256": digest}


def _apt_lists_present() -> bool:
    lists = Path("/var/lib/apt/lists")
    return lists.is_dir() and any(lists.glob("*_Packages*"))


@dataclass(frozen=True)
class Deb:
    """The Debian package ``package`` (``apt-get download``: no root, no install; not pinned)."""

    package: str
    tool = "apt-get"
    newest = True  # of several cached versions, use the last (sorted)
    sha256 = None

    @property
    def name(self) -> str:
        return self.package

    @property
    def pattern(self) -> str:
        return f"{self.package}_*.deb"

    def command(self, dest: Path) -> tuple[list[str], Path | None]:
        return ["apt-get", "download", self.package], dest

    def failure(self, source: str, err: str, downloads: Path) -> str:
        hand = f"cd {shlex.quote(str(downloads))} && apt-get download {self.package}"
        low = err.lower()
        stale = "unable to locate" in low or "no installation candidate" in low or not _apt_lists_present()
        hint = "; the apt package lists are missing or stale: run `apt-get update` first (as root)" if stale else ""
        return (
            f"{source}: could not download the Debian package {self.package} with apt-get "
            f"({err or 'no .deb saved'}){hint}; then run again or by hand: {hand}"
        )

    def entry(self, path: Path, digest: str) -> dict[str, str]:
        parts = urllib.parse.unquote(path.name).split("_")
        version = parts[1] if len(parts) >= 3 else ""
        return {"file": path.name, "package": self.package, "version": version, "sha256": digest}


Artifact = Wheel | Deb


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 1800) -> tuple[bool, str]:
    """Run ``cmd``; (succeeded, the most telling line of its output)."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    err = next((ln for ln in reversed(lines) if ln.startswith("E:") or "error" in ln.lower()), "")
    return proc.returncode == 0, err or (lines[-1] if lines else "")


def download(source: str, art: Artifact) -> Path:
    """Download ``art`` into a temp folder of :func:`downloads_dir`, check its pinned hash, then rename it into
    place; :class:`DownloadError` (one line: package, cause, the command to run by hand) when that fails."""
    downloads = downloads_dir()
    if isinstance(art, Deb) and shutil.which("apt-get") is None:
        raise DownloadError(
            f"{source}: apt-get not found; the Debian package {art.package} is fetched with apt-get download "
            "(a Debian or Ubuntu system is needed)"
        )
    log.info("%s: downloading %s with %s", source, art.name, art.tool)
    with staged(downloads, prefix=f".{art.tool.split('-')[0]}-") as tmp:
        cmd, cwd = art.command(tmp)
        ok, err = _run(cmd, cwd=cwd)
        got = sorted(tmp.glob(art.pattern))
        if not ok or not got:
            raise DownloadError(art.failure(source, err, downloads))
        for other in tmp.iterdir():
            if other != got[0] and other.is_file():
                other.unlink()  # only the artifact itself moves into the downloads folder
        if art.sha256:
            digest = sha256_file(got[0])
            if digest != art.sha256:
                raise DataSourceError(
                    f"{source}: downloaded {got[0].name} has sha256 {digest}, expected {art.sha256}; refusing to use it"
                )
    return downloads / got[0].name


def get_artifact(source: str, art: Artifact, recorded: Any, record_path: Path) -> tuple[Path, dict[str, str]]:
    """(path, record entry) of ``art`` in the downloads folder: the file named in ``recorded`` (its earlier
    record entry), else a cached file matching its pattern, else :func:`download`-ed. Its sha256 must match
    the pinned one, or else the recorded one (DataSourceError naming ``record_path`` otherwise)."""
    downloads = downloads_dir()
    rec = recorded if isinstance(recorded, dict) else {}
    path = downloads / rec["file"] if isinstance(rec.get("file"), str) else None
    if path is None or not path.is_file():
        found = sorted(downloads.glob(art.pattern))
        path = (found[-1] if art.newest else found[0]) if found else None
        rec = {}
    if path is None:
        path = download(source, art)
    digest = check_hash(source, path, art.sha256 or rec.get("sha256"), record_path)
    return path, art.entry(path, digest)


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
# cache of extracted documents


class Store:
    """``<cache>/data/<source>``: ``<category>.jsonl`` files and ``hashes.json`` (downloads + jsonl hashes)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.dir = source_dir(source)
        self.record_path = self.dir / "hashes.json"
        self.record = read_json(self.record_path)

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

    def save(self, docs: dict[str, list[str]]) -> None:
        """Write the ``.jsonl`` of every category of ``docs`` (all renamed into place together, see
        :func:`staged`), then record their hashes."""
        hashes: dict[str, str] = {}
        with staged(self.dir) as tmp:
            for category, texts in docs.items():
                data = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in texts).encode("utf-8")
                (tmp / self.path(category).name).write_bytes(data)
                hashes[category] = hashlib.sha256(data).hexdigest()
        self.section("docs").update(hashes)
        self.write()

    def fetch(self, art: Artifact) -> Path:
        """The file of ``art`` (see :func:`get_artifact`), its hash recorded under ``downloads``."""
        downloads = self.section("downloads")
        path, entry = get_artifact(self.source, art, downloads.get(art.name), self.record_path)
        downloads[art.name] = entry
        self.write()
        return path

    def write(self) -> None:
        atomic_write_json(self.record_path, self.record)


def cached_documents(
    store: Store, categories: list[str], build: Callable[[list[str]], dict[str, list[str]]]
) -> dict[str, list[str]]:
    """Cached documents of ``categories``; ``build(missing)`` extracts the others (and may return more
    categories than asked: all it returns is cached)."""
    out = {c: store.load(c) for c in categories}
    missing = [c for c, d in out.items() if d is None]
    if missing:
        built = build(missing)
        new = {c: built.get(c, []) for c in dict.fromkeys([*missing, *built])}
        store.save(new)
        out.update((c, d) for c, d in new.items() if c in out)
    return {c: d or [] for c, d in out.items()}
