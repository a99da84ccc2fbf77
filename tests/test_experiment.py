"""trustlora.experiment: the grid orchestrator (names, order, reuse, one Workspace) and the Workspace key."""

import copy
import dataclasses
import json

import pytest

from trustlora import api
from trustlora.config import Config, ConfigError, DataConfig, load_config
from trustlora.experiment import GridRun, drop_overrides, run_dir_of, run_grid, seeds_of, study_dir


def test_helpers(tmp_path):
    assert run_dir_of(tmp_path, "N6/fedavg", 2) == tmp_path / "N6" / "fedavg-seed2"
    assert drop_overrides(["out=x", "train.lr=0.1", "data.users=3"], "out", "data.users") == ["train.lr=0.1"]
    assert seeds_of(load_config(None, ["seed=3"])) == [3]
    assert seeds_of(load_config(None, ["seed=3", "seeds=0,1"])) == [0, 1]
    assert study_dir(load_config(None, [f"out={tmp_path}"]), "compare") == tmp_path
    assert study_dir(load_config(None, []), "compare").name.startswith("compare-")


def _fake_runs(monkeypatch) -> list[tuple[list[str], str]]:
    """Replace the runs by a summary.json write (reused when there): records (overrides, run_dir) of real runs."""
    calls = []

    def fake(config, overrides, run_dir, ws, progress=True, log=print):
        if (run_dir / "summary.json").exists():
            return ws
        calls.append((list(overrides), str(run_dir)))
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"overrides": list(overrides)}))
        return ws

    monkeypatch.setattr(api, "run_or_reuse", fake)
    return calls


def test_grid_names_order_and_overrides(tmp_path, monkeypatch):
    calls = _fake_runs(monkeypatch)
    points = [("a/local", ["strategy=local"]), ("fedavg", ["strategy=fedavg", "train.lr=0.01"])]
    runs = run_grid(None, ["train.steps=40"], points, [0, 1], tmp_path, progress=False)
    assert runs == [
        GridRun("a/local", 0, tmp_path / "a" / "local-seed0"),
        GridRun("fedavg", 0, tmp_path / "fedavg-seed0"),
        GridRun("a/local", 1, tmp_path / "a" / "local-seed1"),
        GridRun("fedavg", 1, tmp_path / "fedavg-seed1"),
    ]  # seed by seed
    run_overrides = ["train.steps=40", "strategy=fedavg", "train.lr=0.01", "seed=0"]
    assert calls[1] == (run_overrides, str(tmp_path / "fedavg-seed0"))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("summary.json")) == [
        "a/local-seed0/summary.json",
        "a/local-seed1/summary.json",
        "fedavg-seed0/summary.json",
        "fedavg-seed1/summary.json",
    ]
    runs = run_grid(None, ["train.steps=40"], points, [0, 1], tmp_path / "p", seeds_outer=False, progress=False)
    assert [(r.name, r.seed) for r in runs] == [("a/local", 0), ("a/local", 1), ("fedavg", 0), ("fedavg", 1)]
    n = len(calls)
    run_grid(None, ["train.steps=40"], points, [0, 1], tmp_path, progress=False)
    assert len(calls) == n  # every run finished: none is run again


def test_grid_validates_every_point_before_running(tmp_path, monkeypatch):
    calls = _fake_runs(monkeypatch)
    points = [("good", ["train.lr=0.01"]), ("bad", ["train.lr=-1"])]
    with pytest.raises(ConfigError, match="train.lr"):
        run_grid(None, [], points, [0], tmp_path, progress=False)
    assert calls == [] and not list(tmp_path.iterdir())


def test_grid_runs_reuses_and_shares_one_workspace(tiny_overrides, tmp_path, monkeypatch):
    loads = []
    load_base = api.load_base
    monkeypatch.setattr(api, "load_base", lambda *a, **k: loads.append(a) or load_base(*a, **k))
    points = [("local", ["strategy=local"]), ("fedavg", ["strategy=fedavg"])]
    out = tmp_path / "grid"
    runs = run_grid(None, tiny_overrides, points, [0, 1], out, progress=False)
    expected = {"local-seed0", "fedavg-seed0", "local-seed1", "fedavg-seed1"}
    assert {p.name for p in out.iterdir()} == expected
    assert {r.run_dir.name for r in runs} == expected
    for r in runs:
        s = json.loads((r.run_dir / "summary.json").read_text())
        assert (s["strategy"], s["seed"]) == (r.name, r.seed)
    assert len(loads) == 1  # same data, model and adapters: one Workspace for the four runs
    mtimes = {r.run_dir: (r.run_dir / "summary.json").stat().st_mtime_ns for r in runs}
    logged = []
    again = run_grid(None, tiny_overrides, points, [0, 1], out, progress=False, log=logged.append)
    assert again == runs
    assert {r.run_dir: (r.run_dir / "summary.json").stat().st_mtime_ns for r in again} == mtimes  # not re-run
    assert len(logged) == 4 and all("reusing" in m for m in logged)
    assert len(loads) == 1


def _changed(value):
    """A different value of the same kind (the key never validates, so the kind only has to serialise)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, list):
        return [*value, "changed"]
    if isinstance(value, dict):
        return {**value, "changed": 1}
    return "changed"  # None


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(DataConfig)])
def test_workspace_key_changes_with_every_data_field(name):
    cfg = Config()
    other = copy.deepcopy(cfg)
    setattr(other.data, name, _changed(getattr(cfg.data, name)))
    assert api._data_key(other) != api._data_key(cfg)


def test_workspace_key_covers_what_prepare_uses_and_nothing_run_specific():
    base = load_config(None, [])
    key = api._data_key(base)
    for change in ("model=tiny-random", "train.seq_len=64", "train.precision=fp32", "lora.r=8"):
        assert api._data_key(load_config(None, [change])) != key, change
    for change in ("eval.batch_size=2", "eval.during_tokens=0", "eval.cache_base=false"):
        assert api._data_key(load_config(None, [change])) != key, change
    for change in ("strategy=fedavg", "seed=3", "train.lr=0.01", "train.steps=40", "out=x"):
        assert api._data_key(load_config(None, [change])) == key, change  # shared between the runs of a grid
