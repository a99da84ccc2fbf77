"""A strategy added from outside the package (one class with its options, one register call) runs through
``trustlora compare``, its option set on the command line like any other."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import torch

from trustlora.cli import main
from trustlora.config import _check


@dataclass
class HalfSelfOptions:
    self_weight: float = 0.5
    """Weight a user keeps on itself; the rest is spread evenly over the others."""

    def validate(self) -> None:
        _check(0 < self.self_weight <= 1, "trust.self_weight", "a number in (0, 1]", self.self_weight)


class HalfSelf:
    """Toy strategy: ``trust.self_weight`` of the weight on oneself, the rest spread evenly over the other users."""

    name = "half_self"
    needs: tuple[str, ...] = ()
    exchanges = True
    Options = HalfSelfOptions

    def trust(self, inp, cfg):
        n, own = inp.n_users, cfg.options(self.name).self_weight
        w = torch.full((len(inp.users), n), (1 - own) / (n - 1), dtype=torch.float64)
        for a, u in enumerate(inp.users):
            w[a, u] = own
        return w, None


def test_plugin_strategy(tiny_overrides, tmp_path, capsys):
    from trustlora import trust

    trust.register(HalfSelf())
    try:
        out = tmp_path / "cmp"
        args = ["compare", "--no-progress", "strategies=local,half_self", f"out={out}", *tiny_overrides]
        assert main([*args, "trust.self_weight=2"]) == 2  # its validate() runs like any option's
        assert "trust.self_weight: expected a number in (0, 1]" in capsys.readouterr().err
        assert main([*args, "trust.half_self.self_weight=0.6"]) == 0
        s = json.loads((out / "half_self-seed0" / "summary.json").read_text())
        w = torch.tensor(s["final_W"])
        expected = torch.full((3, 3), 0.2, dtype=w.dtype).fill_diagonal_(0.6)
        torch.testing.assert_close(w, expected)
        assert "self_weight: 0.6" in (out / "half_self-seed0" / "config.yaml").read_text()
        rows = list(csv.DictReader((out / "comparison.csv").open()))
        assert {r["strategy"] for r in rows} == {"local", "half_self"}
        local = json.loads((out / "local-seed0" / "summary.json").read_text())
        assert s["final_mean_test_ppl"] != local["final_mean_test_ppl"]  # it did exchange
    finally:
        trust._REGISTRY.pop("half_self", None)
