"""Split categorised documents into disjoint per-user train/val/test token streams and a shared set X_S.

Every user i draws its data from the categories with the proportions of row i of the mixture matrix
D (``data.mixture``: 'high' = one category per user, user i's being ``i mod C`` as in the paper's data
scripts, 'low' = 3/4 own + 1/4 next category, or an explicit users x categories matrix). Usage::

    docs = load_documents(cfg.data)                               # {category: [documents]}
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    part = build_partition(docs, encode, tokenizer.eos_token_id, cfg.data)
    part.users[0].train, part.users[0].val, part.users[0].test    # 1-D LongTensors
    part.reference                                                # the public set X_S
    part.mixture, part.info                                       # D and the accounting for the run record

How the split is made (deterministic given ``data.seed``):

* documents are deduplicated by content (sha1 of the stripped text) within and across categories, keeping
  the first occurrence in category order, then document order; so a text can never land in two splits
  (``info["duplicates_dropped"]`` counts the dropped copies per category);
* every category's documents are shuffled by ``numpy.random.default_rng`` seeded with ``data.seed`` and
  ``crc32(category)``, so a category's order does not depend on which other categories are present;
* documents are tokenised lazily in that order (``encode(doc) + [eos_id]``), only as many as needed;
* they are handed out in this order: the reference set X_S (``data.reference_tokens`` split equally
  between categories), then every user's test, val and train split (users in order). User i gets
  exactly ``n[i, c]`` tokens of category c per split, where ``n[i, :]`` is ``D[i, :] * budget``
  rounded so that it sums to the budget exactly (largest remainder);
* a document goes to exactly one split of one user (or to X_S); the last document of a piece is
  truncated to fit and its remainder is discarded, never reused;
* a split's stream interleaves its category pieces at document granularity, in proportion, so any
  prefix of a stream has about the mixture's proportions.

Taking X_S and the test/val splits first keeps them unchanged when only ``data.train_tokens`` changes.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trustlora.config import ConfigError, DataConfig

SPLITS = ("train", "val", "test")
_ORDER = ("test", "val", "train")  # order in which user splits consume documents (after X_S)


@dataclass
class UserSplit:
    """One user's private data: three disjoint token streams."""

    train: torch.Tensor
    """1-D LongTensor: documents concatenated, each followed by eos."""
    val: torch.Tensor
    test: torch.Tensor


@dataclass
class Partition:
    """All users' splits, the public reference set X_S and how they were made."""

    users: list[UserSplit]
    reference: torch.Tensor
    """1-D LongTensor, the shared public set X_S."""
    categories: list[str]
    mixture: np.ndarray
    """[N, C] row-stochastic float64 (the D matrix)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Documents/tokens used per user, split and category, available per category (after deduplication) and
    duplicates dropped per category (JSON-serialisable)."""


# --------------------------------------------------------------------------------------------------
# mixture


def mixture_matrix(spec: Any, users: int, categories: int) -> np.ndarray:
    """The [users, categories] row-stochastic mixture D for 'high', 'low' or an explicit matrix.

    'high': user u holds only category ``u mod C`` (interleaved, as the paper's data scripts do: N=6, C=3 ->
    0,1,2,0,1,2; users spread evenly, category counts differ by at most one).
    'low': 3/4 of that category and 1/4 of the next one ((u mod C) + 1) mod C; with C == 1 equal to 'high'.
    Explicit: N rows of C non-negative numbers, each row normalised to sum to 1.
    """
    if not isinstance(users, (int, np.integer)) or users < 1:
        raise ConfigError(f"data.users: expected an integer >= 1, got {users!r}")
    if not isinstance(categories, (int, np.integer)) or categories < 1:
        raise ConfigError(f"data.categories: expected at least 1 category, got {categories!r}")
    n, c = int(users), int(categories)
    if isinstance(spec, str):
        if spec not in ("high", "low"):
            raise ConfigError(f"data.mixture: expected 'high', 'low' or a {n} x {c} matrix, got {spec!r}")
        d = np.zeros((n, c), dtype=np.float64)
        own = np.arange(n) % c
        if spec == "high" or c == 1:
            d[np.arange(n), own] = 1.0
        else:
            d[np.arange(n), own] = 0.75
            d[np.arange(n), (own + 1) % c] = 0.25
        return d
    try:
        d = np.asarray(spec, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            f"data.mixture: expected 'high', 'low' or a {n} x {c} matrix of numbers (users x categories), got {spec!r}"
        ) from None
    if d.ndim != 2 or d.shape != (n, c):
        raise ConfigError(
            f"data.mixture: expected a {n} x {c} matrix (data.users x categories), got shape "
            f"{' x '.join(map(str, d.shape)) or 'scalar'}"
        )
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ConfigError("data.mixture: expected finite non-negative numbers")
    sums = d.sum(axis=1)
    bad = np.flatnonzero(sums <= 0)
    if bad.size:
        raise ConfigError(f"data.mixture: row {int(bad[0])} (user {int(bad[0])}) sums to 0; expected a positive sum")
    return d / sums[:, None]


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers summing to ``total``, each floor or ceil of ``weights * total`` (largest remainder).

    ``weights`` sum to 1; zero weights always get 0; ties go to the lower index.
    """
    exact = weights * total
    out = np.floor(exact + 1e-9).astype(np.int64)
    rest = int(total - out.sum())
    if rest > 0:
        frac = exact - out
        frac[weights <= 0] = -np.inf
        order = np.argsort(-frac, kind="stable")
        positive = order[: int(np.sum(weights > 0))]
        for k in range(rest):
            out[positive[k % len(positive)]] += 1
    return out


# --------------------------------------------------------------------------------------------------
# lazy per-category token stream


class _OutOfData(Exception):
    pass


class _Category:
    """Documents of one category in shuffled order, tokenised on demand and handed out disjointly."""

    def __init__(self, name: str, docs: list[str], seed: int, encode: Callable[[str], Any], eos_id: int):
        self.name = name
        self.docs = docs
        rng = np.random.default_rng([abs(int(seed)), int(seed < 0), zlib.crc32(name.encode("utf-8"))])
        self.order = rng.permutation(len(docs))
        self.encode = encode
        self.eos_id = eos_id
        self.cursor = 0
        self.tokens_seen = 0
        self.chars_seen = 0
        self.used_tokens = 0

    def _next_doc(self) -> np.ndarray:
        if self.cursor >= len(self.docs):
            raise _OutOfData(self.name)
        text = self.docs[int(self.order[self.cursor])]
        self.cursor += 1
        ids = np.asarray(self.encode(text), dtype=np.int64).reshape(-1)
        ids = np.concatenate([ids, np.asarray([self.eos_id], dtype=np.int64)])
        self.tokens_seen += len(ids)
        self.chars_seen += len(text)
        return ids

    def take(self, n: int) -> list[np.ndarray]:
        """Pieces (one per document, the last truncated) totalling exactly ``n`` tokens."""
        pieces: list[np.ndarray] = []
        need = n
        while need > 0:
            ids = self._next_doc()
            piece = ids[:need]
            pieces.append(piece)
            need -= len(piece)
        self.used_tokens += n
        return pieces


def deduplicate(docs: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Drop every document whose stripped text (sha1) was seen before, within or across categories.

    The first occurrence is kept (categories in order, then documents in order), so the result is
    deterministic. Returns the kept documents per category and the number dropped per category.
    """
    seen: set[bytes] = set()
    kept: dict[str, list[str]] = {}
    dropped: dict[str, int] = {}
    for cat, texts in docs.items():
        kept[cat], dropped[cat] = [], 0
        for text in texts:
            h = hashlib.sha1(text.strip().encode("utf-8", "surrogatepass")).digest()
            if h in seen:
                dropped[cat] += 1
            else:
                seen.add(h)
                kept[cat].append(text)
    return kept, dropped


def _fitting_train_budget(streams: list[_Category], d: np.ndarray, need: dict, ref_need: np.ndarray) -> int:
    """Largest data.train_tokens every category can serve (10 % margin for the discarded document rests).

    Only called on the error path: it tokenises the remaining documents of every category.
    """
    fits = []
    for c, st in enumerate(streams):
        try:
            while True:
                st._next_doc()
        except _OutOfData:
            pass
        other = int(ref_need[c] + need["val"][:, c].sum() + need["test"][:, c].sum())
        share = float(d[:, c].sum())
        if share > 0:
            fits.append(int(0.9 * (st.tokens_seen - other) / share))
    return min(fits) if fits else 0


def _interleave(per_cat: list[list[np.ndarray]]) -> np.ndarray:
    """Merge each category's pieces in proportion: order pieces by their relative midpoint in their category."""
    keyed: list[tuple[float, int, int, np.ndarray]] = []
    for c, pieces in enumerate(per_cat):
        total = sum(len(p) for p in pieces)
        pos = 0
        for k, p in enumerate(pieces):
            keyed.append(((pos + len(p) / 2) / total, c, k, p))
            pos += len(p)
    keyed.sort(key=lambda t: (t[0], t[1], t[2]))
    if not keyed:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([t[3] for t in keyed])


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


# --------------------------------------------------------------------------------------------------
# partition


def build_partition(
    docs: dict[str, list[str]], encode: Callable[[str], Any], eos_id: int, cfg: DataConfig
) -> Partition:
    """Disjoint per-user train/val/test token streams and the reference set X_S (see the module docstring).

    ``docs`` maps category -> documents (its order is the category order, the columns of D); ``encode``
    maps text to token ids (without special tokens); ``eos_id`` is appended after every document.
    Raises :class:`ConfigError` when the mixture does not fit or a category has too few tokens.
    """
    categories = [str(c) for c in docs]
    if not categories:
        raise ConfigError("data.categories: expected at least 1 category with documents, got none")
    n_users, n_cats = cfg.users, len(categories)
    try:
        d = mixture_matrix(cfg.mixture, n_users, n_cats)
    except ConfigError as e:
        raise ConfigError(f"{e} (categories: {', '.join(categories)})") from None
    if isinstance(eos_id, bool) or not isinstance(eos_id, (int, np.integer)):
        raise TypeError(f"eos_id must be an integer token id, got {eos_id!r}")
    budgets = {"train": cfg.train_tokens, "val": cfg.val_tokens, "test": cfg.test_tokens}
    for name, b in [*budgets.items(), ("reference", cfg.reference_tokens)]:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 0:
            raise ConfigError(f"data.{name}_tokens: expected an integer >= 0, got {b!r}")

    # exact per-user, per-split, per-category token counts; reference split equally between categories
    need = {s: np.stack([_apportion(d[i], int(budgets[s])) for i in range(n_users)]) for s in SPLITS}
    ref_need = _apportion(np.full(n_cats, 1.0 / n_cats), int(cfg.reference_tokens))
    demand = ref_need + sum(need[s].sum(axis=0) for s in SPLITS)

    unique, dropped = deduplicate({c: list(docs[c]) for c in docs})
    streams = [_Category(c, unique[c], cfg.seed, encode, int(eos_id)) for c in categories]

    def take(c: int, n: int) -> list[np.ndarray]:
        try:
            return streams[c].take(int(n))
        except _OutOfData:
            s = streams[c]
            fit = _fitting_train_budget(streams, d, need, ref_need)
            hint = (
                f"set data.train_tokens <= {fit} to fit, or lower data.users, or add documents"
                if fit >= 1
                else "data.train_tokens cannot help: the val/test/reference shares alone do not fit; lower "
                "data.val_tokens, data.test_tokens, data.reference_tokens or data.users, or add documents"
            )
            raise ConfigError(
                f"data: category '{s.name}' ran out of documents: its {len(s.docs):,} documents hold "
                f"{s.tokens_seen:,} tokens but the users' train/val/test shares and the reference set need "
                f"{int(demand[c]):,} (plus the discarded rest of each piece's last document); {hint}"
            ) from None

    ref_pieces = [take(c, ref_need[c]) for c in range(n_cats)]
    user_pieces: list[dict[str, list[list[np.ndarray]]]] = [{} for _ in range(n_users)]
    for s in _ORDER:
        for i in range(n_users):
            user_pieces[i][s] = [take(c, need[s][i, c]) for c in range(n_cats)]

    users = [UserSplit(**{s: _tensor(_interleave(user_pieces[i][s])) for s in SPLITS}) for i in range(n_users)]
    reference = _tensor(_interleave(ref_pieces))

    def counts(per_cat: list[list[np.ndarray]]) -> dict[str, dict[str, int]]:
        return {
            "tokens": {categories[c]: int(sum(len(p) for p in pieces)) for c, pieces in enumerate(per_cat)},
            "documents": {categories[c]: len(pieces) for c, pieces in enumerate(per_cat)},
        }

    available = {}
    for s in streams:
        chars = sum(len(t) for t in s.docs)
        rate = s.tokens_seen / s.chars_seen if s.chars_seen else 0.0
        available[s.name] = {
            "documents": len(s.docs),
            "characters": chars,
            "tokens_tokenised": s.tokens_seen,
            "tokens_estimated": s.tokens_seen if s.cursor == len(s.docs) else int(round(rate * chars)),
            "documents_used": s.cursor,
            "tokens_used": s.used_tokens,
        }
    info: dict[str, Any] = {
        "seed": cfg.seed,
        "categories": categories,
        "eos_id": int(eos_id),
        "budgets": {**{s: int(budgets[s]) for s in SPLITS}, "reference": int(cfg.reference_tokens)},
        "available": available,
        "duplicates_dropped": {str(k): int(v) for k, v in dropped.items()},
        "reference": counts(ref_pieces),
        "users": [{s: counts(user_pieces[i][s]) for s in SPLITS} for i in range(n_users)],
    }
    return Partition(users=users, reference=reference, categories=categories, mixture=d, info=info)
