"""``libreoffice`` source: the LibreOffice help pages in French, Italian and German (categories fr, it, de).

The pages come from the Debian packages ``libreoffice-help-fr``, ``-it`` and ``-de``, fetched with
``apt-get download`` (no root needed, but the apt package lists must exist: run ``apt-get update`` once)
and unpacked in Python, never installed (see :mod:`trustlora.data.fetch` for the cache). Only the
languages asked for are downloaded. Every HTML page becomes plain text with :func:`html_to_text`
(scripts, styles, page header/footer/navigation and code blocks dropped, lines of fewer than 6 words
dropped); pages left with fewer than 30 words are skipped.

Importing :mod:`trustlora.data.sources` registers it; use it like any other source::

    trustlora run data.source=libreoffice

    from trustlora.config import DataConfig
    from trustlora.data.sources import load_documents

    docs = load_documents(DataConfig(source="libreoffice", categories=["fr", "de"]))  # downloads two packages
"""

from __future__ import annotations

from html.parser import HTMLParser

from trustlora.config import DataConfig
from trustlora.data import fetch
from trustlora.data.sources import DataSourceError, register, wanted_categories

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


def _libreoffice_build(store: fetch.Store, langs: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for lang in langs:
        deb = store.fetch(fetch.Deb(f"libreoffice-help-{lang}"))
        marker = f"/help/{lang}/"

        def want(p: str, marker: str = marker) -> bool:
            return marker in p and p.endswith((".html", ".htm")) and not p.endswith("/noscript.html")

        pages = sorted(fetch.deb_files(deb, "libreoffice", want))
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
    store = fetch.Store("libreoffice")
    wanted = wanted_categories(cfg, "libreoffice", LIBREOFFICE_LANGUAGES)
    return fetch.cached_documents(store, wanted, lambda missing: _libreoffice_build(store, missing))
