"""log.tensorboard=true: a second sink of the record contract (per-user ppl, loss, W per round) that TensorBoard
reads back with the same numbers as summary.json and metrics.jsonl."""

import json

import pytest

from trustlora import api
from trustlora.config import load_config

pytest.importorskip("tensorboard")


def test_tensorboard_events_match_the_run_records(tiny_overrides, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(None, tiny_overrides + ["strategy=weights", "log.tensorboard=true", f"out={tmp_path / 'tb'}"])
    run_dir = api.run(cfg, progress=False, log=lambda *a: None)
    ea = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    summary = json.loads((run_dir / "summary.json").read_text())
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    n = summary["users"]
    for u in range(n):
        final = ea.Scalars(f"ppl/test/user_{u}")[-1]
        assert final.value == pytest.approx(summary["final_test_ppl"][u], rel=1e-6)
        assert ea.Scalars(f"base_ppl/test/user_{u}")[0].value == pytest.approx(summary["base_test_ppl"][u], rel=1e-6)
    trust = [r for r in recs if r["kind"] == "trust"]
    assert [e.step for e in ea.Images("W")] == [r["step"] for r in trust]
    last_w = trust[-1]["W"]
    assert ea.Scalars("trust/self_weight/user_1")[-1].value == pytest.approx(last_w[1][1], rel=1e-6)
    train = [r for r in recs if r["kind"] == "train"]
    assert [e.step for e in ea.Scalars("loss/train/mean")] == [r["step"] for r in train]
    assert "ppl/val_sub/mean" in tags["scalars"]


def test_tensorboard_flag_is_checked():
    from trustlora.config import ConfigError

    with pytest.raises(ConfigError, match="log.tensorboard"):
        load_config(None, ["log.tensorboard=maybe"])
