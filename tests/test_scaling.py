"""trustlora scale: runs per N land in N<n>/, the table has one row per N and SCM per trust strategy."""

import json

import pytest

from trustlora.cli import main
from trustlora.config import ConfigError
from trustlora.scaling import parse_users


def test_parse_users():
    assert parse_users("6,12, 24") == [6, 12, 24]
    for bad in ("", "1,2", "a,b"):
        with pytest.raises(ConfigError, match="--users"):
            parse_users(bad)


def test_scale_two_sizes_then_extends_the_same_table(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "sc"
    over = [o for o in tiny_overrides if not o.startswith(("data.users", "data.train_tokens"))]
    over += ["data.train_tokens=500"]
    assert main(["scale", "--no-progress", "--users", "6", *over, "strategies=local,predictions", f"out={out}"]) == 0
    assert main(["scale", "--no-progress", "--users", "3,6", *over, "strategies=fedavg", f"out={out}"]) == 0
    rows = json.loads((out / "scale.json").read_text())["rows"]
    got = {(r["users"], r["strategy"]) for r in rows}
    assert got == {(6, "local"), (6, "predictions"), (3, "fedavg"), (6, "fedavg")}
    pred = next(r for r in rows if r["strategy"] == "predictions")
    assert 0.0 <= pred["same_category_mass"] <= 1.0
    uni6 = next(r for r in rows if r["users"] == 6)["uniform_share"]
    assert uni6 == pytest.approx(1 / 5)  # 6 users in 3 categories: 1 of 5 peers shares the category
    md = (out / "scale.md").read_text()
    assert "|   6 |" in md and "predictions SCM" in md
    capsys.readouterr()
    assert main(["scale", "--no-progress", "--users", "6", *over, "strategies=local", f"out={out}"]) == 0
    assert "reusing" in capsys.readouterr().out  # finished runs are never recomputed
