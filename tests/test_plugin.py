"""A strategy added from outside the package (one class, one register call) runs through ``trustlora compare``."""

from __future__ import annotations

import csv
import json

import torch

from trustlora.cli import main


class HalfSelf:
    """Toy strategy: half of the weight on oneself, the other half spread evenly over the other users."""

    name = "half_self"
    needs: tuple[str, ...] = ()
    exchanges = True

    def trust(self, inp, cfg):
        n = inp.n_users
        w = torch.full((len(inp.users), n), 0.5 / (n - 1), dtype=torch.float64)
        for a, u in enumerate(inp.users):
            w[a, u] = 0.5
        return w, None


def test_plugin_strategy(tiny_overrides, tmp_path):
    from trustlora import trust

    trust.register(HalfSelf())
    try:
        out = tmp_path / "cmp"
        assert main(["compare", "--no-progress", "strategies=local,half_self", f"out={out}", *tiny_overrides]) == 0
        s = json.loads((out / "half_self-seed0" / "summary.json").read_text())
        w = torch.tensor(s["final_W"])
        expected = torch.full((3, 3), 0.25, dtype=w.dtype).fill_diagonal_(0.5)
        torch.testing.assert_close(w, expected)
        rows = list(csv.DictReader((out / "comparison.csv").open()))
        assert {r["strategy"] for r in rows} == {"local", "half_self"}
        local = json.loads((out / "local-seed0" / "summary.json").read_text())
        assert s["final_mean_test_ppl"] != local["final_mean_test_ppl"]  # it did exchange
    finally:
        trust._REGISTRY.pop("half_self", None)
