"""trustlora sweep: grid parsing and a tiny two-point sweep end to end."""

import csv
import json

import pytest

from trustlora.cli import main
from trustlora.config import ConfigError
from trustlora.sweep import parse_grid


def test_parse_grid_types():
    g = parse_grid(["train.lr=0.001,0.002", "lora.dropout=0,0.1", "strategy=local,fedavg"])
    assert g == {"train.lr": [0.001, 0.002], "lora.dropout": [0, 0.1], "strategy": ["local", "fedavg"]}


def test_sweep_runs_every_point_and_tabulates(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "sw"
    over = [o for o in tiny_overrides if not o.startswith("train.steps") and not o.startswith("train.warmup")]
    code = main(
        [
            "sweep",
            "--no-progress",
            "--grid",
            "train.lr=0.001,0.02",
            "--grid",
            "strategy=local",
            *over,
            "train.steps=4",
            "train.warmup=2",
            f"out={out}",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["train.lr"] for r in rows] == ["0.001", "0.02"]
    assert all(float(r["mean_test_ppl"]) > 1 for r in rows)
    assert rows[0]["mean_test_ppl"] != rows[1]["mean_test_ppl"]
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "sweep.md").read_text()
    assert "**" in md and " 0.001 |" in md and " 0.02 |" in md  # grid values keep their precision
    assert md.startswith("# Sweep (strategy swept,")


def test_sweep_rejects_bad_point_before_running(tmp_path):
    from trustlora.sweep import run_sweep

    with pytest.raises(ConfigError, match="train.lr"):
        run_sweep(None, [f"out={tmp_path}"], ["train.lr=0.001,-1"])


def _finished_point(out, name: str, test: float, val_per_user: list[float]) -> None:
    d = out / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"final_mean_test_ppl": test, "final_val_ppl": val_per_user}))


def test_best_point_is_chosen_on_val_not_test(tmp_path):
    from trustlora.sweep import run_sweep

    out = tmp_path / "sw"
    # lr=0.001 is best on test (10 < 12) but worse on val (31 > 21): the val choice must win.
    _finished_point(out, "train.lr=0.001-seed0", 10.0, [30.0, 32.0])
    _finished_point(out, "train.lr=0.002-seed0", 12.0, [20.0, 22.0])
    _finished_point(out, "train.lr=0.004-seed0", 11.0, [25.0, 27.0])
    run_sweep(None, [f"out={out}"], ["train.lr=0.001,0.002,0.004"], progress=False)  # all points reused
    obj = json.loads((out / "sweep.json").read_text())
    assert obj["best"] == {"train.lr": 0.002}
    assert [r["mean_val_ppl"] for r in obj["rows"]] == [31.0, 21.0, 26.0]
    assert [r["best"] for r in obj["rows"]] == [False, True, False]
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["best"] for r in rows] == ["False", "True", "False"]
    md = (out / "sweep.md").read_text()
    assert "**21.00**" in md and "**12.00**" in md and "**10.00**" not in md
    assert "train.lr=0.002" in md.split("Best point")[1]


def test_best_index_and_point_row():
    from trustlora.sweep import best_index, point_row

    two_seeds = [
        {"final_mean_test_ppl": 7.0, "final_val_ppl": [9.0, 11.0]},
        {"final_mean_test_ppl": 9.0, "final_val_ppl": [9.0, 9.0]},
    ]
    rows = [
        point_row({"a": 1}, [{"final_mean_test_ppl": 5.0}]),  # no val: not eligible
        point_row({"a": 2}, [{"final_mean_test_ppl": 9.0, "final_mean_val_ppl": 8.0}]),
        point_row({"a": 3}, two_seeds),
    ]
    assert rows[0]["mean_val_ppl"] is None
    assert rows[2]["mean_val_ppl"] == 9.5 and rows[2]["mean_test_ppl"] == 8.0 and rows[2]["n_seeds"] == 2
    assert best_index(rows) == 1
    assert best_index(rows[:1]) is None
