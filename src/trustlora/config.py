"""Typed configuration: the single source of truth for every run.

A config is a tree of dataclasses. It is built from defaults, then an optional YAML file, then
dotted ``key=value`` overrides (``train.steps=20``)::

    cfg = load_config("configs/default.yaml", ["strategy=fedavg", "data.users=4"])

Every field is validated in ``__post_init__``/``validate``; a bad value raises :class:`ConfigError`
with one line naming the field and what is expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class RunError(RuntimeError):
    """A run stopped by something outside the config (a peer process died or stopped answering): one line naming
    what happened and how to resume."""


class UserError(ValueError):
    """Anything a user can cause and fix (config, data, model, a missing run directory): the CLI prints its one line
    and exits 2, no traceback. Every such error of the package derives from it."""


class ConfigError(UserError):
    """A user error in the configuration: one line naming the field and what is expected."""


def expect(cond: bool, name: str, expected: str, value: Any) -> None:
    """Fail with one line naming the field, what it expects and what it got (:class:`ConfigError`) unless ``cond``;
    for every ``validate()``, a strategy's ``Options`` included."""
    if not cond:
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")


@dataclass
class LoraConfig:
    """LoRA adapter shape, shared by every user."""

    r: int = 4
    """Rank of each adapter."""
    alpha: float = 32.0
    """Scaling numerator: the update is (alpha / r) * x A B."""
    dropout: float = 0.1
    """Dropout on the adapter input during training."""
    targets: list[str] = field(default_factory=lambda: ["all"])
    """Which linear layers get adapters: 'all' (attention + MLP), 'attention', 'mlp', or module-name suffixes;
    ['full'] = no adapters, every user fine-tunes all weights (placement ablation; memory ~16 B/param/user)."""
    same_init: bool = True
    """Give every user the same initial A (so averaging is meaningful)."""
    init_bound: str = "kaiming"
    """Initial A ~ U(-b, b): 'kaiming' (PEFT's, b = 1/sqrt(in_features)) or 'inv_sqrt_r' (b = 1/sqrt(r),
    the official code's); B starts at 0 either way."""

    def validate(self) -> None:
        expect(isinstance(self.r, int) and self.r >= 1, "lora.r", "an integer >= 1", self.r)
        expect(self.alpha > 0, "lora.alpha", "a number > 0", self.alpha)
        expect(0 <= self.dropout < 1, "lora.dropout", "a number in [0, 1)", self.dropout)
        expect(len(self.targets) > 0, "lora.targets", "a non-empty list", self.targets)
        expect(
            "full" not in self.targets or list(self.targets) == ["full"],
            "lora.targets",
            "'full' alone (full fine-tuning) or adapter targets without 'full'",
            self.targets,
        )
        expect(
            self.init_bound in ("kaiming", "inv_sqrt_r"),
            "lora.init_bound",
            "'kaiming' or 'inv_sqrt_r'",
            self.init_bound,
        )


@dataclass
class DataConfig:
    """Where the text comes from and how it is split between users."""

    source: str = "parlspeech"
    """Registered source name (parlspeech, ...) or 'folder', 'csv', 'jsonl' for own data."""
    path: str | None = None
    """File or folder for own-data sources (folder/csv/jsonl)."""
    text_column: str = "text"
    """Column/key holding the text in csv/jsonl files."""
    category_column: str = "category"
    """Column/key holding the category in csv/jsonl files."""
    categories: list[str] | None = None
    """Categories to use, in order (default: every category of the source, sorted)."""
    users: int = 6
    """Number of users N."""
    mixture: Any = "high"
    """'high' (one category per user), 'low' (3/4 own + 1/4 next category) or an explicit N x C matrix."""
    seed: int = 0
    """Seed of the document shuffle and split (separate from the model seed)."""
    train_tokens: int = 40960
    """Training tokens per user."""
    val_tokens: int = 2048
    """Validation tokens per user (strategy 'validation' trusts on this split)."""
    test_tokens: int = 4096
    """Test tokens per user (reported perplexity)."""
    reference_tokens: int = 1024
    """Tokens of the shared public reference set X_S, drawn equally from every category."""

    def validate(self) -> None:
        expect(isinstance(self.source, str) and self.source != "", "data.source", "a source name", self.source)
        if self.source in ("folder", "csv", "jsonl"):
            expect(bool(self.path), "data.path", f"a path for data.source={self.source}", self.path)
        expect(isinstance(self.users, int) and self.users >= 1, "data.users", "an integer >= 1", self.users)
        for name in ("train_tokens", "val_tokens", "test_tokens", "reference_tokens"):
            v = getattr(self, name)
            expect(isinstance(v, int) and v >= 1, f"data.{name}", "an integer >= 1", v)
        m = self.mixture
        if isinstance(m, str):
            expect(m in ("high", "low"), "data.mixture", "'high', 'low' or a users x categories matrix", m)
        else:
            ok = isinstance(m, list) and len(m) > 0 and all(isinstance(r, list) and r for r in m)
            expect(ok, "data.mixture", "'high', 'low' or a list of rows (users x categories)", m)
            widths = {len(r) for r in m}
            expect(len(widths) == 1, "data.mixture", "rows of equal length", m)
            expect(len(m) == self.users, "data.mixture", f"{self.users} rows (one per user, data.users)", len(m))
            for row in m:
                expect(
                    all(isinstance(x, (int, float)) and x >= 0 for x in row),
                    "data.mixture",
                    "non-negative numbers",
                    row,
                )
                expect(sum(row) > 0, "data.mixture", "rows with a positive sum", row)


@dataclass
class TrainConfig:
    """Local optimisation and the round schedule (Algorithm 1)."""

    steps: int = 20
    """Total local optimizer steps per user (warm-up included)."""
    warmup: int = 5
    """Local steps before the first exchange."""
    period: int = 5
    """Local steps between exchanges (K)."""
    batch_size: int = 4
    """Sequences per user per micro-batch."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (effective batch = batch_size * grad_accum)."""
    seq_len: int = 128
    """Tokens per sequence."""
    lr: float = 2e-3
    """AdamW learning rate (constant, or the peak of schedule 'onecycle')."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW (beta1, beta2)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    schedule: str = "constant"
    """Learning-rate schedule over train.steps: 'constant', or 'onecycle' = torch's OneCycleLR set as in the
    official code: cosine rise from lr/100 to lr over the first train.lr_warmup of the steps, then cosine
    anneal to lr/5 at train.steps (div_factor 100, final_div_factor 0.05, betas never cycled)."""
    lr_warmup: float = 0.02
    """Schedule 'onecycle': fraction of train.steps spent rising to the peak lr (OneCycleLR's pct_start; the
    official code's warmup_percent). Unrelated to train.warmup (local steps before the first exchange)."""
    grad_clip: float = 1.0
    """Per-user gradient-norm clip (0 disables)."""
    precision: str = "auto"
    """'bf16' (autocast), 'fp32', or 'auto': bf16 where the hardware runs it natively (CUDA with bf16,
    CPUs with AVX512-BF16/AMX), fp32 elsewhere (emulated bf16 is far slower than fp32)."""
    user_chunk: int | str = "auto"
    """Users per forward/backward (training, evaluation and trust passes): an integer, or 'auto' = as many as keep
    ~1.5 GiB of activations for the backward (estimated from the model's shape: ~900 positions for SmolLM2, i.e.
    1 user at batch 4 x 128, 7 at batch 1 x 128; 8x that for evaluation passes), so memory is bounded by the chunk,
    not by N. Results equal one stacked pass over all users (each user keeps its own dropout stream)."""

    def validate(self) -> None:
        expect(
            self.user_chunk == "auto" or (isinstance(self.user_chunk, int) and self.user_chunk >= 1),
            "train.user_chunk",
            "an integer >= 1 or 'auto'",
            self.user_chunk,
        )
        for name in ("steps", "period", "batch_size", "grad_accum", "seq_len"):
            v = getattr(self, name)
            expect(isinstance(v, int) and v >= 1, f"train.{name}", "an integer >= 1", v)
        expect(
            isinstance(self.warmup, int) and 0 <= self.warmup <= self.steps,
            "train.warmup",
            f"an integer in [0, train.steps={self.steps}]",
            self.warmup,
        )
        expect(self.lr > 0, "train.lr", "a number > 0", self.lr)
        expect(self.weight_decay >= 0, "train.weight_decay", "a number >= 0", self.weight_decay)
        expect(
            isinstance(self.betas, (list, tuple))
            and len(self.betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas),
            "train.betas",
            "two numbers in [0, 1) (beta1, beta2)",
            self.betas,
        )
        expect(self.schedule in ("constant", "onecycle"), "train.schedule", "'constant' or 'onecycle'", self.schedule)
        expect(0 < self.lr_warmup < 1, "train.lr_warmup", "a fraction in (0, 1)", self.lr_warmup)
        expect(self.grad_clip >= 0, "train.grad_clip", "a number >= 0", self.grad_clip)
        expect(
            self.precision in ("auto", "bf16", "fp32"), "train.precision", "'auto', 'bf16' or 'fp32'", self.precision
        )


@dataclass(eq=False)
class TrustConfig:
    """How trust scores become the row-stochastic W and how W is applied: the options every strategy shares.

    A strategy's own options live in its module, as its ``Options`` dataclass (``trust/predictions.py``:
    ``topk``, ``logit_space``; ``trust/validation.py``: ``val_tokens``, ...). They are set and read here under their
    flat names, as ever (``trust.topk=5``, ``cfg.trust.topk``), or per strategy (``trust.predictions.topk=5``,
    ``cfg.trust.options('predictions')``); :func:`to_dict` writes them flat into the ``trust`` section. The names
    come from the strategy registry (:func:`trustlora.trust.option_types`), so a plugin strategy's options work the
    same way."""

    temperature: float | str = "auto"
    """Softmax temperature tau, or 'auto': the calibration's default (scale 'relative', where tau is a fraction of a
    user's own movement: 0.1 for weights and predictions, 0.3 for validation, each chosen on val ppl; 1.0 for the
    paper-style scales, as in the paper)."""
    normaliser: str = "softmax"
    """'softmax', 'topk' (softmax over the top_peers best) or 'threshold'."""
    top_peers: int = 2
    """For normaliser 'topk': how many users (self included) keep weight."""
    threshold: float = 0.5
    """For normaliser 'threshold': minimum normalised score (0..1, 1 = best in row) to keep weight."""
    mode: str = "update"
    """'update' (theta_i <- theta_i_before + sum_j w_ij delta_j) or 'weight' (theta_i <- sum_j w_ij theta_j)."""
    topology: str = "full"
    """Who can receive from whom: 'full' (everyone) or 'ring' (user i hears i-1 and i+1); W is renormalised
    over the neighbours."""
    apply: bool = True
    """Aggregate with W (true) or only compute and record W while every user trains alone (false, paper A.3)."""
    scale: str = "auto"
    """How scores become trust (src/trustlora/trust/normalise.py). 'relative' (what 'auto' means for weights,
    validation and predictions): each peer's distance beyond the closest peer's, in units of how far the user's
    own training moved it — independent of N, of the corpus and of the number of steps. Paper-style options
    kept for reproduction: 'none' = the paper's formulas (softmax(cos/tau), softmax(-CE/tau), softmax(-L1/tau)),
    'row_l1' = the official code's rescaling (S / sum_j S_ij * 10), 'row_mean' (S / mean_j S_ij)."""

    def options(self, strategy: str) -> Any:
        """Strategy ``strategy``'s options (an instance of its ``Options`` dataclass, defaults until set)."""
        from trustlora.trust import options_class

        opts = self.__dict__.setdefault("_options", {})
        if strategy not in opts:
            cls = options_class(strategy)
            if cls is None:
                raise ConfigError(f"trust.{strategy}: strategy '{strategy}' has no options")
            opts[strategy] = cls()
        return opts[strategy]

    def option_values(self) -> dict[str, Any]:
        """Every registered strategy's options, flat (name -> value), in registry order."""
        from trustlora.trust import option_types

        return {name: getattr(self.options(owner), name) for name, (owner, _) in option_types().items()}

    def extra_types(self) -> dict[str, Any]:
        """Keys beyond the dataclass fields that :func:`_apply` accepts: flat option names (-> their types) and
        strategy names with options (-> their ``Options`` class, a nested mapping)."""
        from trustlora.trust import names, option_types, options_class

        out: dict[str, Any] = {name: tp for name, (_, tp) in option_types().items()}
        out.update({s: cls for s in names() if (cls := options_class(s)) is not None})
        return out

    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails: a strategy's option
        if name.startswith("_"):
            raise AttributeError(name)
        from trustlora.trust import option_types, options_class

        owners = option_types()
        if name in owners:
            return getattr(self.options(owners[name][0]), name)
        try:
            has_options = options_class(name) is not None
        except ConfigError:
            has_options = False
        if has_options:
            return self.options(name)
        raise AttributeError(f"'TrustConfig' has no option '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name in TRUST_FIELDS:
            object.__setattr__(self, name, value)
            return
        from trustlora.trust import option_types

        owners = option_types()
        if name not in owners:
            raise AttributeError(f"'TrustConfig' has no option '{name}'")
        setattr(self.options(owners[name][0]), name, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrustConfig):
            return NotImplemented
        mine = {f: getattr(self, f) for f in TRUST_FIELDS} | self.option_values()
        return mine == ({f: getattr(other, f) for f in TRUST_FIELDS} | other.option_values())

    def __repr__(self) -> str:
        items = {f: getattr(self, f) for f in TRUST_FIELDS} | self.option_values()
        return "TrustConfig(" + ", ".join(f"{k}={v!r}" for k, v in items.items()) + ")"

    def validate(self) -> None:
        expect(
            self.temperature == "auto" or (isinstance(self.temperature, float) and self.temperature > 0),
            "trust.temperature",
            "a number > 0 or 'auto'",
            self.temperature,
        )
        expect(
            self.normaliser in ("softmax", "topk", "threshold"),
            "trust.normaliser",
            "'softmax', 'topk' or 'threshold'",
            self.normaliser,
        )
        expect(
            isinstance(self.top_peers, int) and self.top_peers >= 1,
            "trust.top_peers",
            "an integer >= 1",
            self.top_peers,
        )
        expect(0 <= self.threshold <= 1, "trust.threshold", "a number in [0, 1]", self.threshold)
        expect(self.mode in ("update", "weight"), "trust.mode", "'update' or 'weight'", self.mode)
        expect(self.topology in ("full", "ring"), "trust.topology", "'full' or 'ring'", self.topology)
        expect(
            self.scale in ("auto", "relative", "none", "row_l1", "row_mean"),
            "trust.scale",
            "auto, relative, none, row_l1 or row_mean",
            self.scale,
        )
        from trustlora.trust import names, options_class

        for s in names():
            if options_class(s) is not None:
                self.options(s).validate()


TRUST_FIELDS = tuple(f.name for f in dataclasses.fields(TrustConfig))
_trust_init = TrustConfig.__init__


def _trust_config_init(self: TrustConfig, **kwargs: Any) -> None:
    """The dataclass' __init__ for the shared fields; strategies' options (flat names) set after it."""
    _trust_init(self, **{k: kwargs.pop(k) for k in list(kwargs) if k in TRUST_FIELDS})
    for key, value in kwargs.items():
        try:
            setattr(self, key, value)
        except AttributeError:
            raise TypeError(f"TrustConfig() got an unexpected keyword argument '{key}'") from None


TrustConfig.__init__ = _trust_config_init  # type: ignore[method-assign]


@dataclass
class FaultsConfig:
    """Faulty peers: receiving-side message checks and (simulation) users missing rounds."""

    max_norm_ratio: float = 5.0
    """Reject a peer's update whose norm exceeds this multiple of the receiver's own update norm (0 = no bound).
    Honest updates of users training the same number of AdamW steps have norms within ~2x of each other."""
    dropout_prob: float = 0.0
    """Simulation: probability that a user misses a round (seeded by seed and round): it neither sends nor
    aggregates, keeps training locally and rejoins; present users aggregate over the peers present."""
    update_check: str = "align"
    """Update mode, trust strategies (weights, validation, predictions): a second look at each peer's update before
    mixing it. 'align': drop peer j's update when it is not clearly aligned with the receiver's own
    (cosine(delta_j, delta_i) <= 4 / sqrt(P), P = adapter parameters: a flipped, random or empty update); no extra
    compute. 'loss': score (the receiver's model before the round
    + delta_j) on its first ``trust.val_tokens`` val tokens for the peers holding the row's weight (all but the
    lightest 5 %) and drop updates that do not lower its val loss (one forward of those candidates; measured to drop
    most honest updates after the first rounds, see README 'Faulty and lying peers'). 'none': no check. Dropped pairs
    are recorded as ``harmful`` in the trust record and the row renormalised. Default 'align': it dropped no honest
    update in clean runs on LibreOffice (validation, predictions) and BBC News (validation): identical numbers."""

    duplicates: str = "drop"
    """Where ``update_check`` applies: 'drop' (default) ignores, for the round, every sender whose update is a copy
    (cosine >= 0.99, src/trustlora/guard.py) of an update received the round before (a replay: its sender alone) or
    of another sender's this round (the whole group: a receiver cannot tell the original from its copies); recorded
    as ``duplicates`` (and the pairs as ``harmful``) in the trust record. 'keep': no such check."""

    def validate(self) -> None:
        expect(self.duplicates in ("drop", "keep"), "faults.duplicates", "'drop' or 'keep'", self.duplicates)
        expect(self.max_norm_ratio >= 0, "faults.max_norm_ratio", "a number >= 0 (0 = no bound)", self.max_norm_ratio)
        expect(0 <= self.dropout_prob < 1, "faults.dropout_prob", "a probability in [0, 1)", self.dropout_prob)
        expect(
            self.update_check in ("none", "align", "loss"),
            "faults.update_check",
            "'none', 'align' or 'loss'",
            self.update_check,
        )


@dataclass
class AttackConfig:
    """Simulated attackers (src/trustlora/attacks.py): which users lie and how."""

    users: list[int] = field(default_factory=list)
    """Global ids of the attacking users (empty = no attack)."""
    kind: str = "none"
    """'none', or one of: noise, scale, sign_flip, zero, copy, nan, garbage_data, fake_topk; or 'absent' (the
    reference: the listed users never take part)."""

    def validate(self, n_users: int) -> None:
        from trustlora.attacks import KINDS, REFERENCE_KINDS

        kinds = KINDS + REFERENCE_KINDS
        expect(
            self.kind == "none" or self.kind in kinds, "attack.kind", "'none' or one of " + ", ".join(kinds), self.kind
        )
        for u in self.users:
            expect(isinstance(u, int) and 0 <= u < n_users, "attack.users", f"user ids in [0, {n_users})", u)
        expect(len(set(self.users)) < n_users, "attack.users", "fewer attackers than users", self.users)
        expect(
            not self.users or self.kind != "none", "attack.kind", "an attack kind when attack.users is set", self.kind
        )


@dataclass
class CommConfig:
    """The multi-process runtime's transport."""

    timeout: float = 300.0
    """Seconds a collective may wait for a peer process before the run stops with an error naming the round to
    resume from (torch.distributed's process-group timeout)."""

    def validate(self) -> None:
        expect(self.timeout > 0, "comm.timeout", "a number of seconds > 0", self.timeout)


@dataclass
class LogConfig:
    """Extra sinks for the run's records (metrics.jsonl is always written)."""

    tensorboard: bool = False
    """Also write TensorBoard event files to ``<out>/tensorboard``: per-user ppl (val/test, per round) and training
    loss, and W per round (image and self-weights). Needs the ``tensorboard`` package
    (``pip install -e '.[tensorboard]'``); view with ``tensorboard --logdir <out>/tensorboard``."""

    def validate(self) -> None:
        expect(isinstance(self.tensorboard, bool), "log.tensorboard", "true or false", self.tensorboard)


@dataclass
class EvalConfig:
    """Held-out evaluation."""

    batch_size: int = 8
    """Sequences per user per evaluation forward."""
    during_tokens: int = 512
    """Test/val tokens per user evaluated after each round (0 = full split); the final evaluation is always full."""
    cache_base: bool = True
    """Reuse the frozen base model's evaluation from the cache ($TRUSTLORA_CACHE/base_eval) when the model weights,
    the users' val/test tokens, seq_len, precision, device and the eval settings are identical (simulation runs);
    likewise the trust strategies' starting points (the base model's top-k on X_S, its CE on the trust val tokens),
    keyed also by X_S and the trust settings."""


@dataclass
class Config:
    """One experiment: model, data, adapters, schedule, trust strategy."""

    model: str = "smollm2"
    """'smollm2' (embedded, offline), 'tiny-random' (tests), a Hugging Face id or a local path."""
    strategy: str = "predictions"
    """Trust strategy: local, fedavg, oracle, weights, validation, predictions."""
    seed: int = 0
    """Model seed (adapter init, dropout, batch order)."""
    out: str | None = None
    """Run directory (default runs/<time>-<strategy>; for compare, the comparison directory)."""
    strategies: list[str] = field(default_factory=list)
    """For ``trustlora compare``: strategies to run (default: all six)."""
    seeds: list[int] = field(default_factory=list)
    """For ``trustlora compare``: model seeds to run (default: [seed])."""
    runtime: str = "simulation"
    """'simulation' (all users in one process) or 'distributed' (torch.distributed, a block of users per process)."""
    world_size: int = 2
    """Processes started by runtime=distributed (ignored under torchrun, which sets the world itself)."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        expect(isinstance(self.model, str) and self.model != "", "model", "a model name or path", self.model)
        expect(isinstance(self.seed, int), "seed", "an integer", self.seed)
        expect(self.runtime in ("simulation", "distributed"), "runtime", "'simulation' or 'distributed'", self.runtime)
        expect(
            isinstance(self.world_size, int) and 1 <= self.world_size <= self.data.users,
            "world_size",
            f"an integer in [1, data.users={self.data.users}]",
            self.world_size,
        )
        expect(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            "'auto', 'cpu', 'cuda' or 'cuda:N'",
            self.device,
        )
        from trustlora.trust import names as strategy_names

        expect(self.strategy in strategy_names(), "strategy", "one of " + ", ".join(strategy_names()), self.strategy)
        for s in self.strategies:
            expect(s in strategy_names(), "strategies", "names from " + ", ".join(strategy_names()), s)
        self.lora.validate()
        self.data.validate()
        self.train.validate()
        self.trust.validate()
        self.faults.validate()
        self.attack.validate(self.data.users)
        self.comm.validate()
        self.log.validate()
        expect(self.eval.batch_size >= 1, "eval.batch_size", "an integer >= 1", self.eval.batch_size)
        expect(self.eval.during_tokens >= 0, "eval.during_tokens", "an integer >= 0", self.eval.during_tokens)


# --------------------------------------------------------------------------------------------------
# building a config from YAML + overrides


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Coerce a YAML-parsed value to a field type, or raise ConfigError."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: unexpected value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # 'a,b' or '0,1' from the command line: items parsed as YAML scalars
            value = [_scalar(v.strip()) for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # 'attack.users=1' on the command line: a one-item list
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_coerce(v, item, name) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 (PyYAML) reads '5e-5' (no dot) as a string
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    return value


def _scalar(text: str) -> Any:
    """'1' -> 1, '0.5' -> 0.5, 'attention' -> 'attention' (YAML scalar; the text itself if it is not one)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def _apply(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    types_ = field_types(type(obj))
    if hasattr(type(obj), "extra_types"):  # TrustConfig: the strategies' options
        types_ |= obj.extra_types()
    for key, value in updates.items():
        name = f"{prefix}{key}"
        if key not in types_:
            valid = ", ".join(sorted(types_))
            where = f"under '{prefix[:-1]}'" if prefix else "at top level"
            raise ConfigError(f"unknown config key '{name}'; valid keys {where}: {valid}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a mapping of {type(current).__name__} fields, got {value!r}")
            _apply(current, value, f"{name}.")
        else:
            setattr(obj, key, _coerce(value, types_[key], name))


def parse_override(text: str) -> tuple[str, Any]:
    """'train.steps=20' -> ('train.steps', 20); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value (e.g. train.steps=20)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, raising ConfigError with the file name on any problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}': not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file '{p}': malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}': expected a mapping of config keys at top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- dotted overrides; validated."""
    cfg = Config()
    if path is not None:
        _apply(cfg, read_yaml(path))
    for text in overrides or []:
        key, value = parse_override(text)
        _apply(cfg, _nest(key, value))
    cfg.validate()
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data; the ``trust`` section holds the strategies' options flat (their names as keys)."""
    out = dataclasses.asdict(cfg)
    out["trust"].update(cfg.trust.option_values())
    return out


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _apply(cfg, data)
    cfg.validate()
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
