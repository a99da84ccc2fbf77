"""Faulty and lying peers: receiving-side checks (trustlora.guard), absent users, simulated attacks."""

import json
import math

import pytest
import torch

from trustlora import api
from trustlora.attacks import KINDS, fake_topk, poison_updates
from trustlora.config import ConfigError, load_config
from trustlora.guard import check_messages, restrict_to, sanitize

N, P = 4, 6


def _msgs():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(N, P, generator=g)
    return {
        "delta": delta,
        "topk_values": torch.softmax(torch.randn(N, 5, 3, generator=g), -1),
        "topk_indices": torch.randint(0, 50, (N, 5, 3), generator=g, dtype=torch.int32),
    }


def _expected(m):
    return {k: (tuple(v.shape[1:]), v.dtype) for k, v in m.items()}


def test_clean_messages_are_all_accepted():
    m = _msgs()
    v = check_messages(m, [0, 1, 2, 3], N, _expected(m), own_delta=m["delta"], max_norm_ratio=5.0, vocab=50)
    assert bool(v.accept.all()) and v.events == []


def test_nan_wrong_ids_and_oversized_updates_are_rejected_and_recorded():
    m = _msgs()
    exp = _expected(m)
    m["delta"][1, 2] = float("nan")
    m["topk_indices"][2, 0, 0] = 50  # outside the vocabulary
    m["delta"][3] *= 100.0  # oversized
    v = check_messages(m, [0, 1, 2, 3], N, exp, own_delta=m["delta"].nan_to_num(), max_norm_ratio=5.0, vocab=50)
    reasons = {(e["sender"], e["kind"]): e for e in v.events}
    assert reasons[(1, "delta")]["reason"] == "non-finite values" and reasons[(1, "delta")]["receivers"] == "all"
    assert "token ids" in reasons[(2, "topk_indices")]["reason"]
    assert reasons[(3, "delta")]["receivers"] == [0, 1, 2]  # by everyone but itself
    assert v.bad_senders == [1, 2]
    assert not v.accept[0, 1] and not v.accept[0, 2] and not v.accept[0, 3]
    assert bool(v.accept.diagonal().all())  # self is always accepted
    clean = sanitize(m, v.bad_senders)
    assert torch.isfinite(clean["delta"]).all() and torch.equal(clean["delta"][1], torch.zeros(P))
    assert torch.isnan(m["delta"][1]).any()  # the input is not modified


def test_wrong_dtype_and_shape_are_rejected():
    m = _msgs()
    exp = dict(_expected(m))
    exp["delta"] = ((P + 1,), torch.float32)
    v = check_messages(m, [0], N, exp)
    assert {e["sender"] for e in v.events} == {0, 1, 2, 3} and all("shape" in e["reason"] for e in v.events)
    exp = dict(_expected(m))
    exp["topk_values"] = ((5, 3), torch.float64)
    v = check_messages(m, [0], N, exp)
    assert all("dtype" in e["reason"] for e in v.events)


def test_restrict_to_renormalises_and_falls_back_to_self():
    w = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]], dtype=torch.float64)
    accept = torch.tensor([[True, True, False], [True, True, False]])
    out = restrict_to(w, accept, [0, 1])
    torch.testing.assert_close(out, torch.tensor([[2 / 3, 1 / 3, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64))
    nan_w = torch.tensor([[float("nan"), 0.5, 0.5]], dtype=torch.float64)
    out = restrict_to(nan_w, torch.tensor([[True, True, True]]), [0])
    assert torch.isfinite(out).all() and abs(float(out.sum()) - 1) < 1e-12


def test_poison_updates_kinds():
    d = torch.randn(3, P, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    assert torch.equal(poison_updates("scale", d, [1], [0, 2], g)[1], d[1] * 10)
    assert torch.equal(poison_updates("sign_flip", d, [1], [0, 2], g)[1], -d[1])
    assert torch.equal(poison_updates("zero", d, [1], [0, 2], g)[1], torch.zeros(P))
    assert torch.equal(poison_updates("copy_now", d, [1], [0, 2], g)[1], d[0])
    prev = torch.randn(3, P, generator=torch.Generator().manual_seed(4))
    assert torch.equal(poison_updates("copy", d, [1], [0, 2], g, prev)[1], prev[0])  # last round's update
    assert torch.equal(poison_updates("copy", d, [1], [0, 2], g)[1], torch.zeros(P))  # nothing to copy yet
    assert torch.isnan(poison_updates("nan", d, [1], [0, 2], g)[1]).all()
    noise = poison_updates("noise", d, [1], [0, 2], g)
    assert math.isclose(float(noise[1].norm()), float(d[1].norm()), rel_tol=1e-5) and torch.equal(noise[0], d[0])
    v, i = fake_topk(torch.rand(2, 4, 3), torch.zeros(2, 4, 3, dtype=torch.int32), [0], 50, True, g)
    assert (i[0] != 0).any() and torch.equal(i[1], torch.zeros(4, 3, dtype=torch.int32))
    assert bool((v[0].sum(1) <= 1 + 1e-6).all())


def _run(overrides, tmp_path, name, extra):
    cfg = load_config(None, list(overrides) + [f"out={tmp_path / name}"] + list(extra))
    run_dir = api.run(cfg, progress=False, log=lambda *a: None)
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, recs, json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("strategy", ["fedavg", "predictions", "validation", "weights"])
def test_nan_attacker_never_poisons_anyone(tiny_overrides, tmp_path, strategy):
    """A peer publishing NaN is rejected every round, gets weight 0, and every model and ppl stays finite."""
    run_dir, recs, s = _run(
        tiny_overrides, tmp_path, strategy, [f"strategy={strategy}", "attack.users=1", "attack.kind=nan"]
    )
    trust = [r for r in recs if r["kind"] == "trust"]
    for r in trust:
        assert any(e["sender"] == 1 and e["reason"] == "non-finite values" for e in r["rejected"])
        w = torch.tensor(r["W"])
        assert float(w[0, 1]) == 0.0 and float(w[2, 1]) == 0.0
        torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=w.dtype))
    assert all(math.isfinite(x) for x in s["final_test_ppl"])
    assert s["attack"]["users"] == [1] and s["attack"]["trust_mass_on_attackers"] == 0.0
    assert s["attack"]["rejected_messages"] >= len(trust)
    assert math.isclose(s["attack"]["honest_mean_test_ppl"], (s["final_test_ppl"][0] + s["final_test_ppl"][2]) / 2)


def test_scaled_update_is_rejected_by_the_norm_bound(tiny_overrides, tmp_path):
    _, recs, s = _run(tiny_overrides, tmp_path, "scale", ["strategy=fedavg", "attack.users=2", "attack.kind=scale"])
    trust = [r for r in recs if r["kind"] == "trust"]
    assert all(any(e["sender"] == 2 and e["kind"] == "delta" for e in r["rejected"]) for r in trust)
    assert s["attack"]["trust_mass_on_attackers"] == 0.0


def test_absent_users_keep_rows_stochastic_over_present_peers(tiny_overrides, tmp_path):
    _, recs, s = _run(tiny_overrides, tmp_path, "drop", ["strategy=fedavg", "faults.dropout_prob=0.5"])
    trust = [r for r in recs if r["kind"] == "trust"]
    assert any(r["absent"] for r in trust)  # seeded: some user misses some round
    for r in trust:
        w = torch.tensor(r["W"])
        torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=w.dtype))
        for j in r["absent"]:
            assert float(w[j, j]) == 1.0  # an absent user trains alone
            for i in range(3):
                if i != j:
                    assert float(w[i, j]) == 0.0  # nobody takes its update
        present = [i for i in range(3) if i not in r["absent"]]
        for i in present:
            torch.testing.assert_close(w[i, present], torch.full((len(present),), 1 / len(present), dtype=w.dtype))
    assert all(math.isfinite(x) for x in s["final_test_ppl"])


def test_absent_reference_users_never_take_part(tiny_overrides, tmp_path):
    """attack.kind=absent: the listed users are absent every round, nobody weighs them, they train alone."""
    _, recs, s = _run(tiny_overrides, tmp_path, "ref", ["strategy=predictions", "attack.users=1", "attack.kind=absent"])
    trust = [r for r in recs if r["kind"] == "trust"]
    assert trust
    for r in trust:
        assert r["absent"] == [1]
        w = torch.tensor(r["W"])
        assert float(w[0, 1]) == 0.0 and float(w[2, 1]) == 0.0 and float(w[1, 1]) == 1.0
        torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=w.dtype))
    assert s["attack"]["trust_mass_on_attackers"] == 0.0


def test_attack_config_errors():
    assert "garbage_data" in KINDS
    with pytest.raises(ConfigError, match="attack.kind"):
        load_config(None, ["attack.users=0", "attack.kind=bribe"])
    with pytest.raises(ConfigError, match="attack.users"):
        load_config(None, ["data.users=3", "attack.users=0,1,2", "attack.kind=nan"])
    with pytest.raises(ConfigError, match="attack.kind"):
        load_config(None, ["attack.users=0"])


def test_robust_aggregators_math():
    from trustlora.aggregate import coordinate_median, krum_select, trimmed_mean

    d = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [1000.0, -1000.0]])
    acc = torch.tensor([[True, True, True, True], [True, True, True, False]])
    med = coordinate_median(d, acc)
    torch.testing.assert_close(med, torch.tensor([[2.0, 10.0], [2.0, 20.0]]))
    tm = trimmed_mean(d, acc[:1], 0.25)  # drops the largest and smallest of 4 per coordinate
    torch.testing.assert_close(tm, torch.tensor([[2.5, 15.0]]))
    assert krum_select(d, [0, 1, 2, 3], f=1, m=1) in ([0], [1])  # an honest update, never the outlier
    assert krum_select(d, [0, 1, 2, 3], f=0, m=1) == [1]  # with 1 neighbour of 4-0-2=2: the central one
    assert 3 not in krum_select(d, [0, 1, 2, 3], f=1, m=3)


@pytest.mark.parametrize("strategy", ["median", "trimmed_mean", "krum"])
def test_robust_strategies_run_and_resist_a_sign_flip(tiny_overrides, tmp_path, strategy):
    _, recs, s = _run(
        tiny_overrides, tmp_path, strategy, [f"strategy={strategy}", "attack.users=0", "attack.kind=sign_flip"]
    )
    assert all(math.isfinite(x) for x in s["final_test_ppl"])
    assert s["attack"]["honest_mean_test_ppl"] < s["base_mean_test_ppl"]  # honest users still learn
    for r in (r for r in recs if r["kind"] == "trust"):
        w = torch.tensor(r["W"])
        torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=w.dtype))


def test_robustness_command_table(tiny_overrides, tmp_path, capsys):
    """clean + attacked runs per strategy; the table compares the same honest users."""
    from trustlora.cli import main

    out = tmp_path / "robust"
    args = [
        "robustness",
        "--no-progress",
        "--attacks",
        "nan,zero",
        "strategies=fedavg,median",
        "attack.users=2",
        f"out={out}",
    ]
    assert main(args + list(tiny_overrides)) == 0
    rows = json.loads((out / "robustness.json").read_text())["rows"]
    assert {(r["attack"], r["strategy"]) for r in rows} == {
        (a, s) for a in ("nan", "zero") for s in ("fedavg", "median")
    }
    for r in rows:
        assert r["clean_honest_mean_test_ppl"] is not None and math.isfinite(r["honest_mean_test_ppl"])
        clean = json.loads((out / "clean" / f"{r['strategy']}-seed0" / "summary.json").read_text())
        assert math.isclose(
            r["clean_honest_mean_test_ppl"], (clean["final_test_ppl"][0] + clean["final_test_ppl"][1]) / 2
        )
        absent = json.loads((out / "absent" / f"{r['strategy']}-seed0" / "summary.json").read_text())
        assert math.isclose(
            r["absent_honest_mean_test_ppl"], (absent["final_test_ppl"][0] + absent["final_test_ppl"][1]) / 2
        )
        assert math.isclose(r["change_vs_absent"], r["honest_mean_test_ppl"] / r["absent_honest_mean_test_ppl"] - 1)
    nan_fed = next(r for r in rows if r["attack"] == "nan" and r["strategy"] == "fedavg")
    assert nan_fed["trust_mass_on_attackers"] == 0.0 and nan_fed["rejected_messages"] > 0
    assert "trust on attackers" in (out / "robustness.md").read_text()
    assert main(["robustness", "--attacks", "bribe", *tiny_overrides]) == 2
    assert "--attacks" in capsys.readouterr().err
    assert main(["robustness", "--attacks", "nan", *tiny_overrides, f"out={tmp_path / 'x'}"]) == 2  # no attackers


def _row(attack, strategy, change, trust, seed=0):
    return {
        "attack": attack,
        "strategy": strategy,
        "seed": seed,
        "honest_mean_test_ppl": 40.0 * (1 + change),
        "clean_honest_mean_test_ppl": 39.0,
        "change": None,
        "absent_honest_mean_test_ppl": 40.0,
        "change_vs_absent": change,
        "trust_mass_on_attackers": trust,
        "rejected_messages": 0,
        "dropped_from_attackers": 0,
        "dropped_from_honest": 0,
    }


def test_robustness_join_tables_later_file_wins_and_summary_pivots(tmp_path, capsys):
    """--join: cells of several finished tables in one table; a later file's cell replaces an earlier one's; the
    summary has one column per strategy (fixed order), '—' for a missing cell and seeds averaged."""
    from trustlora.cli import main
    from trustlora.robustness import summary_lines

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"rows": [_row("noise", "fedavg", 0.05, 1 / 3), _row("nan", "weights", 0.5, 0.5)]}))
    b.write_text(json.dumps({"rows": [_row("nan", "weights", 0.0, 0.0), _row("noise", "weights", 0.01, 0.0)]}))
    out = tmp_path / "joined"
    assert main(["robustness", "--join", str(a), str(b), f"out={out}"]) == 0
    rows = json.loads((out / "robustness.json").read_text())["rows"]
    assert len(rows) == 3
    assert next(r for r in rows if r["attack"] == "nan")["change_vs_absent"] == 0.0  # b's cell replaced a's
    lines = (out / "robustness.md").read_text().split("## Summary")[1].strip().splitlines()[2:]
    assert lines[0] == "| attack | fedavg | weights |"
    assert lines[2] == "| noise | +5.0 % / 33.3 % | +1.0 % / 0.0 % |"
    assert lines[3] == "| nan | — | +0.0 % / 0.0 % |"
    assert lines[4] == "| honest ppl clean / w/o attackers | 39.00 / 40.00 | 39.00 / 40.00 |"
    seeds = summary_lines([_row("zero", "krum", 0.1, 1.0), _row("zero", "krum", 0.3, 0.0, seed=1)])
    assert seeds[2] == "| zero | +20.0 % / 50.0 % |"
    assert main(["robustness", "--join", str(tmp_path / "none.json"), f"out={out}"]) == 2
    assert "none.json: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"strategy": "fedavg"}]}))
    assert main(["robustness", "--join", str(bad), f"out={out}"]) == 2
    assert "bad.json: expected a robustness.json" in capsys.readouterr().err
    assert main(["robustness", "--join", str(a)]) == 2  # no out=
    assert main(["robustness", "strategies=fedavg"]) == 2  # neither --attacks nor --join
    assert "--attacks" in capsys.readouterr().err


def test_duplicate_senders_finds_copies_only():
    from trustlora.guard import DUPLICATE_COS, duplicate_senders

    g = torch.Generator().manual_seed(3)
    d = torch.randn(5, 1000, generator=g)
    d[3] = d[1] * 2.0  # a copy, rescaled: still a copy
    d[4] = 0.0  # empty: nobody's copy
    dup, top = duplicate_senders(d, [0, 1, 2, 3, 4])
    assert dup == [1, 3] and top == pytest.approx(1.0, abs=1e-5)
    dup, top = duplicate_senders(d, [0, 1, 2, 4])  # sender 3 rejected or absent: no copy left
    assert dup == [] and top < DUPLICATE_COS
    assert duplicate_senders(d, [0]) == ([], None)


@pytest.mark.parametrize(
    ("kind", "duplicates"), [("copy", "drop"), ("copy_now", "drop"), ("copy", "keep"), ("copy_now", "keep")]
)
def test_copying_free_rider_earns_nothing(tiny_overrides, tmp_path, kind, duplicates):
    """User 2 resends user 0's update: last round's (copy) or this round's (copy_now). With faults.duplicates=drop a
    replay is recognised as one and only its sender is dropped; copies within a round count for nobody (the original
    cannot be told apart), each receiver keeping its own; with keep the copier is weighed like anyone. (Trust
    strategies only, like the update check; the update check is off so that only the duplicate check acts.)"""
    _, recs, s = _run(
        tiny_overrides,
        tmp_path,
        f"{kind}-{duplicates}",
        [
            "strategy=weights",
            "attack.users=2",
            f"attack.kind={kind}",
            "faults.update_check=none",
            f"faults.duplicates={duplicates}",
        ],
    )
    trust = [r for r in recs if r["kind"] == "trust"]
    assert len(trust) >= 2
    for k, r in enumerate(trust):
        w = torch.tensor(r["W"])
        torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=w.dtype))
        if duplicates == "keep":
            assert r["duplicates"] == [] and (k == 0 or float(w[1, 2]) > 0.0)
        elif kind == "copy_now":
            assert r["max_peer_cos"] == pytest.approx(1.0, abs=1e-5) and r["duplicates"] == [0, 2]
            assert float(w[1, 0]) == 0.0 and float(w[1, 2]) == 0.0 and float(w[1, 1]) == 1.0
            assert float(w[0, 2]) == 0.0 and float(w[0, 0]) > 0.0
            assert [1, 0] in r["harmful"] and [1, 2] in r["harmful"]
        elif k == 0:  # copy, first round: nothing to copy yet, the copier sends a zero update (nobody's copy)
            assert r["duplicates"] == []
        else:  # copy: a replay of last round's update, its sender identified; the original's update counts
            assert r["duplicates"] == [2] and r["max_peer_cos"] < 0.99
            assert float(w[1, 2]) == 0.0 and float(w[0, 2]) == 0.0 and float(w[1, 0]) > 0.0
            assert r["harmful"] == [[0, 2], [1, 2]]
    final_on_copier = s["attack"]["trust_mass_on_attackers"]
    assert (final_on_copier == 0.0) == (duplicates == "drop")


def test_dropped_updates_counts_honest_receivers_only(tmp_path):
    from trustlora.robustness import dropped_updates

    m = tmp_path / "metrics.jsonl"
    recs = [
        {"kind": "train"},
        {"kind": "trust", "harmful": [[1, 0], [2, 0], [0, 1], [1, 2]]},  # attacker 0 as receiver: not counted
        {"kind": "trust", "harmful": [[3, 0]]},
    ]
    m.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert dropped_updates(m, [0]) == {"dropped_from_attackers": 3, "dropped_from_honest": 1}
    m.write_text(json.dumps({"kind": "trust"}) + "\n")  # a run from before the checks
    assert dropped_updates(m, [0]) == {"dropped_from_attackers": None, "dropped_from_honest": None}


@pytest.mark.parametrize("strategy", ["weights", "validation", "predictions"])
def test_an_update_dropped_by_the_checks_moves_no_honest_score(tiny_overrides, tmp_path, strategy):
    """A zero-update attacker is dropped by the alignment check before trust is computed, so honest users end exactly
    where they end when it never takes part (attack.kind=absent): its published model or predictions do not shift
    anyone's calibration (the closest peer, the unit)."""
    common = [f"strategy={strategy}", "attack.users=2"]
    _, recs, zero = _run(tiny_overrides, tmp_path, f"zero-{strategy}", [*common, "attack.kind=zero"])
    _, _, absent = _run(tiny_overrides, tmp_path, f"absent-{strategy}", [*common, "attack.kind=absent"])
    assert all([0, 2] in r["harmful"] and [1, 2] in r["harmful"] for r in recs if r["kind"] == "trust")
    # equal up to the last bits: peer scoring runs the val passes over a stack of another shape (the attacker's
    # published model is in it), and bf16 GEMM kernels may round a row differently with the batch's row count
    # (Intel Xeon with AMX: rows of a [2048, 576] x [576, 1536] product differ from the same rows of a [3072, ...]
    # one; here 2e-7 apart, bit-equal on AMD EPYC); the attacker shifting a calibration moved ppl by percent
    torch.testing.assert_close(
        torch.tensor(zero["final_test_ppl"][:2]), torch.tensor(absent["final_test_ppl"][:2]), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        torch.tensor(zero["final_W"])[:2], torch.tensor(absent["final_W"])[:2], rtol=1e-5, atol=1e-7
    )
