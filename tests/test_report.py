"""Tests of trustlora.report on a small synthetic run (3 users, 2 trust rounds); no model involved."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from trustlora.report import format_table, write_comparison, write_run_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

BASE = [40.0, 25.0, 60.0]
FINAL = [30.0, 20.0, 66.0]  # -25%, -20%, +10%
W1 = [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.25, 0.25, 0.5]]
W2 = [[0.81, 0.14, 0.05], [0.12, 0.83, 0.05], [0.07, 0.04, 0.89]]
ORACLE = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def _summary(**drop: bool) -> dict:
    s = {
        "strategy": "weights",
        "model": "tiny-lm",
        "users": 3,
        "categories": ["de", "code", "med"],
        "user_categories": ["de", "code", "med"],
        "mixture": [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]],
        "oracle_W": ORACLE,
        "base_test_ppl": BASE,
        "final_test_ppl": FINAL,
        "base_mean_test_ppl": float(np.mean(BASE)),
        "final_mean_test_ppl": float(np.mean(FINAL)),
        "wall_time_s": 3725.4,
        "train_tokens_per_s": 1234.5,
        "bytes_per_round": {"delta": 1048576, "theta": 2048, "topk_logits": 512},
        "some_future_key": {"nested": [1, 2]},
    }
    for k in drop:
        s.pop(k)
    return s


def _metrics() -> list[dict]:
    mid = [35.0, 22.0, 62.0]
    return [
        {"kind": "eval", "round": 0, "step": 0, "split": "test", "full": True, "model": "base", "ppl": BASE,
         "loss": list(np.log(BASE))},
        {"kind": "eval", "round": 0, "step": 0, "split": "val", "full": True, "model": "base", "ppl": [99.0] * 3,
         "loss": [4.6] * 3},
        {"kind": "train", "round": 1, "step": 10, "loss": [3.6, 3.1, 4.1]},
        {"kind": "trust", "round": 1, "step": 10, "W": W1, "scores": None,
         "bytes": {"delta": 1000, "theta": 10, "topk_logits": 0}},
        {"kind": "eval", "round": 1, "step": 10, "split": "test", "full": False, "ppl": mid, "loss": list(np.log(mid))},
        {"kind": "train", "round": 2, "step": 20, "loss": [3.4, 3.0, 4.2]},
        {"kind": "trust", "round": 2, "step": 20, "W": W2, "scores": [[1.0, 0.5, 0.1]] * 3,
         "bytes": {"delta": 3000, "theta": 30, "topk_logits": 0}},
        {"kind": "eval", "round": 2, "step": 20, "split": "test", "full": True, "ppl": FINAL,
         "loss": list(np.log(FINAL))},
        {"kind": "eval", "round": 2, "step": 20, "split": "val", "full": True, "ppl": [1.0] * 3, "loss": [0.0] * 3},
    ]  # fmt: skip


def _make_run(tmp: Path, summary: dict | None, metrics: list[dict] | None = None) -> Path:
    run = tmp / "run"
    run.mkdir()
    lines = [json.dumps(r) for r in (metrics if metrics is not None else _metrics())]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def _assert_png(path: Path, min_size: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_size, (path, len(data))


def _table_row(md: str, first_cell: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r} in:\n{md}")


def _section(md: str, heading: str) -> str:
    return md.split(heading, 1)[1].split("\n## ", 1)[0]


# ---------------------------------------------------------------------------------------------- format_table


def test_format_table_alignment_and_formatting():
    t = format_table(["name", "ppl", "change"], [["a|b", 1.23456, "+4.0%"], ["c", 10, "**-2.5%**"], ["d", None, "—"]])
    lines = t.splitlines()
    assert len(lines) == 5
    sep = [c.strip() for c in lines[1].strip("|").split("|")]
    assert not sep[0].endswith(":") and sep[1].endswith(":") and sep[2].endswith(":")
    assert "a\\|b" in lines[2] and "1.23" in lines[2] and "1.2346" not in lines[2]
    assert _table_row(t, "d")[1] == "—"
    # Right-aligned: padded on the left to the column width.
    assert lines[3].split("|")[2].endswith(" 10 ")
    with pytest.raises(ValueError):
        format_table(["a"], [[1, 2]])


# ---------------------------------------------------------------------------------------------- run report


def test_run_report_content_and_figures(tmp_path):
    run = _make_run(tmp_path, _summary())
    report = write_run_report(run)
    assert report == run / "report.md"
    md = report.read_text()

    assert md.splitlines()[0] == "# trustlora run: weights on tiny-lm"
    assert _table_row(md, "u0") == ["u0", "de", "40.00", "30.00", "-25.0%"]
    assert _table_row(md, "u2") == ["u2", "med", "60.00", "66.00", "+10.0%"]
    mean = _table_row(md, "**Mean**")
    base_mean, final_mean = np.mean(BASE), np.mean(FINAL)  # 41.67, 38.67
    assert mean[2:4] == [f"{base_mean:.2f}", f"{final_mean:.2f}"] == ["41.67", "38.67"]
    assert mean[4] == f"{(final_mean - base_mean) / base_mean * 100:+.1f}%" == "-7.2%"

    assert "3725.4 s (1h 02m 05s)" in md
    assert "1,234.5" in md
    assert _table_row(md, "delta")[1:] == ["1,048,576", "1.00 MiB"]
    assert _table_row(md, "theta")[1:] == ["2,048", "2.00 KiB"]

    w = _section(md, "## Trust matrix W")
    assert _table_row(w, "u0 (de)")[1:] == ["0.81", "0.14", "0.05"]
    assert _table_row(w, "u2 (med)")[1:] == ["0.07", "0.04", "0.89"]
    assert "0.60" not in w  # the first round's W is not the final one
    l1 = np.mean(np.abs(np.array(W2) - np.array(ORACLE)).sum(axis=1))
    assert f"oracle W: {l1:.3f}" in w

    for name in ("W_final.png", "W_rounds.png", "curves.png"):
        _assert_png(run / name)
        assert f"]({name})" in md
    assert not list(run.glob(".*.tmp"))


def test_run_report_without_optional_summary_keys(tmp_path):
    optional = "user_categories mixture oracle_W base_test_ppl final_test_ppl base_mean_test_ppl final_mean_test_ppl"
    optional += " wall_time_s train_tokens_per_s bytes_per_round categories users"
    run = _make_run(tmp_path, _summary(**dict.fromkeys(optional.split(), True)))
    md = write_run_report(run).read_text()
    # Per-user numbers fall back to the base (round 0) and last test evals; val evals are ignored.
    assert _table_row(md, "u1") == ["u1", "—", "25.00", "20.00", "-20.0%"]
    assert _table_row(md, "**Mean**")[2:] == ["41.67", "38.67", "-7.2%"]
    # Bytes per round fall back to the mean over trust records: delta (1000 + 3000) / 2.
    assert _table_row(md, "delta")[1] == "2,000"
    assert _table_row(md, "wall time")[1] == "—"
    assert _table_row(_section(md, "## Trust matrix W"), "u1")[1:] == ["0.12", "0.83", "0.05"]
    assert "oracle" not in _section(md, "## Trust matrix W")
    for name in ("W_final.png", "W_rounds.png", "curves.png"):
        _assert_png(run / name)


def test_run_report_category_from_mixture_and_no_trust(tmp_path):
    summary = _summary(user_categories=True, oracle_W=True)
    summary["strategy"] = "local"
    metrics = [r for r in _metrics() if r["kind"] != "trust"]
    run = _make_run(tmp_path, summary, metrics)
    (run / "W_rounds.png").write_bytes(b"stale")  # left over from an earlier report: must go
    md = write_run_report(run).read_text()
    assert _table_row(md, "u1")[1] == "code"  # argmax of the mixture row
    assert "No trust records" in md
    assert not (run / "W_final.png").exists() and not (run / "W_rounds.png").exists()
    _assert_png(run / "curves.png")
    # Byte counts come from summary.json even without trust records.
    assert _table_row(md, "topk_logits")[1] == "512"


def test_run_report_metrics_only_and_truncated_line(tmp_path):
    run = _make_run(tmp_path, None)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "eval", "round": 3, "st')  # killed mid-write
    with pytest.warns(UserWarning, match="undecodable"):
        md = write_run_report(run).read_text()
    assert "summary.json is missing" in md
    assert md.splitlines()[0] == "# trustlora run: unknown strategy on unknown model"
    assert _table_row(md, "u0")[2:] == ["40.00", "30.00", "-25.0%"]


def test_run_report_needs_some_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_run_report(tmp_path)


# ---------------------------------------------------------------------------------------------- comparison


def _rows() -> list[dict]:
    data = {"fedavg": [(0, 30.0), (1, 32.5), (2, 31.0)], "local": [(0, 35.0), (1, 34.0)], "weights": [(0, 28.0)]}
    rows = []
    for seed in range(3):  # interleaved: order of first appearance is fedavg, local, weights
        for strategy, vals in data.items():
            for s, v in vals:
                if s == seed:
                    rows.append({"strategy": strategy, "seed": s, "mean_test_ppl": v, "test_ppl": [v - 1, v + 1],
                                 "base_mean_test_ppl": 45.0, "wall_time_s": 100.0 + 10 * s})  # fmt: skip
    return rows, data


def test_comparison_files_and_values(tmp_path):
    rows, data = _rows()
    paths = write_comparison(rows, tmp_path / "cmp", "Strategies on tiny-lm")
    assert set(paths) == {"csv", "md", "json", "png"}

    text = paths["csv"].read_text()
    assert text.splitlines()[0].startswith("strategy,mean_test_ppl,std_test_ppl")
    got = list(csv.DictReader(text.splitlines()))
    assert [r["strategy"] for r in got] == ["fedavg", "local", "weights"]
    for r in got:
        vals = np.array([v for _, v in data[r["strategy"]]])
        assert float(r["mean_test_ppl"]) == pytest.approx(vals.mean(), abs=1e-12)
        if len(vals) > 1:
            assert float(r["std_test_ppl"]) == pytest.approx(vals.std(ddof=1), abs=1e-12)
        else:
            assert r["std_test_ppl"] == ""  # one seed: no spread
        assert int(r["n_seeds"]) == len(vals)
    assert float(got[0]["std_test_ppl"]) == pytest.approx(1.2583057392, rel=1e-9)
    assert float(got[0]["wall_time_s"]) == pytest.approx(110.0)

    md = paths["md"].read_text()
    assert md.startswith("# Strategies on tiny-lm\n")
    assert _table_row(md, "**weights**")[1:4] == ["**28.00**", "—", "1"]  # best, single seed: no std
    assert _table_row(md, "fedavg")[1:4] == ["31.17", "± 1.26", "3"]
    assert _table_row(md, "base model (no training)")[1] == "45.00"
    assert len(re.findall(r"\*\*fedavg\*\*|\*\*local\*\*", md)) == 0

    js = json.loads(paths["json"].read_text())
    assert js["best"] == ["weights"]
    assert js["rows"] == rows
    assert js["strategies"][1]["mean_test_ppl_per_user"] == pytest.approx([33.5, 35.5])
    _assert_png(paths["png"])


def test_comparison_minimal_rows(tmp_path):
    rows = [{"strategy": "local", "mean_test_ppl": 12.0}, {"strategy": "oracle", "mean_test_ppl": float("nan")}]
    paths = write_comparison(rows, tmp_path, "t")
    got = list(csv.DictReader(paths["csv"].read_text().splitlines()))
    assert got[0]["std_test_ppl"] == "" and got[0]["wall_time_s"] == ""
    md = paths["md"].read_text()
    assert "base model" not in md and "**local**" in md
    js = json.loads(paths["json"].read_text())  # strict JSON: the NaN became null
    assert js["strategies"][1]["mean_test_ppl"] is None
    _assert_png(paths["png"], min_size=2000)
    with pytest.raises(ValueError):
        write_comparison([], tmp_path, "t")


def test_run_report_many_users_and_rounds(tmp_path):
    n, rounds = 14, 40
    rng = np.random.default_rng(0)
    metrics = [
        {"kind": "eval", "round": 0, "step": 0, "split": "test", "full": True, "model": "base", "ppl": [50.0] * n}
    ]
    for r in range(1, rounds + 1):
        w = rng.random((n, n))
        w /= w.sum(axis=1, keepdims=True)
        metrics.append({"kind": "trust", "round": r, "step": 5 * r, "W": w.tolist(), "scores": None, "bytes": {}})
        metrics.append({"kind": "train", "round": r, "step": 5 * r, "loss": (3.0 + rng.random(n)).tolist()})
        metrics.append({"kind": "eval", "round": r, "step": 5 * r, "split": "test", "full": r == rounds,
                        "ppl": (40.0 + rng.random(n)).tolist()})  # fmt: skip
    run = _make_run(tmp_path, {"strategy": "validation", "model": "m", "users": n}, metrics)
    md = write_run_report(run).read_text()
    w_last = np.asarray(metrics[-3]["W"])
    assert _table_row(_section(md, "## Trust matrix W"), "u13")[1:] == [f"{v:.2f}" for v in w_last[13]]
    assert "No byte counts recorded" in md
    for name in ("W_final.png", "W_rounds.png", "curves.png"):
        _assert_png(run / name)


# ---------------------------------------------------------------------------------------------- trust quality


def test_run_report_trust_quality_computed_from_final_w(tmp_path):
    summary = _summary()  # no trust_quality (an older run): computed from the final W and the mixture
    summary["mixture"] = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]  # u0, u1 share a category; u2 is alone
    summary["user_categories"] = ["de", "de", "code"]
    md = write_run_report(_make_run(tmp_path, summary)).read_text()
    q = _section(md, "## Trust quality")
    # W2 = [[0.81, 0.14, 0.05], [0.12, 0.83, 0.05], ...]: off-diagonal share on the same-category peer
    assert _table_row(q, "u0")[1:4] == ["de", f"{0.14 / 0.19:.3f}", "1.00"]
    assert _table_row(q, "u1")[2] == f"{0.12 / 0.17:.3f}"
    assert _table_row(q, "u2")[2:4] == ["—", "—"]  # no same-category peer: undefined
    assert _table_row(q, "u0")[4] == f"{1 / (0.81**2 + 0.14**2 + 0.05**2):.2f}"
    assert _table_row(q, "**Mean**")[2] == f"{(0.14 / 0.19 + 0.12 / 0.17) / 2:.3f}"  # u2 left out


def test_run_report_trust_quality_from_summary(tmp_path):
    tq = {
        "same_category_mass": 0.5,
        "top_peer_accuracy": 1.0,
        "effective_peers": 1.5,
        "l1_to_oracle_offdiag": None,
        "same_category_mass_per_user": [0.4, 0.6, None],
        "top_peer_accuracy_per_user": [1.0, 1.0, None],
        "effective_peers_per_user": [1.5, 1.5, 1.5],
        "l1_to_oracle_offdiag_per_user": [None, None, None],
    }
    md = write_run_report(_make_run(tmp_path, _summary() | {"trust_quality": tq})).read_text()
    q = _section(md, "## Trust quality")
    assert _table_row(q, "u1")[2:] == ["0.600", "1.00", "1.50", "—"]
    assert _table_row(q, "**Mean**")[2:] == ["0.500", "1.00", "1.50", "—"]


def test_comparison_same_category_mass_column(tmp_path):
    from trustlora.report import comparison_row_from_run

    rows = [
        {"strategy": "fedavg", "seed": 0, "mean_test_ppl": 30.0, "same_category_mass": 0.2},
        {"strategy": "fedavg", "seed": 1, "mean_test_ppl": 31.0, "same_category_mass": 0.4},
        {"strategy": "local", "seed": 0, "mean_test_ppl": 35.0, "same_category_mass": None},
    ]
    paths = write_comparison(rows, tmp_path / "cmp", "t")
    got = {r["strategy"]: r for r in csv.DictReader(paths["csv"].read_text().splitlines())}
    assert float(got["fedavg"]["same_category_mass"]) == pytest.approx(0.3) and got["local"]["same_category_mass"] == ""
    md = paths["md"].read_text()
    assert "SCM (final)" in md
    assert _table_row(md, "**fedavg**")[5] == "0.300" and _table_row(md, "local")[5] == "—"

    run = tmp_path / "run"
    run.mkdir()
    s = _summary() | {"final_W": W2, "mixture": [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]}
    (run / "summary.json").write_text(json.dumps(s))
    assert comparison_row_from_run(run)["same_category_mass"] == pytest.approx((0.14 / 0.19 + 0.12 / 0.17) / 2)
    (run / "summary.json").write_text(json.dumps(s | {"trust_quality": {"same_category_mass": 0.9}}))
    assert comparison_row_from_run(run)["same_category_mass"] == 0.9
