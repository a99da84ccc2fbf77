"""Tests of trustlora.analyze on synthetic run and comparison directories (no model involved)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml

from trustlora.analyze import (
    AnalysisError,
    chance_top_peer,
    first_step_reaching,
    mean_ppl_series,
    mean_std,
    message_size_ratios,
    offdiag_normalised,
    trust_closeness,
    w_by_round,
    write_bytes,
    write_placement,
    write_table4,
    write_topology,
    write_trust,
)
from trustlora.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CATS = ["a", "a", "b", "b"]
MIXTURE = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
ORACLE = [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]
# Designed W: u0 -> u1 (same category, right), u1 -> u2 (wrong), u2 ties u0/u3 (half right), u3 -> u2 (right).
W_DESIGNED = [
    [0.70, 0.20, 0.05, 0.05],
    [0.10, 0.60, 0.20, 0.10],
    [0.15, 0.10, 0.60, 0.15],
    [0.05, 0.05, 0.30, 0.60],
]
UNIFORM = [[0.25] * 4] * 4
SCM_DESIGNED = (0.20 / 0.30 + 0.10 / 0.40 + 0.15 / 0.40 + 0.30 / 0.40) / 4  # same-category mass of W_DESIGNED


def _assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, path
    img = plt.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, img.shape


def _ref_l1(w, o) -> float:
    w, o = np.asarray(w, float), np.asarray(o, float)
    return sum(sum(abs(w[i, j] - o[i, j]) for j in range(w.shape[1])) for i in range(w.shape[0])) / w.shape[0]


def _write_run(
    d: Path, summary: dict | None, records: list[dict], config: dict | None = None, name: str | None = None
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    if config is not None:
        (d / "config.yaml").write_text(yaml.safe_dump(config))
    return d


def _eval(rnd: int, step: int, ppl: list[float], full: bool, **extra) -> dict:
    return {"kind": "eval", "round": rnd, "step": step, "split": "test", "full": full, "ppl": ppl,
            "loss": list(np.log(ppl)), **extra}  # fmt: skip


def _trust(rnd: int, step: int, w, **extra) -> dict:
    return {"kind": "trust", "round": rnd, "step": step, "W": w, "scores": None, **extra}


def _summary(strategy: str, seed: int, final_mean: float, base_mean: float = 50.0, **extra) -> dict:
    return {
        "strategy": strategy,
        "seed": seed,
        "model": "tiny",
        "users": 4,
        "categories": ["a", "b"],
        "user_categories": CATS,
        "mixture": MIXTURE,
        "oracle_W": ORACLE,
        "base_mean_test_ppl": base_mean,
        "final_mean_test_ppl": final_mean,
        **extra,
    }


def _config(source="bbc", mixture="high", apply=True, topology="full", targets=("all",), **extra) -> dict:
    return {
        "data": {"source": source, "mixture": mixture, "users": 4},
        "trust": {"apply": apply, "topology": topology, "topk": 10},
        "lora": {"targets": list(targets)},
        "eval": {"during_tokens": 512},
        **extra,
    }


# --------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------


def test_trust_closeness_designed_matrix():
    l1, acc = trust_closeness(W_DESIGNED, ORACLE, CATS)
    assert l1 == pytest.approx(_ref_l1(W_DESIGNED, ORACLE))
    assert acc == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_trust_closeness_oracle_identity_and_uniform():
    assert trust_closeness(ORACLE, ORACLE, CATS) == (0.0, 1.0)
    # Identity: no off-diagonal trust, every peer tied -> chance level 1/3 (one same-category peer out of 3).
    l1, acc = trust_closeness(np.eye(4), ORACLE, CATS)
    assert l1 == pytest.approx(1.0) and acc == pytest.approx(1 / 3)
    assert trust_closeness(UNIFORM, ORACLE, CATS)[1] == pytest.approx(1 / 3) == chance_top_peer(CATS)
    # A large self-weight never counts as the top peer.
    w = np.full((4, 4), 0.01) + np.diag([0.97] * 4)
    w[0, 1] = w[1, 0] = w[2, 3] = w[3, 2] = 0.02
    assert trust_closeness(w, None, CATS) == (pytest.approx(float("nan"), nan_ok=True), 1.0)


def test_trust_closeness_skips_users_without_same_category_peer():
    cats = ["a", "b", "c", "c"]  # only u2 and u3 can score
    w = [[0.5, 0.0, 0.0, 0.5], [0.0, 0.5, 0.5, 0.0], [0.4, 0.0, 0.6, 0.0], [0.0, 0.0, 0.5, 0.5]]
    assert trust_closeness(w, None, cats)[1] == pytest.approx(0.5)
    assert np.isnan(trust_closeness(w, None, ["a", "b", None, "d"])[1])
    assert np.isnan(trust_closeness(w, np.eye(3), cats)[0])  # oracle of another shape -> no L1
    with pytest.raises(ValueError):
        trust_closeness([[1.0, 0.0]], None, cats)


def test_offdiag_normalised():
    m = offdiag_normalised(W_DESIGNED)
    assert np.isnan(np.diag(m)).all()
    np.testing.assert_allclose(np.nansum(m, axis=1), 1.0)
    assert m[0, 1] == pytest.approx(0.2 / 0.3)
    ident = offdiag_normalised(np.eye(3))
    assert np.isnan(np.diag(ident)).all() and np.nansum(ident) == 0.0


def test_first_step_reaching_and_mean_std():
    steps, vals = [15, 0, 5, 10], [31.0, 50.0, float("nan"), 29.5]
    assert first_step_reaching(steps, vals, 30.0) == 10
    assert first_step_reaching(steps, vals, 31.0) == 10
    assert first_step_reaching(steps, vals, 50.0) == 0
    assert first_step_reaching(steps, vals, 20.0) is None
    assert first_step_reaching(steps, vals, float("nan")) is None
    # one target per step (like for like): step 10 must reach 29.0, step 15 only 31.0
    assert first_step_reaching(steps, vals, [31.0, 0.0, 99.0, 29.0]) == 15
    assert first_step_reaching(steps, vals, [None, 50.0, None, None]) == 0
    with pytest.raises(ValueError):
        first_step_reaching(steps, vals, [1.0])
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0]) == (4.0, None)


def test_message_size_ratios():
    r = message_size_ratios({"theta": 4000, "delta": 4000, "dense_logits": 256000, "topk_coo": 5120})
    assert r == {"dense/topk": 50.0, "theta/topk": 4000 / 5120, "delta/topk": 4000 / 5120}
    assert message_size_ratios({"theta": 1, "topk_coo": 0})["theta/topk"] is None


def test_series_and_rounds_merge_partial_records():
    recs = [
        _eval(0, 0, [10.0, 20.0], True, model="base"),
        _eval(1, 5, [1.0, 3.0], False),
        {**_eval(2, 10, [4.0], True), "users": [1]},  # two ranks' partial records of one eval
        {**_eval(2, 10, [2.0], True), "users": [0]},
        _eval(2, 10, [100.0, 100.0], False),  # the full eval wins at the same step
        {"kind": "eval", "round": 2, "step": 10, "split": "val", "full": True, "ppl": [9.0, 9.0]},
    ]
    s = mean_ppl_series(recs)
    assert [(p["step"], p["mean_ppl"], p["full"]) for p in s] == [(0, 15.0, True), (5, 2.0, False), (10, 3.0, True)]
    sub = mean_ppl_series(recs, prefer="subsample")  # the subsample wins where both exist; else the full one
    assert [(p["step"], p["mean_ppl"], p["full"]) for p in sub] == [
        (0, 15.0, True),
        (5, 2.0, False),
        (10, 100.0, False),
    ]
    with pytest.raises(ValueError):
        mean_ppl_series(recs, prefer="best")
    trust = [
        _trust(1, 5, [[0.5, 0.5]], users=[1]),
        _trust(1, 5, [[1.0, 0.0]], users=[0]),
        _trust(2, 10, [[0.9, 0.1]], users=[0]),  # incomplete round: left out
    ]
    rounds = w_by_round(trust)
    assert len(rounds) == 1 and rounds[0][:2] == (1, 5)
    np.testing.assert_allclose(rounds[0][2], [[1.0, 0.0], [0.5, 0.5]])


# --------------------------------------------------------------------------------------------------
# Commands on synthetic directories
# --------------------------------------------------------------------------------------------------

TABLE = {  # strategy -> final mean test ppl per seed
    "local": [40.0, 42.0],
    "fedavg": [45.0, 44.0],
    "oracle": [30.0, 31.0],
    "weights": [33.0],
}


def _compare_dir(root: Path, mixture: str, table: dict, apply: bool = True) -> Path:
    d = root / f"compare-{mixture}"
    ws = {"local": np.eye(4).tolist(), "fedavg": UNIFORM, "oracle": ORACLE, "weights": W_DESIGNED}
    for strategy, vals in table.items():
        for seed, v in enumerate(vals):
            recs = [
                _eval(0, 0, [50.0] * 4, True, model="base"),
                _trust(1, 5, UNIFORM if strategy == "weights" else ws[strategy]),
                _eval(1, 5, [45.0] * 4, False),
                _trust(2, 10, ws[strategy]),
                _eval(2, 10, [v] * 4, True),
            ]
            _write_run(
                d / f"{strategy}-seed{seed}", _summary(strategy, seed, v), recs, _config(mixture=mixture, apply=apply)
            )
    (d / "comparison.md").write_text("# not a run\n")
    return d


def test_table4(tmp_path, capsys):
    high = _compare_dir(tmp_path, "high", TABLE)
    low = _compare_dir(tmp_path, "low", {"local": [41.0, 43.0], "fedavg": [39.0, 40.0]})
    paths = write_table4([high, low])
    assert paths["md"] == tmp_path / "table4.md"  # default: beside the inputs
    md = paths["md"].read_text()
    assert "| strategy" in md and "bbc-high" in md and "bbc-low" in md
    assert f"41.00 ± {np.std([40, 42], ddof=1):.2f}" in md
    assert "**30.50 ± 0.71**" in md  # best of bbc-high
    assert "**39.50 ± 0.71**" in md  # best of bbc-low
    assert "33.00 ± —" in md  # one seed
    assert "base model (no training)" in md and "50.00" in md
    lines = md.splitlines()
    assert [ln.split("|")[1].strip() for ln in lines if ln.startswith("| ")][2:] == [
        "base model (no training)",
        "local",
        "fedavg",
        "oracle",
        "weights",
    ]  # paper order, base row first
    weights_row = next(ln for ln in lines if ln.startswith("| weights"))
    assert weights_row.rstrip(" |").endswith("—")  # no weights run in bbc-low
    rows = list(csv.DictReader(paths["csv"].open()))
    oracle = next(r for r in rows if r["column"] == "bbc-high" and r["strategy"] == "oracle")
    assert float(oracle["mean_test_ppl"]) == 30.5 and oracle["best"] == "True" and oracle["n_seeds"] == "2"
    assert next(r for r in rows if r["strategy"] == "weights")["std_test_ppl"] == ""
    obj = json.loads(paths["json"].read_text())
    assert obj["strategies"] == ["local", "fedavg", "oracle", "weights"]
    assert obj["columns"][1]["best"] == ["fedavg"]
    _assert_png(paths["png"])

    out = tmp_path / "out"
    assert main(["analyze", "table4", str(high), str(low), "--out", str(out)]) == 0
    assert "bbc-high" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"table4.md", "table4.csv", "table4.json", "table4.png"}


def test_trust(tmp_path, capsys):
    d = _compare_dir(tmp_path, "high", TABLE)
    paths = write_trust(d)
    assert paths["md"] == d / "trust.md"
    md = paths["md"].read_text()
    assert "Figures 3/4" in md and "not applied" not in md
    rows = list(csv.DictReader(paths["csv"].open()))
    assert {r["seed"] for r in rows} == {"0"}  # first seed only
    by = {(r["strategy"], r["round"]): r for r in rows}
    assert float(by["oracle", "2"]["l1_to_oracle"]) == 0.0 and float(by["oracle", "2"]["top_peer_acc"]) == 1.0
    assert float(by["weights", "2"]["l1_to_oracle"]) == pytest.approx(_ref_l1(W_DESIGNED, ORACLE))
    assert float(by["weights", "2"]["top_peer_acc"]) == pytest.approx(0.625)
    assert float(by["weights", "1"]["top_peer_acc"]) == pytest.approx(1 / 3)  # uniform W: chance
    assert float(by["local", "2"]["l1_to_oracle"]) == pytest.approx(1.0)
    obj = json.loads(paths["json"].read_text())
    assert obj["chance_top_peer_acc"] == pytest.approx(1 / 3)
    assert [s["strategy"] for s in obj["strategies"]] == ["local", "fedavg", "oracle", "weights"]
    _assert_png(paths["png"])
    _assert_png(paths["png_W"])

    assert float(by["weights", "1"]["same_category_mass"]) == pytest.approx(1 / 3)  # uniform: 1 of 3 peers
    assert float(by["weights", "2"]["same_category_mass"]) == pytest.approx(SCM_DESIGNED)
    assert by["local", "2"]["same_category_mass"] == ""  # no off-diagonal trust: undefined
    assert obj["uniform_same_category_mass"] == pytest.approx(1 / 3)
    assert "## Trust quality (final round, mean over seeds)" in md

    # Final-round trust quality per strategy, mean over seeds; one seed's summary.json carries its own.
    fed1 = d / "fedavg-seed1" / "summary.json"
    tq = dict.fromkeys(["same_category_mass", "top_peer_accuracy", "effective_peers", "l1_to_oracle_offdiag"], 0.5)
    fed1.write_text(json.dumps(json.loads(fed1.read_text()) | {"trust_quality": tq}))
    paths = write_trust(d)
    q = {r["strategy"]: r for r in csv.DictReader(paths["csv_quality"].open())}
    assert list(q) == ["local", "fedavg", "oracle", "weights"]
    assert float(q["oracle"]["same_category_mass"]) == 1.0 and float(q["oracle"]["top_peer_accuracy"]) == 1.0
    assert float(q["oracle"]["effective_peers"]) == pytest.approx(2.0)
    assert float(q["oracle"]["l1_to_oracle_offdiag"]) == pytest.approx(0.0) and q["oracle"]["n_seeds"] == "2"
    assert float(q["fedavg"]["same_category_mass"]) == pytest.approx((1 / 3 + 0.5) / 2)
    assert float(q["fedavg"]["effective_peers"]) == pytest.approx((4 + 0.5) / 2)
    assert q["local"]["same_category_mass"] == "" and float(q["local"]["effective_peers"]) == 1.0
    assert float(q["weights"]["same_category_mass"]) == pytest.approx(SCM_DESIGNED)
    obj = json.loads(paths["json"].read_text())
    assert [s["n_seeds"] for s in obj["quality"]] == [2, 2, 2, 1]
    assert obj["quality"][0]["same_category_mass"] is None
    section = paths["md"].read_text().split("## Trust quality")[1].split("## Per round")[0]
    row = next(line for line in section.splitlines() if line.startswith("| fedavg "))
    assert f"{(1 / 3 + 0.5) / 2:.3f}" in row

    # An unfinished run (no summary.json yet) borrows oracle and categories from a finished one.
    (d / "weights-seed0" / "summary.json").unlink()
    rows = list(csv.DictReader(write_trust(d, out=tmp_path / "t")["csv"].open()))
    w2 = next(r for r in rows if r["strategy"] == "weights" and r["round"] == "2")
    assert float(w2["top_peer_acc"]) == pytest.approx(0.625)

    a3 = _compare_dir(tmp_path / "a3", "high", {"fedavg": [40.0], "weights": [35.0]}, apply=False)
    assert main(["analyze", "trust", str(a3)]) == 0
    out = capsys.readouterr().out
    assert "Appendix A.3" in out and "trust.apply: false" in out
    assert (a3 / "trust_W.png").exists() and (a3 / "trust_curves.png").exists()


BYTES_EQUIV = {"theta": 4000, "delta": 4000, "dense_logits": 64 * 1000 * 4, "topk_coo": 64 * 10 * 8}


def test_bytes(tmp_path, capsys):
    recs = [
        _trust(1, 5, UNIFORM, bytes={"delta": 4000}, bytes_equiv={**BYTES_EQUIV, "theta": 1}),
        _trust(2, 10, UNIFORM, bytes={"topk_values": 2560, "topk_indices": 2560}, bytes_equiv=BYTES_EQUIV),
    ]
    run = _write_run(tmp_path / "run", _summary("predictions", 0, 30.0), recs, _config())
    paths = write_bytes(run)
    obj = json.loads(paths["json"].read_text())
    assert obj["round"] == 2 and obj["bytes_equiv"] == {k: float(v) for k, v in BYTES_EQUIV.items()}
    assert obj["ratios"]["dense/topk"] == 50.0 and obj["ratios"]["theta/topk"] == pytest.approx(0.78125)
    assert obj["bytes_sent"] == {"topk_values": 2560.0, "topk_indices": 2560.0}
    md = paths["md"].read_text()
    assert "250.00 KiB" in md and "5.00 KiB" in md and "**50.0×**" in md and "256,000" in md
    assert "|X_S| = 64 reference tokens" in md and "vocabulary 1,000" in md and "1,000 adapter parameters" in md
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["kind"] for r in rows if r["source"] == "equivalent"] == ["theta", "delta", "dense_logits", "topk_coo"]
    _assert_png(paths["png"])
    assert main(["analyze", "bytes", str(run), "--out", str(tmp_path / "o")]) == 0
    assert "dense_logits" in capsys.readouterr().out and (tmp_path / "o" / "bytes.png").exists()
    empty = _write_run(tmp_path / "empty", None, [_eval(0, 0, [1.0], True)])
    with pytest.raises(AnalysisError):
        write_bytes(empty)


def _topology_runs(root: Path, ring_vals: list[float]) -> tuple[Path, Path]:
    dirs = []
    for topo, vals in (("full", [50.0, 40.0, 35.0, 30.0]), ("ring", ring_vals)):
        recs = [_eval(r, 5 * r, [v - 1, v + 1], r in (0, 3), **({"model": "base"} if r == 0 else {}))
                for r, v in enumerate(vals)]  # fmt: skip
        s = _summary("weights", 0, vals[-1], users=2)
        dirs.append(_write_run(root / f"{topo}-run", s, recs, _config(topology=topo)))
    return dirs[0], dirs[1]


def test_topology(tmp_path, capsys):
    full, ring = _topology_runs(tmp_path, [50.0, 42.0, 29.5, 31.0])
    paths = write_topology(full, ring)
    assert paths["md"] == tmp_path / "topology.md"
    obj = json.loads(paths["json"].read_text())
    assert obj["full"]["final_mean_test_ppl"] == 30.0 and obj["ring"]["final_mean_test_ppl"] == 31.0
    assert obj["ring"]["first_step_reaching_other_final"] == 10  # ring 29.5 <= 30 at step 10 (subsampled)
    assert obj["full"]["first_step_reaching_other_final"] == 15  # full 30 <= 31 only at step 15
    md = paths["md"].read_text()
    assert "first reaches ≤ it at step 10" in md and "subsample" in md and "512 tokens" in md
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [float(r["ring_mean_test_ppl"]) for r in rows] == [50.0, 42.0, 29.5, 31.0]
    _assert_png(paths["png"])

    full2, ring2 = _topology_runs(tmp_path / "b", [50.0, 48.0, 45.0, 40.0])
    assert main(["analyze", "topology", str(full2), str(ring2)]) == 0
    out = capsys.readouterr().out
    assert "not reached" in out
    obj = json.loads((tmp_path / "b" / "topology.json").read_text())
    assert obj["ring"]["first_step_reaching_other_final"] is None
    assert obj["full"]["first_step_reaching_other_final"] == 5  # 40 <= 40


def test_topology_compares_like_with_like(tmp_path):
    # Both runs record a subsampled AND a full-split eval at the base and the last step (as the protocol does);
    # the subsample reads ~5 lower than the full split, so mixing them would misreport when a run "reaches" another.
    dirs = []
    for topo, sub, full_final in (("full", [45.0, 35.0, 28.0, 25.0], 30.0), ("ring", [45.0, 38.0, 27.0, 26.0], 31.0)):
        recs = [_eval(0, 0, [50.0, 50.0], True, model="base"), _eval(0, 0, [45.0, 45.0], False, model="base")]
        recs += [_eval(r, 5 * r, [v, v], False) for r, v in enumerate(sub) if r > 0]
        recs.append(_eval(3, 15, [full_final, full_final], True))
        dirs.append(_write_run(tmp_path / f"{topo}-run", _summary("weights", 0, full_final, users=2), recs, _config()))
    paths = write_topology(*dirs)
    obj = json.loads(paths["json"].read_text())
    # finals: the full split of both runs
    assert obj["full"]["final_mean_test_ppl"] == 30.0 and obj["ring"]["final_mean_test_ppl"] == 31.0
    assert obj["full"]["final_subsample_mean_test_ppl"] == 25.0 and obj["ring"]["final_subsample_mean_test_ppl"] == 26.0
    # curves: the subsample at every step, last included
    assert [p["mean_ppl"] for p in obj["ring"]["series"]] == [45.0, 38.0, 27.0, 26.0]
    assert not any(p["full"] for p in obj["full"]["series"])
    # ring's subsample never gets to full's subsample final 25 (its 27 at step 10 is only below full's 30 on the
    # full split); full's subsample reaches ring's 26 at step 15, not at step 10 (28 <= 31 mixed the two).
    assert obj["ring"]["first_step_reaching_other_final"] is None
    assert obj["full"]["first_step_reaching_other_final"] == 15
    assert not obj["full"]["reaching_compares_subsample_with_full_split"]
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["full_eval_full_split"] for r in rows] == ["False"] * 4
    md = paths["md"].read_text()
    assert "approx." not in md and "Like with like" in md


def test_placement(tmp_path, capsys):
    runs = []
    for targets, params, final in ((["attention"], 100_000, 40.0), (["all"], 400_000, 35.0)):
        s = _summary("local", 0, final, adapter_params_per_user=params)
        runs.append(_write_run(tmp_path / f"run-{targets[0]}", s, [], _config(targets=targets)))
    paths = write_placement(runs)
    assert paths["md"] == tmp_path / "placement.md"
    obj = json.loads(paths["json"].read_text())
    got = {e["label"]: (e["ppl_decrease"], e["decrease_per_mparam"]) for e in obj["runs"]}
    assert got == {"attention": (10.0, 100.0), "all": (15.0, 37.5)}
    md = paths["md"].read_text()
    assert "100,000" in md and "37.50" in md and "20.0%" in md
    _assert_png(paths["png"])
    assert main(["analyze", "placement", *map(str, runs), "--out", str(tmp_path / "p")]) == 0
    assert "attention" in capsys.readouterr().out


def test_placement_full_finetuning_label(tmp_path):
    runs = []
    for targets, params, final in ((["full"], 4_000_000, 30.0), (["attention"], 100_000, 40.0)):
        s = _summary("local", 0, final, adapter_params_per_user=params)
        runs.append(_write_run(tmp_path / f"run-{targets[0]}", s, [], _config(targets=targets)))
    paths = write_placement(runs)
    labels = [e["label"] for e in json.loads(paths["json"].read_text())["runs"]]
    assert labels == ["full fine-tuning", "attention"]
    assert "| full fine-tuning |" in paths["md"].read_text()
    with paths["csv"].open(newline="") as f:
        assert [r["label"] for r in csv.DictReader(f)] == ["full fine-tuning", "attention"]


def test_cli_user_errors_exit_2(tmp_path, capsys):
    assert main(["analyze", "trust", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["analyze", "table4", str(tmp_path / "empty")]) == 2
    assert "no run directories" in capsys.readouterr().err
