"""Full fine-tuning arm (lora.targets=[full]): N stacked weight copies behave like N independent models."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from trustlora.cli import main
from trustlora.config import ConfigError, LoraConfig
from trustlora.model import build_stack
from trustlora.model.base import tiny_random_model
from trustlora.model.multifull import MultiFull
from trustlora.train import LocalTrainer, per_user_loss

N, B, T = 3, 2, 16
FULL = LoraConfig(targets=["full"], dropout=0.0)


def _perturbed(mf: MultiFull) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in mf.adapter_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_stacked_forward_and_grads_match_independent_models():
    base = tiny_random_model(seed=0)
    mf = build_stack(copy.deepcopy(base), N, FULL)
    assert isinstance(mf, MultiFull)
    assert mf.num_adapter_params() == sum(p.numel() for p in base.parameters())
    _perturbed(mf)
    ids = torch.randint(0, 256, (N * B, T), generator=torch.Generator().manual_seed(2))
    logits = mf(ids)
    nll, count = per_user_loss(logits, ids, N)
    (nll / count).sum().backward()
    names = [n for n, _ in base.named_parameters()]
    for u in range(N):
        ref = copy.deepcopy(base)
        with torch.no_grad():
            for name, p in ref.named_parameters():
                p.copy_(mf.user_params(u)[name])
        ref_logits = ref(input_ids=ids[u * B : (u + 1) * B]).logits
        torch.testing.assert_close(logits[u * B : (u + 1) * B], ref_logits, atol=1e-5, rtol=1e-5)
        n2, c2 = per_user_loss(ref_logits, ids[u * B : (u + 1) * B], 1)
        (n2 / c2).sum().backward()
        for name, p, ref_p in zip(names, mf.adapter_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.grad[u], ref_p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_users_train_independently_and_base_stays_frozen():
    base = tiny_random_model(seed=0)
    frozen = copy.deepcopy(base)
    mf = MultiFull(base, N, FULL)
    flat0 = mf.get_flat()
    assert torch.equal(flat0[0], flat0[1])  # everybody starts from the pretrained weights
    streams = [(torch.arange(400) * (u + 1)) % 23 for u in range(N)]  # learnable, different per user
    from trustlora.config import TrainConfig

    tr = LocalTrainer(mf, streams, TrainConfig(batch_size=B, seq_len=T, lr=1e-2, precision="fp32"), seed=0)
    first = tr.step()
    for _ in range(5):
        last = tr.step()
    assert (last < first).all()
    flat = mf.get_flat()
    assert not torch.equal(flat[0], flat[1])  # different data -> different weights
    for p, q in zip(base.parameters(), frozen.parameters(), strict=True):
        assert torch.equal(p, q)
    mf.adapters_enabled(False)
    ids = torch.randint(0, 256, (N * B, T))
    torch.testing.assert_close(mf(ids), frozen(input_ids=ids).logits)
    mf.adapters_enabled(True)
    mf.set_flat(flat0)
    torch.testing.assert_close(mf(ids), frozen(input_ids=ids).logits.detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="flat weights"):
        mf.set_flat(flat0[:, :-1])


def test_export_loads_with_from_pretrained(tmp_path):
    base = tiny_random_model(seed=0)
    mf = MultiFull(copy.deepcopy(base), N, FULL)
    _perturbed(mf)
    out = mf.export(1, tmp_path / "user_1", base_name="tiny-random")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 256, (N * B, T))
    with torch.no_grad():
        want = mf(ids)[B : 2 * B]
        got = loaded(input_ids=ids[B : 2 * B]).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_full_mixed_with_adapter_targets_is_a_config_error():
    with pytest.raises(ConfigError, match="lora.targets"):
        LoraConfig(targets=["full", "mlp"]).validate()


def test_run_with_full_finetuning_end_to_end(tiny_overrides, tmp_path):
    out = tmp_path / "full"
    rc = main(["run", *tiny_overrides, "strategy=local", "lora.targets=[full]", f"out={out}"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adapter_params_per_user"] == sum(p.numel() for p in tiny_random_model().parameters())
    assert summary["final_mean_test_ppl"] < summary["base_mean_test_ppl"]
    assert summary["precision"] == "fp32"  # the precision the run resolved to is recorded
    assert (out / "adapters" / "user_0" / "model.safetensors").exists()


def test_both_stacks_implement_the_user_stack_protocol():
    from trustlora.config import LoraConfig
    from trustlora.model import UserStack, build_stack
    from trustlora.model.base import tiny_random_model

    for targets in (["all"], ["full"]):
        stack = build_stack(tiny_random_model(seed=0), 2, LoraConfig(targets=targets))
        assert isinstance(stack, UserStack), targets
        flat = stack.get_flat()
        assert flat.shape == (2, stack.num_adapter_params())
