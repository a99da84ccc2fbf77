"""One frozen base model carrying N stacked LoRA adapters, one per user slot.

Every target linear (``nn.Linear`` or GPT-2's ``Conv1D``) is wrapped by :class:`MultiLoRALinear`, which
holds ``A: [N, in, r]`` and ``B: [N, r, out]`` and computes, for a user-major stacked batch
``x: [N*B, T, in]``::

    y = base(x) + (alpha / r) * bmm(bmm(dropout(x) viewed as [N, B*T, in], A), B)

so all N users' forward/backward passes run as ONE pass through the frozen base. Each user's dropout mask
comes from its own generator (numpy's SFC64 on CPU, ``torch.Generator`` elsewhere) seeded from (model seed, global
user id), so a user's noise does not depend on N, on its slot or on the process hosting it; ``dropout_state()``
goes into checkpoints. ``mm.train()`` puts only the adapters in training mode: the frozen base (e.g. GPT-2's
attention/residual dropout) always stays in eval mode. Typical use::

    mm = MultiLoRA(base_model, n_users=6, cfg=LoraConfig())
    logits = mm(input_ids)             # input_ids: [N*B, T], user u owns rows u*B:(u+1)*B
    flat = mm.get_flat()               # [N, P] every user's adapter as one vector
    mm.set_flat(flat)                  # write adapters back
    mm.export_peft(u, "out/user_0", base_name="...")   # PEFT-loadable adapter of user u
    mm.peft_model(u, copy_of_base)                     # the same adapter as an in-memory PeftModel
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trustlora.cache import atomic_write_bytes, atomic_write_text
from trustlora.config import ConfigError
from trustlora.model import StackBase

_ATTN_HINTS = ("attn", "attention")
_MLP_HINTS = ("mlp", "feed_forward", "ffn")
_DROPOUT_STREAM = 0x64726F70  # 'drop': keeps the dropout seeds apart from other (seed, user) streams


def is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def _in_out(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    w = m.weight  # Conv1D: weight [in, out]
    return int(w.shape[0]), int(w.shape[1])


def find_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Names of the linear modules to adapt.

    'all' = every linear inside a transformer block (attention + MLP, as PEFT's 'all-linear'), never the LM head or
    embeddings; 'attention' = those whose path names an attention block; 'mlp' = the block's other linears (a path
    naming an MLP / feed-forward block, or any non-attention linear of a numbered block: OPT's ``fc1``/``fc2``,
    XGLM's); anything else is a module name suffix (``q_proj``, ``mlp.c_fc``) or a full regex when it
    starts with '^'. A block is an item of the model's layer list: a path with a numeric part (``model.layers.3``).
    """
    candidates = [
        name
        for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) or is_conv1d(m)) and name and "lm_head" not in name
    ]
    chosen: list[str] = []
    for name in candidates:
        parts = name.split(".")
        in_block = any(p.isdigit() for p in parts[:-1])
        in_attn = any(any(h in p.lower() for h in _ATTN_HINTS) for p in parts[:-1])
        in_mlp = any(any(h in p.lower() for h in _MLP_HINTS) for p in parts[:-1]) or (in_block and not in_attn)
        for t in targets:
            if t == "all" and (in_attn or in_mlp):
                ok = True
            elif t == "attention":
                ok = in_attn
            elif t == "mlp":
                ok = in_mlp
            elif t.startswith("^"):
                ok = re.fullmatch(t, name) is not None
            else:
                ok = name == t or name.endswith("." + t)
            if ok:
                chosen.append(name)
                break
    if not chosen:
        raise ConfigError(
            f"lora.targets: {targets} matches no linear layer of the model; "
            "expected 'all', 'attention', 'mlp' or module-name suffixes such as q_proj"
        )
    return chosen


class HostBits:
    """One user's dropout stream on CPU: numpy's SFC64 generator, whose 64-bit draws cost 143 us per 73,728 (one
    [512, 576] mask) against 328 us from ``torch.Generator`` (mt19937 behind a lock) on a 2-core Xeon. Same interface
    as a torch generator for checkpoints: ``get_state()`` / ``set_state()``."""

    def __init__(self, seed: int):
        self.bg = np.random.SFC64(seed)

    def draw(self, n: int) -> torch.Tensor:
        """``n`` uniform 64-bit integers as an int64 tensor (no copy)."""
        return torch.from_numpy(self.bg.random_raw(n).view(np.int64))

    def get_state(self) -> dict:
        return self.bg.state

    def set_state(self, state) -> None:
        if not isinstance(state, dict):
            raise ValueError(
                "dropout state: this checkpoint's CPU dropout streams come from torch generators (an older "
                "trustlora); resume it with that version, or start the run afresh"
            )
        self.bg.state = state


def fast_dropout(
    x: torch.Tensor, p: float, generators: list[torch.Generator | HostBits] | None = None, rescale: bool = True
) -> torch.Tensor:
    """Inverted dropout from 16-bit random integers (four from each 64-bit draw): ~4x faster than ``F.dropout``
    on CPU.

    With ``generators`` (one per user), ``x`` is split along its first axis into ``len(generators)``
    equal user-major slices and slice u's mask is drawn from ``generators[u]`` alone; without, one mask
    is drawn from the process RNG. The keep threshold is quantised to 1/65536 (p=0.1 drops 0.09999...).
    ``rescale=False`` returns ``x * mask`` without the 1/(1-p): the caller folds it into a smaller tensor.
    """
    gens: list = list(generators) if generators is not None else [None]
    k = len(gens)
    if x.numel() % k:
        raise ValueError(f"dropout input of {x.numel()} elements does not split into {k} users")
    per = x.numel() // k
    m = (per + 3) // 4  # (users, per/4): 4 masks a draw
    if x.device.type == "cpu" and all(isinstance(g, HostBits) for g in gens):
        rows = [g.draw(m) for g in gens]
        bits = rows[0].view(1, m) if k == 1 else torch.stack(rows)
    else:
        bits = torch.empty(k, m, dtype=torch.int64, device=x.device)
        for row, g in zip(bits, gens, strict=True):
            row.random_(-(2**63), None, generator=g)  # full 64-bit range: no modulo, 2.3x faster than int32 draws
    r = bits.view(torch.int16)[:, :per].reshape(x.shape)
    thr = int(round(p * 65536)) - 32768  # keep where r >= thr
    if thr > 32767:  # p within 1/65536 of 1: nothing is kept
        x = torch.zeros_like(x)
    elif thr > -32768:
        # 0/1 from clamp and subtract in int16, then the mask in x's dtype: a bool mask (r >= thr, x * keep) costs 6x
        # as much on CPU (comparisons and bool x bf16 products are not vectorised: 1.2 ms vs 0.38 ms on [512, 1536])
        keep = r.clamp_(thr - 1, thr).sub_(thr - 1).to(x.dtype)
        x = x * keep
    return x * (1.0 / (1.0 - p)) if rescale else x


SKINNY_DOWN = True
"""fp32 CPU: the adapters' ``x @ A`` (A ``[n, in, r]``, r a few columns) as ``(Aᵀ xᵀ)ᵀ`` and its A gradient as
``(gᵀ x)ᵀ`` (:func:`lora_down`). The plain ``bmm(x, A)`` and autograd's ``xᵀ @ g`` take a GEMM path that streams x at
3-8 GB/s for such narrow outputs (2-core AMD EPYC, MKL: [3, 1024, 1536] x [1536, 4] 4.7 ms, transposed 1.8 ms;
the A gradient [1536, 512] x [512, 4] 0.94 vs 0.25 ms). Other dtypes and devices keep ``bmm`` (not measured there)."""


class _LoraDown(torch.autograd.Function):
    """``bmm(x, a)`` for x ``[n, M, K]``, a ``[n, K, r]`` (r << K) through the transposed products (SKINNY_DOWN)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        at = a.transpose(1, 2).contiguous()  # [n, r, K]: a few KB
        ctx.save_for_backward(x, at)
        return torch.bmm(at, x.transpose(1, 2)).transpose(1, 2)  # [n, M, r], a transposed view

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, at = ctx.saved_tensors
        gx = torch.bmm(g, at) if ctx.needs_input_grad[0] else None  # [n, M, K]
        ga = torch.bmm(g.transpose(1, 2), x).transpose(1, 2) if ctx.needs_input_grad[1] else None  # [n, K, r]
        return gx, ga


def lora_down(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The adapters' down-projection ``bmm(x, a)`` ([n, M, K] x [n, K, r] -> [n, M, r]); equal up to the GEMM's
    summation order. fp32 on CPU it goes through :class:`_LoraDown` (see :data:`SKINNY_DOWN`)."""
    if not (SKINNY_DOWN and x.device.type == "cpu" and x.dtype == a.dtype == torch.float32):
        return torch.bmm(x, a)
    return _LoraDown.apply(x, a)  # without autograd (no grad mode, nothing requiring grad) only its forward runs


def dropout_seed(seed: int, user: int) -> int:
    """Seed of global user ``user``'s dropout generator: a function of (model seed, user id) only."""
    ss = np.random.SeedSequence([abs(int(seed)), int(seed < 0), int(user), _DROPOUT_STREAM])
    return int(ss.generate_state(1, np.uint64)[0])


class _Shared:
    """State shared by every adapted layer: on/off switch, per-user dropout generators, a one-entry cache.

    q/k/v (and gate/up) receive the very same input tensor, so they share one dropout mask: this
    saves a third of the random numbers, which cost ~20 % of a CPU training step.
    """

    def __init__(self, n_users: int, dropout: float):
        self.n_users = n_users
        self.enabled = True
        self.p = float(dropout)
        self.seeds: list[int] = []
        self.generators: list[torch.Generator | HostBits] = []  # one per slot, made for the input's device
        self.generator_device: torch.device | None = None
        self._last_in: torch.Tensor | None = None
        self._last_out: torch.Tensor | None = None
        self._cast_in: torch.Tensor | None = None
        self._cast_out: torch.Tensor | None = None
        self.active: slice | None = None  # slots in the current forward (None = all): user chunking
        self.groups: list[_InputGroup] = []  # sibling layers reading one input (q/k/v, gate/up): fused x @ A

    def active_slots(self) -> slice:
        return self.active if self.active is not None else slice(0, self.n_users)

    def reseed(self, seeds: list[int]) -> None:
        """Restart every slot's dropout stream from ``seeds`` (generators are made lazily on first use)."""
        self.seeds = list(seeds)
        self.generators = []
        self.generator_device = None

    def _generators(self, device: torch.device) -> list[torch.Generator | HostBits]:
        # re-created from the seeds if the model moved to another device since they were made; CPU: numpy's SFC64
        if not self.generators or self.generator_device != device:
            if device.type == "cpu":
                self.generators = [HostBits(s) for s in self.seeds]
            else:
                self.generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
            self.generator_device = device
        return self.generators

    def lowp(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the autocast dtype (itself outside autocast), cast once per distinct input tensor: q/k/v (and
        gate/up) read the same hidden state, which autocast would otherwise cast once per layer that reads it."""
        dev = x.device.type
        if not torch.is_autocast_enabled(dev) or x.dtype == torch.get_autocast_dtype(dev):
            return x
        if self._cast_in is not x:
            self._cast_in, self._cast_out = x, x.to(torch.get_autocast_dtype(dev))
        return self._cast_out  # type: ignore[return-value]

    def dropped(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Dropout mask applied to the adapter input ``x`` (already :meth:`lowp`), computed once per distinct input
        tensor; without the 1/(1-p) rescale, which :meth:`scale` folds into the rank-r product."""
        if self._last_in is x:
            return self._last_out  # type: ignore[return-value]
        out = x
        if training and self.p > 0:
            out = fast_dropout(out, self.p, self._generators(x.device)[self.active_slots()], rescale=False)
        self._last_in, self._last_out = x, out
        return out

    def scale(self, training: bool) -> float:
        """Inverted dropout's 1/(1-p) in training (1 otherwise)."""
        return 1.0 / (1.0 - self.p) if training and self.p > 0 else 1.0

    def clear(self) -> None:
        self._last_in = self._last_out = self._cast_in = self._cast_out = None
        for g in self.groups:
            g.clear()


SIBLINGS = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"}, {"w1", "w3"}, {"query", "key", "value"})
"""Child names of linears that read the same input in the model families that have them (LLaMA, Mistral, Qwen, Phi-3's
unfused variants, Mixtral's experts, BERT-style attention): their adapters' ``x @ A`` products are fused into one."""


class _InputGroup:
    """Adapted sibling layers that read one input tensor (q/k/v; gate/up): the first of them to see a new (dropped)
    input computes ``x @ [A_1 | A_2 | ...]`` for all, the others take their r columns of it. One rank-3r ``bmm``
    instead of three rank-r ones, and one input gradient ``g @ [A_1 | ...]^T`` (and one ``x^T @ g`` for the A
    gradients) in the backward instead of three, whose sum autograd would otherwise accumulate pass by pass. The
    result equals the separate products up to the GEMM's summation order. A new input, or a member asking twice (the
    same tensor fed through the block again), starts a new product, so a cached one is never reused across passes."""

    def __init__(self, members: list[MultiLoRALinear]):
        self.members = members
        self.src: torch.Tensor | None = None  # the dropped input the product below belongs to
        self.xa: torch.Tensor | None = None  # (n, B*T, r * len(members))
        self.served: set[int] = set()  # members that took their columns of xa (each once per product)

    def product(self, layer: MultiLoRALinear, d: torch.Tensor, xd: torch.Tensor, sl: slice) -> torch.Tensor:
        """``layer``'s ``xd @ A`` (n, B*T, r), with ``d`` the un-reshaped dropped input (the identity checked)."""
        i, r = self.members.index(layer), layer.lora_A.shape[-1]
        if self.src is not d or i in self.served:  # a new input, or a member's second call: a new product
            a = torch.cat([m.lora_A[sl] for m in self.members], dim=-1)
            self.xa = lora_down(xd, a.to(xd.dtype))  # .to is the tensor itself when the dtype matches
            self.src, self.served = d, set()
        self.served.add(i)
        out = self.xa[..., i * r : (i + 1) * r]  # type: ignore[index]
        if len(self.served) == len(self.members):  # every member served: hold neither the input nor the product
            self.clear()  # (an evaluation pass would otherwise keep every layer's input alive to the forward's end)
        return out

    def clear(self) -> None:
        self.src = self.xa = None
        self.served = set()


class MultiLoRALinear(nn.Module):
    """A frozen linear plus N user-stacked low-rank adapters."""

    def __init__(self, base: nn.Module, shared: _Shared, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.shared = shared
        n = shared.n_users
        d_in, d_out = _in_out(base)
        dev, dt = base.weight.device, torch.float32
        self.lora_A = nn.Parameter(torch.zeros(n, d_in, r, device=dev, dtype=dt))  # (N, in, r)
        self.lora_B = nn.Parameter(torch.zeros(n, r, d_out, device=dev, dtype=dt))  # (N, r, out)
        self.scaling = alpha / r
        self.fan_in_fan_out = is_conv1d(base)
        self.lowp: tuple[torch.Tensor, torch.Tensor | None] | None = None  # frozen weight pre-cast (see keep_lowp)
        self.group: _InputGroup | None = None  # siblings reading the same input (set by MultiLoRA)

    @torch.no_grad()
    def keep_lowp(self, dtype: torch.dtype, drop_full: bool = False) -> int:
        """Keep a ``dtype`` copy of the frozen base weight ([out, in]) and bias for autocast to ``dtype``: autocast
        casts a weight that does not require grad again on every forward; with the copy it is cast once.
        ``drop_full=False``: the fp32 weight stays, so forwards outside autocast are unchanged. ``drop_full=True``
        (runs whose every forward is autocast): the frozen weight itself becomes the ``dtype`` tensor, saving its
        fp32 bytes; a forward outside autocast then computes with it upcast. Returns the elements copied."""
        w, b = self.base.weight, getattr(self.base, "bias", None)
        w = w.T if self.fan_in_fan_out else w  # GPT-2's Conv1D stores [in, out]
        self.lowp = (w.detach().to(dtype).contiguous(), None if b is None else b.detach().to(dtype))
        if drop_full and not self.fan_in_fan_out:
            self.base.weight.data = self.lowp[0]  # one tensor, no fp32 copy
            if b is not None:
                self.base.bias.data = self.lowp[1]
        return self.lowp[0].numel()

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        if (
            self.lowp is not None
            and torch.is_autocast_enabled(dev)
            and torch.get_autocast_dtype(dev) == self.lowp[0].dtype
        ):
            return F.linear(x, *self.lowp)  # identical to autocasting the fp32 weight
        w = self.base.weight
        if w.dtype != x.dtype and not torch.is_autocast_enabled(dev) and not self.fan_in_fan_out:
            b = self.base.bias
            return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))  # weight kept only in low precision
        return self.base(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xl = self.shared.lowp(x)
        if not self.shared.enabled:
            return self._base(xl)
        sl = self.shared.active_slots()
        a, b = self.lora_A[sl], self.lora_B[sl]  # the slots of this forward (all, or a chunk of users)
        n = a.shape[0]
        shape = x.shape
        if shape[0] % n:
            raise ValueError(f"batch of {shape[0]} rows is not user-major over {n} users")
        # the base output is computed as [n, B*T, out] so that the in-place add below acts on the linear's own
        # output, not on a reshaped view of it: autograd records an in-place op on a view as CopySlices, whose
        # backward clones the gradient twice (fp32 step +4 %)
        y3 = self._base(xl.reshape(n, -1, shape[-1]))
        d = self.shared.dropped(xl, self.training)
        xd = d.reshape(n, -1, shape[-1])  # (n, B*T, in)
        b = b.to(xd.dtype)
        if self.group is not None:
            xa = self.group.product(self, d, xd, sl)  # (n, B*T, r), fused with the siblings'
        else:
            xa = lora_down(xd, a.to(xd.dtype))  # (n, B*T, r)
        scale = self.scaling * self.shared.scale(self.training)
        out_shape = (*shape[:-1], y3.shape[-1])
        if y3.dtype == xa.dtype:  # y += scale * (xa @ b), in place: the base output is not saved for any backward
            return y3.baddbmm_(xa, b, alpha=scale).reshape(out_shape)
        return (y3 + (torch.bmm(xa, b) * scale).to(y3.dtype)).reshape(out_shape)


def input_groups(layers: dict[str, MultiLoRALinear]) -> list[_InputGroup]:
    """Groups of >= 2 adapted layers under one parent whose child names form (part of) a :data:`SIBLINGS` set and
    whose inputs have one width; each member's ``group`` is set."""
    by_key: dict[tuple[str, int, int], list[MultiLoRALinear]] = {}
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        for k, names in enumerate(SIBLINGS):
            if child in names:
                by_key.setdefault((parent, k, layer.lora_A.shape[1]), []).append(layer)
    groups = []
    for members in by_key.values():
        if len(members) > 1:
            g = _InputGroup(members)
            for m in members:
                m.group = g
            groups.append(g)
    return groups


def plain_lm_head(model: nn.Module) -> nn.Linear | None:
    """``model``'s output layer if its logits are exactly ``head(model.base_model(...).last_hidden_state)``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    post = any(getattr(cfg, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale"))
    if type(head) is not nn.Linear or post or getattr(model, "base_model", model) is model:
        return None
    return head


class MultiLoRA(StackBase):
    """Wraps a frozen causal LM so that it carries ``n_users`` stacked adapters."""

    chunked_head = True
    """Compute loss and top-k through :attr:`lm_head` in chunks (False: from full logits; benchmarks compare both)."""

    def _build(self) -> None:
        model, cfg = self.model, self.cfg
        self._shared = _Shared(self.n_users, cfg.dropout)
        self.target_names = find_targets(model, cfg.targets)
        self.layers: dict[str, MultiLoRALinear] = {}
        for name in self.target_names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            wrapped = MultiLoRALinear(getattr(parent, child), self._shared, cfg.r, cfg.alpha)
            setattr(parent, child, wrapped)
            self.layers[name] = wrapped
        self._shared.groups = input_groups(self.layers)

    @property
    def device(self) -> torch.device:
        return next(iter(self.layers.values())).lora_A.device

    # ---- parameters ---------------------------------------------------------------------------
    def adapter_parameters(self) -> list[nn.Parameter]:
        """A then B of every adapted layer, in a fixed order (the flat layout)."""
        out: list[nn.Parameter] = []
        for layer in self.layers.values():
            out += [layer.lora_A, layer.lora_B]
        return out

    def num_adapter_params(self) -> int:
        """Trainable parameters per user."""
        return sum(p[0].numel() for p in self.adapter_parameters())

    @torch.no_grad()
    def reset_adapters(self, seed: int) -> None:
        """Fresh adapters and dropout streams for model seed ``seed``; B = 0, same A for all users if same_init.

        ``lora.init_bound='kaiming'``: PEFT's kaiming-uniform(a=sqrt 5) = U(+-1/sqrt(in));
        ``'inv_sqrt_r'``: U(+-1/sqrt(r)), what the official code's kaiming init of an [in, r] A gives.
        With different inits, user u's A depends only on (seed, u), wherever the user is hosted; so does
        its dropout generator (:func:`dropout_seed`).
        """
        self._shared.reseed([dropout_seed(seed, u) for u in self.user_ids])
        g = torch.Generator().manual_seed(seed)
        count = 1 if self.cfg.same_init else self.n_total
        for layer in self.layers.values():
            n, d_in, r = layer.lora_A.shape
            bound = 1.0 / math.sqrt(r if self.cfg.init_bound == "inv_sqrt_r" else d_in)
            a = (torch.rand(count, d_in, r, generator=g) * 2 - 1) * bound
            a = a.expand(n, d_in, r) if self.cfg.same_init else a[self.user_ids]
            layer.lora_A.copy_(a.to(layer.lora_A.device))
            layer.lora_B.zero_()

    @torch.no_grad()
    def get_flat(self) -> torch.Tensor:
        """Every user's adapter as one fp32 vector: ``[N, P]``."""
        return torch.cat([p.detach().reshape(self.n_users, -1) for p in self.adapter_parameters()], dim=1).float()

    @torch.no_grad()
    def set_flat(self, flat: torch.Tensor) -> None:
        """Inverse of :meth:`get_flat`."""
        params = self.adapter_parameters()
        total = sum(p[0].numel() for p in params)
        if tuple(flat.shape) != (self.n_users, total):
            raise ValueError(f"flat adapters must be [{self.n_users}, {total}], got {list(flat.shape)}")
        off = 0
        for p in params:
            k = p[0].numel()
            p.copy_(flat[:, off : off + k].reshape(p.shape).to(p.device))
            off += k

    def adapters_enabled(self, on: bool) -> None:
        """Switch every adapter off (base model only) or on."""
        self._shared.enabled = on

    def train(self, mode: bool = True) -> MultiLoRA:
        """Training mode for the adapters only (their dropout); the frozen base model stays in eval mode."""
        super().train(mode)
        self.model.eval()  # the base's own dropout (GPT-2 attn/resid) is part of the frozen model
        for layer in self.layers.values():
            layer.training = mode  # not layer.train(): that would switch its frozen base linear too
        return self

    # ---- dropout generators (checkpointed) ----------------------------------------------------
    def dropout_state(self) -> dict:
        """Every slot's dropout generator state (for checkpoints); ``states`` is None before first use."""
        gens = self._shared.generators
        return {
            "seeds": list(self._shared.seeds),
            "device": str(self._shared.generator_device) if gens else None,
            "states": [g.get_state() for g in gens] if gens else None,
        }

    def load_dropout_state(self, state: dict) -> None:
        """Inverse of :meth:`dropout_state`: the dropout streams continue exactly where they were saved."""
        if len(state["seeds"]) != self.n_users:
            raise ValueError(f"dropout state holds {len(state['seeds'])} users, this model hosts {self.n_users}")
        self._shared.reseed(state["seeds"])
        if state["states"] is not None:
            gens = self._shared._generators(torch.device(state["device"]))
            for g, st in zip(gens, state["states"], strict=True):
                g.set_state(st)

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids: [N*B, T]`` user-major -> logits ``[N*B, T, V]``."""
        self.positions += input_ids.numel()
        try:
            return self.model(input_ids=input_ids, use_cache=False).logits
        finally:
            self._shared.clear()

    @contextlib.contextmanager
    def slots(self, start: int, stop: int):
        """Forwards inside run only slots ``start:stop`` (their rows of the user-major batch): user chunking. Each
        slot keeps its own dropout stream, so a chunked pass draws exactly the masks of one stacked pass."""
        prev = self._shared.active
        self._shared.active = slice(start, stop)
        try:
            yield
        finally:
            self._shared.active = prev

    @property
    def lm_head(self) -> nn.Linear | None:
        """The frozen output projection when logits are exactly ``lm_head(hidden(ids))`` (then the loss is computed
        in chunks, :mod:`trustlora.loss`); None for models that post-process logits (soft-capping, logit scale) or
        whose head is not a plain linear layer (those use :meth:`forward`)."""
        return plain_lm_head(self.model) if self.chunked_head else None

    def keep_lowp_weights(self, dtype: torch.dtype = torch.bfloat16, drop_full: bool = False) -> int:
        """bf16 runs: every adapted layer keeps a pre-cast copy of its frozen weight
        (:meth:`MultiLoRALinear.keep_lowp`); bit-identical results under autocast, no per-forward weight casts.
        ``drop_full``: the bf16 tensor replaces the fp32 weight (SmolLM2: 424 MB less). Returns the elements copied
        (2 bytes each)."""
        return sum(layer.keep_lowp(dtype, drop_full) for layer in self.layers.values())

    @torch.no_grad()
    def head_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """:attr:`lm_head`'s frozen weight in ``dtype``, cast once and kept (autocast would cast it on every chunk:
        it caches casts only of weights that require grad)."""
        w = self.lm_head.weight
        if w.dtype == dtype:
            return w
        cache = self.__dict__.setdefault("_head_cache", {})
        key = (dtype, w.data_ptr(), w.device)
        if key not in cache:
            cache.clear()
            cache[key] = w.detach().to(dtype)
        return cache[key]

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids: [N*B, T]`` -> the decoder's last hidden states ``[N*B, T, d]`` (final norm applied), i.e.
        what :attr:`lm_head` maps to logits."""
        self.positions += input_ids.numel()
        try:
            return self.model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
        finally:
            self._shared.clear()

    # ---- export -------------------------------------------------------------------------------
    def peft_state_dict(self, user: int) -> dict[str, torch.Tensor]:
        """User ``user``'s adapter under PEFT's key names (lora_A.weight: [r, in], lora_B.weight: [out, r])."""
        sd = {}
        for name, layer in self.layers.items():
            sd[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[user].detach().T.contiguous().float()
            sd[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[user].detach().T.contiguous().float()
        return sd

    def peft_config(self, base_name: str = "") -> dict:
        """The adapters' PEFT ``adapter_config.json`` (the same for every user)."""
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_name,
            "r": self.cfg.r,
            "lora_alpha": self.cfg.alpha,
            "lora_dropout": self.cfg.dropout,
            "target_modules": "^(" + "|".join(re.escape(n) for n in self.target_names) + ")$",
            "fan_in_fan_out": any(layer.fan_in_fan_out for layer in self.layers.values()),
            "bias": "none",
            "inference_mode": True,
            "init_lora_weights": True,
            "use_rslora": False,
            "use_dora": False,
            "modules_to_save": None,
        }

    def peft_model(self, user: int, base: nn.Module, trainable: bool = False):
        """User ``user``'s adapter as an in-memory PEFT model on ``base`` (a Hugging Face model of the same
        architecture and weights, modified in place: pass a copy): what ``PeftModel.from_pretrained`` gives for
        :meth:`export_peft`'s folder. ``trainable``: adapter weights require grad (PEFT's ``inference_mode=False``)."""
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model, set_peft_model_state_dict

        cfg = {k: v for k, v in self.peft_config().items() if k not in ("peft_type", "base_model_name_or_path")}
        pm = get_peft_model(base, PeftLoraConfig(**(cfg | {"inference_mode": not trainable})))
        missing = set_peft_model_state_dict(pm, self.peft_state_dict(user))
        if missing.unexpected_keys:
            raise RuntimeError(f"PEFT did not take adapter keys {missing.unexpected_keys[:3]}")
        return pm

    def export_peft(self, user: int, out_dir: str | Path, base_name: str) -> Path:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` loadable by ``PeftModel.from_pretrained``."""
        from safetensors.torch import save

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "adapter_model.safetensors", save(self.peft_state_dict(user)))
        atomic_write_text(out / "adapter_config.json", json.dumps(self.peft_config(base_name), indent=2) + "\n")
        return out

    export = export_peft
