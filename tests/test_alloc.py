"""The allocator choice (trustlora.alloc): TRUSTLORA_MALLOC, finding tcmalloc, the re-exec with LD_PRELOAD."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trustlora import alloc


def test_setting_values_and_a_bad_path(tmp_path):
    assert alloc.setting({}) == "auto"
    assert alloc.setting({"TRUSTLORA_MALLOC": "tuned"}) == "glibc"
    assert alloc.setting({"TRUSTLORA_MALLOC": "default"}) == "default"
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    assert alloc.setting({"TRUSTLORA_MALLOC": str(lib)}) == str(lib)
    with pytest.raises(ValueError, match=r"TRUSTLORA_MALLOC=.*nope.*no such file"):
        alloc.setting({"TRUSTLORA_MALLOC": str(tmp_path / "nope.so")})


def test_loaded_allocator_reads_the_maps():
    assert alloc.loaded_allocator("7f00 r-xp /usr/lib/libc.so.6\n") == "glibc"
    assert alloc.loaded_allocator("7f00 r-xp /x/libtcmalloc_minimal.so.4.5.10\n") == "tcmalloc"
    assert alloc.loaded_allocator("7f00 r-xp /x/libjemalloc.so.2\n") == "jemalloc"


def test_find_tcmalloc_looks_in_the_given_folders_first(tmp_path):
    lib = tmp_path / "deep" / "libtcmalloc_minimal.so.4"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    assert alloc.find_tcmalloc((tmp_path,)) == str(lib)


def test_preload_command(tmp_path, monkeypatch):
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.setattr(alloc, "loaded_allocator", lambda maps=None: "glibc")
    argv, env = alloc.preload_command({"TRUSTLORA_MALLOC": str(lib), "LD_PRELOAD": "/other.so"})
    assert env["LD_PRELOAD"] == f"{lib}:/other.so" and env[alloc.PRELOADED] == str(lib)
    assert argv == list(sys.orig_argv)
    assert alloc.preload_command({"TRUSTLORA_MALLOC": "glibc"}) is None
    assert alloc.preload_command({"TRUSTLORA_MALLOC": str(lib), alloc.PRELOADED: str(lib)}) is None  # once only
    monkeypatch.setattr(alloc, "find_tcmalloc", lambda extra_dirs=(): None)
    assert alloc.preload_command({}) is None  # nothing found: glibc


def _real_tcmalloc(tmp_path: Path) -> str | None:
    lib = alloc.find_tcmalloc()
    if lib is None:
        try:
            lib = str(alloc.fetch(tmp_path / "alloc"))
        except (RuntimeError, OSError, subprocess.CalledProcessError):
            return None
    return lib


def test_the_entry_reexecutes_with_tcmalloc_and_torch_runs_under_it(tmp_path):
    lib = _real_tcmalloc(tmp_path)
    if lib is None:
        pytest.skip("no tcmalloc here and apt-get cannot fetch libtcmalloc-minimal4")
    code = (
        "import os, torch\n"
        "from trustlora import alloc\n"
        "alloc.reexec_with_allocator()\n"
        "x = torch.randn(256, 256, requires_grad=True)\n"
        "(x @ x).sum().backward()\n"
        "print(alloc.loaded_allocator(), alloc.tune_glibc_malloc(), bool(os.environ.get(alloc.PRELOADED)))\n"
    )
    env = dict(os.environ, TRUSTLORA_MALLOC=lib)
    env.pop(alloc.PRELOADED, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["tcmalloc", "False", "True"]  # preloaded, glibc left alone, re-executed once
    env["TRUSTLORA_MALLOC"] = "glibc"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["glibc", "True", "False"]
