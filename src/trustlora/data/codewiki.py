"""``codewiki`` source: Java code (category ``java``) vs. English Wikipedia articles (category ``wiki``).

* ``java``: the ``java.base`` sources in ``src.zip`` of the Debian package ``openjdk-17-source``
  (fetched with ``apt-get download``, never installed; leading licence comment removed, one document
  per file, at most :data:`JAVA_MAX_FILES`).
* ``wiki``: the English Wikipedia articles of the dump samples ``gensim/test/test_data/enwiki-*.bz2``
  inside the ``gensim`` 4.4.0 wheel (downloaded with pip for this Python, opened as a zip, never
  installed; the dumps are checked against pinned sha256s), with the wiki markup stripped by
  :func:`clean_wikitext`, redirects and pages under 50 words dropped.

Downloads and extracted documents are cached (see :mod:`trustlora.data.fetch`). Importing
:mod:`trustlora.data.sources` registers the source; use it like any other::

    trustlora run data.source=codewiki

    from trustlora.config import DataConfig
    from trustlora.data.sources import load_documents

    docs = load_documents(DataConfig(source="codewiki"))             # java, wiki
"""

from __future__ import annotations

import bz2
import hashlib
import html
import io
import re
import xml.etree.ElementTree as ET
import zipfile
from typing import Any

from trustlora.config import DataConfig
from trustlora.data import fetch
from trustlora.data.sources import DataSourceError, decode_legacy, register, wanted_categories

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
        docs = (strip_licence_header(decode_legacy(zf.read(n))) for n in names)
        return [d for d in docs if d]


def _java_build(store: fetch.Store) -> list[str]:
    deb = store.fetch(fetch.Deb(JAVA_PACKAGE))
    found = list(fetch.deb_files(deb, "codewiki", lambda p: p.startswith("usr/lib/jvm/") and p.endswith("/src.zip")))
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


def _wiki_build(store: fetch.Store) -> list[str]:
    wheel = store.fetch(fetch.Wheel(GENSIM_REQUIREMENT, "gensim-4.4.0-*.whl"))
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
    store = fetch.Store("codewiki")
    wanted = wanted_categories(cfg, "codewiki", ("java", "wiki"))
    builders = {"java": _java_build, "wiki": _wiki_build}
    return fetch.cached_documents(store, wanted, lambda missing: {c: builders[c](store) for c in missing})
