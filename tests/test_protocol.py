"""Algorithm 1 end to end on a tiny model and own data: schedule, strategies' effects, resume, outputs."""

import json

import pytest
import torch

from trustlora import api
from trustlora import checkpoint as ckpt
from trustlora.config import ConfigError, load_config
from trustlora.protocol import Rounds, round_schedule
from trustlora.train import cross_losses, evaluate, topk_predictions


def test_round_schedule():
    assert round_schedule(30, 10, 5) == [10, 5, 5, 5, 5]
    assert round_schedule(12, 0, 5) == [5, 5, 2]
    assert round_schedule(10, 10, 5) == [10]
    assert sum(round_schedule(500, 100, 25)) == 500 and len(round_schedule(500, 100, 25)) == 17


def _run(overrides, tmp_path, name, extra=()):
    cfg = load_config(None, list(overrides) + [f"out={tmp_path / name}"] + list(extra))
    return api.run(cfg, progress=False, log=lambda *a: None), cfg


def _adapters(run_dir):
    from safetensors.torch import load_file

    users = sorted((run_dir / "adapters").iterdir())
    return [
        torch.cat([t.flatten() for _, t in sorted(load_file(u / "adapter_model.safetensors").items())]) for u in users
    ]


def test_fedavg_makes_identical_adapters_local_does_not(tiny_overrides, tmp_path):
    fed, _ = _run(tiny_overrides, tmp_path, "fed", ["strategy=fedavg"])
    loc, _ = _run(tiny_overrides, tmp_path, "loc", ["strategy=local"])
    a_fed, a_loc = _adapters(fed), _adapters(loc)
    for a in a_fed[1:]:
        torch.testing.assert_close(a, a_fed[0])
    assert not torch.allclose(a_loc[0], a_loc[1])
    s = json.loads((loc / "summary.json").read_text())
    assert s["final_mean_test_ppl"] < s["base_mean_test_ppl"]  # training helps even the tiny model
    assert s["bytes_per_round"] == {}
    sf = json.loads((fed / "summary.json").read_text())
    assert sf["bytes_per_round"]["delta"] == 4 * sf["adapter_params_per_user"]


def test_outputs_and_metrics(tiny_overrides, tmp_path):
    run_dir, cfg = _run(tiny_overrides, tmp_path, "pred", ["strategy=predictions"])
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "report.md", "W_final.png", "curves.png"):
        assert (run_dir / f).is_file(), f
    assert not (run_dir / "checkpoint.json").exists() and not (run_dir / "checkpoint").exists()
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trust = [r for r in recs if r["kind"] == "trust"]
    assert [r["step"] for r in trust] == [2, 4, 6]
    for r in trust:
        w = torch.tensor(r["W"])
        torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=w.dtype))
        assert r["bytes"]["topk_values"] > 0 and r["bytes"]["delta"] > 0
    finals = [r for r in recs if r["kind"] == "eval" and r["full"] and r["round"] == 3]
    assert {r["split"] for r in finals} == {"val", "test"}


def _run_crashing(monkeypatch, overrides, tmp_path, name, extra, at: int = 3) -> None:
    """Run until round ``at`` starts, which raises a simulated crash (rounds before it are checkpointed)."""
    orig = Rounds.run_round

    def crashing(self, r, step_callback=None):
        if r == at:
            raise RuntimeError("simulated crash")
        return orig(self, r, step_callback)

    monkeypatch.setattr(Rounds, "run_round", crashing)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            _run(overrides, tmp_path, name, extra)
    finally:
        monkeypatch.setattr(Rounds, "run_round", orig)


def test_resume_after_crash_gives_identical_result(tiny_overrides, tmp_path, monkeypatch):
    ref, _ = _run(tiny_overrides, tmp_path, "ref", ["strategy=weights"])
    _run_crashing(monkeypatch, tiny_overrides, tmp_path, "crash", ["strategy=weights"])
    assert json.loads((tmp_path / "crash" / "checkpoint.json").read_text()) == {"round": 2}
    assert [p.name for p in (tmp_path / "crash" / "checkpoint").iterdir()] == ["u0-r2.pt"]  # older rounds pruned
    resumed, _ = _run(tiny_overrides, tmp_path, "crash", ["strategy=weights"])
    for a, b in zip(_adapters(ref), _adapters(resumed), strict=True):
        torch.testing.assert_close(a, b)
    s_ref = json.loads((ref / "summary.json").read_text())
    s_res = json.loads((resumed / "summary.json").read_text())
    assert s_ref["final_test_ppl"] == pytest.approx(s_res["final_test_ppl"], rel=1e-6)
    # a finished run directory is never overwritten
    with pytest.raises(ConfigError, match="already holds a finished run"):
        _run(tiny_overrides, tmp_path, "crash", ["strategy=weights"])
    # a different config does not resume into someone else's checkpoint
    _run_crashing(monkeypatch, tiny_overrides, tmp_path, "crash2", ["strategy=weights"])
    with pytest.raises(ConfigError, match="different config"):
        _run(tiny_overrides, tmp_path, "crash2", ["strategy=fedavg"])
    # ... but the comparison's own fields (which strategies / seeds it runs) are not the run's config
    grid = ["strategy=weights", "strategies=fedavg,weights", "seeds=0,1", f"out={tmp_path / 'crash2'}"]
    assert ckpt.resume_round(load_config(None, [*tiny_overrides, *grid]), tmp_path / "crash2") == 2


def test_resume_keeps_last_rounds_updates(tiny_overrides, tmp_path, monkeypatch):
    """The previous round's updates are in the checkpoint: after a crash the first resumed round still finds a replay
    (attack 'copy' resends last round's honest update) and the run ends where the uninterrupted one does."""
    args = ["strategy=weights", "attack.kind=copy", "attack.users=2"]
    ref, _ = _run(tiny_overrides, tmp_path, "ref", args)
    _run_crashing(monkeypatch, tiny_overrides, tmp_path, "crash", args)
    resumed, _ = _run(tiny_overrides, tmp_path, "crash", args)
    trust = {}
    for name, out in (("ref", ref), ("resumed", resumed)):
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        trust[name] = {r["round"]: r for r in recs if r["kind"] == "trust"}
    assert trust["resumed"][3]["duplicates"] == trust["ref"][3]["duplicates"]
    assert trust["ref"][3]["duplicates"] == [2]  # the replay, found in round 3 of both runs
    for a, b in zip(_adapters(ref), _adapters(resumed), strict=True):
        torch.testing.assert_close(a, b)


def test_validation_strategy_cross_losses_consistent(tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides + ["strategy=validation"])
    ws = api.prepare(cfg, log=lambda *a: None)
    mm, part = ws.mm, ws.partition
    g = torch.Generator().manual_seed(0)
    mm.set_flat(torch.randn(mm.get_flat().shape, generator=g) * 0.05)
    val = [u.val for u in part.users]
    own, _ = evaluate(mm, val, 32, 4, "fp32", max_tokens=128)
    for i in range(3):
        row = cross_losses(mm, val[i], 32, 4, "fp32", 128)
        assert row[i].item() == pytest.approx(own[i], rel=1e-5)
        # slot j on user i's text equals evaluating adapter j on it
        for j in range(3):
            streams = [val[i]] * 3
            loss_j, _ = evaluate(mm, streams, 32, 4, "fp32", max_tokens=128)
            assert row[j].item() == pytest.approx(loss_j[j], rel=1e-5)
    v, idx = topk_predictions(mm, part.reference, 5, "probs", 32, 4, "fp32")
    assert v.shape == (3, len(part.reference), 5) and idx.dtype == torch.int32
    assert torch.all(v.sum(-1) <= 1 + 1e-5) and torch.all(v[..., :-1] >= v[..., 1:])


@pytest.mark.parametrize("strategy", ["oracle", "validation", "weights"])
def test_every_strategy_runs_and_learns(tiny_overrides, tmp_path, strategy):
    run_dir, _ = _run(tiny_overrides, tmp_path, strategy, [f"strategy={strategy}", "trust.mode=weight"])
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["final_mean_test_ppl"] < s["base_mean_test_ppl"]
    assert len(s["final_W"]) == 3


def test_trust_recorded_but_not_applied_equals_local_training(tiny_overrides, tmp_path):
    loc, _ = _run(tiny_overrides, tmp_path, "loc", ["strategy=local"])
    rec, _ = _run(tiny_overrides, tmp_path, "rec", ["strategy=weights", "trust.apply=false"])
    for a, b in zip(_adapters(loc), _adapters(rec), strict=True):
        torch.testing.assert_close(a, b)
    recs = [json.loads(x) for x in (rec / "metrics.jsonl").read_text().splitlines()]
    w = torch.tensor([r for r in recs if r["kind"] == "trust"][-1]["W"])
    assert not torch.allclose(w, torch.eye(3, dtype=w.dtype))  # trust was computed all the same


def test_ring_topology_zeroes_non_neighbours(tiny_overrides, tmp_path):
    over = [o for o in tiny_overrides if not o.startswith("data.users")] + ["data.users=4"]
    run_dir, _ = _run(over, tmp_path, "ring", ["strategy=fedavg", "trust.topology=ring"])
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    w = torch.tensor([r for r in recs if r["kind"] == "trust"][-1]["W"])
    expected = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]], dtype=w.dtype) / 3
    torch.testing.assert_close(w, expected)
    sizes = [r for r in recs if r["kind"] == "trust"][-1]["bytes_equiv"]
    assert sizes["dense_logits"] == 96 * 257 * 4 and sizes["topk_coo"] == 96 * 10 * 8


def test_phase_costs_recorded(tiny_overrides, tmp_path):
    """Per-phase seconds and forward positions in metrics.jsonl; FLOPs and MFU per phase in summary.json."""
    run_dir, cfg = _run(tiny_overrides, tmp_path, "cost", ["strategy=predictions"])
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    n, b, t = cfg.data.users, cfg.train.batch_size, cfg.train.seq_len
    for r in recs:
        if r["kind"] in ("train", "trust", "eval"):
            assert r["seconds"] >= 0
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["positions"] for r in train] == [k * n * b * t for k in round_schedule(6, 2, 2)]
    assert all(r["positions"] > 0 for r in recs if r["kind"] == "trust")  # predictions runs X_S through all users
    s = json.loads((run_dir / "summary.json").read_text())
    ph = s["phases"]
    assert ph["train"]["flops"] > 0 and ph["eval"]["flops"] > 0 and ph["total"]["gemm_peak_gflops_per_s"] > 0
    parts = sum(ph[k]["seconds"] for k in ("train", "trust", "eval", "other"))
    assert abs(parts - s["wall_time_s"]) < 1e-6 * max(1.0, s["wall_time_s"]) + 1e-9
    assert "Time and model FLOPs by phase" in (run_dir / "report.md").read_text()


def test_base_eval_cached_on_disk_and_keyed(tiny_overrides, tmp_path, _private_base_eval_cache):
    """A second identical run replays the base-model evaluation from disk; another seq_len recomputes it."""
    first, _ = _run(tiny_overrides, tmp_path, "a", ["strategy=local"])
    assert len(list(_private_base_eval_cache.iterdir())) == 1
    second, _ = _run(tiny_overrides, tmp_path, "b", ["strategy=fedavg"])

    def base(run_dir):
        recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r for r in recs if r.get("model") == "base"]

    b1, b2 = base(first), base(second)
    assert not any(r.get("cached") for r in b1) and all(r.get("cached") for r in b2)
    assert [r["loss"] for r in b1] == [r["loss"] for r in b2]
    s1, s2 = (json.loads((d / "summary.json").read_text())["phases"]["eval"] for d in (first, second))
    assert s2["flops"] < s1["flops"]  # the replayed base evaluation costs the second run nothing
    third, _ = _run(tiny_overrides, tmp_path, "c", ["strategy=local", "train.seq_len=16"])
    assert not any(r.get("cached") for r in base(third))
    assert len(list(_private_base_eval_cache.iterdir())) == 2
    off, _ = _run(tiny_overrides, tmp_path, "d", ["strategy=local", "eval.cache_base=false"])
    assert not any(r.get("cached") for r in base(off))


@pytest.mark.parametrize("strategy", ["predictions", "validation"])
def test_trust_starting_point_cached_on_disk_and_keyed(tiny_overrides, tmp_path, _private_base_eval_cache, strategy):
    """The strategies' starting points (base top-k on X_S, base CE on the trust val tokens) are computed by the first
    run and read back by the next identical one: same trust matrices bitwise, fewer forward positions in the first
    round's trust step; other trust settings recompute it, and eval.cache_base=false neither reads nor writes."""

    def trust(run_dir):
        recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r for r in recs if r["kind"] == "trust"]

    def starts():
        return sorted(p.name for p in _private_base_eval_cache.glob("*.pt"))

    over = [f"strategy={strategy}"]
    t1 = trust(_run(tiny_overrides, tmp_path, "a", over)[0])
    assert len(starts()) == 1 and t1[0]["start_cached"] is False
    assert all("start_cached" not in r for r in t1[1:])
    t2 = trust(_run(tiny_overrides, tmp_path, "b", over)[0])
    assert t2[0]["start_cached"] is True
    assert [r["W"] for r in t1] == [r["W"] for r in t2]
    assert t2[0]["positions"] < t1[0]["positions"] and [r["positions"] for r in t1[1:]] == [
        r["positions"] for r in t2[1:]
    ]
    other = "trust.topk=5" if strategy == "predictions" else "trust.val_tokens=24"
    t3 = trust(_run(tiny_overrides, tmp_path, "c", over + [other])[0])
    assert t3[0]["start_cached"] is False and len(starts()) == 2
    t4 = trust(_run(tiny_overrides, tmp_path, "d", over + ["eval.cache_base=false"])[0])
    assert t4[0]["start_cached"] is False and len(starts()) == 2
    for name in starts():  # a damaged entry is a miss, then rewritten
        (_private_base_eval_cache / name).write_bytes(b"damaged")
    assert trust(_run(tiny_overrides, tmp_path, "e", over)[0])[0]["start_cached"] is False
    t6 = trust(_run(tiny_overrides, tmp_path, "f", over)[0])
    assert t6[0]["start_cached"] is True and [r["W"] for r in t6] == [r["W"] for r in t1]


def test_shared_workspace_replays_base_eval_at_no_cost(tiny_overrides, tmp_path):
    """compare/robustness share one Workspace: the second run replays the base eval and its phases say so."""
    from trustlora.cli import main

    out = tmp_path / "cmp"
    assert (
        main(
            ["compare", "--no-progress", "strategies=local,fedavg", "eval.cache_base=false", f"out={out}"]
            + list(tiny_overrides)
        )
        == 0
    )
    recs = [json.loads(x) for x in (out / "fedavg-seed0" / "metrics.jsonl").read_text().splitlines()]
    base = [r for r in recs if r.get("model") == "base"]
    assert base and all(r["cached"] and r["seconds"] == 0.0 and r["positions"] == 0 for r in base)
    ph = json.loads((out / "fedavg-seed0" / "summary.json").read_text())["phases"]
    assert ph["total"]["seconds"] >= ph["train"]["seconds"] + ph["eval"]["seconds"]


def _rounds(cfg):
    from trustlora.comm import InProcess
    from trustlora.protocol import LocalData
    from trustlora.train import LocalTrainer

    ws = api.prepare(cfg, log=lambda *a: None)
    part = ws.partition
    users = part.users
    data = LocalData([u.train for u in users], [u.val for u in users], [u.test for u in users], part.reference)
    trainer = LocalTrainer(ws.mm, data.train, cfg.train, seed=cfg.seed)
    return Rounds(ws.mm, trainer, data, cfg, InProcess(len(users)), part.mixture, record=lambda r: None)


def test_validation_update_candidates_score_own_model_plus_peer_update(tiny_overrides):
    """trust.val_candidate=update: S_ij = CE on i's val of (i's model before the round + j's update); a flipped
    update scores as what it does to the receiver, and the unit is the best candidate's gain over 'before'."""
    cfg = load_config(None, tiny_overrides + ["strategy=validation", "trust.val_candidate=update"])
    proto = _rounds(cfg)
    mm = proto.mm
    g = torch.Generator().manual_seed(0)
    before = mm.get_flat() + torch.randn(mm.get_flat().shape, generator=g) * 0.02
    delta = torch.randn(before.shape, generator=g) * 0.05
    cross = proto._val_cross(delta, before=before)
    val = proto.data.val
    for i in range(3):
        for j in range(3):
            cand = before.clone()
            cand[:] = before[i] + delta[j]
            mm.set_flat(cand)
            ref = cross_losses(mm, val[i], 32, cfg.eval.batch_size, "fp32", cfg.trust.val_tokens)[0]
            assert cross[i, j].item() == pytest.approx(ref.item(), rel=1e-6)
    # through exchange: what each row trusts follows the candidates' scores, and honest users' rows stay stochastic
    mm.set_flat(before)
    proto.trainer.step()
    after = mm.get_flat()
    w, scores, _ = proto.exchange(before, after, 1)
    torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=w.dtype))
    scored = ~scores.isnan()  # peers dropped by the receiving-side checks are not scored (and weigh 0)
    assert bool(scored.diagonal().all()) and bool((w[~scored] == 0).all())
    ref = proto._val_cross(after - before, before=before)
    torch.testing.assert_close(scores[scored], ref[scored], rtol=1e-6, atol=1e-6)
    best = torch.where(scored, scores, torch.full_like(scores, float("inf")))
    assert torch.argmax(w, 1).tolist() == torch.argmin(best, 1).tolist()


def test_validation_candidate_auto_follows_the_mode():
    from trustlora.config import TrustConfig
    from trustlora.trust.validation import candidate

    assert candidate(TrustConfig(val_candidate="auto")) == "update"
    assert candidate(TrustConfig(val_candidate="auto", mode="weight")) == "model"
    assert candidate(TrustConfig(val_candidate="auto", apply=False)) == "model"
    with pytest.raises(ConfigError, match="trust.val_candidate"):
        load_config(None, ["trust.val_candidate=peer"])


def test_update_check_drops_updates_that_do_not_lower_the_receivers_val_loss(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["strategy=predictions", "faults.update_check=loss"])
    proto = _rounds(cfg)
    mm = proto.mm
    before = mm.get_flat()
    for _ in range(2):
        proto.trainer.step()
    good = mm.get_flat() - before  # honest updates
    deltas = torch.stack([good[0], torch.zeros_like(good[1]), -good[2] * 20])  # honest, free rider, harmful
    w = torch.tensor([[0.5, 0.25, 0.25], [0.3, 0.69, 0.01], [0.5, 0.5, 0.0]], dtype=torch.float64)
    keep = proto._update_check(before, deltas, w)
    val = proto.data.val

    def ce(i, theta):
        mm.set_flat(theta.expand_as(before).clone())
        return cross_losses(mm, val[i], 32, cfg.eval.batch_size, "fp32", cfg.trust.val_tokens)[0].item()

    assert keep[0, 1].item() is False  # a zero update never lowers the loss
    assert keep[0, 2].item() == (ce(0, before[0] + deltas[2]) < ce(0, before[0]))
    assert keep[1, 0].item() == (ce(1, before[1] + deltas[0]) < ce(1, before[1]))
    assert keep[1, 2].item() is True  # 0.01 of 0.31 peer mass (3 %): left unchecked
    assert keep[2, 2].item() is True and keep[2, 1].item() is False  # weight-0 peers unchecked; zero dropped
    assert keep.diagonal().all()


def test_aligned_updates_drop_flipped_random_and_empty_updates():
    from trustlora.guard import aligned_updates

    g = torch.Generator().manual_seed(0)
    base = torch.randn(1000, generator=g, dtype=torch.float64)
    honest = [base + 0.5 * torch.randn(1000, generator=g, dtype=torch.float64) for _ in range(3)]
    noise = torch.randn(1000, generator=g, dtype=torch.float64)
    noise -= (noise @ honest[0]) / (honest[0] @ honest[0]) * honest[0]  # exactly orthogonal to user 0's update
    noise += 1e-3 * honest[0]  # ... but for a sliver: cosine far below 4 / sqrt(P)
    deltas = torch.stack([honest[0], honest[1], -honest[2], torch.zeros(1000, dtype=torch.float64), honest[2], noise])
    own = torch.stack([honest[0], torch.zeros(1000, dtype=torch.float64)])  # user 0, and user 1 with no update
    keep = aligned_updates(deltas, own, rows=[0, 1])
    assert keep[0].tolist() == [True, True, False, False, True, False]  # flipped, empty and random updates dropped
    assert keep[1].all()  # nothing to compare with: everyone kept


def test_update_check_align_runs_and_records_dropped_updates(tiny_overrides, tmp_path):
    run_dir, _ = _run(
        tiny_overrides,
        tmp_path,
        "align",
        ["strategy=predictions", "faults.update_check=align", "attack.users=[2]", "attack.kind=sign_flip"],
    )
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trust = [r for r in recs if r["kind"] == "trust"]
    assert all("harmful" in r for r in trust)
    dropped = {tuple(p) for r in trust for p in r["harmful"]}
    assert all(s != r for r, s in dropped)
    for r in trust:  # a dropped sender has weight 0 in that row
        for recv, send in r["harmful"]:
            assert r["W"][recv][send] == 0.0
    assert (0, 2) in dropped or (1, 2) in dropped  # the flipped update is caught somewhere


def _relay(outbox, users):
    """A relay server: every user sends its own message (one row of each kind); the server, having collected all of
    them (in whatever order they arrived), stacks them along the user axis in user order."""
    inbox = {u: {kind: t[a].clone() for kind, t in outbox.messages.items()} for a, u in enumerate(users)}
    arrival = list(reversed(users))
    kinds = sorted({kind for msg in inbox.values() for kind in msg}, reverse=True)  # not the gather order
    return {kind: torch.cat([inbox[u][kind].unsqueeze(0) for u in sorted(arrival)]) for kind in kinds}


@pytest.mark.parametrize(
    "extra",
    [
        ["strategy=predictions", "attack.users=[2]", "attack.kind=fake_topk", "faults.update_check=align"],
        ["strategy=weights", "attack.users=[1]", "attack.kind=nan"],  # theta0 in round 1; a rejected sender
        ["strategy=validation", "trust.val_candidate=update", "faults.dropout_prob=0.5"],
        ["strategy=median", "trust.mode=weight"],
    ],
)
def test_publish_relay_consume_equals_exchange(tiny_overrides, extra):
    """publish -> a relay that is not a collective -> consume gives exactly what exchange (all-gathers) gives."""
    from trustlora.guard import MESSAGES
    from trustlora.trust import published_kinds

    cfg = load_config(None, tiny_overrides + extra)
    direct, relayed = _rounds(cfg), _rounds(cfg)
    published, rejected = [], []
    for r in (1, 2):
        got = []
        for proto in (direct, relayed):
            before = proto.mm.get_flat()
            for _ in range(2):
                proto.trainer.step()
            after = proto.mm.get_flat()
            proto.comm.reset_bytes()
            if proto is direct:
                w, scores, faults = proto.exchange(before, after, r)
                sent = proto.comm.sent_bytes()
            else:
                out = proto.publish(before, after, r)
                kinds = published_kinds(proto.strategy, cfg.trust)
                assert [k for k in out.messages if k != "theta0"] == [k for k in MESSAGES if k in kinds]
                assert all(t.shape[0] == len(proto.users) for t in out.messages.values())
                w, scores, faults = proto.consume(_relay(out, proto.users), out, before, after, r)
                published.append(list(out.messages))
                rejected += faults["rejected"]
                assert proto.comm.sent_bytes() == {}  # nothing went through the communicator
            got.append((w, scores, faults, proto.mm.get_flat()))
        (w1, s1, f1, a1), (w2, s2, f2, a2) = got
        assert list(sent) == list(out.messages)  # exchange gathered exactly the published kinds, in table order
        torch.testing.assert_close(w2, w1, rtol=0, atol=0)
        assert (s1 is None) == (s2 is None)
        if s1 is not None:
            torch.testing.assert_close(s2, s1, rtol=0, atol=0, equal_nan=True)
        assert f2 == f1
        torch.testing.assert_close(a2, a1, rtol=0, atol=0, equal_nan=True)
    assert ("theta0" in published[0]) == (cfg.strategy == "weights") and "theta0" not in published[1]  # sent once
    assert bool(rejected) == (cfg.attack.kind == "nan")


def test_published_kinds_follow_the_strategy(tiny_overrides):
    """What is published is declared by the strategy (default: from its needs); an undeclared kind fails loudly."""
    from trustlora.config import TrustConfig
    from trustlora.trust import default_publishes, get, published_kinds

    class Plugin:  # no publishes(): the default, from needs
        name, needs, exchanges = "plugin", ("topk",), True

    assert published_kinds(Plugin(), TrustConfig()) == ("delta", "topk_values", "topk_indices")
    assert published_kinds(Plugin(), TrustConfig(mode="weight", apply=False)) == ("topk_values", "topk_indices")
    assert published_kinds(get("local"), TrustConfig()) == ()
    assert get("weights").publishes(TrustConfig()) == default_publishes(get("weights"), TrustConfig())

    class Odd(Plugin):
        def publishes(self, cfg):
            return ("gradients",)

    cfg = load_config(None, tiny_overrides + ["strategy=fedavg"])
    proto = _rounds(cfg)
    proto.strategy = Odd()
    before = proto.mm.get_flat()
    with pytest.raises(ValueError, match="unknown message kinds"):
        proto.publish(before, before.clone(), 1)


def test_validation_scores_what_peers_published_not_what_is_loaded(tiny_overrides):
    """Model candidates are the published thetas: where one differs from the adapter loaded in its slot (a simulated
    attacker's lie), the published one is scored, not the loaded one."""
    cfg = load_config(None, tiny_overrides + ["strategy=validation"])
    proto = _rounds(cfg)
    mm = proto.mm
    g = torch.Generator().manual_seed(1)
    loaded = mm.get_flat() + torch.randn(mm.get_flat().shape, generator=g) * 0.02
    mm.set_flat(loaded)
    same = proto._val_cross(loaded.clone())
    published = loaded.clone()
    published[1] = loaded[1] - 5.0 * (loaded[1] - loaded[0])  # user 1 claims another model
    cross = proto._val_cross(published)
    torch.testing.assert_close(mm.get_flat(), loaded)  # the loaded adapters are back
    for i in range(3):
        cand = loaded.clone()
        cand[:] = published[1]
        mm.set_flat(cand)
        ref = cross_losses(mm, proto.data.val[i], 32, cfg.eval.batch_size, "fp32", cfg.trust.val_tokens)[0]
        assert cross[i, 1].item() == pytest.approx(ref.item(), rel=1e-6)
        assert cross[i, 1].item() != pytest.approx(same[i, 1].item(), rel=1e-4)
    torch.testing.assert_close(cross[:, [0, 2]], same[:, [0, 2]], rtol=1e-6, atol=1e-6)


def test_val_cross_scores_only_allowed_pairs(tiny_overrides):
    """A row scores only the pairs it may take (trust.val_peers, topology, dropped senders): the others cost no
    evaluation and stay NaN."""
    cfg = load_config(None, tiny_overrides + ["strategy=validation"])
    proto = _rounds(cfg)
    g = torch.Generator().manual_seed(3)
    flat = proto.mm.get_flat()
    thetas = flat + torch.randn(flat.shape, generator=g) * 0.05
    full = proto._val_cross(thetas)
    allowed = torch.tensor([[True, False, True], [True, True, False], [False, False, True]])
    pos0 = proto.mm.positions
    part = proto._val_cross(thetas, allowed=allowed)
    pos_part = proto.mm.positions - pos0
    torch.testing.assert_close(part[allowed], full[allowed], rtol=1e-6, atol=1e-6)
    assert bool(part[~allowed].isnan().all())
    torch.testing.assert_close(proto.mm.get_flat(), flat)  # the slots hold their adapters again
    pos0 = proto.mm.positions
    proto._val_cross(thetas)
    assert pos_part * 9 == (proto.mm.positions - pos0) * 5  # 5 of 9 pairs evaluated
