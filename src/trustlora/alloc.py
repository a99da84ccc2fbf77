"""The process's memory allocator: tcmalloc when this machine has it, else glibc malloc tuned for big buffers.

    trustlora ...                      # the console entry preloads tcmalloc if found, else tunes glibc
    TRUSTLORA_MALLOC=glibc trustlora ...          # glibc, tuned (no preload)
    TRUSTLORA_MALLOC=default trustlora ...        # glibc with its defaults
    TRUSTLORA_MALLOC=/path/libtcmalloc_minimal.so.4 trustlora ...   # this library
    python -m trustlora.alloc fetch    # Debian/Ubuntu without root: tcmalloc into $TRUSTLORA_CACHE/alloc

Why (measured on the default run's training step, fp32, 2-core AMD EPYC without native bf16, each allocator in its
own process, `benchmarks/bench_speed.py` variants ``chunked+mallopt`` / ``chunked+tcmalloc``): glibc serves
allocations above its mmap threshold (128 KiB, adapting up to 32 MiB) with fresh ``mmap`` pages and returns them on
free, so every step page-faults its activations in again (the kernel zeroes each page): 1.4x the step time with a
1 MiB threshold. Raising the mmap and trim thresholds (:func:`tune_glibc_malloc`) keeps freed buffers in the heap,
but glibc's heap then fragments: ~2.3 GB of heap for ~1.1 GB of live tensors, 3.0 GB peak RSS. tcmalloc keeps
freed buffers too without that fragmentation: 2.0 GB peak RSS at the same step time (bf16: +23-31 % tokens/s).

An allocator can only be chosen before the process starts (``LD_PRELOAD``), so :func:`entry` (the ``trustlora``
console script) re-executes the same command line once with the library preloaded; :func:`trustlora.cli.main`
called from Python only tunes glibc. Child processes (``runtime=distributed``) inherit the environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's cap on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
PRELOADED = "TRUSTLORA_MALLOC_PRELOADED"
"""Set in the environment of the re-executed process (no second re-exec, whatever happens)."""
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
DEBIAN_PACKAGE = "libtcmalloc-minimal4"
_KNOWN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def setting(env: dict | None = None) -> str:
    """``TRUSTLORA_MALLOC``: 'auto' (default), 'glibc', 'default' or a library path (checked: one-line error)."""
    value = (env if env is not None else os.environ).get("TRUSTLORA_MALLOC", "auto") or "auto"
    if value in ("auto", "glibc", "default", "tuned"):
        return "glibc" if value == "tuned" else value
    if not Path(value).is_file():
        raise ValueError(
            f"TRUSTLORA_MALLOC={value}: no such file; expected 'auto', 'glibc', 'default' or the path of an "
            "allocator library such as libtcmalloc_minimal.so.4"
        )
    return value


def _alloc_cache() -> Path:
    """``$TRUSTLORA_CACHE/alloc``, where :func:`fetch` unpacks the library (looking does not create it)."""
    from trustlora.cache import cache_dir

    return cache_dir() / "alloc"


def find_tcmalloc(extra_dirs: tuple[Path | str, ...] = ()) -> str | None:
    """Path (or loader name) of a tcmalloc library on this machine: ``extra_dirs``, ``$TRUSTLORA_CACHE/alloc``
    (see :func:`fetch`), the usual library folders, then the dynamic loader's cache (``ctypes.util.find_library``,
    which runs ``ldconfig``/``gcc``: ~10 ms each, so last); None if there is none."""
    dirs = [Path(d) for d in extra_dirs]
    try:
        dirs.append(_alloc_cache())
    except OSError:
        pass
    for d in dirs:
        for name in TCMALLOC_NAMES:
            hits = sorted(d.rglob(name)) if d.is_dir() else []
            if hits:
                return str(hits[0])
    for d in _KNOWN_DIRS:
        for name in TCMALLOC_NAMES:
            if (Path(d) / name).is_file():
                return str(Path(d) / name)
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def loaded_allocator(maps: str | None = None) -> str:
    """'tcmalloc', 'jemalloc' or 'glibc': which allocator this process has mapped (``/proc/self/maps``)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "glibc"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc"


def tune_glibc_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds; True if applied (False: not glibc, another allocator is loaded, or
    TRUSTLORA_MALLOC=default)."""
    if os.environ.get("TRUSTLORA_MALLOC", "auto") == "default" or loaded_allocator() != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    return bool(ok)


def preload_command(env: dict | None = None) -> tuple[list[str], dict] | None:
    """``(argv, env)`` to re-execute this process with tcmalloc preloaded, or None (already loaded or preloaded
    once, ``TRUSTLORA_MALLOC`` says glibc/default, no library found, not Linux)."""
    env = dict(os.environ if env is None else env)
    choice = setting(env)
    if env.get(PRELOADED) or choice in ("glibc", "default") or not sys.platform.startswith("linux"):
        return None
    if loaded_allocator() != "glibc":
        return None
    lib = choice if choice != "auto" else find_tcmalloc()
    if lib is None:
        return None
    env["LD_PRELOAD"] = ":".join(x for x in (lib, env.get("LD_PRELOAD", "")) if x)
    env[PRELOADED] = lib
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return argv, env


def reexec_with_allocator() -> None:
    """Replace this process by the same command line with tcmalloc preloaded (see :func:`preload_command`);
    returns only when nothing is to be done."""
    cmd = preload_command()
    if cmd is None:
        return
    argv, env = cmd
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:  # cannot re-execute (exotic launcher): go on with glibc
        return


def fetch(dest: Path | None = None) -> Path:
    """Download Debian's ``libtcmalloc-minimal4`` with ``apt-get download`` (no root) and unpack its library into
    ``dest`` (default ``$TRUSTLORA_CACHE/alloc``), where :func:`find_tcmalloc` looks. Returns the library's path."""
    from trustlora.cache import atomic_write_bytes

    dest = Path(dest) if dest is not None else _alloc_cache()
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"fetch: '{tool}' not found; install {DEBIAN_PACKAGE} (or gperftools) with your package manager"
            )
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if got.returncode != 0 or not debs:
            msg = (got.stderr or got.stdout).strip().splitlines()
            raise RuntimeError(f"fetch: apt-get download {DEBIAN_PACKAGE} failed: {msg[-1] if msg else got.returncode}")
        unpacked = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True, capture_output=True)
        libs = sorted(unpacked.rglob(TCMALLOC_NAMES[0]))
        if not libs:
            raise RuntimeError(f"fetch: {debs[0].name} holds no {TCMALLOC_NAMES[0]}")
        return atomic_write_bytes(dest / TCMALLOC_NAMES[0], libs[0].resolve().read_bytes())


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["fetch"]:
        print(fetch())
        return 0
    if args in ([], ["status"]):
        lib = find_tcmalloc()
        print(f"loaded: {loaded_allocator()}; tcmalloc on this machine: {lib or 'none'}; TRUSTLORA_MALLOC={setting()}")
        return 0
    print("usage: python -m trustlora.alloc [status|fetch]", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
