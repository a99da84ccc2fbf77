"""Tests of trustlora.rundir: reading a run directory written by a real (tiny) run, and its user errors."""

from __future__ import annotations

import pytest

from trustlora import api
from trustlora.config import UserError, load_config
from trustlora.rundir import SUMMARY_VERSION, find_runs, load_run, mean_test_ppl, n_users, oracle_w, user_categories


def test_load_run_of_a_tiny_run(tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides + ["strategy=local", "train.steps=2", f"out={tmp_path / 'local-seed0'}"])
    run = load_run(api.run(cfg, progress=False, log=lambda *a: None))
    assert run.summary["version"] == SUMMARY_VERSION
    assert (run.strategy, run.seed, run.name) == ("local", 0, "local-seed0")
    assert run.config["strategy"] == "local" and run.records
    assert n_users(run.summary, run.records, run.config) == 3
    assert user_categories(run.summary, 3) == run.summary["user_categories"]
    assert oracle_w(run.summary).shape == (3, 3)
    assert mean_test_ppl(run.summary, run.records, "final") == run.summary["final_mean_test_ppl"]
    assert [r.name for r in find_runs(tmp_path)] == ["local-seed0"]


def test_oracle_from_the_mixture_when_not_recorded():
    w = oracle_w({"mixture": [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]})
    assert w.tolist() == [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    assert oracle_w({"mixture": [[1.0, 0.0]]}, from_mixture=False) is None


@pytest.mark.parametrize("name", ["missing", "empty"])
def test_not_a_run_directory_is_a_one_line_user_error(tmp_path, name):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as e:
        load_run(tmp_path / name)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / name) in msg
    with pytest.raises(UserError, match="no run directories|no such directory"):
        find_runs(tmp_path / name)
