"""Build a four-category own-data corpus from files every Debian/Ubuntu system has (none of trustlora's sources).

    python docs/results/own-data-debian/make_corpus.py OUT_DIR     # OUT_DIR/<category>/<doc>.txt

Categories: ``python`` (the standard library's modules, /usr/lib/python3.*), ``manpages`` (section-1 man pages with
the roff markup stripped), ``changelogs`` (packages' changelog.Debian), ``copyright`` (packages' copyright files);
up to 150 documents each, each cut at 20,000 characters, documents under 400 characters skipped. What a machine
holds differs, so the corpus (and the numbers in RUN.md) differ between machines.
"""

import glob
import gzip
import os
import random
import re
import sys
from pathlib import Path


def put(root: Path, cat: str, name: str, text: str) -> int:
    text = text.strip()
    if len(text) < 400:
        return 0
    d = root / cat
    d.mkdir(parents=True, exist_ok=True)
    (d / (re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80] + ".txt")).write_text(text[:20000], encoding="utf-8")
    return 1


def strip_roff(t: str) -> str:
    lines = [
        re.sub(r"\\f[BIRP]|\\-|\\\(..|\\&", "", ln) for ln in t.splitlines() if not ln.startswith(('.\\"', "'\\\""))
    ]
    return re.sub(r"^\.[A-Za-z]+ ?", "", "\n".join(lines), flags=re.M)


def main(out: str, per_category: int = 150) -> None:
    root = Path(out)
    random.seed(1)
    py = sorted(glob.glob("/usr/lib/python3*/*.py"))[:per_category]
    for p in py:
        put(root, "python", os.path.basename(p), open(p, encoding="utf-8", errors="replace").read())
    mans = sorted(glob.glob("/usr/share/man/man1/*.1.gz"))
    random.shuffle(mans)
    k = 0
    for p in mans:
        try:
            t = gzip.open(p, "rt", errors="replace").read()
        except OSError:
            continue
        k += put(root, "manpages", os.path.basename(p), strip_roff(t))
        if k >= per_category:
            break
    k = 0
    for p in sorted(glob.glob("/usr/share/doc/*/changelog.Debian.gz")):
        try:
            k += put(root, "changelogs", p.split("/")[4], gzip.open(p, "rt", errors="replace").read())
        except OSError:
            continue
        if k >= per_category:
            break
    k = 0
    for p in sorted(glob.glob("/usr/share/doc/*/copyright")):
        k += put(root, "copyright", p.split("/")[4], open(p, errors="replace").read())
        if k >= per_category:
            break
    for d in sorted(root.iterdir()):
        print(d.name, len(list(d.iterdir())), "documents")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "own-data-debian")
