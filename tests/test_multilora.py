"""The stacked multi-user LoRA equals N independent PEFT models (forward, loss, gradients, export)."""

import copy

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from trustlora.config import ConfigError, LoraConfig
from trustlora.model.base import tiny_random_model
from trustlora.model.multilora import MultiLoRA, find_targets
from trustlora.train import LocalTrainer, per_user_loss

N, B, T = 3, 2, 16


def _random_adapters(mm: MultiLoRA, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mm.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _peft_for_user(mm: MultiLoRA, base, user: int):
    cfg = PeftLoraConfig(
        r=mm.cfg.r,
        lora_alpha=mm.cfg.alpha,
        lora_dropout=0.0,
        target_modules="^(" + "|".join(mm.target_names).replace(".", r"\.") + ")$",
    )
    pm = get_peft_model(copy.deepcopy(base), cfg)
    sd = {k.replace(".weight", ".default.weight"): v for k, v in mm.peft_state_dict(user).items()}
    missing = pm.load_state_dict(sd, strict=False)
    assert not missing.unexpected_keys
    return pm


def _setup():
    base = tiny_random_model(seed=0)
    mm = MultiLoRA(copy.deepcopy(base), N, LoraConfig(dropout=0.0), seed=0)
    _random_adapters(mm)
    ids = torch.randint(0, 256, (N * B, T), generator=torch.Generator().manual_seed(2))
    return base, mm, ids


def test_targets_all_attention_mlp():
    base = tiny_random_model()
    all_ = find_targets(base, ["all"])
    assert len(all_) == 2 * 7
    assert len(find_targets(base, ["attention"])) == 2 * 4
    assert len(find_targets(base, ["mlp"])) == 2 * 3
    assert find_targets(base, ["q_proj"]) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    with pytest.raises(ConfigError, match="lora.targets"):
        find_targets(base, ["nonexistent"])


def test_stacked_matches_independent_peft_losses_and_grads():
    base, mm, ids = _setup()
    logits = mm(ids)
    nll, count = per_user_loss(logits, ids, N)
    loss = nll / count
    loss.sum().backward()
    for u in range(N):
        pm = _peft_for_user(mm, base, u)
        out = pm(input_ids=ids[u * B : (u + 1) * B], labels=ids[u * B : (u + 1) * B])
        torch.testing.assert_close(loss[u], out.loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[u * B : (u + 1) * B], out.logits, rtol=1e-5, atol=1e-5)
        out.loss.backward()
        for name, layer in mm.layers.items():
            peft_layer = pm.base_model.model.get_submodule(name)
            ga = peft_layer.lora_A["default"].weight.grad  # [r, in]
            gb = peft_layer.lora_B["default"].weight.grad  # [out, r]
            torch.testing.assert_close(layer.lora_A.grad[u].T, ga, rtol=1e-3, atol=1e-5)
            torch.testing.assert_close(layer.lora_B.grad[u].T, gb, rtol=1e-3, atol=1e-5)


def test_flat_roundtrip_and_init():
    base = tiny_random_model()
    mm = MultiLoRA(base, N, LoraConfig(), seed=3)
    flat = mm.get_flat()
    assert flat.shape == (N, mm.num_adapter_params())
    # same init for every user, B = 0 so the model starts as the base model
    torch.testing.assert_close(flat[0], flat[1])
    assert all(float(layer.lora_B.abs().sum()) == 0 for layer in mm.layers.values())
    new = torch.randn_like(flat)
    mm.set_flat(new)
    torch.testing.assert_close(mm.get_flat(), new)
    mm2 = MultiLoRA(tiny_random_model(), N, LoraConfig(same_init=False), seed=3)
    assert not torch.allclose(mm2.get_flat()[0], mm2.get_flat()[1])


def test_adapters_off_is_base_model():
    base, mm, ids = _setup()
    with torch.no_grad():
        ref = base(input_ids=ids).logits
        mm.adapters_enabled(False)
        off = mm(ids)
        mm.adapters_enabled(True)
        on = mm(ids)
    torch.testing.assert_close(off, ref)
    assert not torch.allclose(on, ref)


def test_export_loads_in_peft_with_same_logits(tmp_path):
    base, mm, ids = _setup()
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    with torch.no_grad():
        logits = mm(ids)
    for u in (0, N - 1):
        out = mm.export_peft(u, tmp_path / f"user_{u}", base_name=str(base_dir))
        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        pm = PeftModel.from_pretrained(copy.deepcopy(base), out)
        with torch.no_grad():
            ref = pm(input_ids=ids[u * B : (u + 1) * B]).logits
        torch.testing.assert_close(logits[u * B : (u + 1) * B], ref, rtol=1e-5, atol=1e-5)


def test_per_user_clipping_only_touches_large_users():
    from trustlora.config import TrainConfig

    base, mm, ids = _setup()
    streams = [torch.randint(0, 256, (200,)) for _ in range(N)]
    tr = LocalTrainer(mm, streams, TrainConfig(grad_clip=1e-3, precision="fp32", seq_len=T, batch_size=B), seed=0)
    logits = mm(ids)
    nll, count = per_user_loss(logits, ids, N)
    (nll / count).sum().backward()
    before = [p.grad.clone() for p in mm.adapter_parameters()]
    norms = tr.clip_per_user()
    sq = torch.zeros(N)
    for p in mm.adapter_parameters():
        sq += p.grad.pow(2).reshape(N, -1).sum(1)
    torch.testing.assert_close(sq.sqrt(), torch.full((N,), 1e-3), rtol=1e-3, atol=1e-7)
    # direction per user unchanged
    for p, g0 in zip(mm.adapter_parameters(), before, strict=True):
        for u in range(N):
            torch.testing.assert_close(p.grad[u] * norms[u] / 1e-3, g0[u], rtol=1e-3, atol=1e-6)


def test_short_train_split_is_clear_error():
    from trustlora.config import TrainConfig

    _, mm, _ = _setup()
    streams = [torch.randint(0, 256, (200,)) for _ in range(N - 1)] + [torch.randint(0, 256, (10,))]
    with pytest.raises(ValueError, match="user 2: train split has 10 tokens"):
        LocalTrainer(mm, streams, TrainConfig(seq_len=T), seed=0)


def test_grad_accumulation_averages_micro_batches():
    from trustlora.config import TrainConfig

    streams = [torch.randint(0, 256, (200,)) for _ in range(N)]
    grads = []
    for acc, bs in ((1, 2 * B), (2, B)):
        base, mm, ids = _setup()
        cfg = TrainConfig(grad_clip=0, precision="fp32", seq_len=T, batch_size=bs, grad_accum=acc, lr=1e-9)
        tr = LocalTrainer(mm, streams, cfg, seed=0)
        full = ids.view(N, B, T).repeat(1, 2, 1)  # (N, 2B, T): every micro-batch is the same
        tr.sample_batch = lambda f=full, b=bs: f[:, :b].reshape(-1, T)
        tr.opt.step = lambda: None  # keep the gradient for inspection
        tr.opt.zero_grad = lambda set_to_none=True: None
        tr.step()
        grads.append(torch.cat([p.grad.flatten() for p in mm.adapter_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
