"""trustlora sweep: grid parsing and a tiny two-point sweep end to end."""

import csv

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
