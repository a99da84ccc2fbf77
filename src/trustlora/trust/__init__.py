"""Trust strategies: registry name -> strategy; each strategy lives in its own module.

A strategy is one file: what it consumes (``needs``), which message kinds every user publishes each round
(``publishes(cfg)``, by default derived from ``needs`` by :func:`default_publishes`), how it builds the ones that are
its own (``publish(ctx)``: everything but the exchange's 'theta' / 'delta', which the round runner builds), what it
computes once as its starting point (``starting_point(ctx)``) and after the messages arrive (``prepare(inp, ctx)``:
local model passes such as scoring peers on the user's val split), and the pure step that turns a
:class:`TrustInputs` into the trust rows of the users this process hosts::

    from trustlora.trust import get, published_kinds
    strat = get("predictions")
    published_kinds(strat, cfg.trust)                 # ('delta', 'topk_values', 'topk_indices')
    own_kinds(strat, cfg.trust)                       # ['topk_values', 'topk_indices']: built by strat.publish(ctx)
    W_rows, scores = strat.trust(inputs, cfg.trust)   # W_rows: [n_local, N], row-stochastic

Registering a name twice, or asking for an unknown one, fails loudly and lists the valid names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from trustlora.config import TRUST_FIELDS, ConfigError, TrustConfig, field_types


@dataclass
class TrustInputs:
    """Everything a strategy may read. Tensors cover all N users unless noted."""

    users: list[int]
    """Global indices of the users whose rows are computed here."""
    n_users: int
    mixture: np.ndarray | None = None
    """[N, C] data mixture D (oracle only)."""
    theta: torch.Tensor | None = None
    """[N, P] adapters after local training (strategy 'weights')."""
    val_losses: torch.Tensor | None = None
    """[n_local, N] mean CE of model j on local user i's val split (strategy 'validation')."""
    topk_values: torch.Tensor | None = None
    """[N, M, k] top-k predicted values on X_S (strategy 'predictions')."""
    topk_indices: torch.Tensor | None = None
    """[N, M, k] their token ids."""
    theta0: torch.Tensor | None = None
    """[N, P] adapters at initialisation (strategy 'weights', relative scale: movement = theta - theta0)."""
    val_base_losses: torch.Tensor | None = None
    """[n_local] mean CE of the frozen base model on local user i's val tokens (strategy 'validation')."""
    val_before_losses: torch.Tensor | None = None
    """[n_local] mean CE of local user i's model before the round on its val tokens (strategy 'validation' with
    ``trust.val_candidate=update``: the unit's reference)."""
    base_topk_values: torch.Tensor | None = None
    """[M, k] the frozen base model's top-k predictions on X_S (strategy 'predictions', relative scale)."""
    base_topk_indices: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    """[n_local, N] bool: who each local user may receive from (communication graph); None = everyone."""
    extra: dict = field(default_factory=dict)


class Strategy(Protocol):
    """What a strategy offers. Built-in strategies subclass it for the defaults of ``needs_for`` and ``publishes``; a
    plugin need not (the protocol reads it through :func:`needs_of` and :func:`published_kinds`)."""

    name: str
    needs: tuple[str, ...]
    """Message kinds this strategy consumes: 'theta', 'val_cross', 'topk', 'delta' (updates, in ``extra``).

    Strategies with a relative calibration also define ``needs_reference(cfg) -> bool`` (whether the trust step
    needs the starting point) and ``reference``: which one ('theta0': every user's initial adapter, which the round
    runner then sends once; 'val_base': the base model's CE on the local users' val tokens; 'topk_base': the base
    model's top-k predictions on X_S — both computed by the strategy's own :meth:`starting_point`)."""
    exchanges: bool
    """Whether users exchange updates at all (False only for local training)."""

    def needs_for(self, cfg: TrustConfig) -> tuple[str, ...]:
        """Message kinds consumed under ``cfg`` (default: ``needs``)."""
        return tuple(self.needs)

    def publishes(self, cfg: TrustConfig) -> tuple[str, ...]:
        """Message kinds (:data:`trustlora.guard.MESSAGES`) every user publishes each round under ``cfg``; the
        protocol sends exactly these (default: :func:`default_publishes`)."""
        return default_publishes(self, cfg)

    def publish(self, ctx) -> dict[str, torch.Tensor]:
        """This round's messages of the kinds :func:`own_kinds` lists (``{kind: [n_local, ...]}``), built locally
        from ``ctx`` (:class:`trustlora.protocol.LocalContext`: the hosted users' stacked adapters, holding what each
        claims after the round, their data, the config); default: none."""
        return {}

    def starting_point(self, ctx) -> dict[str, torch.Tensor]:
        """What the relative calibration measures movement from, computed once per run on this process
        (:class:`trustlora.protocol.LocalContext`): :class:`TrustInputs` field name -> tensor (e.g.
        ``val_base_losses``, ``base_topk_values``); cached by the round runner. Default: nothing ('theta0', every
        user's initial adapter, is a message the round runner sends once)."""
        return {}

    def prepare(self, inp: TrustInputs, ctx) -> None:
        """Fill what ``trust`` reads that takes local model passes over the received messages (``inp`` already holds
        the checked messages and the mask; ``ctx``: :class:`trustlora.protocol.LocalContext`, e.g. its
        ``val_cross``). Called just before ``trust``; default: nothing."""
        return None

    def trust(self, inp: TrustInputs, cfg: TrustConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (W rows [n_local, N] float64, raw scores [n_local, N] or None).

        A strategy whose step is not a weighted average (coordinate-wise median, trimmed mean) also defines
        ``aggregate(before [n, P], deltas [N, P], accept [n, N] bool, cfg) -> [n, P]``, used instead of W."""
        ...


def needs_of(strategy, cfg: TrustConfig) -> tuple[str, ...]:
    """What ``strategy`` consumes under ``cfg``: its ``needs_for(cfg)`` where it has one, else its ``needs``."""
    needs_for = getattr(strategy, "needs_for", None)
    return tuple(needs_for(cfg)) if needs_for is not None else tuple(strategy.needs)


def default_publishes(strategy, cfg: TrustConfig) -> tuple[str, ...]:
    """Message kinds every user publishes each round, from what ``strategy`` consumes (:func:`needs_of`) and what
    aggregation mixes in: 'theta' (peers' models, and the aggregate in weight mode), 'delta' (peers' updates, and the
    aggregate in update mode), 'topk' -> 'topk_values' + 'topk_indices' ('val_cross' is computed by the receiver from
    'theta' or 'delta'). Nothing is aggregated unless ``trust.apply`` and the strategy ``exchanges``."""
    needs = needs_of(strategy, cfg)
    applying = cfg.apply and strategy.exchanges
    kinds = []
    if "theta" in needs or (cfg.mode == "weight" and applying):
        kinds.append("theta")
    if (applying and cfg.mode == "update") or "delta" in needs:
        kinds.append("delta")
    if "topk" in needs:
        kinds += ["topk_values", "topk_indices"]
    return tuple(kinds)


def published_kinds(strategy, cfg: TrustConfig) -> tuple[str, ...]:
    """What ``strategy`` publishes under ``cfg``: its ``publishes(cfg)``, or :func:`default_publishes` for a
    strategy without one (a plugin that does not subclass :class:`Strategy`)."""
    publishes = getattr(strategy, "publishes", None)
    return tuple(publishes(cfg)) if publishes is not None else default_publishes(strategy, cfg)


EXCHANGE_KINDS = ("theta", "delta")
"""Message kinds the round runner builds itself: the exchange (a user's model, its update; what aggregation mixes
and what simulated attackers forge). Every other kind a strategy publishes is built by its ``publish(ctx)``."""


def own_kinds(strategy, cfg: TrustConfig) -> list[str]:
    """The kinds ``strategy``'s ``publish(ctx)`` builds under ``cfg``: what it publishes besides
    :data:`EXCHANGE_KINDS` (in :data:`trustlora.guard.MESSAGES` order), then its own ``messages`` kinds, sorted."""
    return [k for k in published_kinds(strategy, cfg) if k not in EXCHANGE_KINDS] + sorted(custom_messages(strategy))


_REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy`` under its name. Its ``Options`` dataclass (optional: the strategy's own settings, each with a
    default and a ``validate()``) becomes settable as ``trust.<option>`` / ``trust.<strategy>.<option>``; an option
    name must be new (not a shared ``trust`` field, another strategy's option or a strategy name)."""
    if strategy.name in _REGISTRY:
        raise ValueError(f"trust strategy '{strategy.name}' is registered twice")
    cls = getattr(strategy, "Options", None)
    if cls is not None:
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"trust strategy '{strategy.name}': Options must be a dataclass")
        taken = set(TRUST_FIELDS) | set(option_types()) | set(_REGISTRY) | {strategy.name}
        clash = sorted(set(field_types(cls)) & taken)
        if clash:
            raise ValueError(f"trust strategy '{strategy.name}': option names {clash} are taken")
    from trustlora.guard import MESSAGES

    taken = sorted(set(custom_messages(strategy)) & set(MESSAGES))
    if taken:
        raise ValueError(f"trust strategy '{strategy.name}': message kinds {taken} are built in")
    if custom_messages(strategy) and not callable(getattr(strategy, "publish", None)):
        raise ValueError(f"trust strategy '{strategy.name}': declares messages but has no publish(ctx)")
    _REGISTRY[strategy.name] = strategy
    return strategy


def custom_messages(strategy) -> dict:
    """A strategy's own message kinds: its ``messages`` table (kind -> ``sizes -> (shape, dtype)`` of one sender's
    slice, like :data:`trustlora.guard.MESSAGES`), built each round by its ``publish(ctx)`` ->
    ``{kind: [n_local, ...]}`` (:class:`trustlora.protocol.LocalContext`); every process all-gathers them and checks
    them at the receiving side like the built-in kinds; ``trust`` reads them as ``inputs.extra[kind]``."""
    return dict(getattr(strategy, "messages", None) or {})


def options_class(name: str) -> type | None:
    """Strategy ``name``'s ``Options`` dataclass, or None if it has none."""
    return getattr(get(name), "Options", None)


_OPTION_TYPES: dict[tuple, dict[str, tuple[str, object]]] = {}
"""option_types() per registry state (names and Options classes, in order): read on every ``cfg.trust.<option>``, so
the type hints are evaluated once per registry state, not per read."""


def option_types() -> dict[str, tuple[str, object]]:
    """Every registered strategy's options: option name -> (strategy name, type), in registry order."""
    key = tuple((name, getattr(strat, "Options", None)) for name, strat in _REGISTRY.items())
    if key not in _OPTION_TYPES:
        out: dict[str, tuple[str, object]] = {}
        for name, strat in _REGISTRY.items():
            cls = getattr(strat, "Options", None)
            if cls is not None:
                out.update({k: (name, tp) for k, tp in field_types(cls).items()})
        _OPTION_TYPES[key] = out
    return _OPTION_TYPES[key]


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Strategy:
    if name not in _REGISTRY:
        raise ConfigError(f"strategy: unknown strategy '{name}'; expected one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


# one module per strategy; importing registers it (order = display order)
from trustlora.trust import fedavg, local, oracle, predictions, validation, weights  # noqa: E402, F401, I001
from trustlora.trust import krum, median, trimmed_mean  # noqa: E402, F401, I001

PAPER = ["local", "fedavg", "oracle", "weights", "validation", "predictions"]
"""The paper's strategies: what ``trustlora compare`` runs by default."""
ROBUST = ["median", "trimmed_mean", "krum"]
"""Robust global aggregation baselines (faulty / adversarial peers)."""
_ORDER = PAPER + ROBUST
_REGISTRY = {k: _REGISTRY[k] for k in _ORDER if k in _REGISTRY} | _REGISTRY


def default_compare() -> list[str]:
    """Strategies ``trustlora compare`` runs when ``strategies`` is not set: the paper's six."""
    return [n for n in PAPER if n in _REGISTRY]
