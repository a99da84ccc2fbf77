"""Paper Tables 1/5: bytes one user sends per round for θ, Δθ, dense logits and top-k COO logits, their
ratios to top-k COO, and the bytes the run actually sent.

Run: ``trustlora analyze bytes RUN_DIR [--out DIR]`` or, from Python, ``write_bytes(d, out=None)``.
Writes ``bytes.{md,csv,json,png}`` (log-scale bars) into ``--out`` or RUN_DIR. (Named ``messages`` so the
module does not shadow the ``bytes`` builtin.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trustlora.analyze.common import AnalysisError
from trustlora.analyze.numbers import message_size_ratios
from trustlora.plots import plt, save_png
from trustlora.rundir import cfg_get, is_number, load_run
from trustlora.tables import fmt_bytes, fmt_float, format_table, write_outputs

MESSAGE_KINDS = (
    ("theta", "θ: full adapter weights (fp32)"),
    ("delta", "Δθ: adapter update (fp32)"),
    ("dense_logits", "dense logits on X_S (fp32, vocab-sized)"),
    ("topk_coo", "top-k logits on X_S as COO (value + index)"),
)


def _num(x: Any) -> int | float:
    """An int when the number is integral (byte counts), else a float."""
    return int(x) if float(x).is_integer() else float(x)


def write_bytes(run_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Message sizes per user per round of one run; see the module docstring."""
    run = load_run(run_dir)
    trust = [r for r in run.records if r.get("kind") == "trust" and isinstance(r.get("bytes_equiv"), dict)]
    if not trust:
        raise AnalysisError(f"{run.path}: no trust record with bytes_equiv in metrics.jsonl")
    last = max(trust, key=lambda r: (r.get("round", 0) or 0, r.get("step", 0) or 0))
    equiv = {k: _num(v) for k, v in last["bytes_equiv"].items() if is_number(v)}
    sent = {k: _num(v) for k, v in (last.get("bytes") or {}).items() if is_number(v)}
    ratios = message_size_ratios(equiv)
    topk = equiv.get("topk_coo")

    rows, csv_rows = [], []
    for kind, what in MESSAGE_KINDS:
        b = equiv.get(kind)
        ratio = b / topk if b is not None and topk else None
        rows.append(
            [
                kind,
                what,
                f"{int(b):,}" if b is not None else None,
                fmt_bytes(b) if b is not None else None,
                fmt_float(ratio, ".1f"),
            ]
        )
        csv_rows.append(["equivalent", kind, b, ratio])
    md = [
        "# Message size per user per round (paper Tables 1/5)",
        "",
        f"Run `{run.path}` · strategy {run.strategy} · model {run.summary.get('model') or cfg_get(run.config, 'model')}"
        f" · trust round {last.get('round')} (step {last.get('step')}).",
        "",
        format_table(["message", "what one user sends", "bytes/user/round", "human", "× top-k COO"], rows),
        "",
        f"Ratios: dense logits / top-k COO = **{fmt_float(ratios['dense/topk'], ',.1f')}×**, "
        f"θ / top-k COO = **{fmt_float(ratios['theta/topk'], ',.1f')}×**.",
    ]
    k = cfg_get(run.config, "trust.topk")
    implied = []
    if equiv.get("theta"):
        implied.append(f"{int(equiv['theta']) // 4:,} adapter parameters (θ / 4 bytes)")
    if isinstance(k, int) and k > 0 and topk and topk % (8 * k) == 0:
        m = int(topk) // (8 * k)
        implied.append(f"|X_S| = {m:,} reference tokens (top-k COO / (8 bytes × k={k}))")
        if equiv.get("dense_logits") and m and equiv["dense_logits"] % (4 * m) == 0:
            implied.append(f"vocabulary {int(equiv['dense_logits']) // (4 * m):,} (dense / (4 bytes × |X_S|))")
    if implied:
        md += ["", "Implied: " + "; ".join(implied) + "."]
    md += ["", f"## Actually sent by this run ({run.strategy}), per user, round {last.get('round')}", ""]
    if sent:
        srows = [[kk, f"{int(v):,}", fmt_bytes(v)] for kk, v in sent.items()]
        srows.append(["**total**", f"**{int(sum(sent.values())):,}**", f"**{fmt_bytes(sum(sent.values()))}**"])
        md.append(format_table(["message kind", "bytes/user/round", "human"], srows))
        csv_rows += [["sent", kk, v, v / topk if topk else None] for kk, v in sent.items()]
    else:
        md.append("_Nothing sent (this strategy exchanges no messages)._")
    md += ["", "![message sizes](bytes.png)"]

    out_dir = Path(out) if out is not None else run.path
    obj = {
        "run_dir": str(run.path),
        "strategy": run.strategy,
        "round": last.get("round"),
        "step": last.get("step"),
        "bytes_equiv": equiv,
        "bytes_sent": sent,
        "ratios": ratios,
    }
    paths = write_outputs(
        out_dir, "bytes", md, ["source", "kind", "bytes_per_user_per_round", "ratio_to_topk_coo"], csv_rows, obj
    )
    paths["png"] = _plot_bytes(out_dir / "bytes.png", equiv, sent, run.strategy)
    return paths


def _plot_bytes(path: Path, equiv: dict, sent: dict, strategy: str) -> Path:
    names = [k for k, _ in MESSAGE_KINDS if equiv.get(k)]
    vals = [equiv[k] for k in names]
    colors = ["tab:blue"] * len(names)
    if sent and sum(sent.values()) > 0:
        names.append(f"actually sent\n({strategy})")
        vals.append(sum(sent.values()))
        colors.append("tab:orange")
    fig, ax = plt.subplots(figsize=(max(5.5, 1.4 * len(names) + 1.5), 4.4))
    x = np.arange(len(names))
    ax.bar(x, vals, color=colors, edgecolor="black", lw=0.6)
    ax.set_yscale("log")
    topk = equiv.get("topk_coo")
    for xi, v in zip(x, vals, strict=True):
        label = fmt_bytes(v) + (f"\n{v / topk:,.1f}× top-k" if topk else "")
        ax.text(xi, v * 1.15, label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, fontsize=9)
    ax.set_ylabel("bytes per user per round (log scale)")
    ax.set_ylim(min(vals) / 3, max(vals) * 6)
    ax.set_title("Message size per user per round (Tables 1/5)", fontsize=10)
    ax.grid(True, axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)
