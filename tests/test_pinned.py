"""Behaviour pin: the tiny model's final mean test perplexity of every registered strategy, fixed before the
architecture work (issue 13) so that refactors provably change no number. Dropout 0.1 keeps the per-user dropout
streams in the pin. A new strategy must add its number here."""

from __future__ import annotations

import json

import pytest

from trustlora.trust import names

PINNED: dict[str, float] = {
    "local": 225.9788726601602,
    "fedavg": 225.44594657037382,
    "oracle": 225.97883993128062,
    "weights": 224.84605968814662,
    "validation": 224.08389162271638,
    "predictions": 225.09095972974535,
    "median": 226.8779762302121,
    "trimmed_mean": 225.44594657037382,
    "krum": 230.67918969941627,
}


def test_every_strategy_keeps_its_numbers(tiny_overrides, tmp_path):
    from trustlora.cli import main

    out = tmp_path / "pin"
    strategies = names()
    # the pin is of the algorithm without the update check (faults.update_check, tested on its own)
    args = ["compare", "--no-progress", f"strategies={','.join(strategies)}", "lora.dropout=0.1", f"out={out}"]
    args += ["faults.update_check=none"]
    assert main(args + list(tiny_overrides)) == 0
    got = {s: json.loads((out / f"{s}-seed0" / "summary.json").read_text())["final_mean_test_ppl"] for s in strategies}
    missing = sorted(set(strategies) - set(PINNED))
    assert not missing, f"pin the numbers of {missing}: {json.dumps({k: got[k] for k in missing})}"
    for s in strategies:
        assert got[s] == pytest.approx(PINNED[s], rel=1e-4), s
