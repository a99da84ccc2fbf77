"""Optimiser recipe options: AdamW betas, lr schedule (constant / onecycle), grad_clip 0, their checkpoints,
their validation, and the paper presets that use the official code's recipe."""

import copy
from pathlib import Path

import pytest
import torch

from trustlora.config import ConfigError, LoraConfig, TrainConfig, load_config
from trustlora.model.base import tiny_random_model
from trustlora.model.multilora import MultiLoRA
from trustlora.train import LocalTrainer

ROOT = Path(__file__).resolve().parents[1]
N, B, T = 2, 2, 16


def _trainer(seed: int = 0, dropout: float = 0.1, **train) -> LocalTrainer:
    cfg = TrainConfig(precision="fp32", seq_len=T, batch_size=B, **train)
    mm = MultiLoRA(tiny_random_model(seed=0), N, LoraConfig(dropout=dropout), seed=seed)
    streams = [torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(10 + u)) for u in range(N)]
    return LocalTrainer(mm, streams, cfg, seed=seed)


def _lr(tr: LocalTrainer) -> float:
    return tr.opt.param_groups[0]["lr"]


def test_defaults_are_todays_recipe():
    tr = _trainer()
    group = tr.opt.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0.0 and tr.sched is None
    assert TrainConfig().schedule == "constant" and LoraConfig().init_bound == "kaiming"
    for _ in range(3):
        tr.step()
        assert _lr(tr) == 2e-3


def test_betas_and_weight_decay_reach_the_optimizer():
    tr = _trainer(betas=[0.8, 0.95], weight_decay=0.001, schedule="onecycle", steps=5)
    tr.step()
    group = tr.opt.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["weight_decay"] == 0.001  # onecycle never cycles the betas


def test_onecycle_warms_up_then_anneals():
    steps = 20
    tr = _trainer(schedule="onecycle", steps=steps, lr=1e-2, lr_warmup=0.2)
    lrs = []  # the lr each of the steps used
    for _ in range(steps):
        lrs.append(_lr(tr))
        tr.step()
    assert lrs[0] == pytest.approx(1e-4)  # lr / div_factor 100
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(1e-2) and peak == 0.2 * steps - 1
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))  # rising
    assert all(a > b for a, b in zip(lrs[peak:-1], lrs[peak + 1 :], strict=True))  # cosine anneal
    assert lrs[-1] == pytest.approx(1e-2 / 5)  # last step: (lr / 100) / final_div_factor 0.05


def test_grad_clip_zero_means_no_clipping():
    tr = _trainer(grad_clip=0)
    ids = tr.sample_batch()
    logits = tr.mm(ids)
    (logits.float().pow(2).mean() * 1e6).backward()  # huge gradients
    before = [p.grad.clone() for p in tr.mm.adapter_parameters()]
    norms = tr.clip_per_user()
    assert float(norms.min()) > 1.0
    for p, g in zip(tr.mm.adapter_parameters(), before, strict=True):
        assert torch.equal(p.grad, g)


def test_state_dict_resumes_schedule_batches_and_dropout_bit_identically():
    kw = dict(schedule="onecycle", steps=8, lr=1e-2, lr_warmup=0.25, betas=[0.9, 0.95])
    ref = _trainer(**kw)
    for _ in range(3):
        ref.step()
    state = copy.deepcopy(ref.state_dict())
    flat = ref.mm.get_flat()
    assert state["sched"] is not None and state["dropout"]["states"] is not None
    expected = [ref.step() for _ in range(3)]

    resumed = _trainer(seed=0, **kw)  # a fresh process: same config, state from the checkpoint
    resumed.mm.set_flat(flat)
    resumed.load_state_dict(state)
    assert _lr(resumed) == state["opt"]["param_groups"][0]["lr"] > 1e-2 / 100  # mid-warm-up
    got = [resumed.step() for _ in range(3)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(resumed.mm.get_flat(), ref.mm.get_flat(), rtol=0, atol=0)
    assert _lr(resumed) == _lr(ref)


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.betas=[0.9]", "train.betas"),
        ("train.betas=[0.9, 1.0]", "train.betas"),
        ("train.betas=[-0.1, 0.9]", "train.betas"),
        ("train.schedule=cosine", "train.schedule"),
        ("train.lr_warmup=0", "train.lr_warmup"),
        ("train.lr_warmup=1.5", "train.lr_warmup"),
        ("train.grad_clip=-1", "train.grad_clip"),
        ("lora.init_bound=xavier", "lora.init_bound"),
    ],
)
def test_bad_values_rejected_with_one_line(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(f"{field}: expected") and "\n" not in str(e.value)


def test_options_parse_from_the_command_line():
    cfg = load_config(None, ["train.betas=0.9,0.95", "train.schedule=onecycle", "lora.init_bound=inv_sqrt_r"])
    assert cfg.train.betas == [0.9, 0.95] and cfg.train.schedule == "onecycle" and cfg.lora.init_bound == "inv_sqrt_r"


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_presets_use_the_official_recipe(path):
    cfg = load_config(path)
    t = cfg.train
    assert (t.betas, t.weight_decay, t.schedule, t.grad_clip) == ([0.9, 0.95], 0.001, "onecycle", 0.0)
    assert cfg.lora.init_bound == "inv_sqrt_r"
    assert "official code" in path.read_text()
