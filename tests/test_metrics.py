"""The derived numbers have one definition each (trustlora.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trustlora.metrics import dominant_categories, dominant_index, mean_std, ppl_from_loss


def test_mean_std_one_seed_has_no_spread():
    assert mean_std([3.0]) == (3.0, None)
    m, s = mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3) and s == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    m, s = mean_std([])
    assert math.isnan(m) and s is None


def test_dominant_category_first_on_ties_and_unknown_rows():
    mix = [[0.2, 0.8, 0.0], [0.5, 0.5, 0.0], [float("nan"), 0.1, 0.3], [float("nan")] * 3]
    assert dominant_index(mix) == [1, 0, 2, None]
    assert dominant_categories(mix, ["de", "es", "nl"]) == ["es", "de", "nl", None]


def test_ppl_from_loss_is_capped():
    assert ppl_from_loss(math.log(20.0)) == pytest.approx(20.0)
    assert ppl_from_loss(1e9) == math.exp(50.0)


def test_data_errors_surface_before_the_model_loads(monkeypatch, tmp_path):
    from trustlora import api
    from trustlora.config import UserError, load_config

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(api, "load_base", no_model)
    cfg = load_config(None, ["model=tiny-random", "data.source=jsonl", f"data.path={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(UserError, match="data"):
        api.prepare(cfg, log=lambda *a: None)


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from trustlora.cli import main

    assert main(["report", str(tmp_path / "no-such-run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trustlora: error:") and "\n" not in err and "Traceback" not in err


def test_machine_peak_keeps_the_best_measurement_of_this_machine(tmp_path, monkeypatch):
    """MFU's GEMM peak: the larger of a fresh measurement and the best recorded for this CPU/threads/torch/precision,
    so one measurement in a busy moment does not inflate MFU; a corrupt record file is measured over."""
    import json as _json

    from trustlora.flops import machine_key, machine_peak_gflops

    monkeypatch.setenv("TRUSTLORA_CACHE", str(tmp_path))
    first = machine_peak_gflops("fp32", repeats=2)
    stored = _json.loads((tmp_path / "gemm_peak.json").read_text())
    assert stored[machine_key("fp32")] == first > 0
    stored[machine_key("fp32")] = first * 100  # a better moment recorded earlier
    (tmp_path / "gemm_peak.json").write_text(_json.dumps(stored))
    assert machine_peak_gflops("fp32", repeats=2) == first * 100
    (tmp_path / "gemm_peak.json").write_text("{not json")
    assert 0 < machine_peak_gflops("fp32", repeats=2) < first * 100
