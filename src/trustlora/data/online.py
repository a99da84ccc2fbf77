"""Online sources streamed from the Hugging Face hub: ``ag_news``, ``wikipedia`` and ``codewiki_hf``.

They need the Hugging Face ``datasets`` package (``pip install trustlora[hf]``) and the hub; rows are
streamed and nothing is cached here. Each category takes documents until it holds about 8 characters per
token of the whole token budget of ``data``, at most :data:`HF_MAX_DOCS`:

* ``ag_news``: AG News (``fancyzhx/ag_news``) with categories World, Sports, Business, Sci/Tech.
* ``wikipedia``: ``wikimedia/wikipedia`` 2023-11-01 in fr, it, de (the languages of ``libreoffice``).
* ``codewiki_hf``: ``java`` = Java files of ``codeparrot/github-code`` (its parquet shards, rows whose
  language is Java), ``wiki`` = ``wikimedia/wikipedia`` 2023-11-01 in English (the online counterpart
  of ``codewiki``).

Importing :mod:`trustlora.data.sources` registers them; use them like any other source::

    trustlora run data.source=ag_news

    from trustlora.config import DataConfig
    from trustlora.data.sources import load_documents

    docs = load_documents(DataConfig(source="wikipedia", categories=["de"]))

A missing ``datasets`` package or an unreachable hub is a one-line
:class:`~trustlora.data.sources.DataSourceError` naming the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from trustlora.config import DataConfig
from trustlora.data.sources import DataSourceError, register, wanted_categories

HF_MAX_DOCS = 20000
"""At most this many documents per category from a Hugging Face dataset."""
WIKIPEDIA_DUMP = "20231101"
WIKIPEDIA_LANGUAGES = ("fr", "it", "de")
"""Languages of the ``wikipedia`` source: those of the ``libreoffice`` source."""
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
    wanted = wanted_categories(cfg, "ag_news", AG_NEWS_LABELS)
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


@register("wikipedia", default_categories=list(WIKIPEDIA_LANGUAGES))
def _wikipedia_source(cfg: DataConfig) -> dict[str, list[str]]:
    budget = _hf_budget(cfg)
    return {
        lang: _wikipedia("wikipedia", lang, budget) for lang in wanted_categories(cfg, "wikipedia", WIKIPEDIA_LANGUAGES)
    }


@register("codewiki_hf", default_categories=["java", "wiki"])
def _codewiki_hf_source(cfg: DataConfig) -> dict[str, list[str]]:
    budget = _hf_budget(cfg)
    out: dict[str, list[str]] = {}
    for cat in wanted_categories(cfg, "codewiki_hf", ("java", "wiki")):
        if cat == "java":
            rows = _hf_rows("codewiki_hf", "codeparrot/github-code", data_files=GITHUB_CODE_SHARDS)
            out[cat] = _take(rows, "code", budget, keep=lambda r: r.get("language") == "Java")
        else:
            out[cat] = _wikipedia("codewiki_hf", "en", budget)
    return out
