"""The torch.distributed runtime (2 processes, gloo) gives the same numbers as the in-process simulation."""

import json

import pytest
import torch

from trustlora import api
from trustlora.comm.distributed import users_of_rank
from trustlora.config import load_config


def test_users_of_rank_blocks():
    assert [users_of_rank(r, 3, 2) for r in range(2)] == [[0], [1, 2]]
    assert [users_of_rank(r, 6, 3) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert sum((users_of_rank(r, 7, 3) for r in range(3)), []) == list(range(7))


def _adapters(run_dir):
    from safetensors.torch import load_file

    return [
        torch.cat([t.flatten() for _, t in sorted(load_file(u / "adapter_model.safetensors").items())])
        for u in sorted((run_dir / "adapters").iterdir())
    ]


@pytest.mark.parametrize("strategy", ["weights", "validation", "predictions"])
def test_distributed_equals_simulation(tiny_overrides, tmp_path, strategy):
    # LoRA dropout on: each user's masks come from its own generator, so hosting it elsewhere changes nothing
    over = tiny_overrides + [f"strategy={strategy}", "lora.same_init=false", "lora.dropout=0.1"]
    sim = api.run(load_config(None, over + [f"out={tmp_path / 'sim'}"]), progress=False, log=lambda *a: None)
    dist_dir = api.run(
        load_config(None, over + [f"out={tmp_path / 'dist'}", "runtime=distributed", "world_size=2"]),
        progress=False,
        log=lambda *a: None,
    )
    s_sim = json.loads((sim / "summary.json").read_text())
    s_dist = json.loads((dist_dir / "summary.json").read_text())
    assert s_dist["runtime"] == "distributed"
    assert s_dist["final_test_ppl"] == pytest.approx(s_sim["final_test_ppl"], rel=1e-4)
    torch.testing.assert_close(torch.tensor(s_dist["final_W"]), torch.tensor(s_sim["final_W"]), rtol=1e-4, atol=1e-6)
    for a, b in zip(_adapters(sim), _adapters(dist_dir), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert s_dist["bytes_per_round"] == s_sim["bytes_per_round"]
    recs = [json.loads(x) for x in (dist_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["users"] == [0, 1, 2] for r in recs if "users" in r)
    assert not list(dist_dir.glob(".metrics.rank*"))


def test_distributed_resume_after_crash(tiny_overrides, tmp_path, monkeypatch):
    """A 2-process run killed before round 3 resumes from the committed round and matches an unbroken run
    (with LoRA dropout and the onecycle schedule, whose states travel in the checkpoint)."""
    over = tiny_overrides + [
        "strategy=validation",
        "lora.same_init=false",
        "runtime=distributed",
        "world_size=2",
        "lora.dropout=0.1",
        "train.schedule=onecycle",
    ]
    ref = api.run(load_config(None, over + [f"out={tmp_path / 'ref'}"]), progress=False, log=lambda *a: None)
    crash = tmp_path / "crash"
    monkeypatch.setenv("TRUSTLORA_FAIL_AT_ROUND", "3")
    with pytest.raises(Exception, match="simulated crash"):
        api.run(load_config(None, over + [f"out={crash}"]), progress=False, log=lambda *a: None)
    assert json.loads((crash / "checkpoint.json").read_text()) == {"round": 2}
    assert sorted(p.name for p in (crash / "checkpoint").iterdir()) == ["u0-r2.pt", "u1-r2.pt"]
    monkeypatch.delenv("TRUSTLORA_FAIL_AT_ROUND")
    resumed = api.run(load_config(None, over + [f"out={crash}"]), progress=False, log=lambda *a: None)
    s_ref = json.loads((ref / "summary.json").read_text())
    s_res = json.loads((resumed / "summary.json").read_text())
    assert s_res["final_test_ppl"] == pytest.approx(s_ref["final_test_ppl"], rel=1e-6)
    for a, b in zip(_adapters(ref), _adapters(resumed), strict=True):
        torch.testing.assert_close(a, b)
    assert not (crash / "checkpoint").exists() and not (crash / "checkpoint.json").exists()

    def events(d):  # no record of the crashed attempt is duplicated or lost
        return [(r["kind"], r["round"], r.get("split")) for r in map(json.loads, (d / "metrics.jsonl").open())]

    assert events(crash) == events(ref)


def test_killed_process_gives_clear_error_and_clean_resume(tiny_overrides, tmp_path, monkeypatch):
    """SIGKILL of the process hosting users 1-2 before round 3: one line naming the rank and the last committed
    round, fast (no hang until the timeout); the same command then resumes to the unbroken run's result."""
    import time

    from trustlora.config import RunError

    over = tiny_overrides + ["strategy=fedavg", "runtime=distributed", "world_size=2", "comm.timeout=60"]
    ref = api.run(load_config(None, over + [f"out={tmp_path / 'ref'}"]), progress=False, log=lambda *a: None)
    crash = tmp_path / "crash"
    monkeypatch.setenv("TRUSTLORA_KILL_AT_ROUND", "1:3")
    t0 = time.time()
    with pytest.raises(RunError) as err:
        api.run(load_config(None, over + [f"out={crash}"]), progress=False, log=lambda *a: None)
    msg = str(err.value)
    assert "rank 1 (users 1-2) was killed by SIGKILL" in msg and "last committed round is 2 of 3" in msg, msg
    assert "\n" not in msg and time.time() - t0 < 60
    monkeypatch.delenv("TRUSTLORA_KILL_AT_ROUND")
    resumed = api.run(load_config(None, over + [f"out={crash}"]), progress=False, log=lambda *a: None)
    s_ref = json.loads((ref / "summary.json").read_text())
    s_res = json.loads((resumed / "summary.json").read_text())
    assert s_res["final_test_ppl"] == pytest.approx(s_ref["final_test_ppl"], rel=1e-6)
