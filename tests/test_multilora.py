"""The stacked multi-user LoRA equals N independent PEFT models (forward, loss, gradients, export)."""

import copy
import types

import pytest
import torch
from peft import PeftModel

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
    return mm.peft_model(user, copy.deepcopy(base), trainable=True)


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


# --------------------------------------------------------------------------------------------------
# per-user dropout generators, train mode, A init


def _same_adapters_everywhere(mm: MultiLoRA) -> None:
    """Every slot gets the same non-zero adapter, so a user's output depends on its dropout mask alone."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in mm.adapter_parameters():
            p.copy_((torch.randn(p.shape[1:], generator=g) * 0.3).expand_as(p))


def _user_rows(user: int) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(100 + user))


def _train_logits(n_users: int, user_ids: list[int], calls: int = 2) -> list[dict[int, torch.Tensor]]:
    mm = MultiLoRA(tiny_random_model(seed=0), n_users, LoraConfig(dropout=0.5), seed=7, user_ids=user_ids, n_total=5)
    _same_adapters_everywhere(mm)
    mm.train()
    ids = torch.cat([_user_rows(u) for u in user_ids])  # (n*B, T) user-major
    out = []
    with torch.no_grad():
        for _ in range(calls):
            logits = mm(ids)
            out.append({u: logits[s * B : (s + 1) * B] for s, u in enumerate(user_ids)})
    return out


def test_user_dropout_mask_independent_of_stack_size_and_slot():
    torch.manual_seed(0)  # the process RNG must play no part: reseed it differently between the runs
    five = _train_logits(5, [0, 1, 2, 3, 4])
    torch.manual_seed(123)
    two = _train_logits(2, [3, 1])  # user 3 in slot 0 (slot 3 above), user 1 in slot 1
    for call in range(2):  # the streams also continue identically over successive forwards
        for u in (3, 1):
            torch.testing.assert_close(two[call][u], five[call][u], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(five[0][3], five[1][3])  # dropout is on: a new mask each forward
    # same text and same adapter in two users' slots: different masks in train mode, equal outputs in eval
    mm = MultiLoRA(tiny_random_model(seed=0), 2, LoraConfig(dropout=0.5), seed=7)
    _same_adapters_everywhere(mm)
    ids = _user_rows(0).repeat(2, 1)
    with torch.no_grad():
        assert not torch.allclose(*mm.train()(ids).chunk(2))
        torch.testing.assert_close(*mm.eval()(ids).chunk(2))


def test_user_masks_differ_between_users_and_seeds():
    from trustlora.model.multilora import dropout_seed, fast_dropout

    x = torch.ones(4, 8, 16)  # 2 users x (2, 8, 16), identical inputs
    gens = [torch.Generator().manual_seed(dropout_seed(0, u)) for u in (0, 1)]
    y = fast_dropout(x, 0.5, gens)
    assert not torch.equal(y[:2], y[2:])
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}
    assert 0.4 < float((y == 0).float().mean()) < 0.6
    assert dropout_seed(0, 1) != dropout_seed(1, 0) and dropout_seed(-1, 3) != dropout_seed(1, 3)
    # the same generator state gives the same mask for this user whatever else is stacked
    g0 = torch.Generator().manual_seed(dropout_seed(0, 1))
    torch.testing.assert_close(fast_dropout(x[:2], 0.5, [g0]), y[2:])


def test_dropout_state_roundtrip_continues_bit_identically():
    ids = torch.randint(0, 256, (N * B, T), generator=torch.Generator().manual_seed(2))
    mm = MultiLoRA(tiny_random_model(), N, LoraConfig(dropout=0.3), seed=1)
    _same_adapters_everywhere(mm)
    mm.train()
    fresh = mm.dropout_state()
    assert fresh["states"] is None and len(fresh["seeds"]) == N
    with torch.no_grad():
        mm(ids)
        state = copy.deepcopy(mm.dropout_state())
        expected = mm(ids)
        other = MultiLoRA(tiny_random_model(), N, LoraConfig(dropout=0.3), seed=99)  # other seed: overwritten
        _same_adapters_everywhere(other)
        other.train()
        other.load_dropout_state(state)
        torch.testing.assert_close(other(ids), expected, rtol=0, atol=0)
        mm.reset_adapters(1)  # a fresh start restarts the streams
        _same_adapters_everywhere(mm)
        other.load_dropout_state(fresh)
        torch.testing.assert_close(mm(ids), other(ids), rtol=0, atol=0)


def _tiny_gpt2(dropout: float):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=64,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=63,
        eos_token_id=63,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg)


def test_train_mode_leaves_frozen_base_dropout_off():
    ids = torch.randint(0, 64, (2 * B, T), generator=torch.Generator().manual_seed(3))
    base = _tiny_gpt2(0.3)
    base.train()
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, base(input_ids=ids).logits)  # base dropout is live
    mm = MultiLoRA(base, 2, LoraConfig(dropout=0.0), seed=0)
    assert {n.rsplit(".", 1)[-1] for n in mm.target_names} == {"c_attn", "c_proj", "c_fc"}
    _same_adapters_everywhere(mm)
    mm.train()
    assert mm.training and all(layer.training for layer in mm.layers.values())
    assert not mm.model.training and not mm.model.transformer.drop.training
    assert not any(layer.base.training for layer in mm.layers.values())
    with torch.no_grad():
        torch.testing.assert_close(mm(ids), mm(ids), rtol=0, atol=0)
    # adapter dropout still follows the flag
    mm2 = MultiLoRA(_tiny_gpt2(0.3), 2, LoraConfig(dropout=0.3), seed=0)
    _same_adapters_everywhere(mm2)
    with torch.no_grad():
        mm2.train()
        assert not torch.allclose(mm2(ids), mm2(ids))
        mm2.eval()
        assert not any(layer.training for layer in mm2.layers.values())
        torch.testing.assert_close(mm2(ids), mm2(ids), rtol=0, atol=0)


@pytest.mark.parametrize("init_bound", ["kaiming", "inv_sqrt_r"])
def test_init_bound(init_bound):
    r = 4
    mm = MultiLoRA(tiny_random_model(), N, LoraConfig(r=r, init_bound=init_bound), seed=0)
    for layer in mm.layers.values():
        d_in = layer.lora_A.shape[1]
        bound = 1 / r**0.5 if init_bound == "inv_sqrt_r" else 1 / d_in**0.5
        a = layer.lora_A.detach()
        assert float(a.abs().max()) <= bound and float(a.abs().max()) > 0.8 * bound
        assert float(layer.lora_B.detach().abs().sum()) == 0


@pytest.mark.parametrize("p", [1e-6, 0.1, 0.5, 0.97])
def test_fast_dropout_mask_is_the_threshold_mask_of_its_16_bit_draws(p):
    """The clamp-and-subtract mask keeps exactly the positions whose 16-bit draw is >= the threshold."""
    from trustlora.model.multilora import fast_dropout

    x = torch.randn(3, 40, 24).bfloat16()
    y = fast_dropout(x, p, [torch.Generator().manual_seed(5)], rescale=False)
    bits = torch.empty(1, (x.numel() + 3) // 4, dtype=torch.int64)
    bits[0].random_(-(2**63), None, generator=torch.Generator().manual_seed(5))
    keep = bits.view(torch.int16)[:, : x.numel()].reshape(x.shape) >= int(round(p * 65536)) - 32768
    assert torch.equal(y, x * keep)
    assert y.dtype == x.dtype
    if p < 1e-4:
        assert torch.equal(y, x)  # below the 1/65536 quantum nothing is dropped


def test_grouped_attention_equals_eager_forward_bitwise_and_backward_closely():
    """load_base's CPU attention for LLaMA-family models (no K/V copies per query head) gives eager's logits bitwise
    and its adapter gradients to summation order, in fp32 and under bf16 autocast."""
    from trustlora.model.attention import NAME
    from trustlora.model.base import load_base

    model, _ = load_base("tiny-random")
    assert model.config._attn_implementation == NAME  # switched on CPU
    mm = MultiLoRA(model, N, LoraConfig(dropout=0.0), seed=0)
    _random_adapters(mm)
    ids = torch.randint(0, 256, (N * B, T), generator=torch.Generator().manual_seed(2))
    for bf16 in (False, True):
        out = {}
        for impl in (NAME, "eager"):
            model.config._attn_implementation = impl
            mm.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = mm(ids)
            logits.float().square().mean().backward()
            out[impl] = logits.detach(), torch.cat([p.grad.flatten() for p in mm.adapter_parameters()])
        assert torch.equal(out[NAME][0], out["eager"][0])
        g, ref = out[NAME][1], out["eager"][1]
        assert ((g - ref).norm() / ref.norm()).item() < (2e-2 if bf16 else 1e-5)
        assert ref.norm() > 0


def test_no_grad_attention_goes_through_sdpa_under_the_same_mask(monkeypatch):
    """Without autograd the LLaMA-family CPU attention is SDPA under eager's mask: logits equal eager's in fp32 (to
    1e-5) and in bf16 (to bf16's rounding), padding and causality are honoured (a padded row's real positions get the
    logits of the unpadded row), and with NO_GRAD_SDPA off the no-grad pass is eager's bitwise."""
    from trustlora.model import attention as attn
    from trustlora.model.base import load_base

    model, _ = load_base("tiny-random")
    ids = torch.randint(0, 256, (4, T), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, -2:] = 0  # right padding

    def logits(impl, sdpa, bf16, **kw):
        model.config._attn_implementation = impl
        attn.NO_GRAD_SDPA = sdpa
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(input_ids=ids, attention_mask=mask, **kw).logits.float()
        finally:
            attn.NO_GRAD_SDPA = None
            model.config._attn_implementation = attn.NAME

    for bf16, tol in ((False, 1e-5), (True, 6e-2)):
        eager = logits("eager", True, bf16)
        fast = logits(attn.NAME, True, bf16)
        keep = mask.bool()
        assert not torch.equal(fast, eager) or not bf16  # bf16: a different kernel, different roundings
        torch.testing.assert_close(fast[keep], eager[keep], rtol=tol, atol=tol)
        assert torch.equal(logits(attn.NAME, False, bf16), eager)
    with torch.no_grad():
        alone = model(input_ids=ids[1:2, 3:]).logits
    torch.testing.assert_close(logits(attn.NAME, True, False)[1, 3:], alone[0], rtol=1e-5, atol=1e-5)
    # the default (None) chooses by the CPU: bf16 without AMX keeps eager's products, everything else SDPA
    q = torch.zeros(1, dtype=torch.bfloat16)
    for amx, want in ((True, True), (False, False)):
        monkeypatch.setattr(attn.cpu, "has_amx", lambda amx=amx: amx)
        assert attn._no_grad_sdpa(q) is want and attn._no_grad_sdpa(q.float()) is True
        with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 q and k (HF's rotary) computed in bf16
            assert attn._no_grad_sdpa(q.float()) is want
        # in the model (q and k reach attention in fp32 under autocast), the default takes that path
        assert torch.equal(logits(attn.NAME, None, True), logits(attn.NAME, want, True))
    monkeypatch.setattr(attn, "NO_GRAD_SDPA", True)
    assert attn._no_grad_sdpa(q) is True


def test_host_bit_streams_mask_each_user_alone_and_resume_exactly():
    """CPU dropout streams (numpy SFC64): a user's mask depends on its own stream only, and a saved state continues
    the stream exactly; a torch generator state (older checkpoints) is refused with a clear error."""
    from trustlora.model.multilora import HostBits, dropout_seed, fast_dropout

    x = torch.ones(4, 8, 16)
    y = fast_dropout(x, 0.5, [HostBits(dropout_seed(0, u)) for u in (0, 1)])
    assert not torch.equal(y[:2], y[2:])
    assert 0.4 < float((y == 0).float().mean()) < 0.6
    alone = HostBits(dropout_seed(0, 1))
    assert torch.equal(fast_dropout(x[:2], 0.5, [alone]), y[2:])
    state = copy.deepcopy(alone.get_state())
    nxt = fast_dropout(x[:2], 0.5, [alone])
    again = HostBits(123)
    again.set_state(state)
    assert torch.equal(fast_dropout(x[:2], 0.5, [again]), nxt)
    with pytest.raises(ValueError, match="older"):
        again.set_state(torch.Generator().get_state())


def test_fast_rmsnorm_forward_bitwise_and_gradient_equal_to_autograd():
    """load_base's RMSNorm for LLaMA-family models: HF's forward bitwise, input (and weight) gradients equal to
    autograd through HF's formula to fp32 rounding, for fp32 and bf16 inputs."""
    from trustlora.model.base import load_base
    from trustlora.model.norm import RMSNormFunction, _forward

    model, _ = load_base("tiny-random")
    norm = model.model.norm
    assert norm.forward.__func__ is _forward  # switched on CPU
    g = torch.Generator().manual_seed(3)
    w = (torch.rand(32, generator=g) + 0.5).requires_grad_()
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        x = (torch.randn(5, 7, 32, generator=g) * 3).to(dtype).requires_grad_()
        up = torch.randn(5, 7, 32, generator=g).to(dtype)
        xf = x.float()
        ref = w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
        out = RMSNormFunction.apply(x, w, 1e-6)
        assert torch.equal(out, ref)
        gx_ref, gw_ref = torch.autograd.grad((ref * up).sum(), (x, w))
        gx, gw = torch.autograd.grad((out * up).sum(), (x, w))
        torch.testing.assert_close(gx, gx_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(gw, gw_ref, rtol=tol, atol=tol)
    with torch.no_grad():
        h = torch.randn(2, 4, 32)
        torch.testing.assert_close(norm(h), type(norm).forward(norm, h), rtol=0, atol=0)


def test_decoder_norms_emit_the_autocast_dtype_bitwise():
    """Under bf16 autocast a decoder layer's input and post-attention norms return bf16 directly (trustlora.model.norm
    CAST_OUT): logits and every adapter gradient of the stacked model are bitwise those of fp32 norm outputs cast by
    the next linears; the final norm keeps fp32; fp32 runs are untouched."""
    from trustlora.model import norm as norm_mod
    from trustlora.model.base import load_base

    model, _ = load_base("tiny-random")
    layer = model.model.layers[0]
    assert layer.input_layernorm.forward.__func__ is norm_mod._forward_cast
    assert layer.post_attention_layernorm.forward.__func__ is norm_mod._forward_cast
    assert model.model.norm.forward.__func__ is norm_mod._forward
    with torch.no_grad():  # norm weights other than the initial ones, so a product rounded twice would show
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.copy_(torch.rand(m.weight.shape, generator=torch.Generator().manual_seed(7)) + 0.5)
    mm = MultiLoRA(model, N, LoraConfig(dropout=0.0), seed=0)
    _random_adapters(mm)
    ids = torch.randint(0, 256, (N * B, T), generator=torch.Generator().manual_seed(4))
    h = torch.randn(3, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.input_layernorm(h).dtype == torch.bfloat16
        assert model.model.norm(h).dtype == torch.float32
    assert layer.input_layernorm(h).dtype == torch.float32
    for bf16 in (True, False):
        out = []
        for fwd in (norm_mod._forward_cast, norm_mod._forward):
            for lay in model.model.layers:
                for m in (lay.input_layernorm, lay.post_attention_layernorm):
                    m.forward = types.MethodType(fwd, m)
            mm.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = mm(ids)
            logits.float().square().mean().backward()
            out.append((logits.detach(), torch.cat([p.grad.flatten() for p in mm.adapter_parameters()])))
        assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
        assert out[0][1].norm() > 0


def test_saving_swiglu_bitwise_equal_to_hf_mlp_forward_and_gradients():
    """load_base's LLaMA-family MLPs keep gate(x) and up(x) only for the backward: the same outputs and gradients
    (of the input and of the adapters), bitwise, as HF's MLP under autograd, in fp32 and bf16; one saved tensor
    fewer."""
    from trustlora.model.base import load_base
    from trustlora.model.mlp import _forward

    model, _ = load_base("tiny-random")
    mlp = model.model.layers[0].mlp
    assert mlp.forward.__func__ is _forward  # switched on CPU
    mm = MultiLoRA(model, 2, LoraConfig(dropout=0.0))
    mm.train()
    g = torch.Generator().manual_seed(5)
    mm.set_flat(torch.randn(mm.get_flat().shape, generator=g) * 0.1)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(4, 6, 32, generator=g).to(dtype).requires_grad_()
        grads, outs, saved = [], [], []
        for fwd in (_forward, type(mlp).forward):
            mlp.forward = types.MethodType(fwd, mlp)
            n = [0]

            def pack(t, n=n):
                n[0] += 1
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                y = mlp(x)
            params = [mm.layers[k].lora_A for k in mm.layers if k.startswith("model.layers.0.mlp")]
            grads.append(torch.autograd.grad((y.float() * 1.7).sum(), [x, *params]))
            outs.append(y.detach())
            saved.append(n[0])
        mlp.forward = types.MethodType(_forward, mlp)
        assert torch.equal(outs[0], outs[1])
        for a, b in zip(*grads, strict=True):
            assert torch.equal(a, b)
        assert saved[0] == saved[1] - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sibling_layers_fuse_their_input_products_with_the_same_results(dtype):
    """q/k/v and gate/up read one input: their x @ A products are one bmm (trustlora.model.multilora._InputGroup).
    Losses and every adapter gradient (with dropout on, in a user chunk) equal those of separate products."""
    mm = MultiLoRA(tiny_random_model(seed=0), N, LoraConfig(dropout=0.1), seed=0)
    _random_adapters(mm)
    groups = mm._shared.groups
    names = sorted(tuple(n.rpartition(".")[2] for n, m in mm.layers.items() if m.group is g) for g in groups)
    layers = len(mm.model.model.layers)
    assert names == sorted([("q_proj", "k_proj", "v_proj")] * layers + [("gate_proj", "up_proj")] * layers)
    ids = torch.randint(0, 256, (2 * B, T), generator=torch.Generator().manual_seed(2))
    mm.train()
    results = []
    for fused in (True, False):
        for layer in mm.layers.values():
            layer.group = next((g for g in groups if layer in g.members), None) if fused else None
        mm.reset_adapters(0)  # the same dropout streams for both passes
        _random_adapters(mm)
        with mm.slots(1, 3), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            nll, cnt = per_user_loss(mm(ids), ids, 2)
        params = mm.adapter_parameters()
        results.append((nll.detach(), torch.autograd.grad((nll / cnt).sum(), params)))
    if dtype == torch.float32:
        torch.testing.assert_close(results[0][0], results[1][0])
        for a, b in zip(results[0][1], results[1][1], strict=True):
            torch.testing.assert_close(a, b)
    else:  # bf16 products: equal to bf16's rounding, measured over each whole gradient
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-2, atol=1e-2)
        for a, b in zip(results[0][1], results[1][1], strict=True):
            assert (a - b).norm() <= 2e-2 * b.norm()
    assert all(a.abs().sum() > 0 for a in results[0][1])


def test_lora_down_matches_bmm_in_values_and_gradients():
    """multilora.lora_down (fp32 CPU: x @ A through transposed products, SKINNY_DOWN): the product and the gradients
    of x and A equal bmm's under autograd to fp32 rounding, with or without a gradient for x, under no_grad too;
    other dtypes go through bmm itself; the stacked model's logits and adapter gradients agree with the flag off."""
    from trustlora.model import multilora as ml

    g = torch.Generator().manual_seed(5)
    for n, m, k, r in ((3, 40, 24, 4), (1, 17, 48, 12)):
        x = torch.randn(n, m, k, generator=g)
        a = torch.randn(n, k, r, generator=g)
        up = torch.randn(n, m, r, generator=g)
        for x_grad in (True, False):
            xr, ar = x.clone().requires_grad_(x_grad), a.clone().requires_grad_()
            xs, as_ = x.clone().requires_grad_(x_grad), a.clone().requires_grad_()
            ref = torch.bmm(xr, ar)
            out = ml.lora_down(xs, as_)
            assert out.shape == ref.shape and out.grad_fn is not None
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            wrt = (xr, ar) if x_grad else (ar,)
            mine = (xs, as_) if x_grad else (as_,)
            got_all = torch.autograd.grad((out * up).sum(), mine)
            for got, want in zip(got_all, torch.autograd.grad((ref * up).sum(), wrt), strict=True):
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(ml.lora_down(x, a.requires_grad_()), torch.bmm(x, a), rtol=1e-5, atol=1e-5)
        a.requires_grad_(False)
        xb, ab = x.bfloat16(), a.bfloat16()
        assert torch.equal(ml.lora_down(xb, ab), torch.bmm(xb, ab))

    def run(flag: bool):
        ml.SKINNY_DOWN = flag
        try:
            _, mm, ids = _setup()
            logits = mm(ids)
            logits.float().pow(2).mean().backward()
            return logits.detach(), [p.grad.clone() for p in mm.parameters() if p.grad is not None]
        finally:
            ml.SKINNY_DOWN = True

    (lo_on, g_on), (lo_off, g_off) = run(True), run(False)
    torch.testing.assert_close(lo_on, lo_off, rtol=1e-5, atol=1e-5)
    assert len(g_on) == len(g_off) > 0
    for a_, b_ in zip(g_on, g_off, strict=True):
        torch.testing.assert_close(a_, b_, rtol=1e-4, atol=1e-6)
