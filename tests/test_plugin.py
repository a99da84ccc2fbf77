"""A strategy added from outside the package (one class with its options, one register call) runs through
``trustlora compare``, its option set on the command line like any other."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import torch

from trustlora.cli import main
from trustlora.config import expect


@dataclass
class HalfSelfOptions:
    self_weight: float = 0.5
    """Weight a user keeps on itself; the rest is spread evenly over the others."""

    def validate(self) -> None:
        expect(0 < self.self_weight <= 1, "trust.self_weight", "a number in (0, 1]", self.self_weight)


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


class NormPeers:
    """Toy strategy with a message of its own: every user publishes its update's norm ('update_norm', one float);
    W_ij = softmax_j(-|log n_j - log n_i|). User 1 publishes NaN, which the receiving-side checks must reject."""

    name = "norm_peers"
    needs: tuple[str, ...] = ()
    exchanges = True
    messages = {"update_norm": lambda sizes: ((1,), torch.float32)}

    def publish(self, ctx):
        norms = (ctx.after - ctx.before).norm(dim=1, keepdim=True).float()
        norms[[a for a, u in enumerate(ctx.users) if u == 1]] = float("nan")
        return {"update_norm": norms}

    def trust(self, inp, cfg):
        logn = inp.extra["update_norm"].double().clamp_min(1e-30).log().view(1, -1)
        own = logn[0, inp.users].view(-1, 1)
        return torch.softmax(-(logn - own).abs(), dim=1), None


def test_plugin_strategy_with_its_own_message(tiny_overrides, tmp_path):
    from trustlora import trust

    trust.register(NormPeers())
    try:
        out = tmp_path / "run"
        assert main(["run", "--no-progress", "strategy=norm_peers", f"out={out}", *tiny_overrides]) == 0
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        rounds = [r for r in recs if r["kind"] == "trust"]
        assert rounds
        for r in rounds:
            assert r["bytes"]["update_norm"] == 4  # gathered and counted like any kind (one user sends one float32)
            assert [(e["sender"], e["kind"], e["reason"]) for e in r["rejected"]] == [
                (1, "update_norm", "non-finite values")
            ]
            w = torch.tensor(r["W"])
            assert float(w[0, 1]) == 0.0 and float(w[2, 1]) == 0.0 and float(w[0, 2]) > 0.0
            torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=w.dtype))
    finally:
        trust._REGISTRY.pop("norm_peers", None)


class BestPeer:
    """Toy strategy with local passes of its own: ``starting_point`` scores the frozen base model on each user's val
    tokens once, ``prepare`` scores every peer's published model there (``ctx.val_cross``); W_i = one-hot on the best
    model if it beats the base model, else on oneself."""

    name = "best_peer"
    needs: tuple[str, ...] = ("theta",)
    exchanges = True
    calls = {"starting_point": 0, "prepare": 0}

    def needs_reference(self, cfg) -> bool:
        return True

    def starting_point(self, ctx):
        self.calls["starting_point"] += 1
        flat = ctx.stack.get_flat()
        return {"val_base_losses": ctx.val_loss(torch.zeros_like(flat))}  # B = 0: every slot is the base model

    def prepare(self, inp, ctx):
        self.calls["prepare"] += 1
        inp.val_losses = ctx.val_cross(inp.theta)

    def trust(self, inp, cfg):
        s = inp.val_losses.double()
        w = torch.zeros_like(s)
        for a, u in enumerate(inp.users):
            best = int(s[a].argmin())
            w[a, best if s[a, best] < inp.val_base_losses[a] else u] = 1.0
        return w, s


def test_plugin_strategy_with_local_passes(tiny_overrides, tmp_path):
    """A plugin's starting_point / prepare get the round runner's val passes: its scores equal strategy
    'validation''s (paper-style, scoring models) in round 1, where both runs have trained the same."""
    from trustlora import trust

    strat = trust.register(BestPeer())
    try:
        runs = {}
        for name, extra in (("best_peer", []), ("validation", ["trust.scale=none", "trust.val_candidate=model"])):
            out = tmp_path / name
            assert main(["run", "--no-progress", f"strategy={name}", f"out={out}", *extra, *tiny_overrides]) == 0
            recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            runs[name] = [r for r in recs if r["kind"] == "trust"]
        rounds = runs["best_peer"]
        assert strat.calls == {"starting_point": 1, "prepare": len(rounds)} and len(rounds) >= 2
        torch.testing.assert_close(torch.tensor(rounds[0]["scores"]), torch.tensor(runs["validation"][0]["scores"]))
        for r in rounds:
            w, s = torch.tensor(r["W"]), torch.tensor(r["scores"])
            assert torch.equal(w.sum(1), torch.ones(len(w), dtype=w.dtype)) and int((w > 0).sum()) == len(w)
            for i in range(len(w)):
                assert int(w[i].argmax()) in (int(s[i].argmin()), i)
    finally:
        trust._REGISTRY.pop("best_peer", None)
